"""Videos in ``nsfwd classify``: each judged whole, by the loop the server's engine runs
(:class:`~nsfwd.engine.video.VideoRun`): a thread of its own decodes the next batch of sampled
frames while the classifier judges the batch before."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from nsfwd.engine.pools import BoundedPool
from nsfwd.engine.video import VideoRun
from nsfwd.intake import UnscorableImageError
from nsfwd.intake.video import VideoLimits, sniff_video
from nsfwd.models.model import Model
from nsfwd.timeline import VideoOptions
from nsfwd.verdict import Finding, Judgement, Policy, nonfinite_labels, with_match

if TYPE_CHECKING:
    from nsfwd.banks.matcher import BankSnapshot

SNIFF_BYTES = 64
"""What is read of a file to tell a video from an image."""


def is_video_file(path: str | os.PathLike[str]) -> bool:
    """Whether the file's first bytes are a video container's; False when it cannot be read
    (reading it again then says why)."""
    try:
        with Path(path).open("rb") as file:
            return sniff_video(file.read(SNIFF_BYTES)) is not None
    except OSError:
        return False


def judge_video(
    classifier: Model,
    data: bytes,
    *,
    batch_size: int,
    limits: VideoLimits,
    options: VideoOptions,
    policy: Policy,
    decode_timeout_s: float,
    banks: BankSnapshot | None = None,
) -> Judgement:
    """The video's judgement (worst moment and segments), ``batch_size`` frames at a time;
    raises the :class:`~nsfwd.intake.ImageError` the server would answer with. With ``banks``
    (holding any hash), its sampled frames are hashed and looked up first, and a match is
    answered as the server answers it (:class:`~nsfwd.engine.screened.ScreenedEngine`)."""

    async def infer(frames: list[tuple[torch.Tensor, tuple[int, int]]]) -> list[Finding]:
        found = await asyncio.to_thread(_findings, classifier, frames)
        bad = sorted({label for row in found for label in nonfinite_labels(row.labels)})
        if bad:  # fail closed: NaN is never flagged
            raise UnscorableImageError.for_labels(bad)
        return found

    def prepare(picture: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
        return classifier.prepare(picture), picture.size

    run = VideoRun(
        BoundedPool("video-decode", 1),
        infer,
        batch=batch_size,
        decode_timeout_s=decode_timeout_s,
    )

    async def judged() -> Judgement:
        match = None
        if banks is not None and banks.hashes:
            match = banks.match(await run.check(data, prepare, limits, options, hashed=True))
        judgement = await run.judge(data, prepare, limits, policy, options)
        return judgement if match is None else with_match(judgement, match, classifier.labels)

    return asyncio.run(judged())


def _findings(
    classifier: Model, frames: list[tuple[torch.Tensor, tuple[int, int]]]
) -> list[Finding]:
    output = classifier.predict(classifier.stack([pixels for pixels, _ in frames]))
    return classifier.findings(output, [size for _, size in frames])
