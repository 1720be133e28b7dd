"""The dynamic batcher: real batches under concurrency, backpressure, dropped clients."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

from gates import simple_gated_classifier
from judging import labels_of
from noise import noise_png
from nsfwd.engine import EngineClosedError, QueueFullError
from nsfwd.engine.batcher import Engine
from nsfwd.intake import ImageError
from nsfwd.models.classifier import Classifier
from waiting import until


def _histogram_mean(engine: Engine) -> float:
    registry = engine.metrics.registry
    total = registry.get_sample_value("nsfwd_batch_size_sum") or 0.0
    count = registry.get_sample_value("nsfwd_batch_size_count") or 0.0
    return total / count


def test_concurrent_requests_form_batches_with_correct_results(classifier: Classifier) -> None:
    images = [noise_png(i) for i in range(24)]
    expected = [
        classifier.classify([Image.open(io.BytesIO(data)).convert("RGB")])[0] for data in images
    ]

    async def main() -> list[dict[str, float]]:
        engine = Engine(classifier, max_batch_size=8, max_queue=64)
        await engine.start()
        try:
            return await asyncio.gather(*(labels_of(engine, data) for data in images))
        finally:
            mean = _histogram_mean(engine)
            await engine.stop()
            assert mean > 1.0, f"mean batch size {mean}: requests were not batched"

    results = asyncio.run(main())
    for got, want in zip(results, expected, strict=True):
        for label, prob in want.items():
            assert got[label] == pytest.approx(prob, abs=1e-5)


def test_a_full_queue_is_refused_with_retry_after(classifier: Classifier) -> None:
    gated = simple_gated_classifier(classifier)

    async def main() -> None:
        engine = Engine(gated, max_batch_size=2, max_queue=3)
        gated.gate.set()  # type: ignore[union-attr]
        await engine.start()
        gated.gate.clear()  # type: ignore[union-attr]
        tasks = [asyncio.create_task(labels_of(engine, noise_png(i))) for i in range(3)]
        await until(lambda: engine.in_flight == 3, what="the three images to be admitted")
        with pytest.raises(QueueFullError) as refused:
            await labels_of(engine, noise_png(99))
        assert refused.value.retry_after >= 1
        assert engine.metrics.registry.get_sample_value("nsfwd_rejected_total") == 1.0
        gated.gate.set()  # type: ignore[union-attr]
        assert len(await asyncio.gather(*tasks)) == 3
        await engine.stop()

    asyncio.run(main())


def test_cancelled_requests_are_dropped_before_inference(classifier: Classifier) -> None:
    gated = simple_gated_classifier(classifier)

    async def main() -> None:
        engine = Engine(gated, max_batch_size=1, max_queue=16)
        gated.gate.set()  # type: ignore[union-attr]
        await engine.start()
        gated.gate.clear()  # type: ignore[union-attr]
        registry = engine.metrics.registry
        first = asyncio.create_task(labels_of(engine, noise_png(1)))  # holds the model at the gate
        await until(lambda: registry.get_sample_value("nsfwd_queue_seconds_count") == 1.0)
        doomed = [asyncio.create_task(labels_of(engine, noise_png(i))) for i in range(2, 6)]
        # Decoded and queued behind the first: cancelled now, each is a drop (cancelled while
        # decoding, it would never reach the queue).
        await until(lambda: engine.queued == 4, what="the four images to be queued")
        for task in doomed:
            task.cancel()
        gated.gate.set()  # type: ignore[union-attr]
        await first
        survivor = await labels_of(engine, noise_png(7))
        assert set(survivor) == set(classifier.labels)
        assert registry.get_sample_value("nsfwd_dropped_total") == 4.0
        assert engine.in_flight == 0
        await engine.stop()

    asyncio.run(main())


def test_bad_images_raise_typed_errors_and_the_engine_goes_on(classifier: Classifier) -> None:
    async def main() -> None:
        engine = Engine(classifier)
        await engine.start()
        with pytest.raises(ImageError):
            await labels_of(engine, b"definitely not an image")
        assert set(await labels_of(engine, noise_png(3))) == set(classifier.labels)
        assert engine.in_flight == 0
        await engine.stop()

    asyncio.run(main())


def test_a_stopped_engine_refuses_work(classifier: Classifier) -> None:
    async def main() -> None:
        engine = Engine(classifier)
        with pytest.raises(EngineClosedError):
            await labels_of(engine, noise_png(1))
        await engine.start()
        assert engine.ready
        await engine.stop()
        assert not engine.ready
        with pytest.raises(EngineClosedError):
            await labels_of(engine, noise_png(1))

    asyncio.run(main())
