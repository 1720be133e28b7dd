"""The platforms' ways in, on a real server with a real store: pict-rs' ``POST /v1/validate``,
``/v1/banks`` and the banks' effect on every surface (Prodia sync and async, Eachlabs, OpenAI,
pict-rs), the verdict cache, and ``nsfwd banks``.

The server flags nothing by its model (threshold 1: no score is above it), so whatever is
flagged here was flagged by a bank.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from eachlabs_calls import KEY as EACHLABS_KEY
from eachlabs_calls import create, created_id, poll
from hosts import ALLOWED, Host
from nsfwd.api import create_app
from nsfwd.cli import main
from nsfwd.engine.batcher import Engine
from nsfwd.jobs import Store
from nsfwd.models.classifier import Classifier
from nsfwd.settings import Settings
from photos import encode, photo
from prodia_jobs import TOKEN, post_job
from servers import metric, serve_app
from store_handles import with_store
from test_banks import reencoded
from videos import RED, write_video
from waiting import wait_for

ADMIN = "admin-test-key-8c2e"
SERVED = "Freepik/nsfw_image_detector"

pytestmark = pytest.mark.usefixtures("canary")


@pytest.fixture(scope="module")
def server(
    classifier: Classifier, tmp_path_factory: pytest.TempPathFactory, host: tuple[str, Host]
) -> Iterator[tuple[str, str]]:
    settings = Settings(
        model=classifier.name,
        served_model_name=SERVED,
        api_keys=[TOKEN, EACHLABS_KEY],
        admin_keys=[ADMIN],
        threshold=1.0,
        data_dir=tmp_path_factory.mktemp("platforms"),
        fetch_allow_networks=ALLOWED,
        fetch_allow_http=True,
        webhook_secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    )
    engine = Engine(classifier, max_batch_size=4, limits=settings.image_limits)
    store = Store.from_settings(settings)
    with serve_app(create_app(engine, settings, store)) as url:
        yield url, store.url


@pytest.fixture
def url(server: tuple[str, str]) -> str:
    return server[0]


def admin(key: str = ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def jpeg(image: Image.Image, quality: int = 95) -> bytes:
    return encode(image.convert("RGB"), "JPEG", quality=quality)


def new_bank(url: str, **settings: Any) -> str:
    name = f"bank-{uuid.uuid4().hex[:8]}"
    res = requests.post(f"{url}/v1/banks", json={"name": name, **settings}, headers=admin(),
                        timeout=30)  # fmt: skip
    assert res.status_code == 201, res.text
    return name


def bank_image(url: str, bank: str, data: bytes) -> dict[str, Any]:
    res = requests.post(f"{url}/v1/banks/{bank}/images", data=data, headers=admin(), timeout=60)
    assert res.status_code == 201, res.text
    answer: dict[str, Any] = res.json()
    return answer


def validate(
    url: str, data: bytes, query: str = f"key={TOKEN}", **headers: str
) -> requests.Response:
    return requests.post(f"{url}/v1/validate?{query}", data=data, headers=headers, timeout=60)


def moderation(url: str, data: bytes) -> dict[str, Any]:
    uri = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    res = requests.post(
        f"{url}/v1/moderations",
        json={"input": [{"type": "image_url", "image_url": {"url": uri}}]},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )
    assert res.status_code == 200, res.text
    result: dict[str, Any] = res.json()["results"][0]
    return result


def job_post(url: str, route: str, data: bytes, **config: Any) -> requests.Response:
    """A v1 job of ``data`` to ``route`` (``/v2/job`` or ``/v2/job/async``), with ``config``
    (a video's options, say) beside the model."""
    job = {"type": "inference.vit.img2label.v1", "config": {"model": SERVED, **config}}
    return requests.post(
        f"{url}{route}",
        headers={"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"},
        files=[
            ("job", ("job.json", json.dumps(job), "application/json")),
            ("input", ("upload", data, "application/octet-stream")),
        ],
        timeout=60,
    )


def async_job(url: str, data: bytes) -> dict[str, Any]:
    res = job_post(url, "/v2/job/async", data)
    assert res.status_code == 201, res.text
    job_url = f"{url}/v2/job/async/{res.json()['id']}/job.json"

    def done() -> dict[str, Any] | None:
        doc: dict[str, Any] = requests.get(job_url, headers=admin(TOKEN), timeout=10).json()
        return None if doc["state"]["current"] == "processing" else doc

    finished: dict[str, Any] = wait_for(done, 60, "the async job")
    return finished


# --- Who may administer banks ------------------------------------------------------------------


def test_bank_administration_is_refused_to_keys_without_the_right(server: tuple[str, str]) -> None:
    url, store_url = server
    assert requests.get(f"{url}/v1/banks", timeout=10).status_code == 401
    assert requests.get(f"{url}/v1/banks", headers=admin("wrong"), timeout=10).status_code == 401
    refused = requests.post(f"{url}/v1/banks", json={"name": "mine"}, headers=admin(TOKEN),
                            timeout=10)  # fmt: skip
    assert refused.status_code == 403 and "nsfwd keys create --admin" in refused.json()["error"]
    assert requests.get(f"{url}/v1/banks", headers=admin(), timeout=10).status_code == 200
    made = with_store(store_url, lambda store: store.keys.create("ops", admin=True))
    assert requests.get(f"{url}/v1/banks", headers=admin(made[0]), timeout=10).status_code == 200
    for body, message in (({"name": "a b"}, "cannot name"), ({"name": "x", "distance": 99},
                          "0 to 64"), ({"nom": "x"}, "send a JSON object")):  # fmt: skip
        res = requests.post(f"{url}/v1/banks", json=body, headers=admin(), timeout=10)
        assert res.status_code == 400 and message in res.json()["error"]
    missing = requests.post(f"{url}/v1/banks/nowhere/images", data=b"x", headers=admin(),
                            timeout=10)  # fmt: skip
    assert missing.status_code == 404


# --- A banked image, on every surface ----------------------------------------------------------


def test_a_banked_image_resent_resized_and_reencoded_is_flagged_on_every_surface(
    server: tuple[str, str], host: tuple[str, Host]
) -> None:
    url, _ = server
    base, images = host
    bank = new_bank(url, category="sexual/minors")
    added = bank_image(url, bank, jpeg(photo("chelsea")))
    assert added["added"] == 1 and added["too_featureless"] == 0
    variant = jpeg(reencoded(photo("chelsea"), 0.9, 70), quality=70)
    unrelated = jpeg(photo("coffee"))

    job = post_job(url, variant).json()
    assert job["config"]["match"]["bank"] == bank
    assert job["config"]["match"]["distance"] <= 31
    assert job["config"]["match"]["category"] == "sexual/minors"
    assert job["config"]["labels"] == {"neutral": 0.0, "low": 0.0, "medium": 0.0, "high": 1.0}
    assert "match" not in post_job(url, unrelated).json()["config"]

    assert async_job(url, variant)["config"]["match"]["bank"] == bank
    assert "match" not in async_job(url, unrelated)["config"]

    name = f"variant-{uuid.uuid4().hex}.jpg"
    doc = poll(url, created_id(create(url, base + images.serve(name, variant))))
    assert (doc["output"], doc["match"]["bank"]) == ("nsfw", bank)
    other = poll(url, created_id(create(url, base + images.serve(f"u-{name}", unrelated))))
    assert other["output"] == "normal" and "match" not in other

    result = moderation(url, variant)
    assert result["flagged"] and result["categories"]["sexual/minors"]
    assert result["category_scores"]["sexual/minors"] == 1.0
    assert result["match"]["bank"] == bank
    assert not moderation(url, unrelated)["flagged"]

    refused = validate(url, variant)
    assert refused.status_code == 422
    assert refused.json()["reason"] == "flagged" and refused.json()["match"]["bank"] == bank
    passed = validate(url, unrelated)
    assert passed.status_code == 200 and passed.json()["valid"] and passed.json()["checked"]


def test_every_frame_of_an_animation_is_hashed_and_checked(url: str) -> None:
    bank = new_bank(url)
    bank_image(url, bank, jpeg(photo("rocket").resize((300, 450))))
    frames = [photo("coffee").convert("RGB").resize((300, 450)),
              reencoded(photo("rocket").resize((300, 450)), 1.0, 80)]  # fmt: skip
    animation = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100,
                       lossless=False, quality=80)  # fmt: skip
    refused = validate(url, animation)
    assert refused.status_code == 422, refused.text
    assert refused.json()["match"]["frame"] == 1
    assert validate(url, encode(frames[0], "WEBP")).status_code == 200


