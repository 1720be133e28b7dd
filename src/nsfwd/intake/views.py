"""What a viewer sees of one decoded frame: the pictures that are judged.

A person sees an image with transparency over whatever page it lands on, and in the colours its
profile says (:mod:`nsfwd.intake.colour`). So a frame becomes one :class:`View`, or two where
its alpha is not fully opaque: over white and over black. The model judges every view of every
judged frame (:mod:`nsfwd.intake.frames`) and the worst one answers
(:func:`nsfwd.verdict.worst`). Pillow only; no torch, so the HTTP side may import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic, Literal, TypeVar

import numpy as np
from PIL import Image

from nsfwd.intake.colour import WIDE_GRAY_MODES, to_srgb
from nsfwd.intake.pictures import PictureKind

_WHITE: Final = (255, 255, 255)
_BLACK: Final = (0, 0, 0)

Backdrop = Literal["white", "black"]
T = TypeVar("T")
U = TypeVar("U")


@dataclass(frozen=True)
class View(Generic[T]):
    """One picture to judge: an RGB image as displayed, or what a model made of it."""

    image: T
    frame: int
    """The picture's index in the file (:attr:`nsfwd.intake.pictures.Picture.index`): frames
    as Pillow counts them (an APNG's default image is 0), pages, images, then thumbnails."""
    backdrop: Backdrop | None
    """The page colour the frame was composited over, or None for an opaque frame."""
    size: tuple[int, int] = (0, 0)
    """(width, height) of the picture as displayed, before a model resized it: a detector
    maps its boxes back to these pixels ((0, 0) where unknown)."""
    picture: PictureKind = "frame"
    """What the picture is in its file: a frame (or the still image itself), a page, another
    top-level image, or a thumbnail (:mod:`nsfwd.intake.pictures`)."""


@dataclass(frozen=True)
class Views(Generic[T]):
    """The pictures to judge for one file, in frame order."""

    views: list[View[T]]
    frames: int
    """Pictures in the file (1 for a still image): frames, pages, images and thumbnails."""

    @classmethod
    def single(cls, image: T) -> Views[T]:
        """One opaque still picture."""
        return cls([View(image, 0, None)], 1)

    @property
    def images(self) -> list[T]:
        """The pictures, in order."""
        return [view.image for view in self.views]

    def map(self, prepare: Callable[[T], U]) -> Views[U]:
        """The same views, each picture made into ``prepare`` of it."""
        return Views(
            [View(prepare(v.image), v.frame, v.backdrop, v.size, v.picture) for v in self.views],
            self.frames,
        )

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """Each picture's displayed (width, height), in order."""
        return [view.size for view in self.views]

    @property
    def frames_judged(self) -> int:
        """How many of the frames were judged."""
        return len({view.frame for view in self.views})


def frame_views(image: Image.Image, frame: int, fmt: str) -> list[View[Image.Image]]:
    """The views of one loaded frame: converted to sRGB, and over white and black when its
    alpha is not fully opaque. Raises :class:`ColourProfileError` for an unusable profile."""
    colour, alpha = _split_alpha(image)
    rgb = to_srgb(colour, image.info, fmt)
    if alpha is None or alpha.getextrema()[0] == 255:
        return [View(rgb, frame, None, rgb.size)]
    return [
        View(_composite(rgb, alpha, _WHITE), frame, "white", rgb.size),
        View(_composite(rgb, alpha, _BLACK), frame, "black", rgb.size),
    ]


def _split_alpha(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """The colour of a loaded image (mode L, RGB or CMYK) and its alpha (mode L) if it has any
    (an alpha channel, palette alpha or a colour key)."""
    if image.mode in WIDE_GRAY_MODES:
        image = wide_gray_to_8bit(image)
    elif image.mode == "F":
        image = image.convert("L")  # Pillow's 0..255 float scale, clipped
    elif image.mode == "1":
        image = image.convert("L")
    if image.mode == "La":  # premultiplied; Pillow converts it to RGBA only by way of LA
        image = image.convert("LA")
    if image.mode == "LA":
        return image.getchannel("L"), image.getchannel("A")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        return rgba.convert("RGB"), rgba.getchannel("A")
    if image.mode in ("L", "RGB", "CMYK"):
        return image, None
    return image.convert("RGB"), None


def wide_gray_to_8bit(image: Image.Image) -> Image.Image:
    """Scale 16-bit (or 32-bit integer) grayscale to 8 bits by keeping the high byte.

    Pillow's ``convert("L")`` clips such values at 255 instead of scaling them, which turns a
    16-bit photograph white. A ``transparency`` colour key becomes an alpha channel.
    """
    values = np.clip(np.asarray(image).astype(np.int64), 0, 0xFFFF)
    gray = (values >> 8).astype(np.uint8)
    key = image.info.get("transparency")
    if isinstance(key, int):
        alpha = np.where(values == key, 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([gray, alpha], axis=-1))
    return Image.fromarray(gray)


def _composite(rgb: Image.Image, alpha: Image.Image, page: tuple[int, int, int]) -> Image.Image:
    """``rgb`` drawn with ``alpha`` over a page of one colour."""
    flat = Image.new("RGB", rgb.size, page)
    flat.paste(rgb, mask=alpha)
    return flat
