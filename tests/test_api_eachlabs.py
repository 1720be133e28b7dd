"""Eachlabs' prediction API (POST /v1/prediction/, GET /v1/prediction/{id}) on a real server.

The server runs the tiny EVA-02 with a SQLite store; images and webhooks go to a real host on
127.0.0.2 (allowed through NSFWD_FETCH_ALLOW_NETWORKS and NSFWD_WEBHOOK_ALLOW_NETWORKS), and a
canary on 127.0.0.1 at the same port must never be reached: every SSRF refusal would land there
if it failed.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from PIL import Image
from requests.adapters import HTTPAdapter, Retry

from eachlabs_calls import (
    KEY,
    OTHER,
    ROUTE,
    SERVED,
    assert_error,
    create,
    created_id,
    eachlabs_server,
    poll,
)
from hosts import ALLOWED, Canary, Hit, Host, names, verified
from nsfwd.jobs import Delivery, Store, Upload
from nsfwd.jobs.database import database_url
from nsfwd.models.classifier import Classifier
from nsfwd.settings import Settings
from nsfwd.verdict import Policy
from ray_backend import RayServer
from store_handles import delivery_for, make_key, with_store
from waiting import wait_for

# Every test here runs beside the canary, and none may reach it (conftest.py checks).
pytestmark = pytest.mark.usefixtures("canary")


@pytest.fixture(scope="module")
def server(
    backend: str,
    request: pytest.FixtureRequest,
    classifier: Classifier,
    tmp_path_factory: pytest.TempPathFactory,
    host: tuple[str, Host],
) -> Iterator[tuple[str, str]]:
    """The suite's server and its store's URL: here on SQLite, or on Ray Serve on PostgreSQL."""
    if backend == "ray":
        ray: RayServer = request.getfixturevalue("ray_server")
        yield ray.url, Store.from_settings(Settings(database_url=ray.database)).url
        return
    with eachlabs_server(classifier, tmp_path_factory.mktemp("eachlabs")) as running:
        yield running


@pytest.fixture
def url(server: tuple[str, str]) -> str:
    return server[0]


# --- Helpers ------------------------------------------------------------------------------------


def settled(store_url: str, prediction_id: str) -> Delivery:
    """The prediction's webhook delivery, once delivered or given up."""

    async def body(store: Store) -> Delivery | None:
        found = await delivery_for(store, prediction_id)
        return None if found is None or found.status == "pending" else found

    result: Delivery = wait_for(lambda: with_store(store_url, body), what="the delivery")
    return result


def hits(receiver: Host, hook: str, count: int) -> list[Hit] | None:
    """The first ``count`` requests to ``hook``, once there are that many."""
    received = receiver.received(hook)
    return received[:count] if len(received) >= count else None


# --- Creating and polling -----------------------------------------------------------------------


def test_a_prediction_succeeds_and_its_webhook_arrives_once_after_a_refusal(
    server: tuple[str, str], host: tuple[str, Host], classifier: Classifier
) -> None:
    url, store_url = server
    base, receiver = host
    hook = f"hook-success-{uuid.uuid4().hex}"
    prediction_id = created_id(
        create(url, f"{base}/photo.jpg", webhook_url=f"{base}/hook/{hook}?fail=1")
    )

    doc = poll(url, prediction_id)
    assert doc["status"] == "success" and doc["predictionID"] == prediction_id
    labels = doc["labels"]
    assert set(labels) == {"neutral", "low", "medium", "high"}
    assert sum(labels.values()) == pytest.approx(1.0, abs=1e-4)
    expected = classifier.classify([Image.open(io.BytesIO(receiver.photo)).convert("RGB")])[0]
    assert labels == pytest.approx(expected, abs=1e-3), "the labels are the image's"
    moderate = labels["medium"] + labels["high"] > 0.5
    assert doc["output"] == ("nsfw" if moderate else "normal")
    assert doc["output"] == ("nsfw" if Policy("moderate", 0.5).flagged(labels) else "normal")
    assert isinstance(doc["metrics"]["predict_time"], float) and doc["metrics"]["predict_time"] > 0
    assert "message" not in doc and "details" not in doc

    first, second = wait_for(lambda: hits(receiver, hook, 2), what="the retry")
    assert (first.answered, second.answered) == (500, 200)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.headers["webhook-id"].startswith("msg_")
    for hit in (first, second):
        assert verified(hit) == {
            "exec_id": prediction_id,
            "status": "succeeded",
            "output": doc["output"],
            "error": "",
            "sha256": hashlib.sha256(receiver.photo).hexdigest(),  # the bytes the verdict is of
        }
    assert doc["sha256"] == hashlib.sha256(receiver.photo).hexdigest()
    sent = settled(store_url, prediction_id)
    assert (
        sent.status == "delivered" and sent.attempts == 2 and sent.id == first.headers["webhook-id"]
    )
    time.sleep(0.4)  # twice the last retry delay (0.2 s): nothing more is sent
    assert len(receiver.received(hook)) == 2


