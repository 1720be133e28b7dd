"""Issue 22 on every surface: the files of its "Done when" (an animated GIF whose first frame
shows for 10 ms, a HEIC hiding a flagged second image, a rotated HEIC, a two-page TIFF whose
second page is worse) judged by Prodia's sync and async jobs, Eachlabs, OpenAI's moderation
route, ``nsfwd classify`` (its pipeline and its folder search), ``--http-workers``' inference
socket and ``nsfwd calibrate``'s folders. Ray's surfaces run the same engine (tests in the Ray
tier cover it); the demo page posts Prodia jobs.

The model reads the pictures' convention (:mod:`flagging`), so the labels say which picture
answered and that it was seen upright.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from eachlabs_calls import KEY, create, created_id, eachlabs_server, poll
from flagging import FlagClassifier, flagger
from format_files import (
    avif_benign_for_10ms,
    benign,
    bmp_rle8,
    flag,
    gif_benign_for_10ms,
    heic,
    heic_hiding_a_second_image,
    heic_rotated,
    tiff_worse_second_page,
)
from nsfwd.batch.pipeline import classify_files
from nsfwd.engine.batcher import Engine
from nsfwd.intake import ImageLimits, sniff_format
from nsfwd.intake.sniff import EXTENSIONS, MEDIA_TYPES
from nsfwd.verdict import Judgement
from prodia_jobs import MODEL, job_files
from test_remote import remote
from test_worker import image_host

__all__ = ["flagger"]  # the fixture, imported for this module's tests

FLAGGED: dict[str, tuple[bytes, dict[str, Any] | None]] = {
    "gif": (gif_benign_for_10ms(), {"frame": 1, "frames": 2, "frames_judged": 2}),
    "heic-second-image": (
        heic_hiding_a_second_image(),
        {"frame": 1, "frames": 2, "picture": "image"},
    ),
    "heic-rotated": (heic_rotated(), None),  # one picture: which answered is no news
    "tiff": (tiff_worse_second_page(), {"frame": 1, "frames": 2, "picture": "page"}),
    "avif": (avif_benign_for_10ms(), {"frame": 1, "frames": 3}),
    "bmp": (bmp_rle8(flag()), None),
}
"""Files whose worst picture is a flag seen upright, and what ``judged`` says of it."""
BENIGN: dict[str, bytes] = {"heic-benign": heic(benign()), "bmp-benign": bmp_rle8(benign())}


def _judged_matches(judged: dict[str, Any] | None, expected: dict[str, Any] | None) -> bool:
    if expected is None:
        return judged is None
    return judged is not None and all(judged.get(k) == v for k, v in expected.items())


@pytest.fixture(scope="module")
def server(flagger: FlagClassifier, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server for every protocol, with a store, judging with the flag reader."""
    with eachlabs_server(flagger, tmp_path_factory.mktemp("store")) as (url, _):
        yield url


def _session() -> requests.Session:
    session = requests.Session()
    session.headers.update({"Authorization": f"Bearer {KEY}", "Accept": "application/json"})
    return session


def _name(case: str, data: bytes) -> str:
    return f"{case}.{EXTENSIONS[sniff_format(data) or 'JPEG']}"


@pytest.mark.parametrize("case", [*FLAGGED, *BENIGN])
def test_prodia_sync_and_async_jobs(server: str, case: str) -> None:
    data, judged = FLAGGED.get(case, (BENIGN.get(case, b""), None))
    flagged = case in FLAGGED
    files = job_files(image=data, filename=_name(case, data), content_type="image/any")
    sync = _session().post(f"{server}/v2/job", files=files, timeout=60)
    assert sync.status_code == 200, sync.text
    config = sync.json()["config"]
    assert (config["labels"]["high"] > 0.9) == flagged, config
    assert _judged_matches(config.get("judged"), judged), config
    files = job_files(image=data, filename=_name(case, data))
    submitted = _session().post(f"{server}/v2/job/async", files=files, timeout=60)
    assert submitted.status_code in (200, 201, 202), submitted.text
    job_id = submitted.json()["id"]
    done = _wait_for_job(server, job_id)
    assert (done["config"]["labels"]["high"] > 0.9) == flagged, done
    assert _judged_matches(done["config"].get("judged"), judged), done