def video_job(url: str, video: bytes, **config: Any) -> dict[str, Any]:
    """A sync v1 job of ``video`` with ``config`` (video options)."""
    res = job_post(url, "/v2/job", video, **config)
    assert res.status_code == 200, res.text
    doc: dict[str, Any] = res.json()
    return doc


def test_a_banked_picture_shown_in_a_video_flags_it_at_its_frame(url: str) -> None:
    size = (320, 240)
    rocket = np.asarray(photo("rocket").convert("RGB").resize(size))
    coffee = np.asarray(photo("coffee").convert("RGB").resize(size))
    bank = new_bank(url)
    bank_image(url, bank, jpeg(photo("rocket").resize(size)))
    shown = write_video(lambda _: RED, 6.0, fps=10, size=size,
                        frame_at=lambda t: rocket if 3.0 <= t < 3.5 else coffee)  # fmt: skip
    job = video_job(url, shown)["config"]
    assert job["match"]["bank"] == bank
    assert job["match"]["frame"] == 30, "the frame sampled at 3 s"
    assert job["labels"]["high"] == 1.0, "labels that flag it, as for a banked image"
    assert job["judged"]["frames_judged"] == 7 and job["segments"] == [], "the model's timeline"
    assert async_job(url, shown)["config"]["match"]["frame"] == 30
    refused = validate(url, shown)  # pict-rs sends its video uploads too
    assert refused.status_code == 422 and refused.json()["match"]["frame"] == 30

    hits = metric(url, "nsfwd_verdict_cache_total", outcome="hit")
    denser = video_job(url, shown, interval=0.5)["config"]
    assert denser["judged"]["frames_judged"] == 13, "another sampling is not the cached one"
    assert metric(url, "nsfwd_verdict_cache_total", outcome="hit") == hits
    assert video_job(url, shown, interval=0.5)["config"] == denser
    assert metric(url, "nsfwd_verdict_cache_total", outcome="hit") == hits + 1

    unrelated = write_video(lambda _: RED, 6.0, fps=10, size=size, frame_at=lambda t: coffee)
    assert "match" not in video_job(url, unrelated)["config"]
    assert validate(url, unrelated).status_code == 200


