"""Colours as a browser shows them: what a file's colour tags make of its stored pixels.

Each decoder reports a file's tags as :class:`ColourTags` (those browsers read: a PNG's chunks
before its image data, a JPEG's or WebP's ICC profile). :func:`display_conversion` then follows
Chromium's precedence, checked against Chromium itself (``tests/test_browser_views.py``):

1. ``cICP`` (PNG): the coded primaries and transfer; the other tags are ignored;
2. an ICC profile (a PNG's *first* ``iCCP``) for the pixels' colour model; a profile for
   another model (a grey profile on a colour image) is ignored, as browsers ignore it;
3. an ``sRGB`` chunk: shown as stored;
4. ``gAMA``, with ``cHRM``'s primaries when present (``cHRM`` alone is ignored).

Viewers do not all agree (libpng-based programs drop both profiles when a PNG has ``sRGB``
and ``iCCP``), so :mod:`nsfwd.intake.views` judges the stored colours beside the converted
ones wherever a conversion changes them. Conversions run through LittleCMS (``ImageCms``); a
profile that cannot be read refuses the image (:class:`ColourProfileError`): judging colours
other than a viewer's would let the profile hide the picture.
"""

from __future__ import annotations

import functools
import hashlib
import math
import struct
from dataclasses import dataclass
from io import BytesIO
from typing import Final

import numpy as np
from PIL import Image, ImageCms

MAX_ICC_BYTES: Final = 1024 * 1024
"""Largest embedded ICC profile that is applied; a larger one is refused. Display and camera
profiles are a few KiB; PNG caps its compressed iCCP chunk at about this size anyway."""
WIDE_GRAY_MODES: Final = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})

# A gAMA this close to 1/2.2 displays as sRGB already; browsers treat it so.
_SRGB_GAMMA: Final = 1 / 2.2
_GAMMA_TOLERANCE: Final = 0.01
# gAMA values outside this range are ignored, as libpng ignores unusable ones.
_GAMMA_RANGE: Final = (0.01, 10.0)
# Largest per-channel difference (0..255) at which a conversion counts as none.
_IDENTITY_TOLERANCE: Final = 2
_SPACES: Final = {"L": "GRAY", "RGB": "RGB", "CMYK": "CMYK"}
"""The ICC colour space that fits each colour model."""

D50: Final = (0.9642, 1.0, 0.8249)
D65: Final = (0.3127, 0.3290)
Chromaticity = tuple[float, float, float, float, float, float, float, float]
"""White x, y, then red, green and blue x, y (a PNG cHRM chunk's order)."""
SRGB_PRIMARIES: Final[Chromaticity] = (*D65, 0.64, 0.33, 0.30, 0.60, 0.15, 0.06)
# cICP's code points (ITU-T H.273) that browsers convert and nsfwd follows.
_CICP_PRIMARIES: Final[dict[int, Chromaticity]] = {
    1: SRGB_PRIMARIES,  # BT.709
    9: (*D65, 0.708, 0.292, 0.170, 0.797, 0.131, 0.046),  # BT.2020
    12: (*D65, 0.680, 0.320, 0.265, 0.690, 0.150, 0.060),  # Display P3
}
_SRGB_CURVE: Final = (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)
_CICP_TRANSFERS: Final[dict[int, tuple[float, ...]]] = {
    1: (1 / 0.45, 1 / 1.099, 0.099 / 1.099, 1 / 4.5, 0.081),  # BT.709 (and 6, 14, 15)
    4: (2.2,),
    5: (2.8,),
    6: (1 / 0.45, 1 / 1.099, 0.099 / 1.099, 1 / 4.5, 0.081),
    8: (1.0,),  # linear
    13: _SRGB_CURVE,
    14: (1 / 0.45, 1 / 1.099, 0.099 / 1.099, 1 / 4.5, 0.081),
    15: (1 / 0.45, 1 / 1.099, 0.099 / 1.099, 1 / 4.5, 0.081),
}
"""Transfer functions as ICC parametric curves (gamma alone, or g, a, b, c, d of type 3).
Absent: PQ (16) and HLG (18), which need tone mapping; such images are judged as stored."""


