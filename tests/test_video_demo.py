"""The demo page with a video (issue 23), in a real headless Chromium against a real server:
the timeline shows the flagged segment where the API puts it, clicking it seeks the player
there; a video over the image size limit goes through the async route."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from nsfwd.api import create_app
from nsfwd.engine.batcher import Engine
from nsfwd.jobs import Store
from nsfwd.models.classifier import Classifier
from nsfwd.settings import Settings
from servers import serve_app
from test_demo import chromium, no_refusal, wait_for_result
from test_video import colour_model
from videos import stretch, write_video


@pytest.mark.parametrize("route", ["sync", "async"])
def test_the_timeline_shows_the_segment_and_seeks_there(
    classifier: Classifier, tmp_path: Path, route: str
) -> None:
    clip = tmp_path / "clip.webm"  # VP9: every Chromium plays it
    clip.write_bytes(write_video(stretch(10.0, 12.0), 20.0, codec="vp9"))
    limit = 10 * 1024**2 if route == "sync" else len(clip.read_bytes()) - 1
    settings = Settings(model=classifier.name, max_image_bytes=limit, data_dir=tmp_path / "data")
    engine = Engine(colour_model(classifier), max_batch_size=4, limits=settings.image_limits)
    with serve_app(create_app(engine, settings, Store.from_settings(settings))) as url:
        with chromium(no_refusal) as browser:
            page = browser.page
            page.goto(f"{url}/", wait_until="load")
            page.wait_for_selector("#file:enabled")
            page.set_input_files("#file", str(clip))
            wait_for_result(page, clip.name)
            assert page.is_visible("#player") and page.is_hidden("#preview")
            starts = page.eval_on_selector_all(
                "#timeline .segment", "bars => bars.map(b => Number(b.dataset.start))"
            )
            assert len(starts) == 1 and 9.0 <= starts[0] <= 11.0, starts
            caption = page.text_content("#timeline-caption") or ""
            assert "1 flagged segment" in caption and "21 frames judged" in caption
            page.click("#timeline .segment")
            page.wait_for_function(
                "start => Math.abs(document.getElementById('player').currentTime - start) < 0.5",
                arg=starts[0],
            )
            shot = tmp_path / "timeline.png"
            page.screenshot(path=str(shot), full_page=True)
        print(f"demo page screenshot: {shot}")
        posted = [u for u in browser.requests if u.startswith(f"{url}/v2/job")]
        assert any(u.endswith("/v2/job/async") for u in posted) == (route == "async"), posted
        config = requests.get(f"{url}/demo/config.json", timeout=10).json()
        assert config["max_video_bytes"] == settings.max_video_bytes
    assert browser.problems == []