@pytest.mark.parametrize(
    ("path", "words"),
    [("/missing", ["404"]), ("/text", ["the image at", "http://127.0.0.2"])],
    ids=["image-host-404", "not-an-image"],
)
def test_a_prediction_that_fails_says_why_and_sends_failed(
    url: str, host: tuple[str, Host], path: str, words: list[str]
) -> None:
    base, receiver = host
    hook = f"hook-failed-{uuid.uuid4().hex}"
    prediction_id = created_id(create(url, f"{base}{path}", webhook_url=f"{base}/hook/{hook}"))
    doc = poll(url, prediction_id)
    assert doc["status"] == "error" and doc["predictionID"] == prediction_id
    assert doc["output"] is None and doc["labels"] is None
    assert doc["details"] == "prediction_failed"
    for word in words:
        assert word in doc["message"], doc["message"]
    [hit] = wait_for(lambda: receiver.received(hook), what="the webhook")
    payload = verified(hit)
    assert payload["exec_id"] == prediction_id and payload["status"] == "failed"
    assert payload["output"] == "" and payload["error"] == doc["message"]


@pytest.mark.parametrize(("threshold", "output"), [(0.0, "nsfw"), (1.0, "normal")])
def test_output_follows_the_servers_policy_and_threshold(
    classifier: Classifier,
    tmp_path: Path,
    host: tuple[str, Host],
    threshold: float,
    output: str,
) -> None:
    base, _ = host
    with eachlabs_server(classifier, tmp_path, policy="strict", threshold=threshold) as (url, _):
        doc = poll(url, created_id(create(url, f"{base}/photo.jpg")))
    assert doc["status"] == "success" and doc["output"] == output, doc


@pytest.mark.parametrize(("server_threshold", "key_threshold"), [(1.0, 0.0), (0.0, 1.0)])
def test_output_follows_the_keys_own_policy_and_threshold(
    classifier: Classifier,
    tmp_path: Path,
    host: tuple[str, Host],
    server_threshold: float,
    key_threshold: float,
) -> None:
    """A key made with its own policy and threshold gets verdicts by them; a static key, and a
    store key without its own, get the server's."""
    image = f"{host[0]}/photo.jpg"
    by_threshold = {0.0: "nsfw", 1.0: "normal"}  # strict's score is above 0, never above 1
    settings = {"policy": "strict", "threshold": server_threshold}
    with eachlabs_server(classifier, tmp_path, **settings) as (url, store_url):
        own = make_key(store_url, "own", policy="strict", threshold=key_threshold)
        plain = make_key(store_url, "plain")
        outputs = {
            name: poll(url, created_id(create(url, image, key=key)), key=key)
            for name, key in (("own", own), ("plain", plain), ("static", KEY))
        }
    assert all(doc["status"] == "success" for doc in outputs.values()), outputs
    assert outputs["own"]["output"] == by_threshold[key_threshold]
    server = by_threshold[server_threshold]
    assert outputs["plain"]["output"] == outputs["static"]["output"] == server
    assert outputs["own"]["labels"] == outputs["static"]["labels"]  # the labels stay raw


def test_processing_is_reported_until_the_image_arrives(url: str, host: tuple[str, Host]) -> None:
    base, receiver = host
    gate = f"processing-{uuid.uuid4().hex}"
    prediction_id = created_id(create(url, f"{base}/slow?gate={gate}"))
    try:
        res = requests.get(f"{url}{ROUTE}/{prediction_id}", headers={"X-API-Key": KEY}, timeout=10)
        doc = res.json()
        assert doc["status"] == "processing" and doc["output"] is None
        assert doc["predictionID"] == prediction_id and doc["metrics"] == {"predict_time": None}
    finally:
        receiver.open_gate(gate)
    assert poll(url, prediction_id)["status"] == "success"


