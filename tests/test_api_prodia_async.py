"""Prodia's async job API (POST /v2/job/async and its GETs) on a real server with a real store."""

from __future__ import annotations

import io
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import torch
from PIL import Image
from requests.adapters import HTTPAdapter, Retry

from gates import GatedClassifier, shut
from nsfwd.api import create_app
from nsfwd.engine.batcher import Engine
from nsfwd.jobs import Store
from nsfwd.models.classifier import Classifier
from nsfwd.settings import Settings
from nsfwd.verdict import Policy
from photos import ASTRONAUT, astronaut_jpeg
from prodia_jobs import MODEL, OTHER_TOKEN, TOKEN, assert_labels, job_files, parts_of
from ray_backend import RayServer
from servers import metric, serve_app
from store_handles import make_key, with_store
from waiting import wait_for

V1, V2 = "inference.vit.img2label.v1", "inference.vit.img2label.v2"


def session(token: str = TOKEN) -> requests.Session:
    """A plain session with a token (no retries: the tests look at every answer)."""
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {token}"
    return s


@contextmanager
def async_server(
    classifier: Classifier, data_dir: Path, **settings: Any
) -> Iterator[tuple[str, Store]]:
    """A server with a SQLite store in ``data_dir``; yields its URL and the store."""
    config = Settings(
        model=classifier.name,
        served_model_name=MODEL,
        api_keys=[TOKEN, OTHER_TOKEN],
        data_dir=data_dir,
        **settings,
    )
    engine = Engine(classifier, max_batch_size=4, limits=config.image_limits)
    store = Store.from_settings(config)
    with serve_app(create_app(engine, config, store)) as url:
        yield url, store


@pytest.fixture(scope="module")
def server(
    backend: str,
    request: pytest.FixtureRequest,
    classifier: Classifier,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Store]]:
    """The suite's server and its store: here on SQLite, or on Ray Serve on PostgreSQL."""
    if backend == "ray":
        ray: RayServer = request.getfixturevalue("ray_server")
        yield ray.url, Store.from_settings(Settings(database_url=ray.database))
        return
    with async_server(classifier, tmp_path_factory.mktemp("async-store")) as running:
        yield running


@pytest.fixture
def url(server: tuple[str, Store]) -> str:
    return server[0]


def submit(url: str, job_type: str = V1, image: bytes | None = None, **options: Any) -> Any:
    headers = options.pop("headers", {"Accept": "application/json"})
    token = options.pop("token", TOKEN)
    files = job_files(job_type, astronaut_jpeg() if image is None else image, **options)
    return session(token).post(f"{url}/v2/job/async", headers=headers, files=files)


def wait_for_state(url: str, job_id: str, token: str = TOKEN, timeout: float = 30) -> str:
    """Poll job.state.current until it is no longer ``processing``; returns it."""

    def finished() -> str | None:
        res = session(token).get(f"{url}/v2/job/async/{job_id}/job.state.current")
        assert res.status_code == 200, res.text
        return None if res.text == "processing" else res.text

    state: str = wait_for(finished, timeout, "the job to finish")
    return state


def test_v1_is_accepted_then_processed_with_the_sync_labels(url: str) -> None:
    image = astronaut_jpeg((640, 480))
    res = submit(url, V1, image)
    assert res.status_code == 201, res.text
    assert res.headers["content-type"] == "application/json"
    job = res.json()
    assert list(job) == ["type", "id", "created_at", "updated_at", "state", "config", "metrics"]
    assert job["type"] == V1 and job["state"] == {"current": "processing"}
    assert job["config"] == {"model": MODEL}
    assert str(uuid.UUID(job["id"])) == job["id"]
    uuid.UUID(res.headers["x-request-id"])

    assert wait_for_state(url, job["id"]) == "processed"
    state = session().get(f"{url}/v2/job/async/{job['id']}/job.state.current")
    assert state.headers["content-type"].startswith("text/plain") and state.text == "processed"

    done = session().get(f"{url}/v2/job/async/{job['id']}/job.json").json()
    assert done["id"] == job["id"] and done["type"] == V1
    assert done["state"] == {"current": "processed"} and "error" not in done
    assert done["created_at"] == job["created_at"]
    assert datetime.fromisoformat(done["updated_at"]) >= datetime.fromisoformat(job["created_at"])
    assert done["metrics"]["elapsed"] > 0
    assert_labels(done["config"]["labels"])
    sync = session().post(f"{url}/v2/job", files=job_files(image=image)).json()
    for label, prob in sync["config"]["labels"].items():
        assert done["config"]["labels"][label] == pytest.approx(prob, abs=1e-5)

    outputs = session().get(f"{url}/v2/job/async/{job['id']}/output")
    assert outputs.json() == ["labels.json"]
    labels = session().get(f"{url}/v2/job/async/{job['id']}/output/labels.json")
    assert labels.headers["content-type"] == "application/json"
    assert labels.json() == done["config"]["labels"]