class ColourProfileError(ValueError):
    """The embedded ICC profile cannot be applied (too large, or unreadable).
    :mod:`nsfwd.intake` refuses the image: judging it in other colours than a viewer sees
    would let a profile hide the picture."""


@dataclass(frozen=True)
class ColourTags:
    """What a file says about its colours, as browsers read it: a PNG's chunks before its
    image data (its first ``iCCP``), a JPEG's or WebP's ICC profile. Format-neutral: each
    decoder fills in what its format has."""

    icc_profile: bytes | None = None
    srgb: bool = False
    """A PNG ``sRGB`` chunk."""
    gamma: float | None = None
    """A PNG ``gAMA`` (the encoding gamma, e.g. 0.45455)."""
    chromaticity: Chromaticity | None = None
    """A PNG ``cHRM``."""
    cicp: tuple[int, int, int, int] | None = None
    """A PNG ``cICP``: primaries, transfer, matrix, full range."""


@dataclass(frozen=True)
class Conversion:
    """How a browser turns stored colours of one model (``L``, ``RGB`` or ``CMYK``) into
    sRGB: a LittleCMS transform, or a table per sample (a gAMA)."""

    model: str
    transform: ImageCms.ImageCmsTransform | None = None
    table: tuple[int, ...] | None = None

    def __call__(self, colour: Image.Image) -> Image.Image:
        """``colour`` (its stored samples, in mode ``L``, ``RGB`` or ``CMYK``) as shown, RGB."""
        if self.model == "L" and colour.mode == "RGB":
            colour = colour.convert("L")  # a grey image given alpha by a colour key
        elif self.model == "RGB" and colour.mode == "L":
            colour = colour.convert("RGB")  # grey shown through a colour profile (cICP)
        if self.transform is not None:
            return ImageCms.applyTransform(colour, self.transform) or as_stored(colour)
        rgb = as_stored(colour)
        return rgb if self.table is None else rgb.point(list(self.table) * 3)


def as_stored(colour: Image.Image) -> Image.Image:
    """``colour`` as RGB with no conversion (what an untagged image, or a viewer that ignores
    the tags, shows)."""
    return colour if colour.mode == "RGB" else colour.convert("RGB")


def colour_model(mode: str) -> str:
    """The colour model (``L``, ``RGB`` or ``CMYK``) of stored pixels in Pillow ``mode``."""
    if mode in ("L", "LA", "La", "1", "F") or mode in WIDE_GRAY_MODES:
        return "L"
    return "CMYK" if mode == "CMYK" else "RGB"


def display_conversion(tags: ColourTags, model: str) -> Conversion | None:
    """How a browser shows pixels of ``model`` with these ``tags``, by the precedence of the
    module docstring; ``None`` when it shows them as stored (within a couple of levels).
    Raises :class:`ColourProfileError` for a profile that cannot be read."""
    if tags.cicp is not None:
        return _cicp_conversion(tags.cicp, model)
    if tags.icc_profile:
        fits, conversion = _icc_conversion(tags.icc_profile, model)
        if fits:
            return conversion
    if tags.srgb or tags.gamma is None or model == "CMYK":
        return None
    return _gamma_conversion(tags.gamma, tags.chromaticity, model)


def _icc_conversion(profile: bytes, model: str) -> tuple[bool, Conversion | None]:
    """Whether the profile is for ``model``'s colour space (browsers ignore it otherwise), and
    its conversion where it is."""
    if len(profile) > MAX_ICC_BYTES:
        raise ColourProfileError(
            f"its embedded ICC profile is {len(profile):,} bytes; the limit is "
            f"{MAX_ICC_BYTES:,} bytes"
        )
    return _cached_conversion(hashlib.sha256(profile).digest(), profile, model)


