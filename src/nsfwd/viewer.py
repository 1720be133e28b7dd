"""What a viewer sees: an opened image to the pictures that are judged.

A person sees more than the first frame's stored pixels: every frame of an animation (and
programs that do not animate show an APNG's default image), an image with transparency over
whatever page it lands on, and colours as the embedded ICC profile (or a PNG's gAMA) says. So
an image becomes several :class:`View` s: each judged frame, over white and over black when its
alpha is not fully opaque, converted to sRGB. The model judges all of them and the worst one
answers (:class:`Judgement`). docs/ARCHITECTURE.md ("Image intake") and RELIABILITY.md give
the rules and the caps.

Pillow only; no torch, so the HTTP side may import it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Final, Generic, Literal, TypeVar

import numpy as np
from PIL import Image, ImageCms

__all__ = [
    "MAX_ICC_BYTES",
    "MAX_JUDGED_FRAMES",
    "Backdrop",
    "ColourProfileError",
    "Judgement",
    "View",
    "Views",
    "frames_to_judge",
    "needs_colour_conversion",
    "worst",
]

_log = logging.getLogger(__name__)

MAX_JUDGED_FRAMES: Final = 32
"""Frames of an animation that are judged: all of them up to this many, else this many spread
evenly over the frames, the first and the last included (an APNG's default image is frame 0).
Every frame is still decoded, since each is drawn over the one before; the pixel budget
(``ImageLimits.max_animation_pixels``) bounds that."""

MAX_ICC_BYTES: Final = 1024 * 1024
"""Largest embedded ICC profile that is applied; a larger one is refused. Display and camera
profiles are a few KiB; PNG caps its compressed iCCP chunk at about this size anyway."""

# A gAMA this close to 1/2.2 displays as sRGB already; browsers treat it so.
_SRGB_GAMMA: Final = 1 / 2.2
_GAMMA_TOLERANCE: Final = 0.01
# gAMA values outside this range are ignored, as libpng ignores unusable ones.
_GAMMA_RANGE: Final = (0.01, 10.0)
# Largest per-channel difference (0..255) at which a profile counts as sRGB already.
_IDENTITY_TOLERANCE: Final = 2
_WIDE_GRAY_MODES: Final = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_WHITE: Final = (255, 255, 255)
_BLACK: Final = (0, 0, 0)

Backdrop = Literal["white", "black"]
T = TypeVar("T")
U = TypeVar("U")


class ColourProfileError(ValueError):
    """The embedded ICC profile cannot be applied (too large, unreadable, or not for these
    pixels). :mod:`nsfwd.images` refuses the image: judging it in other colours than a viewer
    sees would let a profile hide the picture."""


@dataclass(frozen=True)
class View(Generic[T]):
    """One picture to judge: an RGB image as displayed, or what a model made of it."""

    image: T
    frame: int
    """The frame's index in the file, as Pillow counts (an APNG's default image is 0)."""
    backdrop: Backdrop | None
    """The page colour the frame was composited over, or None for an opaque frame."""


@dataclass(frozen=True)
class Views(Generic[T]):
    """The pictures to judge for one file, in frame order."""

    views: list[View[T]]
    frames: int
    """Frames in the file (1 for a still image)."""

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
        return Views([View(prepare(v.image), v.frame, v.backdrop) for v in self.views], self.frames)

    @property
    def frames_judged(self) -> int:
        """How many of the frames were judged."""
        return len({view.frame for view in self.views})


@dataclass(frozen=True)
class Judgement:
    """The labels an image is answered with: those of its worst view, and which view that was."""

    labels: dict[str, float]
    frame: int = 0
    frames: int = 1
    frames_judged: int = 1
    backdrop: Backdrop | None = None

    @property
    def chosen(self) -> bool:
        """Whether more than one picture was judged, so that which one answers is news."""
        return self.frames_judged > 1 or self.backdrop is not None

    def details(self) -> dict[str, Any]:
        """Which picture answered, for responses: ``frame`` (its index), ``frames`` (in the
        file), ``frames_judged`` and ``backdrop`` (``white``, ``black`` or null)."""
        return {
            "frame": self.frame,
            "frames": self.frames,
            "frames_judged": self.frames_judged,
            "backdrop": self.backdrop,
        }

    @classmethod
    def from_details(cls, labels: dict[str, float], details: Mapping[str, Any]) -> Judgement:
        """The judgement :meth:`details` describes, for ``labels``."""
        return cls(
            labels,
            frame=int(details["frame"]),
            frames=int(details["frames"]),
            frames_judged=int(details["frames_judged"]),
            backdrop=details.get("backdrop"),
        )


def worst(
    views: Views[Any],
    labels: Sequence[dict[str, float]],
    score: Callable[[dict[str, float]], float],
) -> Judgement:
    """The judgement of the view whose ``score`` is highest (the earliest on a tie)."""
    if len(labels) != len(views.views) or not labels:
        raise ValueError(f"{len(labels)} label sets for {len(views.views)} views")
    scores = [score(item) for item in labels]
    index = max(range(len(scores)), key=lambda i: (scores[i], -i))
    view = views.views[index]
    return Judgement(
        dict(labels[index]),
        frame=view.frame,
        frames=views.frames,
        frames_judged=views.frames_judged,
        backdrop=view.backdrop,
    )


def frames_to_judge(count: int, cap: int = MAX_JUDGED_FRAMES) -> list[int]:
    """The frame indices judged of ``count`` frames: all, or ``cap`` spread evenly."""
    if count <= cap:
        return list(range(count))
    if cap == 1:
        return [0]
    return sorted({round(i * (count - 1) / (cap - 1)) for i in range(cap)})


def frame_views(image: Image.Image, frame: int, fmt: str) -> list[View[Image.Image]]:
    """The views of one loaded frame: converted to sRGB, and over white and black when its
    alpha is not fully opaque. Raises :class:`ColourProfileError` for an unusable profile."""
    colour, alpha = _split_alpha(image)
    rgb = _to_srgb(colour, image.info, fmt)
    if alpha is None or alpha.getextrema()[0] == 255:
        return [View(rgb, frame, None)]
    return [
        View(_composite(rgb, alpha, _WHITE), frame, "white"),
        View(_composite(rgb, alpha, _BLACK), frame, "black"),
    ]


def needs_colour_conversion(info: Mapping[Any, Any], fmt: str, mode: str) -> bool:
    """Whether an image with this ``info`` displays in other colours than its stored pixels
    (an ICC profile that is not sRGB, or a PNG gAMA that is not sRGB's); raises
    :class:`ColourProfileError` for a profile that cannot be applied."""
    profile = info.get("icc_profile")
    if profile:
        colour_mode = "L" if mode in ("L", "LA", "La", "1") or mode in _WIDE_GRAY_MODES else mode
        colour_mode = colour_mode if colour_mode in ("L", "CMYK") else "RGB"
        return _transform(bytes(profile), colour_mode) is not None
    return _gamma_table(info, fmt) is not None


# --- alpha --------------------------------------------------------------------------------


def _split_alpha(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """The colour of a loaded image (mode L, RGB or CMYK) and its alpha (mode L) if it has any
    (an alpha channel, palette alpha or a colour key)."""
    if image.mode in _WIDE_GRAY_MODES:
        image = _wide_gray_to_8bit(image)
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


def _wide_gray_to_8bit(image: Image.Image) -> Image.Image:
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


# --- colour -------------------------------------------------------------------------------


def _to_srgb(colour: Image.Image, info: Mapping[Any, Any], fmt: str) -> Image.Image:
    """``colour`` (mode L, RGB or CMYK) as an RGB image in sRGB: by its ICC profile, else a
    PNG's gAMA, else as stored (sRGB is what untagged images display as)."""
    profile = info.get("icc_profile")
    if profile:
        if colour.mode == "RGB" and _profile_space(bytes(profile)) == "GRAY":
            colour = colour.convert("L")  # a gray image given alpha by a colour key
        transform = _transform(bytes(profile), colour.mode)
        if transform is not None:
            return ImageCms.applyTransform(colour, transform) or colour
        return colour if colour.mode == "RGB" else colour.convert("RGB")
    rgb = colour if colour.mode == "RGB" else colour.convert("RGB")
    table = _gamma_table(info, fmt)
    return rgb if table is None else rgb.point(table * 3)


def _gamma_table(info: Mapping[Any, Any], fmt: str) -> list[int] | None:
    """The 256-entry table that shows a PNG's samples as its gAMA says, in sRGB; None when
    there is nothing to do (no gAMA, an sRGB chunk, a gAMA of about 1/2.2, an unusable one)."""
    gamma = info.get("gamma")
    if fmt != "PNG" or "srgb" in info or not isinstance(gamma, int | float):
        return None
    if not _GAMMA_RANGE[0] <= gamma <= _GAMMA_RANGE[1]:
        return None
    if abs(gamma - _SRGB_GAMMA) <= _GAMMA_TOLERANCE:
        return None
    return _gamma_lut(round(float(gamma), 5))


@functools.lru_cache(maxsize=64)
def _gamma_lut(gamma: float) -> list[int]:
    light = (np.arange(256) / 255.0) ** (1.0 / gamma)
    encoded = np.where(light <= 0.0031308, light * 12.92, 1.055 * light ** (1 / 2.4) - 0.055)
    return [int(v) for v in np.clip(np.round(encoded * 255), 0, 255)]


def _profile_space(profile: bytes) -> str:
    """The colour space an ICC profile's header names (``RGB``, ``GRAY``, ``CMYK``...)."""
    return profile[16:20].decode("ascii", "replace").strip()


def _transform(profile: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """The transform from ``profile`` to sRGB for pixels in ``mode``, or None when it changes
    nothing that matters (an sRGB profile). Raises :class:`ColourProfileError`."""
    if len(profile) > MAX_ICC_BYTES:
        raise ColourProfileError(
            f"its embedded ICC profile is {len(profile):,} bytes; the limit is "
            f"{MAX_ICC_BYTES:,} bytes"
        )
    return _cached_transform(hashlib.sha256(profile).digest(), profile, mode)


@functools.lru_cache(maxsize=64)
def _cached_transform(
    digest: bytes, profile: bytes, mode: str
) -> ImageCms.ImageCmsTransform | None:
    """:func:`_transform`, once per distinct profile and mode (``digest`` is the key that
    matters; ``profile`` rides along)."""
    del digest
    try:
        source = ImageCms.ImageCmsProfile(BytesIO(profile))
        transform = ImageCms.buildTransform(
            source,
            _srgb(),
            mode,
            "RGB",
            flags=ImageCms.Flags.NOCACHE,  # thread-safe: no one-pixel cache in the transform
        )
        if not isinstance(transform, ImageCms.ImageCmsTransform):
            raise ImageCms.PyCMSError("no transform")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
        space = _profile_space(profile)
        raise ColourProfileError(
            f"its embedded ICC profile ({space or 'unknown'} colour space) cannot be applied "
            f"to its {mode} pixels ({exc})"
        ) from exc
    return None if _is_identity(transform, mode) else transform


@functools.cache
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _is_identity(transform: ImageCms.ImageCmsTransform, mode: str) -> bool:
    """Whether ``transform`` leaves RGB pixels as they are (within a couple of levels)."""
    if mode != "RGB":
        return False
    levels = np.linspace(0, 255, 16).round().astype(np.uint8)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1)
    probe = Image.fromarray(grid.reshape(64, 64, 3))
    out = ImageCms.applyTransform(probe, transform)
    if out is None:
        return False
    diff = np.abs(np.asarray(out, dtype=np.int16) - np.asarray(probe, dtype=np.int16))
    return int(diff.max()) <= _IDENTITY_TOLERANCE
