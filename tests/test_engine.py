"""The dynamic batcher: real batches under concurrency, backpressure, dropped clients."""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from PIL import Image

from gates import simple_gated_classifier, start_shut
from judging import labels_of
from noise import noise_png
from nsfwd.engine import EngineClosedError, ModelFailedError, QueueFullError
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
        await start_shut(engine, gated.gate)  # type: ignore[arg-type]
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
        await start_shut(engine, gated.gate)  # type: ignore[arg-type]
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


def translucent_animation(frames: int = 2) -> bytes:
    """An APNG of half-transparent frames: three pictures a frame (white, black, grey pages)."""
    pictures = [Image.new("RGBA", (160, 160), (40 * i, 0, 0, 128)) for i in range(frames)]
    out = io.BytesIO()
    pictures[0].save(out, "PNG", save_all=True, append_images=pictures[1:], duration=100)
    return out.getvalue()


def test_admission_counts_pictures_not_requests(classifier: Classifier) -> None:
    """A translucent 2-frame APNG is 6 pictures. Alone it is taken though max_queue is 4;
    while it waits, nothing more fits. The engine counted requests: 1 of 4, so it took more."""
    gated = simple_gated_classifier(classifier)

    async def main() -> None:
        engine = Engine(gated, max_batch_size=8, max_queue=4)
        await start_shut(engine, gated.gate)  # type: ignore[arg-type]
        big = asyncio.create_task(engine.judge(translucent_animation()))
        await until(lambda: engine.in_flight == 6, what="the animation's six pictures")
        with pytest.raises(QueueFullError):
            await labels_of(engine, noise_png(1))
        gated.gate.set()  # type: ignore[union-attr]
        assert (await big).frames_judged == 2
        assert engine.in_flight == 0
        gated.gate.clear()  # type: ignore[union-attr]
        small = asyncio.create_task(labels_of(engine, noise_png(2)))
        await until(lambda: engine.in_flight == 1, what="a still image's one picture")
        with pytest.raises(QueueFullError):  # decoded, its 6 pictures do not fit beside it
            await engine.judge(translucent_animation())
        gated.gate.set()  # type: ignore[union-attr]
        await small
        await engine.stop()

    asyncio.run(main())


class FailsOnBigBatches(Classifier):
    """The real model, but a batch of more than two pictures raises (say, out of memory)."""

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.shape[0] > 2:
            raise RuntimeError("CUDA out of memory (pretend)")
        return super().predict(batch)


def test_a_failed_batch_runs_again_in_halves(classifier: Classifier) -> None:
    """Four requests in one batch that the model fails on: each is answered, from smaller
    batches. Before, all four failed with the batch's error."""
    gated = simple_gated_classifier(classifier)

    class GatedFailing(FailsOnBigBatches):
        def predict(self, batch: torch.Tensor) -> torch.Tensor:
            gated.gate.wait(timeout=30)  # type: ignore[union-attr]
            return super().predict(batch)

    model = GatedFailing(gated.loaded, gated.device, gated.dtype, gated.name)

    async def main() -> None:
        engine = Engine(model, max_batch_size=8, max_queue=16)
        await start_shut(engine, gated.gate)  # type: ignore[arg-type]
        tasks = [asyncio.create_task(labels_of(engine, noise_png(i))) for i in range(4)]
        await until(lambda: engine.queued == 4 or engine.in_flight == 4, what="four queued")
        gated.gate.set()  # type: ignore[union-attr]
        results = await asyncio.gather(*tasks)
        assert all(set(labels) == set(classifier.labels) for labels in results)
        await engine.stop()

    asyncio.run(main())


class AlwaysFails(Classifier):
    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("device lost")


def test_an_image_the_model_fails_on_alone_gets_model_failed_error(
    classifier: Classifier,
) -> None:
    model = AlwaysFails(classifier.loaded, classifier.device, classifier.dtype, classifier.name)

    async def main() -> None:
        engine = Engine(model, max_batch_size=4)
        engine.ready = True  # no warm-up: it would fail
        engine._queue = asyncio.Queue()
        engine._infer_pool = ThreadPoolExecutor(1)
        engine._batcher = asyncio.create_task(engine._run_batches())
        with pytest.raises(ModelFailedError, match="device lost"):
            await labels_of(engine, noise_png(1))
        assert engine.in_flight == 0
        await engine.stop()

    asyncio.run(main())