def webp_bytes() -> bytes:
    webp = io.BytesIO()
    Image.open(ASTRONAUT).convert("RGB").resize((200, 200)).save(webp, "WEBP")
    return webp.getvalue()


def test_v2_outputs_the_labels_and_the_image_byte_for_byte(url: str) -> None:
    png = io.BytesIO()
    Image.open(ASTRONAUT).save(png, "PNG")
    # The image goes back under the type its bytes have, never the one the client claimed: a
    # stored "text/html" served as such would run in the browser of whoever opens the link.
    for image, filename, content_type, served_type in [
        (astronaut_jpeg(), "sunny-day.jpg", "image/jpeg", "image/jpeg"),
        (png.getvalue(), "photo \u00e9t\u00e9.jpg", "image/jpeg", "image/png"),  # lies: sniffed
        (png.getvalue(), "labels.json", "image/png", "image/png"),  # would clash: renamed
        (png.getvalue(), "a.png", "image/png; q=1", "image/png"),
        (png.getvalue(), "page.html", "text/html", "image/png"),
        (webp_bytes(), "w.webp", "application/octet-stream", "image/webp"),
    ]:
        res = submit(url, V2, image, filename=filename, content_type=content_type)
        assert res.status_code == 201, res.text
        job_id = res.json()["id"]
        assert wait_for_state(url, job_id) == "processed"
        shown = "input.png" if filename == "labels.json" else filename
        names = session().get(f"{url}/v2/job/async/{job_id}/output").json()
        assert names == ["labels.json", shown]
        got = session().get(f"{url}/v2/job/async/{job_id}/output/{shown}")
        assert got.status_code == 200
        assert got.content == image
        assert got.headers["content-type"] == served_type
        assert got.headers["x-content-type-options"] == "nosniff"
        labels = session().get(f"{url}/v2/job/async/{job_id}/output/labels.json").json()
        job = session().get(f"{url}/v2/job/async/{job_id}/job.json").json()
        assert labels == job["config"]["labels"]


def test_submitting_with_a_multipart_accept_gets_the_job_part(url: str) -> None:
    res = submit(url, V2, headers={"Accept": "multipart/form-data"})
    assert res.status_code == 201
    assert res.headers["content-type"].startswith("multipart/form-data; boundary=")
    (part,) = parts_of(res)
    assert part[:2] == ("job", "job.json")
    assert json.loads(part[3])["state"] == {"current": "processing"}


def test_extra_config_is_kept(url: str) -> None:
    files: list[tuple[str, tuple[str, str | bytes]]] = [
        ("job", ("job.json", json.dumps({"type": V1, "config": {"model": MODEL, "note": [1]}}))),
        ("input", ("x.jpg", astronaut_jpeg())),
    ]
    res = session().post(f"{url}/v2/job/async", files=files)
    assert res.status_code == 201 and res.json()["config"] == {"model": MODEL, "note": [1]}
    wait_for_state(url, res.json()["id"])
    done = session().get(f"{url}/v2/job/async/{res.json()['id']}/job.json").json()
    assert done["config"]["note"] == [1] and done["config"]["model"] == MODEL


