"""Which frames of an animation are judged."""

from __future__ import annotations

from typing import Final

MAX_JUDGED_FRAMES: Final = 32
"""Frames of an animation that are judged: all of them up to this many, else this many spread
evenly over the frames, the first and the last included (an APNG's default image is frame 0).
Every frame is still decoded, since each is drawn over the one before; the pixel budget
(``ImageLimits.max_animation_pixels``) bounds that."""


def frames_to_judge(count: int, cap: int = MAX_JUDGED_FRAMES) -> list[int]:
    """The frame indices judged of ``count`` frames: all, or ``cap`` spread evenly."""
    if count <= cap:
        return list(range(count))
    if cap == 1:
        return [0]
    return sorted({round(i * (count - 1) / (cap - 1)) for i in range(cap)})