@functools.lru_cache(maxsize=64)
def _cached_conversion(digest: bytes, profile: bytes, model: str) -> tuple[bool, Conversion | None]:
    """:func:`_icc_conversion`, once per distinct profile and model (``digest`` is the key
    that matters; ``profile`` rides along)."""
    del digest
    try:
        source = ImageCms.ImageCmsProfile(BytesIO(profile))
        space = source.profile.xcolor_space.strip()
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
        raise ColourProfileError(
            f"its embedded ICC profile cannot be read ({exc}); browsers could show any colours"
        ) from exc
    if space != _SPACES[model]:
        return False, None
    try:
        transform = ImageCms.buildTransform(
            source,
            _srgb(),
            model,
            "RGB",
            flags=ImageCms.Flags.NOCACHE,  # thread-safe: no one-pixel cache in the transform
        )
        if not isinstance(transform, ImageCms.ImageCmsTransform):
            raise ImageCms.PyCMSError("no transform")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
        raise ColourProfileError(
            f"its embedded ICC profile ({space or 'unknown'} colour space) cannot be applied "
            f"to its {model} pixels ({exc})"
        ) from exc
    return True, None if _is_identity(transform, model) else Conversion(model, transform)


def _cicp_conversion(cicp: tuple[int, int, int, int], model: str) -> Conversion | None:
    """cICP's conversion: its primaries and transfer as a profile; ``None`` for sRGB's, and for
    what nsfwd does not follow (a matrix, limited range, PQ, HLG: judged as stored)."""
    primaries, transfer, matrix, full_range = cicp
    white_and_primaries = _CICP_PRIMARIES.get(primaries)
    curve = _CICP_TRANSFERS.get(transfer)
    if white_and_primaries is None or curve is None or matrix != 0 or not full_range:
        return None
    if model == "CMYK":
        return None
    return _icc_conversion(rgb_profile(white_and_primaries, curve), "RGB")[1]


def _gamma_conversion(
    gamma: float, chromaticity: Chromaticity | None, model: str
) -> Conversion | None:
    """A gAMA's conversion (with cHRM's primaries where given); ``None`` for an unusable
    gamma and for sRGB's."""
    if not _GAMMA_RANGE[0] <= gamma <= _GAMMA_RANGE[1]:
        return None
    if chromaticity is not None and _usable(chromaticity) and model == "RGB":
        profile = rgb_profile(chromaticity, (1 / gamma,))
        return _icc_conversion(profile, model)[1]
    if abs(gamma - _SRGB_GAMMA) <= _GAMMA_TOLERANCE:
        return None
    return Conversion(model, table=_gamma_lut(round(float(gamma), 5)))


def _usable(chromaticity: Chromaticity) -> bool:
    """Whether cHRM's values make a profile (each y above zero, the primaries not in a line)."""
    xs, ys = chromaticity[0::2], chromaticity[1::2]
    if any(not 0 < y <= 1 or not 0 <= x <= 1 for x, y in zip(xs, ys, strict=True)):
        return False
    (_, _), (rx, ry), (gx, gy), (bx, by) = zip(xs, ys, strict=True)
    return abs((gx - rx) * (by - ry) - (bx - rx) * (gy - ry)) > 1e-4


@functools.lru_cache(maxsize=64)
def _gamma_lut(gamma: float) -> tuple[int, ...]:
    light = (np.arange(256) / 255.0) ** (1.0 / gamma)
    encoded = np.where(light <= 0.0031308, light * 12.92, 1.055 * light ** (1 / 2.4) - 0.055)
    return tuple(int(v) for v in np.clip(np.round(encoded * 255), 0, 255))


@functools.cache
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _is_identity(transform: ImageCms.ImageCmsTransform, model: str) -> bool:
    """Whether ``transform`` leaves RGB pixels as they are (within a couple of levels)."""
    if model != "RGB":
        return False
    levels = np.linspace(0, 255, 16).round().astype(np.uint8)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1)
    probe = Image.fromarray(grid.reshape(64, 64, 3))
    out = ImageCms.applyTransform(probe, transform)
    if out is None:
        return False
    diff = np.abs(np.asarray(out, dtype=np.int16) - np.asarray(probe, dtype=np.int16))
    return int(diff.max()) <= _IDENTITY_TOLERANCE


