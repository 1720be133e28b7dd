"""Each key gets its fair share (issue 11, item 4), tried with real parts: a real server on
loopback, a real SQLite file or PostgreSQL database, a real webhook receiver.

One key flooding the Prodia routes is refused past its share (429) while another key gets
through; stored uploads are capped (503) and v1 uploads dropped once classified; a slow body is
cut off at its deadline (408) and a full set of upload slots answers 503; webhook deliveries go
round the keys.
"""

from __future__ import annotations

import asyncio
import select
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from gates import GatedClassifier
from hosts import ALLOWED, SECRET, Host
from nsfwd.api import create_app
from nsfwd.engine.batcher import Engine
from nsfwd.fetch import FetchPolicy, FetchTimeouts
from nsfwd.jobs import Prediction, Store
from nsfwd.jobs.webhooks import WebhookSender
from nsfwd.models.classifier import Classifier
from nsfwd.settings import Settings
from photos import astronaut_jpeg
from prodia_jobs import MODEL, OTHER_TOKEN, TOKEN, encoded_job, job_files
from servers import half_sent, metric, serve_app
from store_handles import with_store
from test_api_prodia_async import V1, V2, gated, session, submit, wait_for_state
from test_bad_input import read_response
from waiting import until, wait_for

# --- the sync route: a key's requests in progress ---------------------------------------------


@contextmanager
def gated_sync_server(
    classifier: Classifier, **settings: Any
) -> Iterator[tuple[str, GatedClassifier, Any]]:
    """A sync server for two keys whose model runs only while the gate is open; yields its URL,
    the model and the app."""
    model = GatedClassifier(classifier.loaded, classifier.device, classifier.dtype, classifier.name)
    model.gate.set()
    config = Settings(
        model=classifier.name, served_model_name=MODEL, api_keys=[TOKEN, OTHER_TOKEN], **settings
    )
    engine = Engine(model, max_batch_size=1, max_queue=config.max_queue, limits=config.image_limits)
    app = create_app(engine, config)
    with serve_app(app) as url:
        model.gate.clear()
        model.entered.clear()
        try:
            yield url, model, app
        finally:
            model.gate.set()


def post_sync(url: str, token: str, timeout: float = 30) -> requests.Response:
    return session(token).post(
        f"{url}/v2/job",
        files=job_files(V1, astronaut_jpeg()),
        headers={"Accept": "application/json"},
        timeout=timeout,
    )


def test_a_key_over_its_share_of_sync_requests_gets_429_and_others_get_through(
    classifier: Classifier,
) -> None:
    with (
        gated_sync_server(classifier, key_max_requests=2, max_queue=8) as (url, model, _),
        ThreadPoolExecutor(6) as pool,
    ):

        def queued(count: int) -> bool:
            return metric(url, "nsfwd_queue_size") == count

        # Past its share of 2, key A borrows what nobody uses, up to half the queue in all.
        held = [pool.submit(post_sync, url, TOKEN) for _ in range(4)]
        wait_for(lambda: queued(4), 10, "key A's four requests at the model")
        refused = post_sync(url, TOKEN, timeout=5)  # at once: before the fix it waited in line
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["state"] == {"current": "failed"}
        assert "past its share of this busy server (2)" in refused.json()["error"]
        other = pool.submit(post_sync, url, OTHER_TOKEN)
        wait_for(lambda: queued(5), 10, "key B's request at the model")
        model.gate.set()
        assert other.result().status_code == 200
        assert [future.result().status_code for future in held] == [200] * 4
        assert post_sync(url, TOKEN).status_code == 200  # its slots came back


# --- the async queue: a key's share, stored bytes ---------------------------------------------


@contextmanager
def on_store(request: pytest.FixtureRequest, store: str) -> Iterator[dict[str, Any]]:
    """Settings for a server on ``store``: SQLite in the test's folder, or a fresh PostgreSQL
    database."""
    with ExitStack() as stack:
        options: dict[str, Any] = {}
        if store == "postgresql":
            from postgres import fresh_database

            admin = request.getfixturevalue("postgres_url")
            options["database_url"] = stack.enter_context(fresh_database(admin))
        yield options


STORES = pytest.mark.parametrize("store", ["sqlite", "postgresql"])


