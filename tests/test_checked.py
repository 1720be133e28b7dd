"""An upload checked before it is accepted is decoded once: its judgement takes the pictures
the check prepared."""

from __future__ import annotations

import pytest
from PIL import Image

from nsfwd.intake import ImageDimensionsError, ImageLimits
from nsfwd.intake.checked import CheckedImages
from photos import astronaut_jpeg, encode


class Counting:
    """A ``prepare`` that counts the pictures it is given."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, image: Image.Image) -> tuple[int, int]:
        self.calls += 1
        return image.size


def test_a_checked_image_is_not_decoded_again() -> None:
    prepare = Counting()
    checked = CheckedImages(prepare, ImageLimits(), size=4)
    data = astronaut_jpeg()
    checked.check(data)
    views = checked.load(data)
    assert prepare.calls == 1
    assert views.images == [(512, 512)]
    checked.load(data)  # taken by the first load: decoded again
    assert prepare.calls == 2


def test_only_the_last_images_are_kept() -> None:
    prepare = Counting()
    checked = CheckedImages(prepare, ImageLimits(), size=2)
    images = [encode(Image.new("RGB", (200 + i, 200)), "PNG") for i in range(3)]
    for data in images:
        checked.check(data)
    assert checked.load(images[0]).images == [(200, 200)]
    assert prepare.calls == 4  # the oldest was dropped, so decoded again
    checked.load(images[2])
    assert prepare.calls == 4


def test_a_bad_image_is_refused_and_not_kept() -> None:
    checked = CheckedImages(Counting(), ImageLimits(), size=2)
    tiny = encode(Image.new("RGB", (8, 8)), "PNG")
    with pytest.raises(ImageDimensionsError):
        checked.check(tiny)
    with pytest.raises(ImageDimensionsError):
        checked.load(tiny)
