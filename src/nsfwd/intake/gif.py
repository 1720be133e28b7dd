"""GIF: its frames, their rectangles and delays, read from the blocks before any decoder runs.

A GIF is a logical screen and a list of frames, each a rectangle of LZW-coded pixels drawn
over what the last one left (its disposal). Pillow composites them as a viewer shows them and
grows the canvas to fit a frame that reaches past the screen, so the canvas is what costs:
every frame is decoded (each is drawn over the last), and each costs the whole canvas. So the
checks, before Pillow reads a pixel: the canvas within the side limits, every frame's rectangle
on it, the frame count, the canvas times the frames within the pixel budget, and the data cut
into sub-blocks as encoders write them (Pillow walks the sub-blocks of each frame one at a time
in Python, so a file of 1-byte sub-blocks would cost seconds before decoding). An LZW bomb, a
tiny code stream that expands without end, is bounded the same way: a frame's decoder stops
when its rectangle is full.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from nsfwd.intake.errors import CorruptImageError, ImageComplexityError
from nsfwd.intake.limits import ImageLimits, check_frame_count
from nsfwd.intake.pictures import Layout, Picture

SHORTEST_SHOWN_MS: Final = 20
"""Browsers show a frame whose delay is shorter than this (0 or 10 ms) for
:data:`SHOWN_INSTEAD_MS`: that is its time on screen."""
SHOWN_INSTEAD_MS: Final = 100
_HEADER: Final = 13
_EXTENSION, _IMAGE, _TRAILER = 0x21, 0x2C, 0x3B
_GRAPHIC_CONTROL: Final = 0xF9


@dataclass(frozen=True)
class Frame:
    """One frame's rectangle on the canvas and its delay."""

    left: int
    top: int
    width: int
    height: int
    delay_ms: int
    """The delay its graphic control extension gives (0 when it has none)."""

    @property
    def shown_ms(self) -> int:
        """How long browsers show it (delays under 20 ms are shown for 100 ms)."""
        return SHOWN_INSTEAD_MS if self.delay_ms < SHORTEST_SHOWN_MS else self.delay_ms


@dataclass(frozen=True)
class GifStructure:
    """A GIF's logical screen and frames."""

    screen: tuple[int, int]
    frames: tuple[Frame, ...]

    @property
    def canvas(self) -> tuple[int, int]:
        """The size Pillow composites on: the screen, grown to fit every frame."""
        width = max([self.screen[0], *(f.left + f.width for f in self.frames)])
        height = max([self.screen[1], *(f.top + f.height for f in self.frames)])
        return width, height


def read_layout(data: bytes, limits: ImageLimits) -> Layout:
    """The GIF's frames as a :class:`~nsfwd.intake.pictures.Layout`: each the size of the
    canvas, timed as browsers show it. Raises :class:`CorruptImageError` for a GIF with no
    frame or broken blocks, :class:`ImageComplexityError` for data cut finer than encoders
    cut it, and the dimension errors of :meth:`Layout.check` (which the caller runs)."""
    structure = read_structure(data, limits)
    canvas = structure.canvas
    cost = canvas[0] * canvas[1]
    timed = len(structure.frames) > 1
    pictures = tuple(
        Picture(index, "frame", canvas, cost, float(frame.shown_ms) if timed else None)
        for index, frame in enumerate(structure.frames)
    )
    return Layout(pictures, decodes_all=True)


def read_structure(data: bytes, limits: ImageLimits) -> GifStructure:
    """Walk the GIF's blocks (see the module); stops at the trailer or where the data ends."""
    if len(data) < _HEADER:
        raise CorruptImageError(f"GIF data is truncated: {len(data)} bytes, no logical screen")
    screen = int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    pos = _HEADER + _colour_table(data[10])
    blocks = _SubBlocks(data, limits)
    frames: list[Frame] = []
    delay = 0
    while pos < len(data):
        kind = data[pos]
        if kind == _TRAILER:
            break
        if kind == _EXTENSION:
            if pos + 2 > len(data):
                break
            if data[pos + 1] == _GRAPHIC_CONTROL and pos + 6 <= len(data):
                delay = 10 * int.from_bytes(data[pos + 4 : pos + 6], "little")
            pos = blocks.skip(pos + 2)
        elif kind == _IMAGE:
            if pos + 10 > len(data):
                break
            left, top, width, height = (
                int.from_bytes(data[at : at + 2], "little") for at in range(pos + 1, pos + 9, 2)
            )
            frames.append(Frame(left, top, width, height, delay))
            check_frame_count(len(frames), limits)
            delay = 0
            pos = blocks.skip(pos + 10 + _colour_table(data[pos + 9]) + 1)  # + LZW code size
        else:
            break  # Pillow stops at a byte that starts no block, as browsers do
    if not frames:
        raise CorruptImageError("GIF data is truncated or corrupt: it holds no frame")
    return GifStructure(screen, tuple(frames))


def _colour_table(flags: int) -> int:
    """Bytes of the colour table that a block's packed ``flags`` announce."""
    return 3 << ((flags & 7) + 1) if flags & 0x80 else 0


class _SubBlocks:
    """Skips chains of sub-blocks, counting them against a cap that real files stay far
    below (encoders write 255-byte sub-blocks)."""

    def __init__(self, data: bytes, limits: ImageLimits) -> None:
        self.data = data
        self.left = 65_536 + len(data) // 128 + 2 * limits.max_frames

    def skip(self, pos: int) -> int:
        """The position after the chain of sub-blocks at ``pos`` (its zero terminator)."""
        data, end = self.data, len(self.data)
        left = self.left
        while pos < end:
            size = data[pos]
            pos += 1 + size
            if size == 0:
                break
            left -= 1
            if left < 0:
                raise ImageComplexityError(
                    "GIF refused before decoding: its data is cut into far more sub-blocks "
                    "than encoders write (255 bytes each), and every one costs the decoder"
                )
        self.left = left
        return pos
