"""The worker on a real engine and real stores: uploads and URLs in, labels or messages out;
leases renewed, lost, taken over and handed back; replicas sharing one queue."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from PIL import Image
from sqlalchemy import update

from gates import simple_gated_classifier
from noise import noise_png
from nsfwd.engine.batcher import Engine, Trace
from nsfwd.engine.served import ServedModels
from nsfwd.fetch import FetchPolicy
from nsfwd.jobs import Prediction, Store, Upload
from nsfwd.jobs.database import database_url
from nsfwd.jobs.schema import predictions
from nsfwd.jobs.worker import Worker, flagged
from nsfwd.models.classifier import Classifier
from nsfwd.timeline import VideoOptions
from nsfwd.verdict import Judgement, Labels, Match, Policy
from waiting import until

T = TypeVar("T")
PNG = "image/png"


class CountingEngine(Engine):
    """The real engine, counting every image it is asked to classify."""

    def __init__(self, classifier: Classifier, **options: Any) -> None:
        super().__init__(classifier, **options)
        self.calls: list[bytes] = []

    async def judge(
        self,
        data: bytes,
        policy: Policy | None = None,
        trace: Trace | None = None,
        video: VideoOptions | None = None,
    ) -> Judgement:
        self.calls.append(data)
        return await super().judge(data, policy, trace, video)


def expected_labels(classifier: Classifier, data: bytes) -> Labels:
    return classifier.classify([Image.open(io.BytesIO(data)).convert("RGB")])[0]


async def all_finished(store: Store, ids: list[str]) -> list[Prediction]:
    found = [await store.predictions.get(i) for i in ids]
    return [p for p in found if p is not None and p.finished]


async def upload(store: Store, data: bytes, filename: str = "photo.png", **fields: Any) -> str:
    prediction = await store.predictions.create(
        protocol="prodia",
        job_type="inference.vit.img2label.v1",
        model="m",
        upload=Upload(data, filename, PNG),
        **fields,
    )
    return prediction.id


def run(
    url: str,
    engine: Engine,
    body: Callable[[Store, Worker], Awaitable[T]],
    store_options: dict[str, Any] | None = None,
    **worker_options: Any,
) -> T:
    """Open a store, start ``engine`` and a worker on them, run ``body``, stop everything."""

    async def main() -> T:
        async with Store(url, **(store_options or {})) as store:
            await engine.start()
            worker = Worker(
                store, ServedModels({"m": engine}), **({"concurrency": 4} | worker_options)
            )
            await worker.start()
            try:
                return await body(store, worker)
            finally:
                await worker.stop()
                await engine.stop()

    return asyncio.run(main())


def test_uploads_are_classified_with_the_engine(classifier: Classifier, tmp_path: Path) -> None:
    images = [noise_png(seed) for seed in range(6)]
    engine = CountingEngine(classifier, max_batch_size=4)

    async def body(store: Store, worker: Worker) -> list[Prediction]:
        ids = [await upload(store, data) for data in images]
        await until(lambda: _count(all_finished(store, ids), 6), what="predictions")
        return [p for p in await all_finished(store, ids)]

    done = run(database_url(tmp_path), engine, body)
    assert len(engine.calls) == 6
    for prediction, data in zip(done, images, strict=True):
        assert prediction.status == "succeeded" and prediction.error is None
        assert prediction.attempts == 1
        assert prediction.labels is not None
        assert list(prediction.labels) == list(classifier.labels)
        for label, prob in expected_labels(classifier, data).items():
            assert prediction.labels[label] == pytest.approx(prob, abs=1e-5)
        assert prediction.flagged == Policy().flagged(prediction.labels)
        assert prediction.predict_time is not None and prediction.predict_time > 0
        assert prediction.started_at is not None and prediction.finished_at is not None
        assert prediction.created_at <= prediction.started_at <= prediction.finished_at


def test_bad_uploads_fail_with_the_image_error(classifier: Classifier, tmp_path: Path) -> None:
    engine = Engine(classifier)

    async def body(store: Store, worker: Worker) -> list[Prediction]:
        ids = [
            await upload(store, b"%PDF-1.7\n" + bytes(100), "page.pdf"),
            await upload(store, noise_png(1, size=(64, 64)), "tiny.png"),
        ]
        await until(lambda: _count(all_finished(store, ids), 2))
        return await all_finished(store, ids)

    pdf, tiny = run(database_url(tmp_path), engine, body)
    assert pdf.status == "failed" and pdf.labels is None
    assert pdf.error is not None and pdf.error.startswith("input 'page.pdf': unsupported")
    assert "PDF" in pdf.error
    assert tiny.error is not None and tiny.error.startswith("input 'tiny.png': ")
    assert "128" in tiny.error


@contextmanager
def image_host(files: dict[str, tuple[bytes, str]]) -> Iterator[str]:
    """A plain-HTTP server on 127.0.0.2 serving ``files`` (path -> body, content type)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path not in files:
                self.send_error(404)
                return
            body, content_type = files[self.path]
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.2:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_url_inputs_are_fetched_under_the_policy(classifier: Classifier, tmp_path: Path) -> None:
    photo = noise_png(7)
    files = {"/photo.png": (photo, PNG), "/page.html": (b"<html>hi</html>", "text/html")}
    policy = FetchPolicy(allow_networks=["127.0.0.2/32"], allow_http=True)
    with image_host(files) as host:
        urls = [
            f"{host}/photo.png",
            f"{host}/missing.png",
            f"{host}/page.html",
            host.replace("127.0.0.2", "127.0.0.1") + "/photo.png",  # loopback, not allowed
        ]

        async def body(store: Store, worker: Worker) -> list[Prediction]:
            ids = []
            for url in urls:
                created = await store.predictions.create(
                    protocol="eachlabs", job_type="nsfw-image-detection", model="m", input_url=url
                )
                ids.append(created.id)
            await until(lambda: _count(all_finished(store, ids), len(ids)))
            return await all_finished(store, ids)

        good, missing, page, private = run(
            database_url(tmp_path), Engine(classifier), body, fetch_policy=policy
        )
    assert good.status == "succeeded" and good.labels is not None
    for label, prob in expected_labels(classifier, photo).items():
        assert good.labels[label] == pytest.approx(prob, abs=1e-5)
    assert missing.status == "failed" and missing.error is not None and "404" in missing.error
    assert page.error is not None and page.error.startswith(f"the image at {urls[2]}: ")
    assert "unsupported" in page.error
    assert private.error is not None and "127.0.0.1" in private.error
    assert "NSFWD_FETCH_ALLOW_NETWORKS" in private.error


