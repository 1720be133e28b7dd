"""Video on every surface a user sends one to (issue 23): a 20 s clip whose red (benign) frames
hide a 2 s blue (flagged) stretch from 10 s yields one segment there on ``nsfwd classify``,
Eachlabs' ``input.video`` (polling and the webhook), Prodia's sync and async jobs and the
inference socket of ``--http-workers``. The demo page is in ``test_demo``, ``classify --ray``
in ``test_ray_data``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from standardwebhooks import Webhook

from eachlabs_calls import KEY, create, created_id, eachlabs_server, poll
from hosts import SECRET, Host
from nsfwd.api import create_app
from nsfwd.batch.output import record
from nsfwd.batch.pipeline import VideoJob, classify_files
from nsfwd.engine.batcher import Engine
from nsfwd.models.classifier import Classifier
from nsfwd.settings import Settings
from nsfwd.timeline import VideoOptions
from nsfwd.verdict import Policy
from prodia_jobs import MODEL, TOKEN
from servers import serve_app
from test_remote import remote
from test_video import colour_model
from test_viewer import RedlessClassifier
from videos import stretch, write_video

AUTH = {"Authorization": f"Bearer {TOKEN}"}
STRICT = Policy("strict", 0.5)


@pytest.fixture(name="redless")
def redless_fixture(classifier: Classifier) -> RedlessClassifier:
    return colour_model(classifier)


@pytest.fixture(scope="module")
def clip() -> bytes:
    """20 s of red with blue from 10 s to 12 s (H.264 in MP4, 500 frames at 25 fps)."""
    return write_video(stretch(10.0, 12.0), 20.0)


def assert_one_segment_at_ten(segments: Any) -> None:
    """One segment, where the blue stretch is (within one interval: samples at 10 and 11 s)."""
    assert isinstance(segments, list) and len(segments) == 1, segments
    (segment,) = segments
    assert segment["start"] == pytest.approx(10.0, abs=1.0)
    assert segment["end"] == pytest.approx(11.0, abs=1.0)
    assert 9.0 <= segment["start"] <= segment["end"] <= 12.0
    assert segment["score"] > 0.9


def assert_worst_moment(judged: Any, labels: Any) -> None:
    assert 10.0 <= judged["time"] <= 12.0 and judged["frames_judged"] == 21, judged
    assert judged["duration"] == pytest.approx(19.96) and judged["incomplete"] is None
    assert labels["high"] > 0.9


# --- nsfwd classify -----------------------------------------------------------------------------


def test_classify_records_a_video_with_its_segments(
    redless: RedlessClassifier, clip: bytes, tmp_path: Path
) -> None:
    (tmp_path / "clip.mp4").write_bytes(clip)
    (tmp_path / "short.webm").write_bytes(write_video(stretch(0, 0), 1.0, codec="vp9"))
    paths = [tmp_path / "clip.mp4", tmp_path / "short.webm"]
    found, short = classify_files(redless, paths, batch_size=4, decode="pil", policy=STRICT)
    doc = record(found, STRICT)
    assert doc["flagged"] is True and doc["path"] == str(tmp_path / "clip.mp4")
    assert_one_segment_at_ten(doc["segments"])
    assert_worst_moment(doc["judged"], doc["labels"])
    assert short.segments == [] and short.labels is not None and short.labels["high"] < 0.5
    assert max(redless.batches) <= 4
    stopped = classify_files(
        redless,
        paths[:1],
        batch_size=4,
        policy=STRICT,
        videos=VideoJob(options=VideoOptions(stop_on_flag=True)),
    )
    (early,) = stopped
    assert early.judged is not None and "stop_on_flag" in early.judged["incomplete"]


def test_the_classify_command_takes_videos_and_folders_of_them(
    timm_checkpoint: Path, clip: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nsfwd.cli import main

    folder = tmp_path / "media"
    folder.mkdir()
    (folder / "a-clip.mp4").write_bytes(clip)
    (folder / "b-clip.mkv").write_bytes(write_video(stretch(0, 0), 2.0, codec="h264-mkv"))
    (folder / "c-broken.mov").write_bytes(clip[: len(clip) // 3])
    code = main(["classify", "--model", str(timm_checkpoint), "--dtype", "float32",
                 "--interval", "2", "--max-frames", "5", str(folder)])  # fmt: skip
    assert code == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["path"]).name for r in records] == ["a-clip.mp4", "b-clip.mkv", "c-broken.mov"]
    first, second, broken = records
    assert first["judged"]["frames_judged"] == 5 and isinstance(first["segments"], list)
    assert second["judged"]["frames_judged"] == 2 and "labels" in second
    assert "error" in broken or broken["judged"]["incomplete"], broken


# --- Eachlabs -----------------------------------------------------------------------------------


def test_eachlabs_judges_input_video_and_sends_its_segments(
    redless: RedlessClassifier, clip: bytes, tmp_path: Path, host: tuple[str, Host]
) -> None:
    base, receiver = host
    path = receiver.serve("clip.mp4", clip, {"content-type": "video/mp4"})
    with eachlabs_server(redless, tmp_path, policy="strict") as (url, _):
        webhook = f"{base}/hook/video"
        created = create(url, "", webhook_url=webhook)  # the image left blank: a 400
        assert created.status_code == 400
        body = {"model": "nsfw-image-detection", "input": {"video": f"{base}{path}"},
                "webhook_url": webhook}  # fmt: skip
        res = requests.post(f"{url}/v1/prediction/", json=body, headers={"X-API-Key": KEY},
                            timeout=30)  # fmt: skip
        doc = poll(url, created_id(res), timeout=60)
        assert doc["status"] == "success" and doc["output"] == "nsfw", doc
        assert_one_segment_at_ten(doc["segments"])
        assert_worst_moment(doc["judged"], doc["labels"])
        hits = _wait_for_hit(receiver, "video")
        payload = Webhook(SECRET).verify(hits.body, hits.headers)
        assert payload["output"] == "nsfw" and payload["segments"] == doc["segments"]
        both = {"model": "nsfw-image-detection",
                "input": {"video": f"{base}{path}", "image": f"{base}/photo.jpg"}}  # fmt: skip
        refused = requests.post(f"{url}/v1/prediction/", json=both, headers={"X-API-Key": KEY},
                                timeout=30)  # fmt: skip
        assert refused.status_code == 400 and "one URL" in refused.json()["message"]
        bad = {"model": "nsfw-image-detection", "input": {"video": f"{base}{path}",
               "interval": "1"}}  # fmt: skip
        refused = requests.post(f"{url}/v1/prediction/", json=bad, headers={"X-API-Key": KEY},
                                timeout=30)  # fmt: skip
        assert refused.status_code == 400 and "input.interval" in refused.json()["message"]


def _wait_for_hit(receiver: Host, name: str) -> Any:
    import time

    deadline = time.monotonic() + 30
    while not receiver.received(name):
        assert time.monotonic() < deadline, "no webhook arrived"
        time.sleep(0.05)
    return receiver.received(name)[0]


# --- Prodia ---------------------------------------------------------------------------------------


@contextmanager
def prodia_server(classifier: Classifier, data_dir: Path) -> Iterator[str]:
    settings = Settings(
        model=classifier.name, served_model_name=MODEL, api_keys=[TOKEN], data_dir=data_dir
    )
    engine = Engine(classifier, max_batch_size=4, limits=settings.image_limits)
    from nsfwd.jobs import Store

    with serve_app(create_app(engine, settings, Store.from_settings(settings))) as url:
        yield url


def job(version: str = "v1", **config: Any) -> bytes:
    kind = f"inference.vit.img2label.{version}"
    return json.dumps({"type": kind, "config": {"model": MODEL, **config}}).encode()


def post(url: str, route: str, video: bytes, **config: Any) -> requests.Response:
    return requests.post(
        f"{url}{route}",
        headers={**AUTH, "Accept": "application/json"},
        files=[
            ("job", ("job.json", job(**config), "application/json")),
            ("input", ("clip.mp4", video, "video/mp4")),
        ],
        timeout=60,
    )


def test_prodia_jobs_answer_a_video_with_its_segments(
    redless: RedlessClassifier, clip: bytes, tmp_path: Path
) -> None:
    with prodia_server(redless, tmp_path) as url:
        res = post(url, "/v2/job", clip)
        assert res.status_code == 200, res.text
        config = res.json()["config"]
        assert_one_segment_at_ten(config["segments"])
        assert_worst_moment(config["judged"], config["labels"])
        coarse = post(url, "/v2/job", clip, interval=5, min_frames=1).json()["config"]
        assert coarse["judged"]["frames_judged"] == 5  # 0, 5, 10, 15 and the last frame
        refused = post(url, "/v2/job", clip, max_frames=2.5)
        assert refused.status_code == 400 and "job.config.max_frames" in refused.json()["error"]

        submitted = post(url, "/v2/job/async", clip)
        assert submitted.status_code == 201, submitted.text
        job_id = submitted.json()["id"]
        done = _until_processed(url, job_id)
        assert_one_segment_at_ten(done["config"]["segments"])
        assert_worst_moment(done["config"]["judged"], done["config"]["labels"])
        truncated = post(url, "/v2/job/async", clip[:200])
        assert truncated.status_code == 400, truncated.text


def _until_processed(url: str, job_id: str) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + 60
    while True:
        res = requests.get(f"{url}/v2/job/async/{job_id}/job.json", headers=AUTH, timeout=10)
        doc: dict[str, Any] = res.json()
        if doc["state"]["current"] != "processing":
            assert doc["state"]["current"] == "processed", doc
            return doc
        assert time.monotonic() < deadline
        time.sleep(0.1)


# --- the inference socket -------------------------------------------------------------------------


def test_the_inference_socket_carries_the_video_options_and_segments(
    redless: RedlessClassifier, clip: bytes, tmp_path: Path
) -> None:
    async def main() -> None:
        engine = Engine(redless, max_batch_size=4)
        async with remote(engine, tmp_path) as served:
            options = VideoOptions(interval=0.5)
            judged = await served.client.judge(clip, STRICT, video=options)
            local = await engine.judge(clip, STRICT, video=options)
            assert judged == local
            assert judged.video is not None and judged.video.frames_judged == 41
            assert_one_segment_at_ten(judged.segments)

    asyncio.run(main())
