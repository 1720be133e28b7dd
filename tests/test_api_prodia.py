"""Prodia's job API (POST /v2/job) on a real server, called the way Prodia's guide calls it."""

from __future__ import annotations

import io
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest
import requests
from PIL import Image
from requests_toolbelt.multipart import decoder

from gates import gated_server
from nsfwd.api import create_app
from nsfwd.engine.batcher import Engine
from nsfwd.intake import load_image
from nsfwd.models.classifier import Classifier
from nsfwd.settings import Settings
from photos import ASTRONAUT, astronaut_jpeg
from prodia_jobs import (
    MODEL,
    TOKEN,
    assert_labels,
    encoded_job,
    guide_session,
    job_files,
    parts_of,
    raw_request,
)
from servers import metric, serve_app
from waiting import wait_for


def assert_job_shape(job: dict[str, Any], job_type: str) -> None:
    """The fields every completed job carries, with the types Prodia gives them."""
    assert job["type"] == job_type
    assert str(uuid.UUID(job["id"])) == job["id"]
    created = datetime.fromisoformat(job["created_at"])
    updated = datetime.fromisoformat(job["updated_at"])
    assert created.tzinfo is not None and created <= updated
    assert job["state"] == {"current": "completed"}
    assert isinstance(job["metrics"]["elapsed"], float)
    assert job["metrics"]["elapsed"] > 0


# --- the guide's flows ------------------------------------------------------------------------


def test_v1_json_as_the_guide_does_it(server_url: str) -> None:
    image = astronaut_jpeg()
    started = time.perf_counter()
    res = guide_session().post(
        f"{server_url}/v2/job",
        headers={"Accept": "application/json"},
        files=job_files(image=image),
    )
    wall = time.perf_counter() - started
    assert res.status_code == 200, res.text
    assert res.headers["content-type"] == "application/json"
    uuid.UUID(res.headers["x-request-id"])
    job = res.json()
    assert list(job) == ["type", "id", "created_at", "updated_at", "state", "config", "metrics"]
    assert_job_shape(job, "inference.vit.img2label.v1")
    assert job["config"]["model"] == MODEL
    assert_labels(job["config"]["labels"])
    assert job["metrics"]["elapsed"] < wall
    assert job["id"] != res.headers["x-request-id"]


def test_v2_multipart_as_the_guide_does_it(server_url: str) -> None:
    image = astronaut_jpeg()
    res = guide_session().post(
        f"{server_url}/v2/job",
        headers={"Accept": "multipart/form-data"},
        files=job_files("inference.vit.img2label.v2", image=image),
    )
    assert res.status_code == 200, res.text
    assert res.headers["content-type"].startswith("multipart/form-data; boundary=")
    labels = passthrough = None
    for part in decoder.MultipartDecoder.from_response(res).parts:  # the guide's loop
        disposition = part.headers[b"Content-Disposition"].decode()
        if 'filename="labels.json"' in disposition:
            labels = json.loads(part.content)
        elif 'filename="sunny-day.jpg"' in disposition:
            passthrough = part.content
    assert labels is not None and passthrough == image
    assert_labels(labels)

    parts = parts_of(res)
    assert [(name, filename, kind) for name, filename, kind, _ in parts] == [
        ("job", "job.json", "application/json"),
        ("output", "labels.json", "application/json"),
        ("output", "sunny-day.jpg", "image/jpeg"),
    ]
    job = json.loads(parts[0][3])
    assert_job_shape(job, "inference.vit.img2label.v2")
    assert job["config"]["labels"] == labels


def test_v2_echoes_the_uploaded_name_and_type_even_when_they_lie(server_url: str) -> None:
    png = io.BytesIO()
    Image.open(ASTRONAUT).save(png, "PNG")
    res = guide_session().post(
        f"{server_url}/v2/job",
        headers={"Accept": "multipart/form-data"},
        files=job_files("inference.vit.img2label.v2", png.getvalue(), "photo \u00e9t\u00e9.jpg"),
    )
    assert res.status_code == 200, res.text
    _, filename, kind, data = parts_of(res)[2]
    assert (filename, kind, data) == ("photo \u00e9t\u00e9.jpg", "image/jpeg", png.getvalue())


def test_v2_with_a_json_accept_gets_the_job_as_json(server_url: str) -> None:
    res = guide_session().post(
        f"{server_url}/v2/job",
        headers={"Accept": "application/json"},
        files=job_files("inference.vit.img2label.v2", astronaut_jpeg()),
    )
    assert res.status_code == 200
    assert res.headers["content-type"] == "application/json"
    assert_labels(res.json()["config"]["labels"])