def test_without_a_fetch_policy_url_inputs_fail_with_a_message(
    classifier: Classifier, tmp_path: Path
) -> None:
    async def body(store: Store, worker: Worker) -> Prediction:
        created = await store.predictions.create(
            protocol="eachlabs", job_type="x", model="m", input_url="https://example.com/a.png"
        )
        await until(lambda: _count(all_finished(store, [created.id]), 1))
        (done,) = await all_finished(store, [created.id])
        return done

    done = run(database_url(tmp_path), Engine(classifier), body)
    assert done.error == "this server does not fetch image URLs; upload the image instead"


def test_replicas_share_the_queue_without_running_anything_twice(
    classifier: Classifier, database: str
) -> None:
    """Two replicas (each its own store connections and worker) on one database, one engine."""
    images = [noise_png(seed) for seed in range(12)]
    engine = CountingEngine(classifier, max_batch_size=4)

    async def main() -> list[Prediction]:
        stores = [Store(database), Store(database)]
        await asyncio.gather(*(store.open() for store in stores))
        await engine.start()
        workers = [
            Worker(store, ServedModels({"m": engine}), concurrency=3, poll_s=0.05)
            for store in stores
        ]
        try:
            ids = [await upload(stores[i % 2], data) for i, data in enumerate(images)]
            await asyncio.gather(*(worker.start() for worker in workers))
            await until(lambda: _count(all_finished(stores[0], ids), len(ids)))
            return await all_finished(stores[0], ids)
        finally:
            await asyncio.gather(*(worker.stop() for worker in workers))
            await engine.stop()
            await asyncio.gather(*(store.close() for store in stores))

    done = asyncio.run(main())
    assert len(engine.calls) == len(images), "an image was classified twice"
    assert sorted(engine.calls) == sorted(images)
    assert all(p.status == "succeeded" and p.attempts == 1 for p in done)