@pytest.mark.parametrize(
    ("build", "status", "message"),
    [
        (lambda: job_files(V1, b"%PDF-1.7\n" + bytes(64), "a.pdf"), 400, "format: PDF"),
        (lambda: job_files(V1, astronaut_jpeg((100, 100))), 400, "128"),
        (lambda: job_files(V1, astronaut_jpeg((2100, 200))), 400, "2048"),
        (lambda: job_files(V1, astronaut_jpeg()[:2000]), 400, "input 'sunny-day.jpg'"),
        (lambda: job_files(V1, astronaut_jpeg(), model="other/model"), 400, "unknown model"),
        (lambda: job_files("inference.nope.v1", astronaut_jpeg()), 400, "unknown job type"),
        (lambda: job_files(V1), 400, "no input image"),
        (
            lambda: [("job", ("job.json", json.dumps({"type": "inference.ping.v1"})))],
            400,
            "POST it to",
        ),
        (lambda: job_files(V1, b"\xff\xd8\xff" + bytes(11 * 1024 * 1024)), 400, "10,485,760"),
    ],
)  # built for each run: the job parts are streams, read once
def test_bad_jobs_are_refused_at_once_and_not_stored(
    server: tuple[str, Store], build: Callable[[], Any], status: int, message: str
) -> None:
    url, _ = server
    files = build()
    before = metric(url, "nsfwd_requests_total", route="/v2/job/async", status=str(status))
    res = session().post(f"{url}/v2/job/async", headers={"Accept": "application/json"}, files=files)
    assert res.status_code == status, res.text
    job = res.json()
    assert job["state"] == {"current": "failed"} and message in job["error"]
    after = metric(url, "nsfwd_requests_total", route="/v2/job/async", status=str(status))
    assert after == before + 1
    assert session().get(f"{url}/v2/job/async/{job['id']}/job.json").status_code == 404


def test_the_guides_retrying_session_reads_the_size_refusal(url: str) -> None:
    """urllib3's Retry(status_forcelist=RETRY_AFTER_STATUS_CODES) re-sends a 413; the size
    refusal is a 400 whose message names the limit."""
    s = session()
    retries = Retry(total=3, status_forcelist=Retry.RETRY_AFTER_STATUS_CODES, allowed_methods=None)
    s.mount("http://", HTTPAdapter(max_retries=retries))
    image = b"\xff\xd8\xff" + bytes(11 * 1024 * 1024)
    res = s.post(
        f"{url}/v2/job/async", headers={"Accept": "application/json"}, files=job_files(V1, image)
    )
    assert res.status_code == 400, res.text[:300]
    assert "10,485,760 bytes" in res.json()["error"]


def test_a_refusal_goes_in_the_job_part_when_multipart_is_accepted(url: str) -> None:
    res = session().post(
        f"{url}/v2/job/async",
        headers={"Accept": "multipart/form-data"},
        files=job_files(V2, b"not an image"),
    )
    assert res.status_code == 400
    (part,) = parts_of(res)
    assert "unsupported image format" in json.loads(part[3])["error"]


@pytest.mark.parametrize("path", ["job.state.current", "job.json", "output", "output/labels.json"])
def test_unknown_ids_are_404(url: str, path: str) -> None:
    for job_id in (str(uuid.uuid4()), "not-a-uuid"):
        res = session().get(f"{url}/v2/job/async/{job_id}/{path}")
        assert res.status_code == 404
        assert "unknown, or the job expired" in res.json()["error"]


def test_an_unknown_output_file_is_404_naming_the_outputs(url: str) -> None:
    res = submit(url, V2)
    job_id = res.json()["id"]
    wait_for_state(url, job_id)
    missing = session().get(f"{url}/v2/job/async/{job_id}/output/other.png")
    assert missing.status_code == 404
    assert "labels.json, sunny-day.jpg" in missing.json()["error"]


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Basic x"])
def test_every_route_needs_the_token(url: str, authorization: str | None) -> None:
    job_id = submit(url).json()["id"]
    headers = {} if authorization is None else {"Authorization": authorization}
    res = requests.post(
        f"{url}/v2/job/async", headers=headers, files=job_files(V1, astronaut_jpeg())
    )
    assert res.status_code == 401 and res.headers["content-type"].startswith("text/plain")
    for path in ("job.state.current", "job.json", "output", "output/labels.json"):
        res = requests.get(f"{url}/v2/job/async/{job_id}/{path}", headers=headers)
        assert res.status_code == 401, path
        assert res.headers["www-authenticate"].startswith("Bearer")


