"""Regions: the verdict's regions and region policies, and a random-weight transformers object
detector (YOLOS, the real on-disk format) on every surface: the engine, ``nsfwd classify``,
Prodia's jobs (``config.regions``, ``config.detector``, ``config.redact``), Eachlabs'
predictions, OpenAI's moderations (through the policy), ``GET /v1/models``."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from eachlabs_calls import create, created_id, eachlabs_server, poll
from hosts import Host
from nsfwd.api import create_app
from nsfwd.cli import main
from nsfwd.engine.batcher import Engine
from nsfwd.intake.views import View, Views
from nsfwd.models.classifier import Classifier
from nsfwd.models.detector import Detector
from nsfwd.models.model import is_detector, load_model
from nsfwd.models.synthetic import write_detector_checkpoint
from nsfwd.settings import Settings
from nsfwd.verdict import Finding, Judgement, Policy, Region, judge, parse_region_thresholds
from photos import ASTRONAUT, encode, photo
from prodia_jobs import parts_of
from servers import serve_app
from store_handles import make_key
from videos import RED, write_video

pytestmark = pytest.mark.usefixtures("canary")
LABELS = ("EXPOSED", "COVERED", "FACE")
RULES = "EXPOSED=0.5"
TOKEN = "regions-token-3a9f"


@pytest.fixture(scope="module")
def detector_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_detector_checkpoint(tmp_path_factory.mktemp("yolos"), LABELS)


@pytest.fixture(scope="module")
def detector(detector_checkpoint: Path) -> Detector:
    loaded = load_model(str(detector_checkpoint), device="cpu")
    assert isinstance(loaded, Detector)
    return loaded


# --- the verdict ----------------------------------------------------------------------------


def test_a_region_policy_flags_an_image_the_classifier_alone_passes() -> None:
    passing = {"neutral": 0.9, "low": 0.05, "medium": 0.03, "high": 0.02}
    exposed = Region("FEMALE_BREAST_EXPOSED", 0.8, (1, 2, 3, 4))
    policy = Policy()
    assert not policy.flagged(passing)
    assert policy.flagged(passing, [exposed])
    assert not policy.flagged(passing, [Region("FACE_FEMALE", 0.99, (1, 2, 3, 4))])
    assert not Policy(regions=()).flagged(passing, [exposed])
    own = Policy(regions=parse_region_thresholds("FACE_FEMALE=0.9"))
    assert own.flagged(passing, [Region("FACE_FEMALE", 0.95, (0, 0, 1, 1))])
    # A detector's labels alone: each class's best region over its own threshold.
    found = {"FEMALE_BREAST_EXPOSED": 0.6, "FACE_FEMALE": 0.9}
    assert policy.flagged(found) and policy.score(found) == pytest.approx(0.6)
    assert not policy.flagged({"FEMALE_BREAST_EXPOSED": 0.4, "FACE_FEMALE": 0.9})
    with pytest.raises(ValueError, match="region label"):
        policy.check(list(LABELS))


@pytest.mark.parametrize("text", ["X", "X=2", "=0.5", "X=high"])
def test_bad_region_thresholds_say_how_to_write_them(text: str) -> None:
    with pytest.raises(ValueError, match="LABEL=T"):
        parse_region_thresholds(text)


def test_regions_keep_their_frame_and_round_trip() -> None:
    region = Region("FACE", 0.5, (1, 2, 3, 4), frame=2)
    assert region.as_dict() == {"label": "FACE", "score": 0.5, "box": [1, 2, 3, 4], "frame": 2}
    timed = Region("FACE", 0.5, (1, 2, 3, 4), time=1.5)
    assert Region.from_dict(timed.as_dict()) == timed
    views: Views[None] = Views(
        [View(None, 0, None), View(None, 3, "white"), View(None, 3, "black")], 5
    )
    found = [
        Finding({"FACE": 0.5}, [Region("FACE", 0.5, (0, 0, 1, 1))]),
        Finding({"FACE": 0.2}, [Region("FACE", 0.2, (0, 0, 1, 1))]),
        Finding({"FACE": 0.7}, [Region("FACE", 0.7, (5, 5, 1, 1))]),
    ]
    judgement = judge(views, found, Policy(regions=(("FACE", 0.6),)))
    assert judgement.labels == {"FACE": 0.7} and judgement.backdrop == "black"
    assert [(r.frame, r.score) for r in judgement.regions or ()] == [(0, 0.5), (3, 0.7)]
    assert Judgement.from_stored(judgement.labels, judgement.stored()) == judgement


# --- the detector, directly and through the engine ------------------------------------------


def test_a_transformers_detector_loads_from_its_checkpoint(
    detector_checkpoint: Path, detector: Detector
) -> None:
    assert is_detector(str(detector_checkpoint))
    assert (detector.kind, detector.labels, detector.loaded.style) == (
        "detector",
        LABELS,
        "transformers",
    )
    wide, tall = photo().resize((600, 300)), photo().resize((200, 500))
    for image, regions in zip((wide, tall), detector.detect([wide, tall]), strict=True):
        assert regions and all(r.label == "EXPOSED" and r.score > 0.9 for r in regions)
        for region in regions:
            x, y, width, height = region.box
            assert x >= 0 and y >= 0 and width > 0 and height > 0
            assert x + width <= image.width and y + height <= image.height


def test_the_engine_judges_with_regions_in_every_frame(detector: Detector) -> None:
    frames = [photo().resize((256, 256)).rotate(angle) for angle in (0, 30, 60)]
    animation = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=50)

    async def run() -> Judgement:
        engine = Engine(detector, max_batch_size=4)
        await engine.start()
        try:
            return await engine.judge(animation, Policy(regions=((LABELS[0], 0.5),)))
        finally:
            await engine.stop()

    judgement = asyncio.run(run())
    assert judgement.labels["EXPOSED"] > 0.9
    assert {region.frame for region in judgement.regions or ()} == {0, 1, 2}
    assert Policy(regions=((LABELS[0], 0.5),)).flagged(judgement.labels)


def test_classify_records_carry_regions(
    detector_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["classify", "--model", str(detector_checkpoint), "--region-thresholds", RULES]
    assert main([*argv, "--device", "cpu", str(ASTRONAUT)]) == 0
    (record,) = map(json.loads, capsys.readouterr().out.splitlines())
    assert record["flagged"] is True and record["labels"]["EXPOSED"] > 0.9
    assert record["regions"] and record["regions"][0]["label"] == "EXPOSED"
    assert set(record["regions"][0]) == {"label", "score", "box", "frame"}


def test_classify_refuses_a_policy_that_names_none_of_its_labels(
    detector_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["classify", "--model", str(detector_checkpoint), str(ASTRONAUT)]) == 2
    assert "region label" in capsys.readouterr().err


# --- the HTTP surfaces ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(detector: Detector, vit_checkpoint: Path) -> Iterator[str]:
    """A server running the detector beside a classifier (the tiny ViT, normal/nsfw)."""
    classifier = Classifier.load(str(vit_checkpoint), dtype="float32")
    # A threshold no score passes: a detector's verdicts follow the region thresholds alone.
    settings = Settings(api_keys=[TOKEN], region_thresholds=RULES, threshold=1.0)
    engines = {
        "classifier": Engine(classifier, max_batch_size=4, limits=settings.image_limits),
        "detector": Engine(detector, max_batch_size=4, limits=settings.image_limits),
    }
    with serve_app(create_app(engines, settings)) as url:
        yield url


def _job(
    url: str, config: dict[str, Any], *, v2: bool = False, data: bytes | None = None
) -> requests.Response:
    kind = "inference.vit.img2label.v2" if v2 else "inference.vit.img2label.v1"
    job = json.dumps({"type": kind, "config": config}).encode()
    return requests.post(
        f"{url}/v2/job",
        files=[
            ("job", ("job.json", job, "application/json")),
            ("input", ("astronaut.png", data or ASTRONAUT.read_bytes(), "image/png")),
        ],
        headers={
            "Authorization": f"Bearer {TOKEN}",
            "Accept": "multipart/form-data" if v2 else "application/json",
        },
        timeout=60,
    )


def test_models_say_which_kind_each_is(server: str) -> None:
    answer = requests.get(f"{server}/v1/models", headers={"Authorization": f"Bearer {TOKEN}"})
    kinds = {model["id"]: model["kind"] for model in answer.json()["data"]}
    assert kinds == {"classifier": "classifier", "detector": "detector"}


def test_a_prodia_job_naming_a_detector_answers_regions(server: str) -> None:
    answer = _job(server, {"model": "detector"})
    assert answer.status_code == 200, answer.text
    config = answer.json()["config"]
    assert list(config["labels"]) == list(LABELS)
    assert config["regions"] and config["regions"][0]["label"] == "EXPOSED"


def test_a_prodia_job_gets_regions_beside_labels_and_a_redacted_copy(server: str) -> None:
    redact = {"style": "fill", "labels": "all"}
    config = {"model": "classifier", "detector": "detector", "redact": redact}
    answer = _job(server, config, v2=True)
    assert answer.status_code == 200, answer.text
    (job, labels, image) = parts_of(answer)
    document = json.loads(job[3])
    assert list(document["config"]["labels"]) == ["normal", "nsfw"]
    assert json.loads(labels[3]) == document["config"]["labels"]
    regions = document["config"]["regions"]
    assert regions
    assert image[1:3] == ("astronaut.png", "image/png")
    before = np.asarray(Image.open(ASTRONAUT).convert("RGB")).astype(int)
    after = np.asarray(Image.open(BytesIO(image[3])).convert("RGB")).astype(int)
    x, y, width, height = regions[0]["box"]
    assert (after[y : y + height, x : x + width] == 0).all()
    outside = np.ones(before.shape[:2], bool)
    outside[max(0, y - height) : y + 2 * height, max(0, x - width) : x + 2 * width] = False
    assert (before[outside] == after[outside]).all()


def test_a_video_beside_a_detector_answers_its_regions_by_time(server: str) -> None:
    """The detector flags every frame of this clip (by the region threshold, the threshold
    being 1): one segment, and its regions in each sampled frame with its time."""
    clip = write_video(lambda _: RED, 3.0, fps=10, size=(160, 120))
    answer = _job(server, {"model": "classifier", "detector": "detector"}, data=clip)
    assert answer.status_code == 200, answer.text
    config = answer.json()["config"]
    assert list(config["labels"]) == ["normal", "nsfw"] and config["segments"] == []
    assert sorted({(r["frame"], r["time"]) for r in config["regions"]}) == [
        (0, 0.0), (10, 1.0), (20, 2.0), (29, 2.9)
    ]  # fmt: skip
    alone = _job(server, {"model": "detector"}, data=clip).json()["config"]
    assert [(s["start"], s["end"]) for s in alone["segments"]] == [(0.0, 2.9)]
    refused = _job(server, {"model": "detector", "redact": {}}, data=clip)
    assert refused.status_code == 400 and "not a video" in refused.json()["error"]


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"model": "classifier", "detector": "classifier"}, "a classifier"),
        ({"model": "classifier", "detector": "nope"}, "job.config.detector"),
        ({"model": "classifier", "redact": True}, "needs regions"),
        ({"model": "detector", "redact": {"style": "smudge"}}, "style"),
        ({"model": "detector", "redact": {"padding": 3}}, "padding"),
        ({"model": "detector", "redact": {"labels": []}}, "labels"),
    ],
)
def test_bad_region_jobs_are_refused_saying_why(
    server: str, config: dict[str, Any], words: str
) -> None:
    answer = _job(server, config)
    assert answer.status_code == 400, answer.text
    assert words in answer.json()["error"]


def test_openai_moderation_flags_by_the_region_policy(server: str) -> None:
    url = "data:image/png;base64," + base64.b64encode(ASTRONAUT.read_bytes()).decode()
    answer = requests.post(
        f"{server}/v1/moderations",
        json={"model": "detector", "input": [{"type": "image_url", "image_url": {"url": url}}]},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    (result,) = answer.json()["results"]
    assert result["flagged"] is True and "regions" not in result
    assert result["category_scores"]["sexual"] > 0.9


def test_eachlabs_predictions_carry_regions(
    detector: Detector, tmp_path: Path, host: tuple[str, Host]
) -> None:
    with eachlabs_server(detector, tmp_path, region_thresholds=RULES) as (url, _):
        doc = poll(url, created_id(create(url, f"{host[0]}/photo.jpg")))
    assert doc["status"] == "success" and doc["output"] == "nsfw", doc
    assert doc["regions"] and doc["regions"][0]["label"] == "EXPOSED"
    assert "regions" not in (doc.get("judged") or {})


def test_a_keys_own_region_thresholds_decide_its_verdicts(
    detector: Detector, tmp_path: Path, host: tuple[str, Host]
) -> None:
    """The server's region thresholds list a class the detector does not find; a key made
    with its own flags, through the store (migration 0005) and the worker."""
    image = f"{host[0]}/photo.jpg"
    with eachlabs_server(detector, tmp_path, region_thresholds="FACE=0.5") as (url, store_url):
        own = make_key(store_url, "regions", region_thresholds=RULES)
        by_server = poll(url, created_id(create(url, image)))
        by_key = poll(url, created_id(create(url, image, key=own)), key=own)
    assert by_server["output"] == "normal", by_server
    assert by_key["output"] == "nsfw", by_key
    with pytest.raises(ValueError, match="LABEL=T"):
        make_key(store_url, "bad", region_thresholds="EXPOSED")


def test_regions_cross_the_inference_socket(detector: Detector, tmp_path: Path) -> None:
    """``serve --http-workers``: an HTTP worker's RemoteEngine gets the detector's regions."""
    from nsfwd.engine.remote import InferenceServer, RemoteEngine

    data = ASTRONAUT.read_bytes()
    policy = Policy(regions=((LABELS[0], 0.5),))

    async def run() -> tuple[Judgement, Judgement]:
        engine = Engine(detector, max_batch_size=4)
        await engine.start()
        server = InferenceServer(engine, tmp_path / "inference.sock")
        await server.start()
        client = RemoteEngine(
            server.path,
            model_name=engine.model_name,
            max_batch_size=4,
            max_queue=engine.max_queue,
            limits=engine.limits,
        )
        await client.start()
        try:
            return await engine.judge(data, policy), await client.judge(data, policy)
        finally:
            await client.stop()
            await server.stop()
            await engine.stop()

    local, remote = asyncio.run(run())
    assert remote.regions and remote == local