@pytest.mark.parametrize(
    "accept", ["multipart/form-data", "multipart/form-data; image/png", "*/*;q=0.1, multipart/*"]
)
def test_v1_with_a_multipart_accept_gets_the_job_part(server_url: str, accept: str) -> None:
    res = guide_session().post(
        f"{server_url}/v2/job", headers={"Accept": accept}, files=job_files(image=astronaut_jpeg())
    )
    assert res.status_code == 200, res.text
    parts = parts_of(res)
    assert [(name, filename) for name, filename, _, _ in parts] == [("job", "job.json")]
    job = json.loads(parts[0][3])
    assert_job_shape(job, "inference.vit.img2label.v1")
    assert_labels(job["config"]["labels"])


def test_v1_without_accept_is_json_and_the_guide_curl_works(server_url: str) -> None:
    res = requests.post(
        f"{server_url}/v2/job",
        headers={"Authorization": f"Bearer {TOKEN}"},
        files=job_files(image=astronaut_jpeg()),
    )
    assert res.status_code == 200 and res.headers["content-type"] == "application/json"


def test_extra_config_is_echoed_and_both_model_names_work(
    server_url: str, classifier: Classifier
) -> None:
    for model in (MODEL, classifier.name):
        files: list[tuple[str, tuple[str, str | bytes]]] = [
            ("job", ("job.json", json.dumps({"type": "inference.vit.img2label.v1",
                                              "config": {"model": model, "note": [1, "x"]}}))),
            ("input", ("x.jpg", astronaut_jpeg())),
        ]  # fmt: skip
        res = guide_session().post(f"{server_url}/v2/job", files=files)
        assert res.status_code == 200, res.text
        assert res.json()["config"]["model"] == model
        assert res.json()["config"]["note"] == [1, "x"]


def test_the_same_input_twice_counts_once(server_url: str) -> None:
    """The npm client appends a File input twice (as a File, then as a Blob): that is one image."""
    image = astronaut_jpeg()
    files = [*job_files(image=image), ("input", ("image.jpg", image, "image/jpeg"))]
    res = guide_session().post(f"{server_url}/v2/job", files=files)
    assert res.status_code == 200, res.text


def test_labels_equal_the_classifier_on_the_same_image(
    server_url: str, classifier: Classifier
) -> None:
    png = io.BytesIO()
    Image.open(ASTRONAUT).resize((300, 200)).save(png, "PNG")
    for image in (astronaut_jpeg((640, 480)), png.getvalue()):
        res = guide_session().post(f"{server_url}/v2/job", files=job_files(image=image))
        served = res.json()["config"]["labels"]
        direct = classifier.classify([load_image(image)])[0]
        assert list(served) == list(direct)
        for label in direct:
            assert served[label] == pytest.approx(direct[label], abs=1e-5)
    others = guide_session().post(
        f"{server_url}/v2/job", files=job_files(image=astronaut_jpeg((200, 700)))
    )
    assert others.json()["config"]["labels"] != served  # the comparison is not vacuous


def test_ping_checks_the_token_without_an_input(server_url: str) -> None:
    files = [("job", ("job.json", json.dumps({"type": "inference.ping.v1"}), "application/json"))]
    res = guide_session().post(f"{server_url}/v2/job", files=files)
    assert res.status_code == 200, res.text
    job = res.json()
    assert_job_shape(job, "inference.ping.v1")
    multipart = guide_session().post(
        f"{server_url}/v2/job", headers={"Accept": "multipart/form-data"}, files=files
    )
    assert json.loads(parts_of(multipart)[0][3])["state"] == {"current": "completed"}
    refused = guide_session("wrong").post(f"{server_url}/v2/job", files=files)
    assert refused.status_code == 401


# --- request ids, auth, metrics ---------------------------------------------------------------


def test_request_ids_are_kept_when_sane_and_made_otherwise(server_url: str) -> None:
    session = guide_session()
    kept = session.post(
        f"{server_url}/v2/job", headers={"x-request-id": "trace-42.a:b"}, files=job_files()
    )
    assert kept.headers["x-request-id"] == "trace-42.a:b"
    for insane in ("has spaces in it", "x" * 500, "<script>"):
        res = session.post(f"{server_url}/v2/job", headers={"x-request-id": insane}, files=[])
        uuid.UUID(res.headers["x-request-id"])
    first = session.get(f"{server_url}/healthz").headers["x-request-id"]
    second = session.get(f"{server_url}/metrics").headers["x-request-id"]
    assert first != second


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, "missing API token"),
        ("Bearer wrong-key", "invalid API token"),
        ("Bearer test-key-but-longer", "invalid API token"),
        ("Basic dGVzdC1rZXk6", "must be 'Bearer <token>'"),
        ("Bearer", "has no token after it"),
        ("Bearer   ", "has no token after it"),
    ],
)
def test_a_missing_or_wrong_token_is_401_plain_text(
    server_url: str, authorization: str | None, message: str
) -> None:
    headers = {"Accept": "multipart/form-data"}
    if authorization is not None:
        headers["Authorization"] = authorization
    res = requests.post(
        f"{server_url}/v2/job", headers=headers, files=job_files(image=astronaut_jpeg())
    )
    assert res.status_code == 401
    assert res.headers["content-type"].startswith("text/plain")
    assert res.headers["www-authenticate"].startswith("Bearer")
    assert message in res.text
    uuid.UUID(res.headers["x-request-id"])


