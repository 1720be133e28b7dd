"""A video through the engine: its sampled frames decoded a batch at a time on the decode pool
while the model judges the batch before, into a :class:`~nsfwd.timeline.Timeline`.

Path: open and index the video on the decode pool (:class:`~nsfwd.intake.video.VideoReader`,
under ``decode_timeout_s``) -> read up to ``max_batch_size`` sampled frames on the pool ->
while the model judges them (the same queue and batcher as images), read the next ones -> the
timeline, until the last sample, the file's end or, with ``stop_on_flag``, the first segment.
A decode task holds a pool thread only while it decodes, never while the model runs, so a long
video does not keep images from being decoded. At most two batches of prepared frames exist at
a time. The decoding of one video may take :func:`decode_budget` seconds in all: it grows with
the frames sampled; past it the video is refused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Final, TypeVar

from nsfwd.banks.pdq import PictureHash, hash_picture
from nsfwd.engine.pools import BoundedPool, PoolDeadlineError
from nsfwd.intake import ImageComplexityError
from nsfwd.intake.video import Sample, Sampling, VideoLimits, VideoReader
from nsfwd.timeline import Timeline, VideoOptions
from nsfwd.verdict import Finding, Judgement, Policy, Region

T = TypeVar("T")

FRAMES_PER_DECODE_TIMEOUT: Final = 10
"""Each this many sampled frames add one ``decode_timeout_s`` to a video's decoding budget
(at the default 10 s: a second a frame, for seeking through long groups of pictures at 4K)."""
STOPPED_ON_FLAG: Final = "stop_on_flag: decoding ended at the first flagged segment"


def decode_budget(decode_timeout_s: float, frames: int) -> float:
    """Seconds of decoding a video of ``frames`` sampled frames may take in all."""
    return decode_timeout_s * (1 + frames / FRAMES_PER_DECODE_TIMEOUT)


def sampling(options: VideoOptions) -> Sampling:
    """The intake's sampling for these options."""
    return Sampling(options.interval, options.max_frames, options.min_frames)