def test_a_dead_workers_predictions_are_taken_over_after_the_lease(
    classifier: Classifier, tmp_path: Path
) -> None:
    url = database_url(tmp_path)

    async def crash() -> list[str]:
        async with Store(url) as store:
            ids = [await upload(store, noise_png(i)) for i in range(2)]
            claimed = await store.predictions.claim("dead", 2, 0.5)  # ... and it never returns
            assert len(claimed) == 2
            return ids

    ids = asyncio.run(crash())
    started = time.monotonic()

    async def body(store: Store, worker: Worker) -> list[Prediction]:
        await until(lambda: _count(all_finished(store, ids), 2))
        return await all_finished(store, ids)

    done = run(url, Engine(classifier), body, lease_s=0.5, poll_s=0.05)
    assert time.monotonic() - started < 15
    assert all(p.status == "succeeded" and p.attempts == 2 for p in done)


def test_a_prediction_out_of_attempts_is_failed_not_run(
    classifier: Classifier, tmp_path: Path
) -> None:
    url = database_url(tmp_path)
    engine = CountingEngine(classifier)

    async def body(store: Store, worker: Worker) -> Prediction:
        await until(lambda: _count(all_finished(store, [prediction_id]), 1))
        (done,) = await all_finished(store, [prediction_id])
        return done

    async def crash_twice() -> str:
        async with Store(url) as store:
            prediction_id = await upload(store, noise_png(1))
            for _ in range(2):
                await store.predictions.claim("crashing", 1, 0.01)
                await asyncio.sleep(0.05)
            return prediction_id

    prediction_id = asyncio.run(crash_twice())
    done = run(url, engine, body, store_options={"max_attempts": 2}, lease_s=0.5, poll_s=0.05)
    assert done.status == "failed" and engine.calls == []
    assert done.error == "the server stopped while running this prediction 2 times; giving up"


def test_leases_are_renewed_while_a_slow_prediction_runs(
    classifier: Classifier, tmp_path: Path
) -> None:
    gated = simple_gated_classifier(classifier)
    assert gated.gate is not None
    gated.gate.set()
    engine = Engine(gated)

    async def body(store: Store, worker: Worker) -> tuple[Prediction, list[Prediction]]:
        assert gated.gate is not None
        gated.gate.clear()
        prediction_id = await upload(store, noise_png(1))
        await until(lambda: _running(store, prediction_id))
        stolen = []
        for _ in range(6):  # 4.5 s: three leases' worth
            await asyncio.sleep(0.75)
            stolen += await store.predictions.claim("thief", 5, 1.5)
        gated.gate.set()
        await until(lambda: _count(all_finished(store, [prediction_id]), 1))
        (done,) = await all_finished(store, [prediction_id])
        return done, stolen

    # Leases long enough that a renewal (every third of one) survives a loaded machine.
    done, stolen = run(database_url(tmp_path), engine, body, lease_s=1.5, poll_s=0.05)
    assert stolen == []
    assert done.status == "succeeded" and done.attempts == 1


