"""Colours as a viewer sees them: stored pixels converted to sRGB by the embedded ICC profile
(LittleCMS through ``ImageCms``) or a PNG's gAMA. A profile that cannot be applied refuses the
image: judging it in other colours than a viewer sees would let a profile hide the picture."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from io import BytesIO
from typing import Any, Final

import numpy as np
from PIL import Image, ImageCms

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
WIDE_GRAY_MODES: Final = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


class ColourProfileError(ValueError):
    """The embedded ICC profile cannot be applied (too large, unreadable, or not for these
    pixels). :mod:`nsfwd.intake` refuses the image: judging it in other colours than a viewer
    sees would let a profile hide the picture."""


def needs_colour_conversion(info: Mapping[Any, Any], fmt: str, mode: str) -> bool:
    """Whether an image with this ``info`` displays in other colours than its stored pixels
    (an ICC profile that is not sRGB, or a PNG gAMA that is not sRGB's); raises
    :class:`ColourProfileError` for a profile that cannot be applied."""
    profile = info.get("icc_profile")
    if profile:
        colour_mode = "L" if mode in ("L", "LA", "La", "1") or mode in WIDE_GRAY_MODES else mode
        colour_mode = colour_mode if colour_mode in ("L", "CMYK") else "RGB"
        return _transform(bytes(profile), colour_mode) is not None
    return _gamma_table(info, fmt) is not None


def to_srgb(colour: Image.Image, info: Mapping[Any, Any], fmt: str) -> Image.Image:
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