class VideoRun:
    """One video's judgement on an engine's decode pool and model (see the module)."""

    def __init__(
        self,
        pool: BoundedPool,
        infer: Callable[[list[Any]], Awaitable[list[Finding]]],
        *,
        batch: int,
        decode_timeout_s: float,
    ) -> None:
        """Decode on ``pool``; ``infer`` judges a list of prepared frames (the engine's queue:
        labels, and a detector's regions); ``batch`` frames are read at a time."""
        self.pool = pool
        self.infer = infer
        self.batch = batch
        self.decode_timeout_s = decode_timeout_s

    async def judge(
        self,
        data: bytes,
        prepare: Callable[..., T],
        limits: VideoLimits,
        policy: Policy,
        options: VideoOptions,
    ) -> Judgement:
        """The video's judgement (worst moment, segments) under ``policy`` and ``options``;
        raises :class:`~nsfwd.intake.ImageError` for a video the intake refuses or whose
        decoding runs over its budget."""
        reader = await self._open(data, prepare, limits, options)
        budget = decode_budget(self.decode_timeout_s, reader.planned)
        try:
            return await self._judge(reader, policy, options, budget)
        finally:
            reader.close()  # a read still running on the pool closes it when it ends

    async def check(
        self,
        data: bytes,
        prepare: Callable[..., T],
        limits: VideoLimits,
        options: VideoOptions,
        *,
        hashed: bool = False,
    ) -> list[PictureHash]:
        """Open and index the video and decode its first sampled frame, raising the
        :class:`~nsfwd.intake.ImageError` a judgement would raise for a video that cannot be
        opened or decoded at all (an async job's upload, checked before it is accepted).
        ``hashed``: decode every sampled frame instead, within the judgement's budget, and
        return their PDQ hashes, each with its frame's index (for the banks; else an empty
        list)."""
        if hashed:
            return await self._hashes(data, limits, options)

        def first_frame() -> None:
            deadline = time.monotonic() + self.decode_timeout_s
            reader = VideoReader(data, prepare, limits, sampling(options), deadline=deadline)
            try:
                reader.read(1, deadline=deadline)
            finally:
                reader.close()

        await self._decode(first_frame, self.decode_timeout_s, "checking the video")
        return []

    async def _hashes(
        self, data: bytes, limits: VideoLimits, options: VideoOptions
    ) -> list[PictureHash]:
        reader = await self._open(data, hash_picture, limits, options)
        budget, spent = decode_budget(self.decode_timeout_s, reader.planned), [0.0]
        hashes: list[PictureHash] = []
        try:
            while not reader.done:
                samples = await self._read(reader, budget, spent)
                if not samples:
                    break
                hashes += [replace(sample.image, frame=sample.frame) for sample in samples]
        finally:
            reader.close()
        return hashes

    async def _open(
        self, data: bytes, prepare: Callable[..., T], limits: VideoLimits, options: VideoOptions
    ) -> VideoReader[T]:
        return await self._decode(
            lambda: VideoReader(
                data,
                prepare,
                limits,
                sampling(options),
                deadline=time.monotonic() + self.decode_timeout_s,  # from when it starts
            ),
            self.decode_timeout_s,
            "opening the video",
        )

    async def _judge(
        self, reader: VideoReader[T], policy: Policy, options: VideoOptions, budget: float
    ) -> Judgement:
        timeline = Timeline(policy, options.min_frames)
        spent = [0.0]
        stopped = None
        judged = 0

        def read() -> asyncio.Task[list[Sample[T]]]:
            return asyncio.ensure_future(self._read(reader, budget, spent))

        pending: asyncio.Task[list[Sample[T]]] | None = read()
        try:
            while pending is not None:
                samples = await pending
                pending = None if reader.done or not samples else read()
                if not samples:
                    break
                found = await self.infer([sample.image for sample in samples])
                judged += len(samples)
                for sample, finding in zip(samples, found, strict=True):
                    timeline.add(sample.times, finding.labels, _placed(finding.regions, sample))
                if options.stop_on_flag and timeline.has_segment and not reader.done:
                    stopped = STOPPED_ON_FLAG
                    break
        finally:
            if pending is not None:
                pending.cancel()
        info = reader.info
        return timeline.judgement(
            frames=info.frames,
            frames_judged=judged,
            duration=info.duration,
            incomplete=stopped or reader.incomplete,
        )

    async def _read(
        self, reader: VideoReader[T], budget: float, spent: list[float]
    ) -> list[Sample[T]]:
        """The next batch of samples, its decoding (not its wait for a pool thread) counted
        against the budget."""
        left = budget - spent[0]
        if left <= 0:
            raise _over_budget(reader, budget)

        def read_batch() -> list[Sample[T]]:
            started = time.monotonic()
            try:
                return reader.read(self.batch, deadline=started + left)
            finally:
                spent[0] += time.monotonic() - started

        return await self._decode(read_batch, left, "decoding the video", budget=(reader, budget))

    async def _decode(
        self,
        fn: Callable[[], T],
        deadline_s: float,
        what: str,
        budget: tuple[VideoReader[Any], float] | None = None,
    ) -> T:
        try:
            return await self.pool.run(fn, deadline_s=deadline_s)
        except PoolDeadlineError:
            if budget is not None:
                raise _over_budget(*budget) from None
            raise ImageComplexityError(
                f"{what} took longer than {deadline_s:g} s, the server's limit"
            ) from None


def _placed(regions: list[Region] | None, sample: Sample[Any]) -> list[Region] | None:
    """A detector's regions in a sampled frame, with that frame's index and time."""
    if regions is None:
        return None
    return [replace(region, frame=sample.frame, time=round(sample.time, 3)) for region in regions]


def _over_budget(reader: VideoReader[Any], budget: float) -> ImageComplexityError:
    return ImageComplexityError(
        f"decoding the video's {reader.planned} sampled frames took longer than {budget:g} s, "
        "the server's limit for that many"
    )
