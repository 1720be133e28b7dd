"""The engine: a dynamic batcher between many concurrent requests and one model.

Path of an upload: admission (a bounded count of pictures; over it, :class:`QueueFullError` and
a 429) -> decode, validate and preprocess on the bounded ``decode`` pool
(:mod:`nsfwd.engine.pools`: off the event loop, under a deadline, a late or abandoned decode
holding no slot) into what viewers see (every judged frame, over each page and in each colours a
viewer may see: :mod:`nsfwd.intake.views`) -> admission of the rest of its pictures -> the queue
-> the batcher, which whenever the model is free takes everything queued (up to
``max_batch_size`` pictures, waiting at most ``batch_wait_ms`` for more; an image's pictures stay
in one batch where they fit) -> one dedicated inference thread -> each request's future, which
answers with the worst picture under the request's policy.

Admission counts pictures, not requests: an image holds one place while it is decoded, then as
many as it has pictures (a translucent animation, dozens). An image whose pictures do not fit
beside those already admitted is refused (429) once decoded; alone, it is taken whatever its
size. A batch the model fails on is run again in halves, so that one image that breaks the
model (or a batch too big for the device's memory) fails alone, as
:class:`~nsfwd.engine.protocol.ModelFailedError`.

Like text-embeddings-inference's batcher, it needs no timer under load: requests pile up while
the model runs and leave together in the next batch. A request whose caller was cancelled (its
client went away) is dropped before it costs inference.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from PIL import Image

from nsfwd.banks.pdq import PictureHash
from nsfwd.engine import (
    DECODE_TIMEOUT_S,
    EngineClosedError,
    ModelFailedError,
    QueueFullError,
    pools,
    run_intake,
)
from nsfwd.engine.metrics import Metrics
from nsfwd.engine.video import VideoRun
from nsfwd.intake import ImageLimits, UnscorableImageError
from nsfwd.intake.checked import CheckedImages
from nsfwd.intake.video import VideoLimits, sniff_video
from nsfwd.models.runner import Runner
from nsfwd.timeline import VideoOptions
from nsfwd.verdict import Finding, Judgement, Policy, judge, nonfinite_labels

_log = logging.getLogger(__name__)


@dataclass
class Trace:
    """Where one image's time went, for a host that keeps the metrics elsewhere (a Ray Serve
    model replica reports it to its ingress)."""

    queue_seconds: float = 0.0
    """How long its pictures waited for the model."""
    batches: list[tuple[int, float]] = field(default_factory=list)
    """The batches its pictures started: each one's size and inference time."""


@dataclass
class _Item:
    pixels: list[Any]
    """One prepared picture per view of the image (the runner's own kind)."""
    sizes: list[tuple[int, int]]
    """Each view's displayed (width, height), which a detector's boxes are mapped back to."""
    future: asyncio.Future[list[Finding]]
    queued_at: float
    trace: Trace = field(default_factory=Trace)


