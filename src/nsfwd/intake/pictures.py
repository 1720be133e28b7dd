"""The pictures a file holds that a viewer may see, known from its structure before any pixel
is decoded: an animation's frames, a TIFF's pages, a HEIF's top-level images and the
thumbnails that file browsers show. Each format's reader (:mod:`.gif`, :mod:`.tiff`,
:mod:`.bmp`, :mod:`.heif`, :mod:`.avif`) describes them as a :class:`Layout`, which is checked
against the limits before decoding and says which pictures are judged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from nsfwd.intake.frames import MAX_JUDGED_FRAMES, FrameFacts, frames_to_judge
from nsfwd.intake.limits import (
    ImageLimits,
    check_decode_budget,
    check_dimensions,
    check_frame_count,
    check_pixel_budget,
)

PictureKind = Literal["frame", "page", "image", "thumbnail"]
"""What a picture is: an animation's frame (or a still image itself), a page of a TIFF,
a top-level image of a HEIF or AVIF container, or a thumbnail that file browsers show."""
KINDS: Final[tuple[PictureKind, ...]] = ("frame", "page", "image", "thumbnail")


@dataclass(frozen=True)
class Picture:
    """One picture of a file, before it is decoded."""

    index: int
    """Its number in the file, which answers name (``judged.frame``): frames, pages and
    images from 0 in file order (a container's primary image first), thumbnails after them."""
    kind: PictureKind = "frame"
    size: tuple[int, int] | None = None
    """Width and height as displayed, where the header says (None: known once opened)."""
    cost: int = 0
    """Pixels decoded to show it (a grid's tiles, an animation's whole canvas); 0 where the
    header does not say."""
    duration_ms: float | None = None
    """How long a viewer shows it, for an animation's frame (GIF delay, AVIF sequence timing);
    None for what is not timed (a still, a page, an image, a thumbnail)."""


@dataclass(frozen=True)
class Layout:
    """A file's pictures as its structure describes them (see the module)."""

    pictures: tuple[Picture, ...]
    decodes_all: bool = False
    """Whether every frame is decoded to show any of them (an animation, each frame drawn
    over the one before), rather than the judged ones alone (pages, images)."""

    @property
    def size(self) -> tuple[int, int] | None:
        """The image's own size: its first picture's."""
        return self.pictures[0].size if self.pictures else None

    def to_judge(
        self, budget: int = MAX_JUDGED_FRAMES, facts: Sequence[FrameFacts] | None = None
    ) -> list[Picture]:
        """The pictures that are judged: the frames, pages and images that
        :func:`~nsfwd.intake.frames.frames_to_judge` picks within ``budget`` from ``facts``
        (each frame's, once decoded: time on screen and signature; without them, what the
        structure says: each picture's ``duration_ms``, no signature), then every thumbnail."""
        sequence = [p for p in self.pictures if p.kind != "thumbnail"]
        if facts is None:
            facts = [FrameFacts(p.index, p.duration_ms or 0.0, b"") for p in sequence]
        chosen = set(frames_to_judge(facts, budget))
        return [p for p in sequence if p.index in chosen] + [
            p for p in self.pictures if p.kind == "thumbnail"
        ]

    @property
    def durations_ms(self) -> list[float | None]:
        """Each picture's time on screen, in picture order (see :attr:`Picture.duration_ms`)."""
        return [picture.duration_ms for picture in self.pictures]

    def check(self, limits: ImageLimits) -> None:
        """Raise :class:`~nsfwd.intake.errors.ImageDimensionsError` unless every picture fits
        the limits: the image's sides (the first picture), the others' upper bounds, the
        count, and the pixels decoding several costs."""
        check_frame_count(len(self.pictures), limits, _counted(self.pictures))
        for picture in self.pictures:
            if picture.size is not None:
                what = "image" if picture.index == 0 else f"{picture.kind} {picture.index}"
                check_dimensions(picture.size, limits, what=what, smallest=picture.index == 0)
        decoded = self.pictures if self.decodes_all else self.to_judge()
        if len(decoded) < 2:
            return  # a still image: the sides and max_pixels bound it
        costs = {p.cost for p in decoded}
        first = self.pictures[0] if self.pictures else None
        if len(costs) == 1 and first is not None and first.size and first.cost == _area(first):
            check_pixel_budget(*first.size, len(decoded), limits)
        else:
            check_decode_budget(sum(p.cost for p in decoded), len(decoded), limits)


def _area(picture: Picture) -> int:
    return picture.size[0] * picture.size[1] if picture.size else -1


def _counted(pictures: Sequence[Picture]) -> str:
    kinds = {picture.kind for picture in pictures}
    return f"{next(iter(kinds))}s" if len(kinds) == 1 else "pictures"