def test_requests_are_counted_by_status_and_timed(server_url: str) -> None:
    ok_before = metric(server_url, "nsfwd_requests_total", route="/v2/job", status="200")
    bad_before = metric(server_url, "nsfwd_requests_total", route="/v2/job", status="401")
    timed_before = metric(server_url, "nsfwd_request_seconds_count", route="/v2/job")
    guide_session().post(f"{server_url}/v2/job", files=job_files(image=astronaut_jpeg()))
    guide_session("nope").post(f"{server_url}/v2/job", files=job_files(image=astronaut_jpeg()))
    assert metric(server_url, "nsfwd_requests_total", route="/v2/job", status="200") == (
        ok_before + 1
    )
    assert metric(server_url, "nsfwd_requests_total", route="/v2/job", status="401") == (
        bad_before + 1
    )
    assert metric(server_url, "nsfwd_request_seconds_count", route="/v2/job") == timed_before + 2


# --- backpressure and clients that leave (a server whose model waits at a gate) ---------------


def test_a_full_server_answers_429_with_retry_after(classifier: Classifier) -> None:
    with gated_server(classifier, max_queue=1) as (url, gated, _), ThreadPoolExecutor(8) as pool:
        plain = requests.Session()
        plain.headers["Authorization"] = f"Bearer {TOKEN}"

        def post(accept: str = "application/json") -> requests.Response:
            return plain.post(
                f"{url}/v2/job", headers={"Accept": accept}, files=job_files(image=astronaut_jpeg())
            )

        first = pool.submit(post)
        assert gated.entered.wait(10)
        refused = list(pool.map(lambda _: post(), range(6)))
        refused_multipart = post("multipart/form-data")
        gated.gate.set()
        assert first.result(timeout=30).status_code == 200
        for res in refused:
            assert res.status_code == 429
            assert int(res.headers["retry-after"]) >= 1
            assert res.json()["state"] == {"current": "failed"}
            assert "retry in" in res.json()["error"]
        assert refused_multipart.status_code == 429
        assert "error" in json.loads(parts_of(refused_multipart)[0][3])
        assert post().status_code == 200
        assert metric(url, "nsfwd_requests_total", route="/v2/job", status="429") == 7


def test_a_client_that_leaves_has_its_image_dropped_before_inference(
    classifier: Classifier,
) -> None:
    with (
        gated_server(classifier, max_queue=8) as (url, gated, engine),
        ThreadPoolExecutor(2) as pool,
    ):
        session = guide_session()
        first = pool.submit(session.post, f"{url}/v2/job", files=job_files(image=astronaut_jpeg()))
        assert gated.entered.wait(10)  # the first image holds the model
        body, content_type = encoded_job(astronaut_jpeg((300, 300)))
        leaver = raw_request(url, body, content_type)
        # The second image is decoded and waits in the batcher's queue (white-box: no metric
        # tells a decoded image from one still decoding, and only a queued one is "dropped").
        wait_for(lambda: engine._queue is not None and engine._queue.qsize() == 1)
        leaver.close()
        wait_for(lambda: metric(url, "nsfwd_requests_total", route="/v2/job", status="499") == 1)
        gated.gate.set()
        assert first.result(timeout=30).status_code == 200
        wait_for(lambda: metric(url, "nsfwd_dropped_total") == 1)
        assert metric(url, "nsfwd_batch_size_count") == 1  # the first image alone
        assert (
            session.post(f"{url}/v2/job", files=job_files(image=astronaut_jpeg())).status_code
            == 200
        )


def test_a_server_whose_model_is_not_loaded_answers_503(classifier: Classifier) -> None:
    settings = Settings(model=classifier.name, served_model_name=MODEL, api_keys=[TOKEN])
    engine = Engine(classifier, limits=settings.image_limits)
    plain = requests.Session()  # the guide's session would retry the 503s for 50 s
    plain.headers["Authorization"] = f"Bearer {TOKEN}"
    with serve_app(create_app(engine, settings), lifespan="off") as url:  # never started
        for accept in ("application/json", "multipart/form-data"):
            res = plain.post(
                f"{url}/v2/job", headers={"Accept": accept}, files=job_files(image=astronaut_jpeg())
            )
            assert res.status_code == 503
            assert int(res.headers["retry-after"]) >= 1
            assert res.headers["content-type"] == "application/json"  # never multipart: the
            assert "not ready" in res.json()["error"]  # npm client takes that as a result
        ping = [("job", ("job.json", json.dumps({"type": "inference.ping.v1"}), "text/plain"))]
        assert plain.post(f"{url}/v2/job", files=ping).status_code == 200