class Engine:
    """Batches requests from many coroutines onto one model: a
    :class:`~nsfwd.models.runner.Runner`, such as a torch
    :class:`~nsfwd.models.classifier.Classifier`, a :class:`~nsfwd.models.detector.Detector`
    (whose judgements carry its regions) or open-nsfw's onnxruntime session."""

    def __init__(
        self,
        classifier: Runner[Any],
        *,
        max_batch_size: int = 16,
        batch_wait_ms: float = 2.0,
        max_queue: int = 64,
        decode_workers: int | None = None,
        decode_timeout_s: float = DECODE_TIMEOUT_S,
        limits: ImageLimits | None = None,
        metrics: Metrics | None = None,
        video_limits: VideoLimits | None = None,
        video: VideoOptions | None = None,
    ) -> None:
        """Batch onto ``classifier``. Images are decoded on the process's ``decode`` pool
        (:mod:`nsfwd.engine.pools`), or on a pool of ``decode_workers`` threads of the engine's own,
        each for at most ``decode_timeout_s``; videos (:mod:`nsfwd.engine.video`) a batch of
        frames at a time on the same pool, within ``video_limits``, sampled and judged by
        ``video`` unless a request says otherwise."""
        self.classifier = classifier
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000
        self.max_queue = max_queue
        self.limits = limits or ImageLimits()
        self.video_limits = video_limits or VideoLimits()
        self.video = video or VideoOptions()
        self.metrics = metrics or Metrics()
        self.metrics.show_model(self.model_info)
        self.decode_timeout_s = decode_timeout_s
        self._checked = CheckedImages(classifier.prepare, self.limits)
        self.decode_pool = (
            pools.named(pools.DECODE)
            if decode_workers is None
            else pools.BoundedPool(pools.DECODE, decode_workers)
        )
        self._admitted = 0
        self._batch_seconds = 1.0  # refined after every batch; feeds Retry-After
        self._queue: asyncio.Queue[_Item] | None = None
        self._held: _Item | None = None  # taken from the queue, too big for the last batch
        self._batcher: asyncio.Task[None] | None = None
        self._infer_pool: ThreadPoolExecutor | None = None
        self.ready = False

    @property
    def model_name(self) -> str:
        """The loaded model's Hub id (or folder)."""
        return self.classifier.name

    @property
    def model_info(self) -> dict[str, str]:
        """Where and how the model runs (:meth:`~nsfwd.models.runner.Runner.model_info`):
        ``device``, ``dtype``, ``runtime`` (``torch``, ``openvino``, ``openvino int8``,
        ``onnxruntime``), ``dtype_reason`` (why that route) and ``kind``."""
        return self.classifier.model_info

    @property
    def labels(self) -> tuple[str, ...]:
        """The model's labels, in its order."""
        return self.classifier.labels

    @property
    def in_flight(self) -> int:
        """Pictures admitted and not yet answered (an image being decoded holds one)."""
        return self._admitted

    @property
    def queued(self) -> int:
        """Images decoded and waiting for the model."""
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        """Start the worker threads and the batcher, and warm the model up (compiled: every
        batch size up to ``max_batch_size``)."""
        self._infer_pool = ThreadPoolExecutor(1, "nsfwd-infer")
        self._queue = asyncio.Queue()
        await asyncio.get_running_loop().run_in_executor(
            self._infer_pool, self.classifier.warm_up, self.max_batch_size
        )
        self._batcher = asyncio.create_task(self._run_batches(), name="nsfwd-batcher")
        self.ready = True

    async def stop(self) -> None:
        """Stop batching; requests still queued fail with :class:`EngineClosedError`."""
        self.ready = False
        if self._batcher is not None:
            self._batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._batcher
        waiting = [] if self._held is None else [self._held]
        self._held = None
        while self._queue is not None and not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for item in waiting:
            if not item.future.done():
                item.future.set_exception(EngineClosedError("the server is shutting down"))
        if self._infer_pool is not None:
            self._infer_pool.shutdown(wait=True, cancel_futures=True)

    def retry_after(self) -> int:
        """Seconds a refused client should wait: roughly the time to drain the queue."""
        batches = math.ceil(max(self._admitted, 1) / self.max_batch_size)
        return max(1, math.ceil(batches * self._batch_seconds))

    async def judge(
        self,
        data: bytes,
        policy: Policy | None = None,
        trace: Trace | None = None,
        video: VideoOptions | None = None,
    ) -> Judgement:
        """Judge every picture a viewer may see of one encoded image (each judged frame, over
        white and black where transparent) in one batch where it fits, and answer with the one
        that ``policy`` (default: moderate) scores highest; ``trace``, when given, is filled in.
        A video is judged at its sampled frames (``video``, default: the engine's options) and
        answers with its worst moment and segments (:mod:`nsfwd.timeline`).

        Raises :class:`~nsfwd.intake.ImageError` for a bad image (scores that are not finite
        for any picture: :class:`~nsfwd.intake.UnscorableImageError`), :class:`QueueFullError`
        when the engine is full and :class:`EngineClosedError` when it is not running.
        """
        if not self.ready or self._queue is None:
            raise EngineClosedError("the model is not loaded yet")
        trace = trace or Trace()
        with self._admission() as grow:
            if sniff_video(data) is not None:  # one place: its frames come a batch at a time
                return await self._video_run(trace).judge(
                    data,
                    self._prepare_frame,
                    self.video_limits,
                    policy or Policy(),
                    video or self.video,
                )
            prepare = partial(self._checked.load, data)
            views = await run_intake(self.decode_pool, prepare, self.decode_timeout_s)
            grow(len(views.views))
            found = await self._infer(views.images, views.sizes, trace)
        return judge(views, found, policy or Policy())

    @contextlib.contextmanager
    def _admission(self) -> Iterator[Callable[[int], None]]:
        """Hold one place for an image while it is decoded (a check's decoding counts too: a
        flood is refused before it is decoded), or refuse it with :class:`QueueFullError` when
        ``max_queue`` places are taken; the function it yields grows the hold to the image's
        pictures once they are known (refused likewise where they do not fit, unless the
        image is alone in the engine: any image fits an idle engine)."""
        self._admit(1, alone=False)
        held = 1

        def grow(pictures: int) -> None:
            nonlocal held
            self._admit(pictures - held, alone=self._admitted == held)
            held = max(held, pictures)

        try:
            yield grow
        finally:
            self._admitted -= held
            self.metrics.queue_size.set(self._admitted)

    def _admit(self, pictures: int, *, alone: bool) -> None:
        """Take ``pictures`` more places, or refuse with :class:`QueueFullError` when they do
        not fit under ``max_queue`` (unless the image is ``alone`` in the engine)."""
        if pictures <= 0:
            return
        if self._admitted + pictures > self.max_queue and not alone:
            self.metrics.rejected.inc()
            raise QueueFullError(self.retry_after())
        self._admitted += pictures
        self.metrics.queue_size.set(self._admitted)

    async def _infer(
        self, pixels: list[Any], sizes: list[tuple[int, int]], trace: Trace
    ) -> list[Finding]:
        """What the model finds in prepared pictures (each shown at its size), judged by the
        batcher together with others where they fit."""
        assert self._queue is not None
        future: asyncio.Future[list[Finding]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(pixels, sizes, future, time.perf_counter(), trace))
        return await future

    def _prepare_frame(self, picture: Image.Image) -> tuple[Any, tuple[int, int]]:
        """A video frame prepared for the model, with the size it is shown at."""
        return self.classifier.prepare(picture), picture.size

    async def _infer_frames(
        self, frames: list[tuple[Any, tuple[int, int]]], trace: Trace
    ) -> list[Finding]:
        """What the model finds in prepared video frames (:meth:`_prepare_frame`)."""
        return await self._infer(
            [pixels for pixels, _ in frames], [size for _, size in frames], trace
        )

    def _video_run(self, trace: Trace) -> VideoRun:
        return VideoRun(
            self.decode_pool,
            partial(self._infer_frames, trace=trace),
            batch=self.max_batch_size,
            decode_timeout_s=self.decode_timeout_s,
        )

    async def check(self, data: bytes, *, hashed: bool = False) -> list[PictureHash]:
        """Decode and prepare ``data`` as :meth:`judge` does, on the decode pool, raising
        its :class:`~nsfwd.intake.ImageError`; the pictures are kept (the last
        :data:`~nsfwd.intake.checked.KEPT_BYTES` of pictures) for a :meth:`judge` of the same
        bytes. ``hashed``: hash every picture too, and return the hashes. Admitted as
        :meth:`judge` is, as one place while it decodes (:class:`QueueFullError` when full)."""
        if not self.ready:
            raise EngineClosedError("the model is not loaded yet")
        with self._admission():
            if sniff_video(data) is not None:
                run = self._video_run(Trace())
                return await run.check(
                    data, self._prepare_frame, self.video_limits, self.video, hashed=hashed
                )
            check = partial(self._checked.check, data, hashed=hashed)
            return await run_intake(self.decode_pool, check, self.decode_timeout_s)

    def _predict(self, pixels: list[Any], sizes: list[tuple[int, int]]) -> list[Finding]:
        # Stacked here, on the inference thread, not on the event loop: a GPU batch is tens
        # of megabytes to copy (into page-locked memory, see Classifier.stack). One image's
        # pictures may outnumber max_batch_size; they run in batches of that size.
        size = self.max_batch_size
        return [
            finding
            for start in range(0, len(pixels), size)
            for finding in self.classifier.find(
                pixels[start : start + size], sizes[start : start + size]
            )
        ]

    async def _next_batch(self, queue: asyncio.Queue[_Item]) -> list[_Item]:
        """Queued items with at most ``max_batch_size`` pictures in all (an item with more
        goes alone); an item that does not fit waits for the next batch, first in line."""
        first, self._held = self._held or await queue.get(), None
        batch, count = [first], len(first.pixels)
        deadline = time.perf_counter() + self.batch_wait
        while count < self.max_batch_size:
            if not queue.empty():
                item = queue.get_nowait()
            else:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            if count + len(item.pixels) > self.max_batch_size:
                self._held = item
                break
            batch.append(item)
            count += len(item.pixels)
        return batch

    async def _run_batches(self) -> None:
        assert self._queue is not None
        while True:
            batch = await self._next_batch(self._queue)
            live = [item for item in batch if not item.future.done()]
            self.metrics.dropped.inc(len(batch) - len(live))
            if not live:
                continue
            now = time.perf_counter()
            for item in live:
                item.trace.queue_seconds = now - item.queued_at
                self.metrics.queue_seconds.observe(item.trace.queue_seconds)
            await self._run_batch(live)

    async def _run_batch(self, items: list[_Item]) -> None:
        """Run ``items`` as one batch and answer each; if the model fails, run each half
        again, so that only an image that fails alone gets the error."""
        pixels = [picture for item in items for picture in item.pixels]
        sizes = [size for item in items for size in item.sizes]
        started = time.perf_counter()
        try:
            found = await asyncio.get_running_loop().run_in_executor(
                self._infer_pool, self._predict, pixels, sizes
            )
        except Exception as exc:  # a model failure fails this batch, not the server
            _log.warning("the model failed on a batch of %d images (%s: %s)%s", len(items),
                         type(exc).__name__, exc, "; running it again in halves"
                         if len(items) > 1 else "")  # fmt: skip
            if len(items) > 1:
                half = len(items) // 2
                await self._run_batch(items[:half])
                await self._run_batch(items[half:])
                return
            [item] = items
            if not item.future.done():
                item.future.set_exception(
                    ModelFailedError(f"the model failed on this image: {type(exc).__name__}: {exc}")
                )
            return
        elapsed = time.perf_counter() - started
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * elapsed
        self.metrics.batch_size.observe(len(pixels))
        self.metrics.inference_seconds.observe(elapsed)
        items[0].trace.batches.append((len(pixels), elapsed))
        rows = iter(found)
        for item in items:
            answers = [next(rows) for _ in item.pixels]
            if item.future.done():
                continue
            bad = sorted({label for row in answers for label in nonfinite_labels(row.labels)})
            if bad:  # fail closed: NaN is never flagged
                item.future.set_exception(UnscorableImageError.for_labels(bad))
            else:
                item.future.set_result(answers)