def _wait_for_job(url: str, job_id: str) -> dict[str, Any]:
    from waiting import wait_for

    def finished() -> dict[str, Any] | None:
        state = _session().get(f"{url}/v2/job/async/{job_id}/job.state.current", timeout=10)
        if state.text == "processing":
            return None
        doc: dict[str, Any] = _session().get(f"{url}/v2/job/async/{job_id}/job.json").json()
        return doc

    found: dict[str, Any] = wait_for(finished, 30, "the async job to finish")
    return found


def test_eachlabs_predictions(server: str) -> None:
    files = {f"/{case}": (data, "application/octet-stream") for case, (data, _) in FLAGGED.items()}
    files |= {f"/{case}": (data, "application/octet-stream") for case, data in BENIGN.items()}
    with image_host(files) as images:
        ids = {case: created_id(create(server, f"{images}/{case}")) for case in files}
        for path, prediction_id in ids.items():
            case = path.lstrip("/")
            done = poll(server, prediction_id)
            assert done["status"] == "success", done
            assert done["output"] == ("nsfw" if case in FLAGGED else "normal"), (case, done)
            if case in FLAGGED:
                assert _judged_matches(done.get("judged"), FLAGGED[case][1]), (case, done)


def test_openai_moderations(server: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)
    cases = {**{case: data for case, (data, _) in FLAGGED.items()}, **BENIGN}
    for case, data in cases.items():
        media = MEDIA_TYPES[sniff_format(data) or "JPEG"]
        uri = f"data:{media};base64," + base64.b64encode(data).decode()
        picture: Any = {"type": "image_url", "image_url": {"url": uri}}
        (result,) = client.moderations.create(model=MODEL, input=[picture]).results
        assert result.flagged == (case in FLAGGED), (case, result)


def test_classify_finds_every_format_in_folders_and_records_which_picture(
    flagger: FlagClassifier, tmp_path: Path
) -> None:
    from nsfwd.intake import find_images

    cases = {**{case: data for case, (data, _) in FLAGGED.items()}, **BENIGN}
    for case, data in cases.items():
        (tmp_path / _name(case, data)).write_bytes(data)
    (tmp_path / "notes.pdf").write_bytes(b"%PDF-1.7\n")
    paths = list(find_images([tmp_path]))
    assert sorted(path.name for path in paths) == sorted(_name(c, d) for c, d in cases.items())
    for result in classify_files(flagger, paths, batch_size=4):
        case = Path(result.path).stem
        assert result.labels is not None, result
        assert (result.labels["high"] > 0.9) == (case in FLAGGED), result
        if case in FLAGGED:
            assert _judged_matches(result.judged, FLAGGED[case][1]), result


def test_the_inference_socket_of_http_workers(flagger: FlagClassifier, tmp_path: Path) -> None:
    async def main() -> list[Judgement]:
        engine = Engine(flagger, max_batch_size=8, limits=ImageLimits())
        async with remote(engine, tmp_path) as served:
            return [await served.client.judge(data) for data, _ in FLAGGED.values()]

    for judgement, (case, (_, judged)) in zip(asyncio.run(main()), FLAGGED.items(), strict=True):
        assert judgement.labels["high"] > 0.9, case
        assert _judged_matches(judgement.stored(), judged), (case, judgement)


def test_calibrate_finds_the_formats_in_its_class_folders(tmp_path: Path) -> None:
    from nsfwd.calibrate.dataset import find_labelled

    for folder, cases in (("safe", BENIGN), ("unsafe", {c: d for c, (d, _) in FLAGGED.items()})):
        (tmp_path / folder).mkdir()
        for case, data in cases.items():
            (tmp_path / folder / _name(case, data)).write_bytes(data)
    found = find_labelled(tmp_path)
    assert found.counts() == {"safe": len(BENIGN), "unsafe": len(FLAGGED)}
