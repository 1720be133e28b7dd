"""Which frames of an animation are judged: a rule over facts any decoder can give per frame.

A decoder reports, for every frame in display order, a :class:`FrameFacts`: how long the frame
stays on screen, a cheap signature of what it shows (:func:`signature`), and its index. The
rule (:func:`frames_to_judge`) needs nothing else, so every animated format (APNG and WebP
today; GIF, HEIC and AVIF sequences, multi-page TIFF tomorrow) feeds the same function.

The rule, in order, until the budget is spent:

1. the first frame, which programs that do not animate show (and browsers before the
   animation starts);
2. the frames that stay longest on screen, a quarter of the budget: a frame shown for a minute
   is what viewers see, whatever its position (a frame shown forever, the last one of an
   animation that stops, comes first);
3. distinct frames before near-duplicates, longest first: a frame whose signature is within
   :data:`NEAR_DUPLICATE_LEVELS` of a frame already judged adds little;
4. the rest spread evenly over the frames not yet judged.

Among frames on screen equally long, each step goes in *spread order* (:func:`spread_order`:
the first and last, the middle, the quarters, ...), so that no stretch of an animation is
left out by position alone. A file of at most ``budget`` frames has every frame judged.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image

MAX_JUDGED_FRAMES: Final = 32
"""Frames of an animation judged at most (fewer where each frame makes several pictures, see
:data:`MAX_JUDGED_PICTURES`). Every frame is still decoded, since each is drawn over the one
before; the pixel budget (``ImageLimits.max_animation_pixels``) bounds that."""
MAX_JUDGED_PICTURES: Final = 96
"""Pictures judged of one image at most: frames times the views of each (backdrops, and
colours as stored beside colours as converted); 32 frames over three backdrops."""
MIN_FRAME_MS: Final = 100.0
"""What a frame delay of at most :data:`SHORT_DELAY_MS` is shown for: browsers (Chromium,
Firefox) show such frames for 100 ms, so a "1 ms" frame is seen."""
SHORT_DELAY_MS: Final = 10.0
NEAR_DUPLICATE_LEVELS: Final = 6.0
"""Mean absolute difference (0..255) between two signatures below which frames count as
near-duplicates."""
SIGNATURE_SIZE: Final = (8, 8)
_GREY: Final = (128, 128, 128)


@dataclass(frozen=True)
class FrameFacts:
    """What the rule knows of one frame."""

    index: int
    """The frame's index in the file, in display order (an APNG's default image is 0)."""
    duration_ms: float
    """How long it is shown, as the file says (``math.inf``: it stays, like the last frame of
    an animation that stops); :func:`shown_ms` applies browsers' minimum."""
    signature: bytes
    """A cheap summary of what it shows (:func:`signature`); frames that look alike have
    signatures that differ little."""


def signature(frame: Image.Image) -> bytes:
    """An 8x8 RGB thumbnail of ``frame`` as displayed over mid-grey (192 bytes): cheap next to
    decoding the frame, and close for frames that look alike."""
    small = frame.resize(SIGNATURE_SIZE, Image.Resampling.BOX)
    if small.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in small.info:
        rgba = small.convert("RGBA")
        backdrop = Image.new("RGB", rgba.size, _GREY)
        backdrop.paste(rgba, mask=rgba.getchannel("A"))
        small = backdrop
    return small.convert("RGB").tobytes()


def shown_ms(duration_ms: float) -> float:
    """How long a frame with this delay is on screen in a browser."""
    if math.isnan(duration_ms) or duration_ms <= SHORT_DELAY_MS:
        return MIN_FRAME_MS
    return duration_ms


def frame_budget(views_per_frame: int) -> int:
    """Frames judged at most when each makes ``views_per_frame`` pictures."""
    return max(1, min(MAX_JUDGED_FRAMES, MAX_JUDGED_PICTURES // max(1, views_per_frame)))


def frames_to_judge(frames: Sequence[FrameFacts], budget: int = MAX_JUDGED_FRAMES) -> list[int]:
    """The indices of the frames judged, in file order, by the rule of the module docstring."""
    if len(frames) <= budget:
        return [facts.index for facts in frames]
    rank = {frames[position].index: i for i, position in enumerate(spread_order(len(frames)))}
    by_time = sorted(frames, key=lambda f: (-shown_ms(f.duration_ms), rank[f.index]))
    chosen: dict[int, None] = {}  # an ordered set
    for facts in [frames[0], *by_time[: max(1, budget // 4)]]:
        if len(chosen) < budget:
            chosen.setdefault(facts.index)
    _take_distinct(by_time, chosen, budget)
    rest = [facts for facts in frames if facts.index not in chosen]
    for position in spread_order(len(rest))[: budget - len(chosen)]:
        chosen.setdefault(rest[position].index)
    return sorted(chosen)


def _take_distinct(order: Sequence[FrameFacts], chosen: dict[int, None], budget: int) -> None:
    """Add to ``chosen``, in ``order``, each frame whose signature is not within
    :data:`NEAR_DUPLICATE_LEVELS` of any chosen frame's, until the budget is spent. Each
    frame's distance to its nearest chosen frame is kept up to date, a row at a time."""
    levels = np.stack([_levels(facts.signature) for facts in order])
    where = {facts.index: row for row, facts in enumerate(order)}
    nearest = np.full(len(order), np.iinfo(np.int32).max, dtype=np.int32)  # summed differences
    near = NEAR_DUPLICATE_LEVELS * levels.shape[1]

    def seen(row: int) -> None:
        difference = np.abs(levels - levels[row]).sum(axis=1, dtype=np.int32)
        np.minimum(nearest, difference, out=nearest)

    for index in chosen:
        seen(where[index])
    while len(chosen) < budget:
        distinct = np.flatnonzero(nearest > near)
        if not distinct.size:
            return
        row = int(distinct[0])  # the longest on screen of the distinct ones
        chosen[order[row].index] = None
        seen(row)


def spread_order(count: int) -> list[int]:
    """``range(count)`` reordered so that every prefix is spread evenly: the first, the last,
    the middle, then the middles of each half, and so on."""
    if count <= 0:
        return []
    order = [0] if count == 1 else [0, count - 1]
    halves = deque([(0, count - 1)])
    while halves:
        low, high = halves.popleft()
        if high - low < 2:
            continue
        middle = (low + high) // 2
        order.append(middle)
        halves.extend(((low, middle), (middle, high)))
    return order


_EMPTY_SIGNATURE: Final = bytes(SIGNATURE_SIZE[0] * SIGNATURE_SIZE[1] * 3)


def _levels(signature: bytes) -> np.ndarray:
    """A signature's levels, fitted to the signature size (a decoder's own may differ)."""
    levels = np.frombuffer(signature[: len(_EMPTY_SIGNATURE)], dtype=np.uint8).astype(np.int16)
    return np.pad(levels, (0, len(_EMPTY_SIGNATURE) - len(levels)))
