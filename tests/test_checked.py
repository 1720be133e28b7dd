"""An upload checked before it is accepted is decoded once: its judgement takes the pictures
the check prepared."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from io import BytesIO

import pytest
from PIL import Image

from nsfwd.intake import ImageDimensionsError, ImageLimits
from nsfwd.intake.checked import CheckedImages
from photos import astronaut_jpeg, encode


@dataclass(frozen=True)
class Picture:
    """A prepared picture as the cache weighs it: its size, and bytes to match."""

    size: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return self.size[0] * self.size[1]


class Counting:
    """A ``prepare`` that counts the pictures it is given."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, image: Image.Image) -> Picture:
        self.calls += 1
        return Picture(image.size)


def test_a_checked_image_is_not_decoded_again() -> None:
    prepare = Counting()
    checked = CheckedImages(prepare, ImageLimits(), max_bytes=10**6)
    data = astronaut_jpeg()
    checked.check(data)
    views = checked.load(data)
    assert prepare.calls == 1
    assert views.images == [Picture((512, 512))]
    checked.load(data)  # taken by the first load: decoded again
    assert prepare.calls == 2


def test_only_the_last_images_are_kept() -> None:
    prepare = Counting()
    checked = CheckedImages(prepare, ImageLimits(), max_bytes=2 * 202 * 200)
    images = [encode(Image.new("RGB", (200 + i, 200)), "PNG") for i in range(3)]
    for data in images:
        checked.check(data)
    assert checked.load(images[0]).images == [Picture((200, 200))]
    assert prepare.calls == 4  # the oldest was dropped, so decoded again
    checked.load(images[2])
    assert prepare.calls == 4


def test_a_bad_image_is_refused_and_not_kept() -> None:
    checked = CheckedImages(Counting(), ImageLimits(), max_bytes=10**6)
    tiny = encode(Image.new("RGB", (8, 8)), "PNG")
    with pytest.raises(ImageDimensionsError):
        checked.check(tiny)
    with pytest.raises(ImageDimensionsError):
        checked.load(tiny)


def test_the_cache_is_bounded_by_bytes_not_images() -> None:
    """A 5 KB translucent 32-frame APNG is 96 pictures (white, black and grey pages): kept by
    the dozen, such images held gigabytes. The cache holds at most its bytes."""
    frames = [Image.new("RGBA", (256, 256), (i, 0, 0, 128)) for i in range(32)]
    out = BytesIO()
    frames[0].save(out, "PNG", save_all=True, append_images=frames[1:], duration=50)
    data = out.getvalue()
    assert len(data) < 30_000
    limit = 10 * 96 * 256 * 256  # ten such images
    checked = CheckedImages(Counting(), ImageLimits(), max_bytes=limit)
    for shade in range(20):  # twenty distinct uploads of it
        checked.check(_variant(data, shade))
        assert checked.kept_bytes <= limit
    assert checked.kept_bytes > limit // 2


def _variant(data: bytes, seed: int) -> bytes:
    """``data`` with a tEXt chunk, so that its digest (the cache's key) differs."""
    text = b"tEXt" + b"seed\x00" + str(seed).encode()
    chunk = struct.pack(">I", len(text) - 4) + text + struct.pack(">I", zlib.crc32(text))
    return data[:33] + chunk + data[33:]