def test_another_keys_job_is_404(url: str) -> None:
    job_id = submit(url, token=OTHER_TOKEN).json()["id"]
    assert wait_for_state(url, job_id, token=OTHER_TOKEN) == "processed"
    for path in ("job.state.current", "job.json", "output", "output/labels.json"):
        assert session(TOKEN).get(f"{url}/v2/job/async/{job_id}/{path}").status_code == 404
        assert session(OTHER_TOKEN).get(f"{url}/v2/job/async/{job_id}/{path}").status_code == 200


def test_a_key_from_the_store_works_on_every_prodia_route_until_revoked(
    server: tuple[str, Store],
) -> None:
    """Keys made with `nsfwd keys create` (here: the store's own call, from another handle)
    work as Bearer tokens on POST /v2/job and the async routes, and stop at once when revoked."""
    url, store = server
    key = make_key(store.url, "prodia-client")
    sync = session(key).post(f"{url}/v2/job", files=job_files(image=astronaut_jpeg()))
    assert sync.status_code == 200, sync.text
    assert_labels(sync.json()["config"]["labels"])
    job_id = submit(url, token=key).json()["id"]
    assert wait_for_state(url, job_id, token=key) == "processed"
    for path in ("job.state.current", "job.json", "output", "output/labels.json"):
        assert session(key).get(f"{url}/v2/job/async/{job_id}/{path}").status_code == 200
        assert session(TOKEN).get(f"{url}/v2/job/async/{job_id}/{path}").status_code == 404

    async def owner_and_revoke(other: Store) -> tuple[str | None, str]:
        job = await other.predictions.get(job_id)
        revoked = await other.keys.revoke(key)
        assert job is not None and revoked is not None
        return job.api_key, revoked.id

    owner, key_id = with_store(store.url, owner_and_revoke)
    assert owner == key_id  # the job belongs to the store key, by its id
    refusals = [
        session(key).post(f"{url}/v2/job", files=job_files(image=astronaut_jpeg())),
        session(key).post(f"{url}/v2/job/async", files=job_files(V1, astronaut_jpeg())),
        session(key).get(f"{url}/v2/job/async/{job_id}/job.json"),
    ]
    for res in refusals:
        assert res.status_code == 401, res.text
        assert res.headers["content-type"].startswith("text/plain")
        assert res.headers["www-authenticate"].startswith("Bearer")
        assert "invalid API token" in res.text and "revoked" in res.text
    missing = requests.post(f"{url}/v2/job", files=job_files(image=astronaut_jpeg()))
    assert missing.status_code == 401
    assert "NSFWD_API_KEYS" in missing.text and "nsfwd keys create" in missing.text


def test_a_keys_own_policy_is_stored_on_its_jobs_and_the_labels_stay_raw(
    server: tuple[str, Store],
) -> None:
    """A job carries its key's policy and threshold (whichever replica's worker runs it applies
    them to the verdict); Prodia answers with the labels alone, the same as for any key."""
    url, store = server
    key = make_key(store.url, "strict-client", policy="strict", threshold=0.0)
    jobs = {token: submit(url, token=token).json()["id"] for token in (key, TOKEN)}
    labels = {}
    for token, job_id in jobs.items():
        assert wait_for_state(url, job_id, token=token) == "processed"
        res = session(token).get(f"{url}/v2/job/async/{job_id}/output/labels.json")
        assert res.status_code == 200, res.text
        labels[token] = res.json()
        assert_labels(labels[token])
    assert labels[key] == labels[TOKEN]

    async def stored(other: Store) -> list[tuple[str | None, float | None, bool | None]]:
        found = [await other.predictions.get(job_id) for job_id in jobs.values()]
        return [(p.policy, p.threshold, p.flagged) for p in found if p is not None]

    default = Policy().flagged(labels[TOKEN])  # moderate at 0.5
    assert with_store(store.url, stored) == [("strict", 0.0, True), (None, None, default)]