# --- ICC profiles from primaries and a tone curve ---------------------------------------------


def rgb_profile(chromaticity: Chromaticity, curve: tuple[float, ...]) -> bytes:
    """An RGB display profile (ICC v4) for these white point and primaries and tone ``curve``
    (a gamma, or the g, a, b, c, d of a parametric curve of type 3), as browsers build one
    from a PNG's cHRM and gAMA or its cICP."""
    colorants = _colorants_d50(chromaticity)
    trc = curve_tag(curve)
    tags = {
        b"wtpt": xyz_tag(D50),
        b"rXYZ": xyz_tag(tuple(colorants[:, 0])),
        b"gXYZ": xyz_tag(tuple(colorants[:, 1])),
        b"bXYZ": xyz_tag(tuple(colorants[:, 2])),
        b"rTRC": trc,
        b"gTRC": trc,
        b"bTRC": trc,
    }
    return icc_profile("RGB ", tags)


def icc_profile(space: str, tags: dict[bytes, bytes]) -> bytes:
    """A display-class ICC profile of colour ``space`` (4 characters) holding ``tags``."""
    table_end = 132 + 12 * len(tags)
    entries, body = b"", b""
    for signature, data in tags.items():
        entries += struct.pack(">4sII", signature, table_end + len(body), len(data))
        body += data + bytes(-len(data) % 4)
    header = struct.pack(
        ">I4sI4s4s4s12s4s4sI4s4s8sI12s4s16s28s",
        table_end + len(body), b"lcms", 0x04300000, b"mntr", space.encode(), b"XYZ ",
        bytes(12), b"acsp", b"APPL", 0, bytes(4), bytes(4), bytes(8), 0,
        _xyz_numbers(D50), b"nsfw", bytes(16), bytes(28),
    )  # fmt: skip
    return header + struct.pack(">I", len(tags)) + entries + body


def xyz_tag(xyz: tuple[float, ...]) -> bytes:
    """An ICC ``XYZ `` tag."""
    return b"XYZ " + bytes(4) + _xyz_numbers(xyz)


def curve_tag(curve: tuple[float, ...]) -> bytes:
    """An ICC ``para`` tag: a gamma (function type 0) or g, a, b, c, d (type 3)."""
    kind = 0 if len(curve) == 1 else 3
    return b"para" + bytes(4) + struct.pack(">HH", kind, 0) + _s15(curve)


def _xyz_numbers(xyz: tuple[float, ...]) -> bytes:
    return _s15(xyz)


def _s15(values: tuple[float, ...]) -> bytes:
    return b"".join(struct.pack(">i", round(v * 65536)) for v in values)


_BRADFORD: Final = np.array(
    [[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]]
)


def _colorants_d50(chromaticity: Chromaticity) -> np.ndarray:
    """The XYZ of full red, green and blue (columns), adapted to D50 (Bradford), as an ICC
    matrix profile holds them."""
    wx, wy, *rest = chromaticity
    white = np.array([wx / wy, 1.0, (1 - wx - wy) / wy])
    primaries = np.array(
        [[x / y, 1.0, (1 - x - y) / y] for x, y in zip(rest[0::2], rest[1::2], strict=True)]
    ).T
    scale = np.linalg.solve(primaries, white)
    to_xyz = primaries * scale
    cone_from, cone_to = _BRADFORD @ white, _BRADFORD @ np.array(D50)
    adapt = np.linalg.inv(_BRADFORD) @ np.diag(cone_to / cone_from) @ _BRADFORD
    result: np.ndarray = adapt @ to_xyz
    if not np.all(np.isfinite(result)) or math.isclose(float(np.linalg.det(result)), 0.0):
        raise ColourProfileError("its cHRM primaries do not make a colour space")
    return result
