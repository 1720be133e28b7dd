"""What viewers may see of one decoded frame: the pictures that are judged.

A person sees an image with transparency over whatever page it lands on, and in the colours
its tags give (:mod:`nsfwd.intake.colour`). So a frame becomes one :class:`View`, or several:

- over white and over black where its alpha is not fully opaque, and over mid-grey as well
  where the alpha is partial (a grey page shows a blend neither white nor black shows);
- in the converted colours and in the stored ones where a conversion changes them (viewers
  disagree on which tags to follow; the worse answers).

The model judges every view of every judged frame (:mod:`nsfwd.intake.frames`) and the worst
answers (:func:`nsfwd.verdict.worst`). Pillow only; no torch, so the HTTP side may import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic, Literal, TypeVar

import numpy as np
from PIL import Image

from nsfwd.intake.colour import WIDE_GRAY_MODES, Conversion, as_stored
from nsfwd.intake.pictures import PictureKind

Backdrop = Literal["white", "black", "grey"]
Colours = Literal["converted", "stored"]
BACKDROPS: Final[dict[Backdrop, tuple[int, int, int]]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "grey": (128, 128, 128),
}
"""The pages a translucent frame is judged over: grey only where its alpha is partial."""
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
    colours: Colours | None = None
    """``converted`` (by the file's colour tags) or ``stored`` where the two differ; None
    where the tags change nothing."""
    size: tuple[int, int] = (0, 0)
    """(width, height) of the picture as displayed, before a model resized it: a detector
    maps its boxes back to these pixels ((0, 0) where unknown)."""
    picture: PictureKind = "frame"
    """What the picture is in its file: a frame (or the still image itself), a page, another
    top-level image, or a thumbnail (:mod:`nsfwd.intake.pictures`)."""

    def with_image(self, image: U) -> View[U]:
        """The same view of another picture (what a model made of this one)."""
        return View(image, self.frame, self.backdrop, self.colours, self.size, self.picture)


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
        return Views([v.with_image(prepare(v.image)) for v in self.views], self.frames)

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """Each picture's displayed (width, height), in order."""
        return [view.size for view in self.views]

    @property
    def frames_judged(self) -> int:
        """How many of the frames were judged."""
        return len({view.frame for view in self.views})


def views_per_frame(mode: str, has_transparency: bool, conversion: Conversion | None) -> int:
    """The most views a frame of this Pillow ``mode`` can make (before its alpha is seen):
    for the frame budget (:func:`nsfwd.intake.frames.frame_budget`)."""
    translucent = has_transparency or mode in ("RGBA", "LA", "La", "RGBa", "PA")
    return (3 if translucent else 1) * (1 if conversion is None else 2)


def frame_views(
    image: Image.Image,
    frame: int,
    conversion: Conversion | None,
    picture: PictureKind = "frame",
) -> list[View[Image.Image]]:
    """The views of one loaded picture (see the module docstring), the ``frame``-th of its
    file, a ``picture`` of it: its colours by ``conversion`` (and as stored, where that
    changes them), over each page its alpha calls for."""
    colour, alpha = _split_alpha(image)
    if conversion is None:
        shown: list[tuple[Colours | None, Image.Image]] = [(None, as_stored(colour))]
    else:
        shown = [("converted", conversion(colour)), ("stored", as_stored(colour))]
    pages = _backdrops(alpha)
    if not pages:
        return [View(rgb, frame, None, colours, rgb.size, picture) for colours, rgb in shown]
    assert alpha is not None
    return [
        View(_composite(rgb, alpha, BACKDROPS[page]), frame, page, colours, rgb.size, picture)
        for colours, rgb in shown
        for page in pages
    ]


def _backdrops(alpha: Image.Image | None) -> list[Backdrop]:
    """No page for an opaque frame; white and black where some pixels are transparent; grey
    as well where some are partly so."""
    if alpha is None:
        return []
    counts = alpha.histogram()
    if sum(counts[:255]) == 0:
        return []
    return ["white", "black", "grey"] if sum(counts[1:255]) else ["white", "black"]


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