def test_jobs_from_another_protocol_are_not_prodia_jobs(server: tuple[str, Store]) -> None:
    url, store = server
    prediction_id = _create_eachlabs(store)
    assert session().get(f"{url}/v2/job/async/{prediction_id}/job.json").status_code == 404


def _create_eachlabs(store: Store) -> str:
    """Store an Eachlabs prediction from this (test) thread, on the store's own file."""
    import asyncio

    async def create() -> str:
        async with Store(store.url) as other:
            prediction = await other.predictions.create(
                protocol="eachlabs", job_type="x", model=MODEL, input_url="https://e.com/a.png"
            )
            return prediction.id

    return asyncio.run(create())


# --- a server whose model waits at a gate, or fails -------------------------------------------


@dataclass
class FailingClassifier(GatedClassifier):
    """The gated classifier, raising instead of predicting while ``failing`` is set."""

    failing: threading.Event = field(default_factory=threading.Event)

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        if self.failing.is_set():
            raise RuntimeError("the model broke")
        return super().predict(batch)


@contextmanager
def gated(
    classifier: Classifier, tmp_path: Path, **settings: Any
) -> Iterator[tuple[str, FailingClassifier]]:
    model = FailingClassifier(
        classifier.loaded, classifier.device, classifier.dtype, classifier.name
    )
    model.gate.set()
    with async_server(model, tmp_path, **settings) as (url, _), shut(model):
        yield url, model


def test_a_full_async_queue_answers_429_with_retry_after(
    classifier: Classifier, tmp_path: Path
) -> None:
    with gated(classifier, tmp_path, max_async_queued=2, workers=1) as (url, model):
        accepted = [submit(url).json()["id"] for _ in range(2)]
        assert model.entered.wait(10)
        refused = submit(url)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["state"] == {"current": "failed"}
        assert "queue is full" in refused.json()["error"]
        still = session().get(f"{url}/v2/job/async/{accepted[1]}/output/labels.json")
        assert still.status_code == 404 and "still processing" in still.json()["error"]
        assert session().get(f"{url}/v2/job/async/{accepted[1]}/output").json() == []
        model.gate.set()
        assert [wait_for_state(url, job_id) for job_id in accepted] == ["processed"] * 2
        assert submit(url).status_code == 201


def test_a_job_that_fails_says_why(classifier: Classifier, tmp_path: Path) -> None:
    """A model that keeps failing: the job runs again after each lease (a failure may pass),
    and fails with a message after the last attempt."""
    with gated(classifier, tmp_path, lease_s=0.5, max_attempts=2) as (url, model):
        model.failing.set()
        model.gate.set()
        job_id = submit(url, V2).json()["id"]
        assert wait_for_state(url, job_id) == "failed"
        job = session().get(f"{url}/v2/job/async/{job_id}/job.json").json()
        assert job["state"] == {"current": "failed"}
        assert "the model failed on this image in each of 2 attempts" in job["error"]
        assert "labels" not in job["config"]
        assert session().get(f"{url}/v2/job/async/{job_id}/output").json() == []
        output = session().get(f"{url}/v2/job/async/{job_id}/output/labels.json")
        assert output.status_code == 404 and "it failed: the model" in output.json()["error"]


def test_finished_jobs_expire(classifier: Classifier, tmp_path: Path) -> None:
    with async_server(classifier, tmp_path, result_ttl_s=1.0) as (url, _):
        job_id = submit(url).json()["id"]
        assert wait_for_state(url, job_id) == "processed"

        def expired() -> dict[str, Any] | None:
            res = session().get(f"{url}/v2/job/async/{job_id}/job.json")
            return res.json() if res.status_code == 404 else None

        body = wait_for(expired, 1.5, "the job to expire (1 s after it finished)")
        assert "kept 1 s after they finish" in body["error"]