def test_a_worker_that_loses_its_lease_drops_its_run(
    classifier: Classifier, tmp_path: Path
) -> None:
    gated = simple_gated_classifier(classifier)
    assert gated.gate is not None
    gated.gate.set()
    engine = Engine(gated)
    url = database_url(tmp_path)

    async def body(store: Store, worker: Worker) -> Prediction:
        assert gated.gate is not None
        gated.gate.clear()
        prediction_id = await upload(store, noise_png(1))
        await until(lambda: _running(store, prediction_id))
        from nsfwd.jobs.database import create_engine

        database = create_engine(url)  # another replica takes it over behind the worker's back
        async with database.begin() as connection:
            await connection.execute(
                update(predictions)
                .where(predictions.c.id == prediction_id)
                .values(lease_owner="thief")
            )
        await database.dispose()
        await until(lambda: _no_running(worker), what="the run to be dropped")
        gated.gate.set()
        assert await store.predictions.finish(prediction_id, "thief", error="the thief's")
        await asyncio.sleep(0.3)
        found = await store.predictions.get(prediction_id)
        assert found is not None
        return found

    done = run(url, engine, body, lease_s=0.6, poll_s=0.05)
    assert done.status == "failed" and done.error == "the thief's"


def test_stopping_hands_running_predictions_back(classifier: Classifier, tmp_path: Path) -> None:
    gated = simple_gated_classifier(classifier)
    assert gated.gate is not None
    gated.gate.set()
    url = database_url(tmp_path)

    async def main() -> list[Prediction]:
        async with Store(url) as store:
            engine = Engine(gated, max_batch_size=1)
            await engine.start()
            assert gated.gate is not None
            gated.gate.clear()
            worker = Worker(store, ServedModels({"m": engine}), concurrency=2, poll_s=0.05)
            await worker.start()
            ids = [await upload(store, noise_png(i)) for i in range(3)]
            await until(lambda: _processing_count(store, ids, 2))
            await worker.stop()
            gated.gate.set()
            await engine.stop()
            found = [await store.predictions.get(i) for i in ids]
            return [p for p in found if p is not None]

    after = asyncio.run(main())
    assert [p.status for p in after] == ["queued"] * 3
    assert all(p.attempts == 0 and p.lease_owner is None for p in after)


def test_new_work_wakes_the_worker_at_once(classifier: Classifier, tmp_path: Path) -> None:
    async def body(store: Store, worker: Worker) -> float:
        await asyncio.sleep(0.2)  # the worker is idle, waiting for its (long) poll
        started = time.monotonic()
        prediction_id = await upload(store, noise_png(1))
        await until(lambda: _count(all_finished(store, [prediction_id]), 1))
        return time.monotonic() - started

    assert run(database_url(tmp_path), Engine(classifier), body, poll_s=30) < 5


def test_expired_results_are_purged(classifier: Classifier, tmp_path: Path) -> None:
    async def body(store: Store, worker: Worker) -> None:
        prediction_id = await upload(store, noise_png(1))
        await until(lambda: _count(all_finished(store, [prediction_id]), 1))
        await until(lambda: _gone(store, prediction_id), what="the purge")

    run(
        database_url(tmp_path),
        Engine(classifier),
        body,
        store_options={"result_ttl_s": 0.2},
        purge_every_s=0.1,
    )


def test_a_predictions_own_policy_decides_its_verdict_over_the_servers(
    classifier: Classifier, tmp_path: Path
) -> None:
    """What a prediction carries (its API key's policy and threshold) wins; what it leaves
    unset, and a value that is not a policy at all, comes from the worker's."""
    own: dict[str, dict[str, Any]] = {
        "strict at 0": {"policy": "strict", "threshold": 0.0},
        "threshold 0": {"threshold": 0.0},
        "lenient": {"policy": "lenient"},
        "none": {},
        "hand-edited": {"policy": "loose", "threshold": 0.0},  # the store does not check
    }

    async def body(store: Store, worker: Worker) -> dict[str, bool | None]:
        ids = {name: await upload(store, noise_png(1), **fields) for name, fields in own.items()}
        await until(lambda: _count(all_finished(store, list(ids.values())), len(ids)))
        done = {p.id: p for p in await all_finished(store, list(ids.values()))}
        return {name: done[ids[name]].flagged for name in own}

    server = Policy("strict", 1.0)  # never flags: a score is never above 1
    verdicts = run(database_url(tmp_path), Engine(classifier), body, policy=server)
    assert verdicts == {
        "strict at 0": True,
        "threshold 0": True,  # strict from the server, at the prediction's 0
        "lenient": False,  # lenient at the server's 1
        "none": False,
        "hand-edited": False,  # not a policy: the server's
    }