@STORES
def test_one_key_flooding_async_jobs_does_not_keep_another_key_out(
    classifier: Classifier, tmp_path: Path, request: pytest.FixtureRequest, store: str
) -> None:
    with (
        on_store(request, store) as options,
        gated(
            classifier, tmp_path, max_async_queued=4, key_max_async_jobs=2, workers=1, **options
        ) as (url, model),
    ):
        flood = [submit(url, token=TOKEN) for _ in range(4)]
        assert [res.status_code for res in flood] == [201, 201, 429, 429]
        refused = flood[-1]
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["state"] == {"current": "failed"}
        assert "this API key has as many async jobs as it may" in refused.json()["error"]
        others = [submit(url, token=OTHER_TOKEN) for _ in range(2)]
        assert [res.status_code for res in others] == [201, 201], others[-1].text
        full = submit(url, token=OTHER_TOKEN)  # the whole queue is still bounded
        assert full.status_code == 429 and "queue is full" in full.json()["error"]
        model.gate.set()
        accepted = [(TOKEN, res) for res in flood[:2]] + [(OTHER_TOKEN, res) for res in others]
        for token, res in accepted:
            assert wait_for_state(url, res.json()["id"], token) == "processed"
        assert submit(url, token=TOKEN).status_code == 201


def stored_input(store_url: str, job_id: str) -> bytes | None:
    """The bytes the store holds for a job's upload (``None``: none)."""

    async def read(store: Store) -> bytes | None:
        upload = await store.predictions.get_input(job_id)
        return None if upload is None else upload.data

    return with_store(store_url, read)


@STORES
def test_stored_uploads_are_capped_and_v1_uploads_dropped_once_classified(
    classifier: Classifier, tmp_path: Path, request: pytest.FixtureRequest, store: str
) -> None:
    image = astronaut_jpeg()
    cap = len(image) * 3 // 2  # room for one upload, not two
    with (
        on_store(request, store) as options,
        gated(classifier, tmp_path, max_stored_upload_bytes=cap, workers=1, **options) as (
            url,
            model,
        ),
    ):
        store_url = Store.from_settings(
            Settings(data_dir=tmp_path, database_url=options.get("database_url"))
        ).url
        first = submit(url, V1, image)
        assert first.status_code == 201, first.text
        job_id = first.json()["id"]
        assert stored_input(store_url, job_id) == image
        full = submit(url, V1, image)
        assert full.status_code == 503, full.text
        assert int(full.headers["retry-after"]) >= 1
        assert "holding as many uploaded images as it may" in full.json()["error"]

        model.gate.set()
        assert wait_for_state(url, job_id) == "processed"
        assert stored_input(store_url, job_id) is None  # v1: classified, so dropped
        labels = session().get(f"{url}/v2/job/async/{job_id}/output/labels.json")
        assert labels.status_code == 200
        job = session().get(f"{url}/v2/job/async/{job_id}/job.json").json()
        assert job["config"]["labels"] == labels.json()

        kept = submit(url, V2, image)  # room again; a v2 job hands its image back, so keeps it
        assert kept.status_code == 201, kept.text
        assert wait_for_state(url, kept.json()["id"]) == "processed"
        served = session().get(f"{url}/v2/job/async/{kept.json()['id']}/output/sunny-day.jpg")
        assert served.content == image
        assert stored_input(store_url, kept.json()["id"]) == image
        assert submit(url, V1, image).status_code == 503


# --- request bodies: the deadline and the upload slots ------------------------------------------


@contextmanager
def body_server(classifier: Classifier, **settings: Any) -> Iterator[str]:
    config = Settings(model=classifier.name, served_model_name=MODEL, api_keys=[TOKEN], **settings)
    with serve_app(create_app(Engine(classifier, limits=config.image_limits), config)) as url:
        yield url


def open_body(url: str, body: bytes, content_type: str, sent: int) -> socket.socket:
    """A POST /v2/job whose head and first ``sent`` body bytes are sent; the rest never is."""
    headers = f"Authorization: Bearer {TOKEN}\r\nContent-Type: {content_type}\r\n"
    return half_sent(url, "/v2/job", headers, len(body), body[:sent])


def good(url: str) -> int:
    return post_sync(url, TOKEN).status_code


def test_a_slow_body_is_cut_off_at_its_deadline_while_others_are_served(
    classifier: Classifier,
) -> None:
    body, content_type = encoded_job(astronaut_jpeg((160, 160)))
    with body_server(classifier, body_timeout_s=1.5) as url:
        started = time.monotonic()
        with open_body(url, body, content_type, 100) as sock:
            answered, offset = False, 100
            while time.monotonic() - started < 6 and offset < len(body):
                # a trickle that never pauses long enough for the idle timeout
                sock.sendall(body[offset : offset + 20])
                offset += 20
                if select.select([sock], [], [], 0.1)[0]:
                    answered = True
                    break
                assert good(url) == 200
            assert answered, f"still reading the trickle after {time.monotonic() - started:.1f} s"
            answer = read_response(sock)
        assert 1.4 < time.monotonic() - started < 4
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
        assert b"did not arrive within 1.5 s" in answer
        assert b"retry-after" not in answer.lower()  # a client fault, not worth sending again
        assert good(url) == 200