def test_jobs_survive_a_restart_of_the_server(classifier: Classifier, tmp_path: Path) -> None:
    with async_server(classifier, tmp_path) as (url, _):
        job_id = submit(url, V2).json()["id"]
        assert wait_for_state(url, job_id) == "processed"
        before = session().get(f"{url}/v2/job/async/{job_id}/job.json").json()
    assert (tmp_path / "nsfwd.db").is_file()
    with async_server(classifier, tmp_path) as (url, _):
        assert session().get(f"{url}/v2/job/async/{job_id}/job.json").json() == before
        image = session().get(f"{url}/v2/job/async/{job_id}/output/sunny-day.jpg")
        assert image.content == astronaut_jpeg()


def test_the_sync_app_has_no_async_routes_without_a_store(sync_server_url: str) -> None:
    res = session().post(f"{sync_server_url}/v2/job/async", files=job_files(V1, astronaut_jpeg()))
    # No route has this path (the sync app's only job route is POST /v2/job), so the router
    # answers 404; a 405 would mean some route matched the path under another method.
    assert res.status_code == 404
    assert res.json() == {"detail": "Not Found"}


def raw_form(filename: bytes, content_type: bytes) -> tuple[bytes, str]:
    """A v2 job with the input part's filename and Content-Type as raw bytes (a NUL stays a NUL;
    requests would percent-encode it in a filename)."""
    job = json.dumps({"type": V2, "config": {"model": MODEL}}).encode()
    body = (
        b'--b0undary\r\nContent-Disposition: form-data; name="job"; filename="job.json"\r\n'
        b"Content-Type: application/json\r\n\r\n" + job + b"\r\n"
        b'--b0undary\r\nContent-Disposition: form-data; name="input"; filename="'
        + filename
        + b'"\r\nContent-Type: '
        + content_type
        + b"\r\n\r\n"
        + astronaut_jpeg()
        + b"\r\n"
        b"--b0undary--\r\n"
    )
    return body, "multipart/form-data; boundary=b0undary"


ODD_PARTS = {
    "NUL in the filename": (b"a\x00.jpg", b"image/jpeg", "filename"),
    "300-character filename": (b"x" * 300 + b".jpg", b"image/jpeg", "filename"),
    "NUL in the Content-Type": (b"a.jpg", b"image/jpeg\x00", "Content-Type"),
    "300-character Content-Type": (b"a.jpg", b"image/jpeg; x=" + b"y" * 300, "Content-Type"),
}


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_odd_ids_and_part_headers_are_4xx_on_every_store(
    classifier: Classifier, tmp_path: Path, request: pytest.FixtureRequest, store: str
) -> None:
    """What PostgreSQL cannot store or compare (a NUL, a Content-Type over its column) is refused
    or unknown before it reaches the store: a 4xx, never a 500."""
    with ExitStack() as stack:
        options: dict[str, Any] = {}
        if store == "postgresql":
            from postgres import fresh_database

            admin = request.getfixturevalue("postgres_url")
            options["database_url"] = stack.enter_context(fresh_database(admin))
        url, _ = stack.enter_context(async_server(classifier, tmp_path, **options))
        for path in ("/v2/job/async/%00/job.json", "/v2/job/async/%00/output/x.png",
                     "/v2/job/async/%00/job.state.current"):  # fmt: skip
            res = session().get(f"{url}{path}")
            assert res.status_code == 404, (path, res.status_code, res.text)
        res = requests.get(f"{url}/v1/prediction/%00", headers={"X-API-Key": TOKEN}, timeout=10)
        assert res.status_code == 404, res.text
        for name, (filename, content_type, word) in ODD_PARTS.items():
            body, form_type = raw_form(filename, content_type)
            for route in ("/v2/job/async", "/v2/job"):
                res = session().post(
                    f"{url}{route}",
                    data=body,
                    headers={"Content-Type": form_type, "Accept": "application/json"},
                )
                assert res.status_code == 400, (name, route, res.status_code, res.text)
                assert word in res.json()["error"], (name, res.text)
        job = json.dumps({"type": V1, "config": {"model": MODEL, "n": "\x00"}})
        files: list[tuple[str, tuple[str, str | bytes]]] = [
            ("job", ("job.json", job)),
            ("input", ("x.jpg", astronaut_jpeg())),
        ]
        res = session().post(f"{url}/v2/job/async", files=files)  # a NUL inside the job's JSON
        assert res.status_code < 500, res.text
