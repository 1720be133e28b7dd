"""Videos in ``nsfwd classify``: each judged whole, by the loop the server's engine runs
(:class:`~nsfwd.engine.video.VideoRun`): a thread of its own decodes the next batch of sampled
frames while the classifier judges the batch before."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import torch

from nsfwd.engine.pools import BoundedPool
from nsfwd.engine.video import VideoRun
from nsfwd.intake import UnscorableImageError
from nsfwd.intake.video import VideoLimits, sniff_video
from nsfwd.models.classifier import Classifier
from nsfwd.timeline import VideoOptions
from nsfwd.verdict import Judgement, Labels, Policy, nonfinite_labels

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
    classifier: Classifier,
    data: bytes,
    *,
    batch_size: int,
    limits: VideoLimits,
    options: VideoOptions,
    policy: Policy,
    decode_timeout_s: float,
) -> Judgement:
    """The video's judgement (worst moment and segments), ``batch_size`` frames at a time;
    raises the :class:`~nsfwd.intake.ImageError` the server would answer with."""

    async def infer(pixels: list[Any]) -> list[Labels]:
        labels = await asyncio.to_thread(_labels, classifier, pixels)
        bad = sorted({label for row in labels for label in nonfinite_labels(row)})
        if bad:  # fail closed: NaN is never flagged
            raise UnscorableImageError.for_labels(bad)
        return labels

    run = VideoRun(
        BoundedPool("video-decode", 1),
        infer,
        batch=batch_size,
        decode_timeout_s=decode_timeout_s,
    )
    return asyncio.run(run.judge(data, classifier.prepare, limits, policy, options))


def _labels(classifier: Classifier, pixels: list[torch.Tensor]) -> list[Labels]:
    return classifier.to_labels(classifier.predict(classifier.stack(pixels)))