def test_full_upload_slots_answer_503_with_retry_after(classifier: Classifier) -> None:
    body, content_type = encoded_job(astronaut_jpeg((160, 160)))
    with body_server(classifier, max_uploads=2) as url, ExitStack() as held:
        for _ in range(2):
            held.enter_context(open_body(url, body, content_type, 500))

        def refused() -> list[requests.Response]:
            res = post_sync(url, TOKEN)
            return [res] if res.status_code == 503 else []  # a 503 Response is falsy itself

        [res] = wait_for(refused, 10, "a request refused for want of an upload slot")
        assert res.headers["retry-after"] == "1"
        assert "as many as it reads at once" in res.json()["error"]
        held.close()  # the slow clients go away: their slots come back
        wait_for(lambda: good(url) == 200, 10, "a request to be served again")


# --- webhook deliveries: round the keys ---------------------------------------------------------


async def finished_for(store: Store, api_key: str, webhook_url: str) -> Prediction:
    """A prediction of ``api_key`` with a webhook, finished as the worker finishes one."""
    created = await store.predictions.create(
        protocol="eachlabs",
        job_type="nsfw-image-detection",
        model="nsfw-image-detection",
        api_key=api_key,
        input_url="https://images.example/photo.jpg",
        webhook_url=webhook_url,
    )
    owner = f"test-worker-{created.id}"
    [claimed] = await store.predictions.claim(owner, 1, 30)
    labels = {"neutral": 0.7, "low": 0.1, "medium": 0.1, "high": 0.1}
    done = await store.predictions.finish(claimed.id, owner, labels=labels, flagged=False)
    assert done is not None
    return done


def test_one_keys_backlog_to_a_slow_receiver_does_not_delay_another_keys_deliveries(
    database: str, host: tuple[str, Host]
) -> None:
    base, receiver = host
    prefix = f"fair-{time.monotonic_ns()}"
    slow = [f"{prefix}-a{index}" for index in range(8)]

    async def main() -> tuple[float, int]:
        async with Store(database, webhook_key_concurrency=2) as store:
            for name in slow:  # key A's deliveries are older, and each takes 3 s
                await finished_for(store, "key-a", f"{base}/hook/{name}?sleep=3")
            await finished_for(store, "key-b", f"{base}/hook/{prefix}-b")
            policy = FetchPolicy(
                allow_networks=ALLOWED, allow_http=True, timeouts=FetchTimeouts(connect=2, read=5)
            )
            sender = WebhookSender(
                store, SECRET, policy, retry_delays=[60], poll_s=0.1, concurrency=4
            )
            started = time.monotonic()
            await sender.start()
            try:
                await until(lambda: receiver.received(f"{prefix}-b"), 2.5, "key B's delivery")
                waited = time.monotonic() - started
                await asyncio.sleep(0.3)  # would another of A's start while two are held?
                return waited, sum(len(receiver.received(name)) for name in slow)
            finally:
                await sender.stop()

    waited, a_started = asyncio.run(main())
    assert waited < 2.5
    assert a_started == 2  # key A's share: two at once, however many it has waiting


def test_workers_claim_round_the_keys_so_a_backlog_does_not_hold_up_another_key(
    database: str,
) -> None:
    async def main() -> list[str]:
        async with Store(database) as store:
            for key in ["key-a"] * 6 + ["key-b"]:  # A's backlog is older than B's one job
                await store.predictions.create(
                    protocol="prodia",
                    job_type=V1,
                    model=MODEL,
                    api_key=key,
                    input_url="https://images.example/photo.jpg",
                )
            first = await store.predictions.claim("worker", 2, 30)
            second = await store.predictions.claim("worker", 2, 30)
            return [str(p.api_key) for p in [*first, *second]]

    claimed = asyncio.run(main())
    assert sorted(claimed[:2]) == ["key-a", "key-b"]  # B's job is in the first claim
    assert claimed[2:] == ["key-a", "key-a"]


def test_the_fairness_settings_have_sane_defaults() -> None:
    settings = Settings()
    assert settings.key_requests_limit == 8  # an eighth of the engine's queue of 64
    assert settings.key_max_async_jobs == 100  # a tenth of the async queue
    assert settings.max_stored_upload_bytes == 2 * 1024**3
    assert settings.max_uploads == 32
    assert settings.body_timeout_s == 60
    assert settings.webhook_key_concurrency == 4
    assert Settings(max_queue=4).key_requests_limit == 1
    assert settings.key_requests_busy_at == 16  # half the upload slots: one key never holds all
    assert Settings(max_queue=1).key_requests_busy_at == 2
