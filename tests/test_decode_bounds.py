"""Decoding with bounded cost (issue 11, item 2), on every surface: a progressive JPEG that
repeats its last scan 20,000 times (a minute of a decoder thread before the fix) is refused at
once, and while several arrive, ordinary requests are not held up."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from eachlabs_calls import KEY, create, created_id, eachlabs_server, poll
from hostile_jpegs import progressive, repeated_scans
from hosts import Host
from judging import labels_of
from nsfwd.cli import main
from nsfwd.engine.batcher import Engine
from nsfwd.intake import ImageComplexityError, ImageLimits
from nsfwd.models.classifier import Classifier
from photos import astronaut_jpeg
from prodia_jobs import job_files
from waiting import wait_for

V1 = "inference.vit.img2label.v1"
REFUSAL = "more than 100 scans"
FAST_S = 5.0  # refusing takes milliseconds; decoding took about a minute
pytestmark = pytest.mark.usefixtures("canary")


@pytest.fixture(scope="module")
def server(
    classifier: Classifier, tmp_path_factory: pytest.TempPathFactory, host: tuple[str, Host]
) -> Iterator[str]:
    with eachlabs_server(classifier, tmp_path_factory.mktemp("bounds")) as (url, _):
        yield url


def prodia(url: str, route: str, image: bytes) -> requests.Response:
    headers = {"Authorization": f"Bearer {KEY}", "Accept": "application/json"}
    return requests.post(f"{url}{route}", headers=headers, files=job_files(V1, image), timeout=60)


@pytest.mark.parametrize("route", ["/v2/job", "/v2/job/async"])
def test_prodia_refuses_the_repeated_scans_at_once(server: str, route: str) -> None:
    started = time.perf_counter()
    res = prodia(server, route, repeated_scans())
    assert time.perf_counter() - started < FAST_S
    assert res.status_code == 400, res.text
    assert res.json()["state"] == {"current": "failed"} and REFUSAL in res.json()["error"]


def test_eachlabs_fails_the_prediction_of_a_url_serving_them_at_once(
    server: str, host: tuple[str, Host]
) -> None:
    base, receiver = host
    url = base + receiver.serve("scans.jpg", repeated_scans())
    started = time.perf_counter()
    done = poll(server, created_id(create(server, url)))
    assert time.perf_counter() - started < FAST_S
    assert done["status"] == "error" and done["output"] is None
    assert REFUSAL in json.dumps(done), done


def test_classify_writes_an_error_record_at_once(
    tmp_path: Path, timm_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "scans.jpg").write_bytes(repeated_scans())
    (tmp_path / "fine.jpg").write_bytes(progressive((256, 256)))
    started = time.perf_counter()
    assert main(["classify", "--model", str(timm_checkpoint), str(tmp_path)]) == 0
    assert time.perf_counter() - started < 60  # loading the model included
    lines = capsys.readouterr().out.splitlines()
    records = {Path(r["path"]).name: r for r in map(json.loads, lines)}
    assert REFUSAL in records["scans.jpg"]["error"]
    assert "labels" in records["fine.jpg"]


def test_three_at_once_do_not_hold_up_an_ordinary_request(server: str) -> None:
    def hostile(_: int) -> int:
        return prodia(server, "/v2/job", repeated_scans()).status_code

    with ThreadPoolExecutor(3) as attackers:
        refused = attackers.map(hostile, range(3))
        started = time.perf_counter()
        ordinary = prodia(server, "/v2/job", astronaut_jpeg())
        took = time.perf_counter() - started
        assert list(refused) == [400] * 3
    assert ordinary.status_code == 200, ordinary.text
    assert took < 10, f"an ordinary request took {took:.1f} s beside three hostile ones"


def test_a_decode_past_its_deadline_is_refused_and_holds_no_slot(classifier: Classifier) -> None:
    """Beyond the structure check: an image that passes it but decodes slowly (100 scans over
    4096x4096 px here, a second or so, with a deadline far below that) is refused when the
    deadline passes, while the slot goes on to the next image. (The decode must outlast the
    event loop's worst delay on a loaded machine: a pool task found done when the deadline is
    handled counts as on time.)"""
    import asyncio

    slow = repeated_scans(90, (4096, 4096))
    limits = ImageLimits(max_side=4096, max_pixels=4096 * 4096)
    engine = Engine(
        classifier, max_batch_size=2, decode_workers=1, decode_timeout_s=0.02, limits=limits
    )

    async def main() -> tuple[list[Any], float]:
        await engine.start()
        try:
            hostile = [asyncio.create_task(labels_of(engine, slow)) for _ in range(2)]
            # Admitted, both have taken the short deadline (nothing awaits in between).
            while engine.in_flight < 2:
                await asyncio.sleep(0.001)
            started = time.perf_counter()
            engine.decode_timeout_s = 10
            await labels_of(engine, astronaut_jpeg())
            took = time.perf_counter() - started
            return await asyncio.gather(*hostile, return_exceptions=True), took
        finally:
            await engine.stop()

    outcomes, took = asyncio.run(main())
    assert all(isinstance(o, ImageComplexityError) for o in outcomes), outcomes
    assert "decoding it took longer than 0.02 s" in str(outcomes[0])
    assert took < 10
    assert threading.active_count() < 100


def test_an_async_upload_is_decoded_once(
    classifier: Classifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked at submission on the decode pool, classified by the job from the pixels kept
    then: one decode, not two."""
    import nsfwd.intake
    import nsfwd.intake.checked

    decoded: list[str] = []
    real = nsfwd.intake.load_prepared

    def counting(data: bytes, *args: Any) -> Any:
        decoded.append(threading.current_thread().name)
        return real(data, *args)

    monkeypatch.setattr(nsfwd.intake.checked, "load_prepared", counting)
    with eachlabs_server(classifier, tmp_path) as (url, _):
        res = prodia(url, "/v2/job/async", astronaut_jpeg())
        assert res.status_code == 201, res.text
        job = res.json()["id"]
        auth = {"Authorization": f"Bearer {KEY}"}

        def state() -> str | None:
            got = requests.get(f"{url}/v2/job/async/{job}/job.state.current", headers=auth)
            return None if got.text == "processing" else got.text

        assert wait_for(state, 30, "the job to finish") == "processed"
    assert decoded == ["nsfwd-decode"]