def test_every_name_of_the_model_works_and_slashes_are_optional(
    url: str, host: tuple[str, Host], classifier: Classifier
) -> None:
    base, _ = host
    for model in ("nsfw-image-detection", SERVED, classifier.name):
        created_id(create(url, f"{base}/photo.jpg", model=model))
    res = requests.post(
        f"{url}{ROUTE}",  # no trailing slash
        json={"model": "nsfw-image-detection", "input": {"image": f"{base}/photo.jpg"}},
        headers={"X-API-Key": KEY},
        timeout=10,
    )
    prediction_id = created_id(res)
    poll(url, prediction_id)
    res = requests.get(f"{url}{ROUTE}/{prediction_id}/", headers={"X-API-Key": KEY}, timeout=10)
    assert res.status_code == 200 and res.json()["status"] == "success"
    # The seed's curl: form-encoded content type, JSON body; extra fields are ignored.
    res = requests.post(
        f"{url}{ROUTE}/",
        data=json.dumps(
            {
                "model": "nsfw-image-detection",
                "version": "0.0.1",
                "input": {"image": f"{base}/photo.jpg", "extra": 1},
            }
        ),
        headers={"X-API-Key": KEY, "Content-Type": "application/x-www-form-urlencoded"},
        timeout=10,
    )
    created_id(res)


# --- Refusals -----------------------------------------------------------------------------------


def test_unknown_models_are_404(url: str, host: tuple[str, Host]) -> None:
    message = assert_error(
        create(url, f"{host[0]}/photo.jpg", model="flux-dev"), 404, "model_not_found"
    )
    assert "flux-dev" in message and "nsfw-image-detection" in message