def test_the_same_bytes_are_judged_once_and_a_bank_change_is_never_served_stale(
    url: str,
) -> None:
    image = jpeg(photo("astronaut").resize((400, 400)), quality=88)
    hits = metric(url, "nsfwd_verdict_cache_total", outcome="hit")
    batches = metric(url, "nsfwd_batch_size_count")
    assert validate(url, image).status_code == 200
    assert validate(url, image).status_code == 200
    assert metric(url, "nsfwd_verdict_cache_total", outcome="hit") == hits + 1
    assert metric(url, "nsfwd_batch_size_count") == batches + 1, "the model ran once"
    strict = validate(url, image, f"key={TOKEN}&policy=strict&threshold=0")
    assert strict.status_code == 422, "another policy is not answered from the cache"
    bank = new_bank(url)
    banked = bank_image(url, bank, image)["hashes"][0]["hash"]
    assert validate(url, image).status_code == 422, "banked: never the cached pass"
    gone = requests.delete(f"{url}/v1/banks/{bank}/signals/{banked}", headers=admin(), timeout=10)
    assert gone.status_code == 200 and gone.json()["removed"] == 1
    assert validate(url, image).status_code == 200


# --- pict-rs' validation -----------------------------------------------------------------------


def test_validation_answers_as_pict_rs_expects(url: str) -> None:
    image = jpeg(photo("camera"))  # in no bank of this module's
    assert validate(url, image, "").status_code == 401
    missing = validate(url, image, "").json()
    assert missing["reason"] == "unauthorized" and "?key=" in missing["message"]
    assert validate(url, image, "key=wrong").status_code == 401
    assert validate(url, image, "", Authorization=f"Bearer {TOKEN}").status_code == 200
    as_form = requests.post(f"{url}/v1/validate?key={TOKEN}", files={"file": ("a.jpg", image)},
                            timeout=60)  # fmt: skip
    assert as_form.status_code == 200, as_form.text
    flagged = validate(url, image, f"key={TOKEN}&policy=lenient&threshold=0")
    assert flagged.status_code == 422 and flagged.json()["reason"] == "flagged"
    assert flagged.json()["policy"] == "lenient" and "match" not in flagged.json()
    unsupported = validate(url, b"%PDF-1.7\n" + bytes(300))
    assert unsupported.status_code == 415 and unsupported.json()["reason"] == "unsupported"
    corrupt = validate(url, image[: len(image) // 2])
    assert corrupt.status_code == 400 and corrupt.json()["reason"] == "invalid"
    for query in ("fail_open=true", "fail_open=1"):
        opened = validate(url, b"%PDF-1.7\n" + bytes(300), f"key={TOKEN}&{query}")
        assert opened.status_code == 200
        assert opened.json() | {"message": ""} == {
            "valid": True,
            "checked": False,
            "reason": "unsupported",
            "message": "",
        }
    for query, message in (
        ("policy=harsh", "unknown policy"),
        ("threshold=2", "threshold"),
        ("model=nope", "unknown model"),
        ("fail_open=perhaps", "fail_open"),
    ):
        bad = validate(url, image, f"key={TOKEN}&{query}")
        assert bad.status_code == 400 and message in bad.json()["message"], bad.text
    empty = validate(url, b"")
    assert empty.status_code == 400 and "no body" in empty.json()["message"]
    huge = image + bytes(11 * 2**20)
    assert validate(url, huge).json()["reason"] == "invalid"
    assert validate(url, huge, f"key={TOKEN}&fail_open=true").json()["checked"] is False


def test_an_allowed_network_needs_no_key(classifier: Classifier, tmp_path: Path) -> None:
    settings = Settings(model=classifier.name, api_keys=["k" * 16], threshold=1.0,
                        validate_allow_networks=["127.0.0.0/8"])  # fmt: skip
    engine = Engine(classifier, max_batch_size=4, limits=settings.image_limits)
    with serve_app(create_app(engine, settings)) as url:
        assert validate(url, jpeg(photo("rocket")), "").status_code == 200
        assert validate(url, jpeg(photo("rocket")), "key=wrong").status_code == 401


# --- nsfwd banks -------------------------------------------------------------------------------


def test_the_banks_command_creates_fills_exports_imports_and_removes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    timm_checkpoint: Path,
) -> None:
    monkeypatch.setenv("NSFWD_DATA_DIR", str(tmp_path / "data"))
    picture = tmp_path / "known.jpg"
    picture.write_bytes(jpeg(photo("chelsea")))
    flat = tmp_path / "flat.png"
    Image.new("RGB", (200, 200), (10, 200, 30)).save(flat)

    def run(*args: str) -> tuple[int, str, str]:
        status = main(["banks", *args])
        out, err = capsys.readouterr()
        return status, out, err

    assert run("create", "known", "--category", "sexual/minors")[0] == 0
    assert run("create", "known")[0] == 2
    status, _, err = run("add", "known", str(picture), str(flat))
    assert status == 1 and "added 1 hashes" in err and "too featureless" in err
    status, out, _ = run("list", "--json")
    assert status == 0 and json.loads(out)[0] | {"created_at": ""} == {
        "name": "known",
        "category": "sexual/minors",
        "distance": 31,
        "size": 1,
        "created_at": "",
    }
    status, exported, _ = run("export", "known")
    assert status == 0 and exported.startswith("pdq ") and len(exported.split()) == 2
    (tmp_path / "signals.txt").write_text("# from known\n" + exported + "md5 abc\n")
    assert run("create", "copy")[0] == 0
    status, _, err = run("import", "copy", str(tmp_path / "signals.txt"))
    assert status == 0 and "added 1 new" in err and "skipped 1" in err
    status, hashed, _ = run("hash", str(picture))
    assert status == 0 and hashed.split()[1] == exported.split()[1]

    # nsfwd classify checks the same banks, as the server does
    (tmp_path / "again.jpg").write_bytes(jpeg(reencoded(photo("chelsea"), 0.9, 70), 70))
    (tmp_path / "other.jpg").write_bytes(jpeg(photo("coffee")))
    size = (320, 240)
    known, other = (
        np.asarray(photo(name).convert("RGB").resize(size)) for name in ("chelsea", "coffee")
    )
    (tmp_path / "clip.mp4").write_bytes(write_video(lambda _: RED, 4.0, fps=10, size=size,
        frame_at=lambda t: known if 2.0 <= t < 2.5 else other))  # fmt: skip
    files = [str(tmp_path / name) for name in ("again.jpg", "other.jpg", "clip.mp4")]
    for extra, matched in (([], True), (["--no-banks"], False)):
        assert main(["classify", "--model", str(timm_checkpoint), "--threshold", "1", *extra,
                     *files]) == 0  # fmt: skip
        again, unrelated, clip = map(json.loads, capsys.readouterr().out.splitlines())
        assert ("match" in again, again["flagged"]) == (matched, matched)
        assert "match" not in unrelated and not unrelated["flagged"]
        assert ("match" in clip, clip["flagged"], clip["segments"]) == (matched, matched, [])
        if matched:
            assert again["match"]["bank"] in {"known", "copy"} and again["labels"]["high"] == 1.0
            assert clip["match"]["frame"] == 20 and clip["labels"]["high"] == 1.0
    status, _, err = run("remove", "copy", exported.split()[1])
    assert status == 0 and "removed 1 of 1" in err
    status, _, err = run("remove", "known", str(picture))
    assert status == 0 and "removed 1 of 1" in err
    assert run("delete", "copy")[0] == 0
    assert run("delete", "copy")[0] == 2
    status, _, err = run("import", "known", str(tmp_path / "missing.txt"))
    assert status == 2 and "nothing was added" in err