def test_the_verdict_follows_the_moderate_policy_and_a_bank_match_flags_anyway() -> None:
    assert flagged(Judgement({"neutral": 0.2, "low": 0.2, "medium": 0.3, "high": 0.3})) is True
    assert flagged(Judgement({"neutral": 0.5, "low": 0.3, "medium": 0.1, "high": 0.1})) is False
    assert flagged(Judgement({"normal": 0.1, "nsfw": 0.9})) is True
    assert flagged(Judgement({"cat": 0.5, "dog": 0.5})) is None
    matched = Judgement({"normal": 1.0, "nsfw": 0.0}, match=Match("known", "0" * 64, 3))
    assert flagged(matched, Policy("strict", 1.0)) is True


async def _count(found: Awaitable[list[Prediction]], expected: int) -> bool:
    return len(await found) == expected


async def _running(store: Store, prediction_id: str) -> bool:
    prediction = await store.predictions.get(prediction_id)
    return prediction is not None and prediction.status == "processing"


async def _processing_count(store: Store, ids: list[str], expected: int) -> bool:
    found = [await store.predictions.get(i) for i in ids]
    return sum(p is not None and p.status == "processing" for p in found) == expected


async def _no_running(worker: Worker) -> bool:
    return worker.running == 0


async def _gone(store: Store, prediction_id: str) -> bool:
    return await store.predictions.get(prediction_id) is None


class FailsOnce(Classifier):
    """The real model, but its first batch raises (a transient out-of-memory error)."""

    failures = 0

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("CUDA out of memory (pretend)")
        return super().predict(batch)


def test_a_model_failure_lets_the_job_run_again(classifier: Classifier, tmp_path: Path) -> None:
    """A model that fails once: the job runs again once its lease runs out, and succeeds.
    Before, the batch's error failed the job for good."""
    model = FailsOnce(classifier.loaded, classifier.device, classifier.dtype, classifier.name)
    engine = Engine(model)

    async def body(store: Store, worker: Worker) -> Prediction:
        model.failures = 1  # the warm-up is past
        prediction_id = await upload(store, noise_png(1))
        await until(lambda: _count(all_finished(store, [prediction_id]), 1), timeout=20)
        (done,) = await all_finished(store, [prediction_id])
        return done

    done = run(database_url(tmp_path), engine, body, lease_s=0.5, poll_s=0.05)
    assert done.status == "succeeded" and done.attempts == 2, done


def test_a_model_that_keeps_failing_fails_the_job_with_a_message(
    classifier: Classifier, tmp_path: Path
) -> None:
    model = FailsOnce(classifier.loaded, classifier.device, classifier.dtype, classifier.name)
    engine = Engine(model)

    async def body(store: Store, worker: Worker) -> Prediction:
        model.failures = 10
        prediction_id = await upload(store, noise_png(1))
        await until(lambda: _count(all_finished(store, [prediction_id]), 1), timeout=20)
        (done,) = await all_finished(store, [prediction_id])
        return done

    done = run(database_url(tmp_path), engine, body, store_options={"max_attempts": 2},
               lease_s=0.5, poll_s=0.05)  # fmt: skip
    assert done.status == "failed" and done.attempts == 2
    assert done.error is not None and "model failed on this image in each of 2" in done.error
