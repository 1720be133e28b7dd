"""The engine over a Unix socket: a RemoteEngine answers as the local engine would, errors and
all, and a caller that gives up cancels its request in the inference process."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from gates import simple_gated_classifier
from judging import labels_of
from noise import noise_png
from nsfwd.banks.pdq import hash_picture
from nsfwd.engine import EngineClosedError, QueueFullError
from nsfwd.engine.batcher import Engine
from nsfwd.engine.remote import InferenceServer, RemoteEngine
from nsfwd.intake import ImageError, ImageLimits, load_image, load_prepared
from nsfwd.models.classifier import Classifier
from waiting import until


@dataclass
class Served:
    """An engine on a socket and a RemoteEngine connected to it."""

    client: RemoteEngine
    engine: Engine
    server: InferenceServer
    gate: threading.Event | None = None
    """Holds every batch while closed (see :func:`held`)."""


@asynccontextmanager
async def remote(engine: Engine, folder: Path) -> AsyncIterator[Served]:
    """``engine`` started and served on a socket in ``folder``, and a RemoteEngine on it."""
    await engine.start()
    server = InferenceServer(engine, folder / "inference.sock")
    await server.start()
    client = RemoteEngine(
        server.path,
        model_name=engine.model_name,
        max_batch_size=engine.max_batch_size,
        max_queue=engine.max_queue,
        limits=engine.limits,
    )
    await client.start()
    try:
        yield Served(client, engine, server)
    finally:
        await client.stop()
        await server.stop()
        await engine.stop()


@asynccontextmanager
async def held(classifier: Classifier, folder: Path, max_queue: int) -> AsyncIterator[Served]:
    """:func:`remote` on one-image batches that wait at a closed gate until the block ends."""
    gated = simple_gated_classifier(classifier)
    assert gated.gate is not None
    gated.gate.set()  # let the warm-up through
    async with remote(Engine(gated, max_batch_size=1, max_queue=max_queue), folder) as served:
        gated.gate.clear()
        served.gate = gated.gate
        try:
            yield served
        finally:
            gated.gate.set()


def run(classifier: Classifier, folder: Path, test: Callable[..., Awaitable[None]]) -> None:
    async def main() -> None:
        async with remote(Engine(classifier, max_batch_size=4, max_queue=8), folder) as served:
            await test(served.client, served.engine)

    asyncio.run(main())


def test_remote_labels_are_the_local_labels(classifier: Classifier, tmp_path: Path) -> None:
    images = [noise_png(i) for i in range(6)]
    expected = [
        classifier.classify([Image.open(io.BytesIO(data)).convert("RGB")])[0] for data in images
    ]

    async def test(client: RemoteEngine, engine: Engine) -> None:
        assert client.ready and client.model_name == classifier.name
        results = await asyncio.gather(*(labels_of(client, data) for data in images))
        for got, want in zip(results, expected, strict=True):
            assert list(got) == list(want)
            for label, prob in want.items():
                assert got[label] == pytest.approx(prob, abs=1e-5)

    run(classifier, tmp_path, test)


def test_image_errors_arrive_with_their_type_and_message(
    classifier: Classifier, tmp_path: Path
) -> None:
    good = noise_png(3)
    want = classifier.classify([Image.open(io.BytesIO(good)).convert("RGB")])[0]

    async def test(client: RemoteEngine, engine: Engine) -> None:
        for bad in (noise_png(1)[:300], noise_png(2, size=(100, 100)), b"GIF89a" + bytes(64)):
            with pytest.raises(ImageError) as local:
                load_image(bad, engine.limits)
            with pytest.raises(ImageError) as forwarded:
                await labels_of(client, bad)
            assert type(forwarded.value) is type(local.value)
            assert forwarded.value.message == local.value.message
        got = await labels_of(client, good)  # and the connection lives on, answering right
        assert sum(got.values()) == pytest.approx(1.0, abs=1e-5)
        assert got == pytest.approx(want, abs=1e-5)

    run(classifier, tmp_path, test)


def test_a_full_engine_answers_queue_full_with_retry_after(
    classifier: Classifier, tmp_path: Path
) -> None:
    async def main() -> None:
        async with held(classifier, tmp_path, max_queue=2) as served:
            held_back = [
                asyncio.create_task(labels_of(served.client, noise_png(i))) for i in range(2)
            ]
            await until(lambda: served.engine.in_flight == 2)
            with pytest.raises(QueueFullError) as refused:
                await labels_of(served.client, noise_png(9))
            assert refused.value.retry_after >= 1
            for task in held_back:
                task.cancel()

    asyncio.run(main())


def test_a_cancelled_call_is_dropped_by_the_inference_process(
    classifier: Classifier, tmp_path: Path
) -> None:
    async def main() -> None:
        async with held(classifier, tmp_path, max_queue=8) as served:
            engine = served.engine
            registry = engine.metrics.registry
            first = asyncio.create_task(labels_of(served.client, noise_png(1)))
            await until(lambda: registry.get_sample_value("nsfwd_queue_seconds_count") == 1.0)
            second = asyncio.create_task(labels_of(served.client, noise_png(2)))
            # The first is on the model, the second decoded and queued behind it: cancelling it
            # now is a drop (cancelled while decoding, it would never reach the queue).
            await until(lambda: engine.queued == 1)
            second.cancel()
            await until(lambda: engine.in_flight == 1)  # the cancel arrived
            assert served.gate is not None
            served.gate.set()
            await first
            assert second.cancelled()
            await until(lambda: registry.get_sample_value("nsfwd_dropped_total") == 1.0)

    asyncio.run(main())


def test_losing_the_inference_process_fails_waiting_calls_and_later_ones(
    classifier: Classifier, tmp_path: Path
) -> None:
    async def main() -> None:
        async with held(classifier, tmp_path, max_queue=8) as served:
            waiting = asyncio.create_task(labels_of(served.client, noise_png(1)))
            await until(lambda: served.engine.in_flight == 1)
            await served.server.stop()  # the inference process goes away
            with pytest.raises(EngineClosedError, match="went away"):
                await waiting
            assert not served.client.ready
            with pytest.raises(EngineClosedError):
                await labels_of(served.client, noise_png(2))

    asyncio.run(main())


def test_a_missing_inference_process_is_a_clear_error(tmp_path: Path) -> None:
    client = RemoteEngine(
        tmp_path / "nothing.sock",
        model_name="m",
        max_batch_size=1,
        max_queue=1,
        limits=ImageLimits(),
        connect_timeout_s=0.3,
    )
    with pytest.raises(EngineClosedError, match="cannot reach the inference process"):
        asyncio.run(client.start())


def test_a_check_over_the_socket_decodes_once_for_the_classify_after_it(
    classifier: Classifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nsfwd.intake.checked

    decoded: list[bytes] = []

    def counting(data: bytes, *args: Any) -> Any:
        decoded.append(data)
        return load_prepared(data, *args)

    monkeypatch.setattr(nsfwd.intake.checked, "load_prepared", counting)
    image = noise_png(7)

    async def test(client: RemoteEngine, engine: Engine) -> None:
        await client.check(image)
        assert len(decoded) == 1
        assert await labels_of(client, image) == await labels_of(engine, image)
        assert len(decoded) == 2  # the remote classify used the checked pixels; the local one not
        with pytest.raises(ImageError, match="unsupported image format"):
            await client.check(b"%PDF-1.7\n" + bytes(64))
        # hashed for the banks: the same hashes as the engine's own, and one decode still
        hashes = await client.check(image, hashed=True)
        assert hashes == await engine.check(image, hashed=True) and len(hashes) == 1
        assert hashes[0].hash == hash_picture(load_image(image)).hash
        decodes = len(decoded)
        await labels_of(client, image)
        assert len(decoded) == decodes

    run(classifier, tmp_path, test)
