"""Issue 22's hostile files at full size (tests/hostile_formats.py builds them; small ones of
each kind are in the seed corpus): each refused with an error that names the limit, before a
picture is decoded and in bounded time, by the intake and by a server, which keeps serving."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import requests

import hostile_formats as hostile
from format_files import gif_benign_for_10ms
from nsfwd.api import create_app
from nsfwd.engine.batcher import Engine
from nsfwd.intake import ImageError, load_views
from nsfwd.models.classifier import Classifier
from nsfwd.settings import Settings
from prodia_jobs import MODEL, TOKEN, post_job
from servers import serve_app

REFUSED: dict[str, tuple[Callable[[], bytes], str]] = {
    "gif-65535-screen": (hostile.gif_huge_screen, "above the maximum of 2048 px"),
    "gif-100000-frames": (hostile.gif_many_frames, "frames; the limit is 5,000"),
    "gif-lzw-bomb": (hostile.gif_lzw_bomb, "above the limit of 134,217,728 pixels"),
    "gif-lying-frame": (hostile.gif_lying_frame, "above the maximum of 2048 px"),
    "tiff-6000-pages": (hostile.tiff_many_pages, "5,000 pages; the limit is 5,000"),
    "heif-10000-items": (hostile.heif_many_items, "items; the limit is 1,000"),
    "heif-65280-tiles": (hostile.heif_grid, "more than 4,000 item references"),
    "heif-lying-grid": (
        lambda: hostile.heif_grid(16, 16, tiles=1),
        "16 x 16 tiles but references 1",
    ),
    "heif-truncated": (hostile.truncated_heic, "truncated or corrupt"),
    "avif-million-frames": (hostile.avif_endless_sequence, "1,000,000 frames; the limit"),
}
"""Each attack, and words its refusal says."""
DEADLINE_S = 2.0
"""Refusals come from the headers: far quicker than this, even on a slow shared core."""


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_the_intake_refuses_each_from_its_structure(name: str) -> None:
    make, words = REFUSED[name]
    data = make()
    started = time.perf_counter()
    with pytest.raises(ImageError) as refused:
        load_views(data)
    assert time.perf_counter() - started < DEADLINE_S
    assert words in str(refused.value), str(refused.value)


@pytest.fixture(scope="module")
def server(classifier: Classifier) -> Iterator[str]:
    settings = Settings(model=classifier.name, served_model_name=MODEL, api_keys=[TOKEN])
    engine = Engine(classifier, max_batch_size=8, limits=settings.image_limits)
    with serve_app(create_app(engine, settings)) as url:
        yield url


def test_a_server_answers_each_with_a_400_and_keeps_serving(server: str) -> None:
    for name, (make, words) in REFUSED.items():
        started = time.perf_counter()
        res = post_job(server, make())
        assert res.status_code == 400, (name, res.text)
        assert words in res.json()["error"], (name, res.text)
        assert time.perf_counter() - started < 10 * DEADLINE_S, name
        assert requests.get(f"{server}/healthz", timeout=10).status_code == 200
    assert post_job(server, gif_benign_for_10ms()).status_code == 200
