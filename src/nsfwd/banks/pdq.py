"""PDQ, Meta's perceptual hash: what a picture looks like, in 256 bits that survive resizing and
re-encoding, as trust and safety teams exchange them (ThreatExchange, Hasher-Matcher-Actioner).

Two pictures that look alike have hashes a few bits apart (:func:`distance`); unrelated ones
differ in about half of the 256. The hash is computed by the ``pdqhash`` package (Meta's C++
reference) on the picture scaled to fit :data:`HASHED_SIDE` pixels first: PDQ shrinks every
picture to 64x64 anyway, its own downsampling is its costliest step on large pictures, and
Meta's PHP reference and other ports shrink to 512 first for the same reason. The hex form is
ThreatExchange's: the 256 bits in order, the first the most significant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image

HASH_BYTES: Final = 32
HASH_BITS: Final = 8 * HASH_BYTES
HASHED_SIDE: Final = 512
"""Pictures larger than this on a side are scaled down to fit before hashing."""
MIN_QUALITY: Final = 50
"""PDQ's quality (0 to 100) below which a hash says too little to match on: flat or nearly
featureless pictures, which all hash alike. Such hashes are neither banked nor looked up."""
DEFAULT_DISTANCE: Final = 31
"""The Hamming distance within which PDQ hashes usually count as the same picture."""

_HEX: Final = re.compile(r"[0-9a-fA-F]{64}")


class HashFormatError(ValueError):
    """A PDQ hash that is not 64 hexadecimal digits."""


@dataclass(frozen=True)
class PictureHash:
    """The PDQ hash of one picture, and how much it says (``quality``, 0 to 100)."""

    hash: bytes
    """32 bytes: the 256 bits, the first the most significant."""
    quality: int = 100
    frame: int = 0
    """The frame of the file the picture is of."""

    @property
    def hex(self) -> str:
        """The hash as ThreatExchange writes it: 64 lowercase hexadecimal digits."""
        return self.hash.hex()

    @property
    def usable(self) -> bool:
        """Whether the hash says enough to match on (quality at least :data:`MIN_QUALITY`)."""
        return self.quality >= MIN_QUALITY


def parse_hash(text: str) -> bytes:
    """The 32 bytes of a PDQ hash written as 64 hexadecimal digits (either case);
    :class:`HashFormatError` otherwise."""
    text = text.strip()
    if not _HEX.fullmatch(text):
        shown = text[:80] + ("..." if len(text) > 80 else "")
        raise HashFormatError(f"{shown!r} is not a PDQ hash: it takes 64 hexadecimal digits")
    return bytes.fromhex(text)


def hash_picture(picture: Image.Image) -> PictureHash:
    """The PDQ hash of one picture as a viewer sees it (an RGB image, the pictures
    :func:`nsfwd.intake.load_views` gives)."""
    import pdqhash  # a compiled extension; only hashing needs it

    if max(picture.size) > HASHED_SIDE:
        scale = HASHED_SIDE / max(picture.size)
        size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        picture = picture.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    if picture.mode != "RGB":
        picture = picture.convert("RGB")
    bits, quality = pdqhash.compute(np.asarray(picture))
    return PictureHash(np.packbits(bits.astype(np.uint8)).tobytes(), int(quality))


def distance(a: bytes, b: bytes) -> int:
    """The Hamming distance between two hashes: how many of their bits differ."""
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_count()