BAD_BODIES: dict[str, tuple[Any, list[str]]] = {
    "not-json": (b'{"model": "nsfw-image-detection", "input": ', ["not valid JSON"]),
    "not-utf8": (b"\xff\xfe{}", ["not valid JSON"]),
    "empty": (b"", ["not valid JSON"]),
    "nan": (b'{"model": "nsfw-image-detection", "input": {"image": NaN}}', ["NaN"]),
    "array": ([{"model": "nsfw-image-detection"}], ["JSON object"]),
    "deep": (b"[" * 30_000 + b"]" * 30_000, ["nested too deeply"]),
    "no-model": ({"input": {"image": "https://x.example/a.jpg"}}, ["model is missing"]),
    "model-number": ({"model": 7, "input": {"image": "https://x.example/a.jpg"}}, ["model is 7"]),
    "no-input": ({"model": "nsfw-image-detection"}, ["input is missing"]),
    "input-string": (
        {"model": "nsfw-image-detection", "input": "https://x.example/a.jpg"},
        ["input is", "object"],
    ),
    "no-image": ({"model": "nsfw-image-detection", "input": {}}, ["input.image is missing"]),
    "image-number": ({"model": "nsfw-image-detection", "input": {"image": 5}}, ["input.image"]),
    "image-empty": ({"model": "nsfw-image-detection", "input": {"image": " "}}, ["input.image"]),
    "webhook-number": (
        {
            "model": "nsfw-image-detection",
            "input": {"image": "https://x.example/a.jpg"},
            "webhook_url": 3,
        },
        ["webhook_url is 3"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_malformed_requests_are_400_with_the_error_body(url: str, case: str) -> None:
    body, words = BAD_BODIES[case]
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    res = requests.post(
        f"{url}{ROUTE}/",
        data=data,
        headers={"X-API-Key": KEY, "Content-Type": "application/json"},
        timeout=30,
    )
    assert_error(res, 400, "invalid_input", *words)


def refused_urls(base: str, port: int) -> dict[str, tuple[str, str]]:
    """URLs an image or a webhook may not point at, and a word of the reason."""
    return {
        "ftp": (f"ftp://127.0.0.2:{port}/photo.jpg", "ftp: scheme"),
        "file": ("file:///etc/passwd", "file: scheme"),
        "data-uri": ("data:image/png;base64,iVBORw0KGgo=", "data: URIs"),
        "relative": ("/photo.jpg", "not an absolute URL"),
        "localhost": (f"http://localhost:{port}/photo.jpg", "points at this machine"),
        "localhost-dot": (f"http://LocalHost.:{port}/photo.jpg", "points at this machine"),
        "loopback": (f"http://127.0.0.1:{port}/photo.jpg", "loopback"),
        "loopback-v6": (f"http://[::1]:{port}/photo.jpg", "loopback"),
        "v4-mapped": (f"http://[::ffff:127.0.0.1]:{port}/photo.jpg", "loopback"),
        "unspecified": (f"http://0.0.0.0:{port}/photo.jpg", "this network"),
        "decimal": (f"http://2130706433:{port}/photo.jpg", "unusual spelling"),
        "private": ("http://10.1.2.3/photo.jpg", "private"),
        "private-192": ("https://192.168.0.10/photo.jpg", "private"),
        "link-local": ("http://169.254.169.254/latest/meta-data/", "link-local"),
        "multicast": ("http://224.0.0.1/photo.jpg", "multicast"),
        "credentials": (f"http://user:pw@127.0.0.2:{port}/photo.jpg", "credentials"),
    }


def test_image_urls_that_are_not_public_https_are_400(
    url: str, host: tuple[str, Host], canary: Canary
) -> None:
    base, _ = host
    for name, (image, word) in refused_urls(base, canary.port).items():
        message = assert_error(create(url, image), 400, "invalid_input", "input.image")
        assert word in message, (name, message)


def test_private_webhook_urls_are_400(url: str, host: tuple[str, Host], canary: Canary) -> None:
    base, _ = host
    for name, (hook, word) in refused_urls(base, canary.port).items():
        res = create(url, f"{base}/photo.jpg", webhook_url=hook)
        message = assert_error(res, 400, "invalid_input", "webhook_url")
        assert word in message, (name, message)


def test_a_network_allowed_only_for_images_is_400_for_webhooks(
    classifier: Classifier, tmp_path: Path, host: tuple[str, Host]
) -> None:
    """NSFWD_FETCH_ALLOW_NETWORKS opens a network to image URLs only; webhooks need it in
    NSFWD_WEBHOOK_ALLOW_NETWORKS, and the refusal says so."""
    base, _ = host
    with eachlabs_server(classifier, tmp_path, webhook_allow_networks=[]) as (url, _store):
        res = create(url, f"{base}/photo.jpg", webhook_url=f"{base}/hook/image-only")
        message = assert_error(res, 400, "invalid_input", "webhook_url")
        assert "NSFWD_WEBHOOK_ALLOW_NETWORKS" in message and "loopback" in message
        assert poll(url, created_id(create(url, f"{base}/photo.jpg")))["status"] == "success"


def test_redirects_to_the_canary_are_refused_when_fetching_and_delivering(
    server: tuple[str, str], host: tuple[str, Host], canary: Canary
) -> None:
    url, store_url = server
    base, _ = host
    stolen = quote(f"http://127.0.0.1:{canary.port}/stolen", safe="")
    image_id = created_id(create(url, f"{base}/redirect?to={stolen}"))
    doc = poll(url, image_id)
    assert doc["status"] == "error"
    assert "redirected (hop 1)" in doc["message"] and "loopback" in doc["message"]

    hook_id = created_id(
        create(url, f"{base}/photo.jpg", webhook_url=f"{base}/redirect?to={stolen}")
    )
    assert poll(url, hook_id)["status"] == "success"
    sent = settled(store_url, hook_id)
    assert sent.status == "failed" and sent.attempts == 3  # the first try and two retries
    assert sent.last_error is not None and "refused" in sent.last_error


def test_keys_are_required_and_checked(server: tuple[str, str], host: tuple[str, Host]) -> None:
    url, store_url = server
    image = f"{host[0]}/photo.jpg"
    assert_error(create(url, image, key=None), 401, "invalid_api_key", "missing API key")
    assert_error(create(url, image, key="nope"), 401, "invalid_api_key", "invalid API key")
    prediction_id = created_id(create(url, image))
    res = requests.get(f"{url}{ROUTE}/{prediction_id}", timeout=10)
    assert_error(res, 401, "invalid_api_key", "X-API-Key")
    res = requests.get(f"{url}{ROUTE}/{prediction_id}", headers={"X-API-Key": "x"}, timeout=10)
    assert_error(res, 401, "invalid_api_key")

    stored = make_key(store_url, "stored")
    own = created_id(create(url, image, key=stored))
    assert poll(url, own, key=stored)["status"] == "success"

    async def revoke(store: Store) -> None:
        assert await store.keys.revoke(stored) is not None

    with_store(store_url, revoke)
    assert_error(create(url, image, key=stored), 401, "invalid_api_key", "revoked")
    res = requests.get(f"{url}{ROUTE}/{own}", headers={"X-API-Key": stored}, timeout=10)
    assert_error(res, 401, "invalid_api_key")


def test_unknown_and_other_keys_predictions_are_404(
    server: tuple[str, str], host: tuple[str, Host]
) -> None:
    url, store_url = server
    theirs = created_id(create(url, f"{host[0]}/photo.jpg", key=OTHER))
    assert poll(url, theirs, key=OTHER)["status"] == "success"

    async def prodia_job(store: Store) -> str:
        upload = Upload(b"x", "x.png", "image/png")
        job = await store.predictions.create(
            protocol="prodia", job_type="inference.vit.img2label.v1", model=SERVED, upload=upload
        )
        return job.id

    other_protocol = with_store(store_url, prodia_job)
    for missing in (theirs, str(uuid.uuid4()), "not-a-uuid", "x" * 300, other_protocol):
        res = requests.get(f"{url}{ROUTE}/{missing}", headers={"X-API-Key": KEY}, timeout=10)
        message = assert_error(res, 404, "prediction_not_found", "no prediction")
        assert len(message) < 600


def test_bodies_over_64_kib_are_400(url: str, host: tuple[str, Host]) -> None:
    big = {
        "model": "nsfw-image-detection",
        "input": {"image": f"{host[0]}/photo.jpg", "pad": "x" * 70_000},
    }
    data = json.dumps(big).encode()
    headers = {"X-API-Key": KEY, "Content-Type": "application/json"}
    res = requests.post(f"{url}{ROUTE}/", data=data, headers=headers, timeout=10)
    assert_error(res, 400, "payload_too_large", "65,536")

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        for start in range(0, len(data), 8192):
            yield data[start : start + 8192]

    res = requests.post(f"{url}{ROUTE}/", data=chunked(), headers=headers, timeout=10)
    assert "content-length" not in res.request.headers
    assert_error(res, 400, "payload_too_large", "65,536")

    with requests.Session() as retrying:  # the guide's retries: 413 would be sent again
        retries = Retry(
            total=3, status_forcelist=Retry.RETRY_AFTER_STATUS_CODES, allowed_methods=None
        )
        retrying.mount("http://", HTTPAdapter(max_retries=retries))
        res = retrying.post(f"{url}{ROUTE}/", data=data, headers=headers, timeout=10)
    assert_error(res, 400, "payload_too_large", "65,536")


def test_the_101st_create_in_a_minute_is_429(
    server: tuple[str, str], host: tuple[str, Host]
) -> None:
    url, store_url = server
    base, _ = host
    busy = make_key(store_url, "busy", max_in_flight=1000)  # 100 creates a minute, the default
    bystander = make_key(store_url, "bystander")
    with requests.Session() as session:
        session.headers["X-API-Key"] = busy
        body = {"model": "nsfw-image-detection", "input": {"image": f"{base}/missing"}}
        for index in range(100):
            res = session.post(f"{url}{ROUTE}/", json=body, timeout=10)
            assert res.status_code == 200, (index, res.text)
        refused = session.post(f"{url}{ROUTE}/", json=body, timeout=10)
    message = assert_error(refused, 429, "rate_limited", "100", "minute")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60, refused.headers
    assert "retry in" in message
    created_id(create(url, f"{base}/missing", key=bystander))  # limits are per key


def test_a_keys_own_creates_per_minute_apply(
    server: tuple[str, str], host: tuple[str, Host]
) -> None:
    url, store_url = server
    key = make_key(store_url, "three-a-minute", creates_per_minute=3)
    for _ in range(3):
        created_id(create(url, f"{host[0]}/missing", key=key))
    res = create(url, f"{host[0]}/missing", key=key)
    assert_error(res, 429, "rate_limited", "3 predictions")
    assert int(res.headers["Retry-After"]) >= 55


def test_refused_creates_do_not_use_up_the_keys_minute(
    server: tuple[str, str], host: tuple[str, Host]
) -> None:
    """A client told 429 too_many_in_flight retries, as told: those refusals created nothing,
    so they must not count against its creates per minute."""
    url, store_url = server
    base, receiver = host
    key = make_key(store_url, "two-a-minute-one-at-a-time", creates_per_minute=2, max_in_flight=1)
    gate = f"refused-{uuid.uuid4().hex}"
    try:
        held = created_id(create(url, f"{base}/slow?gate={gate}", key=key))
        for _ in range(3):
            assert_error(create(url, f"{base}/photo.jpg", key=key), 429, "too_many_in_flight")
    finally:
        receiver.open_gate(gate)
    assert poll(url, held, key=key)["status"] == "success"
    created_id(create(url, f"{base}/photo.jpg", key=key))  # the second of its two a minute
    assert_error(create(url, f"{base}/photo.jpg", key=key), 429, "rate_limited", "2 predictions")


def test_the_11th_prediction_in_flight_is_429(
    server: tuple[str, str], host: tuple[str, Host]
) -> None:
    url, store_url = server
    base, receiver = host
    key = make_key(store_url, "ten-in-flight")  # 10 in flight, the default
    gate = f"in-flight-{uuid.uuid4().hex}"
    ids = []
    try:
        for _ in range(10):
            ids.append(created_id(create(url, f"{base}/slow?gate={gate}", key=key)))
        refused = create(url, f"{base}/slow?gate={gate}", key=key)
        assert_error(refused, 429, "too_many_in_flight", "10", "API key")
        assert int(refused.headers["Retry-After"]) >= 1
        created_id(create(url, f"{base}/photo.jpg", key=OTHER))  # per key: others go on
    finally:
        receiver.open_gate(gate)
    assert all(poll(url, pid, key=key)["status"] == "success" for pid in ids)
    created_id(create(url, f"{base}/photo.jpg", key=key))  # room again


# --- Other deployments ---------------------------------------------------------------------------


def test_defaults_refuse_http_and_private_hosts_and_need_no_key_without_keys(
    classifier: Classifier, tmp_path: Path, host: tuple[str, Host]
) -> None:
    """Out of the box: https only, no private networks; with no key configured anywhere, no
    key is needed (the server then only binds to loopback)."""
    base, _ = host
    with eachlabs_server(
        classifier,
        tmp_path,
        api_keys=[],
        fetch_allow_networks=[],
        webhook_allow_networks=[],
        fetch_allow_http=False,
        webhook_secret=None,
    ) as (url, store_url):
        message = assert_error(create(url, f"{base}/photo.jpg", key=None), 400, "invalid_input")
        assert "plain http" in message
        https = base.replace("http://", "https://")
        message = assert_error(create(url, f"{https}/photo.jpg", key=None), 400, "invalid_input")
        assert "loopback" in message
        res = requests.get(f"{url}{ROUTE}/{uuid.uuid4()}", timeout=10)
        assert_error(res, 404, "prediction_not_found")
        assert (tmp_path / "webhook_secret").exists(), "generated on start, with SQLite"

        make_key(store_url, "first")  # from now on, keys are required
        assert_error(create(url, f"{https}/photo.jpg", key=None), 401, "invalid_api_key")


def test_on_postgresql_webhooks_need_a_configured_secret(
    classifier: Classifier, tmp_path: Path, host: tuple[str, Host], postgres_url: str
) -> None:
    from postgres import fresh_database

    base, _ = host
    with (
        fresh_database(postgres_url) as database,
        eachlabs_server(classifier, tmp_path, database_url=database, webhook_secret=None) as (
            url,
            store_url,
        ),
    ):
        assert store_url == database_url(tmp_path, database)
        res = create(url, f"{base}/photo.jpg", webhook_url=f"{base}/hook/pg")
        assert_error(res, 400, "invalid_input", "NSFWD_WEBHOOK_SECRET")
        prediction_id = created_id(create(url, f"{base}/photo.jpg"))
        assert poll(url, prediction_id)["status"] == "success"
    assert not (tmp_path / "webhook_secret").exists()


def test_names_are_resolved_at_creation_and_refused_when_they_lead_inside() -> None:
    """A name that resolves to a refused address is a 400 at creation; one that does not
    resolve (yet) is let through, to fail later with a message (the fetch checks again)."""
    from nsfwd.api.eachlabs.routes import _resolve
    from nsfwd.api.http.errors import BadRequestError
    from nsfwd.fetch import FetchPolicy

    policy = FetchPolicy(allow_networks=ALLOWED, allow_http=True, resolver=names)
    asyncio.run(_resolve("input.image", "http://images.test/photo.jpg", policy))
    asyncio.run(_resolve("input.image", "http://nowhere.test/photo.jpg", policy))
    for name, word in [("canary.test", "loopback"), ("mixed.test", "loopback"),
                       ("metadata.test", "link-local")]:  # fmt: skip
        with pytest.raises(BadRequestError, match=f"webhook_url: {name} resolves to .*{word}"):
            asyncio.run(_resolve("webhook_url", f"http://{name}/hook", policy))
