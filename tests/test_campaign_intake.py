"""The reliability campaign, part 2: property tests of the image intake (:mod:`nsfwd.intake`).

Whatever bytes arrive, :func:`~nsfwd.intake.load_views` gives pixels (every picture judged:
frames, pages, images, thumbnails) or one of its own
:class:`~nsfwd.intake.ImageError`\\ s, never another exception, and in bounded time. Inputs:
arbitrary bytes (behind each format's magic, so they reach the decoders), real images mutated
(bytes flipped, inserted, cut), and the hostile seed corpus in tests/corpus/ (made by
tests/corpus/make_corpus.py), as is and mutated. Derandomized, so a run repeats exactly;
``NSFWD_CAMPAIGN_EXAMPLES`` raises the example counts for a longer run, and RELIABILITY.md says
how to fuzz with atheris for hours.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from format_files import (
    benign,
    bmp_rle8,
    flag,
    gif_benign_for_10ms,
    heic_hiding_a_second_image,
    jpeg_with_thumbnail,
    tiff_worse_second_page,
)
from nsfwd.intake import ImageError, ImageLimits, load_views

CORPUS = Path(__file__).parent / "corpus"
EXAMPLES = int(os.environ.get("NSFWD_CAMPAIGN_EXAMPLES", "150"))
LIMITS = ImageLimits()
DECODE_DEADLINE = timedelta(seconds=10)
"""Longest one decode may take, CI's slow shared cores included; a hang fails the test."""
CAMPAIGN = settings(
    max_examples=EXAMPLES,
    deadline=DECODE_DEADLINE,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def corpus_files() -> dict[str, bytes]:
    """The hostile seed files, by name."""
    return {p.name: p.read_bytes() for p in sorted(CORPUS.iterdir()) if p.suffix != ".py"}


def _encoded(fmt: str, size: tuple[int, int] = (160, 140), **params: object) -> bytes:
    image = Image.radial_gradient("L").resize(size).convert("RGB")
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


SEEDS: dict[str, bytes] = {
    "baseline.jpg": _encoded("JPEG", quality=60),
    "progressive.jpg": _encoded("JPEG", quality=60, progressive=True),
    "plain.png": _encoded("PNG"),
    "lossy.webp": _encoded("WEBP", quality=40),
    "lossless.webp": _encoded("WEBP", lossless=True),
    "animated.gif": gif_benign_for_10ms(),
    "two-images.heic": heic_hiding_a_second_image(),
    "animated.avif": _encoded(
        "AVIF",
        quality=30,
        save_all=True,
        append_images=[Image.new("RGB", (160, 140))],
        duration=[10, 90],
    ),
    "two-pages.tif": tiff_worse_second_page(),
    "rle8.bmp": bmp_rle8(flag()),
    "thumbnail.jpg": jpeg_with_thumbnail(benign(), flag()),
    **corpus_files(),
}
"""Files the mutations start from: small valid images of each format, and the corpus."""

MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF\x00\x10\x00\x00WEBPVP8 ",
         b"RIFF\x00\x10\x00\x00WEBPVP8L", b"RIFF\x00\x10\x00\x00WEBPVP8X", b"GIF89a",
         b"II*\x00", b"MM\x00*", b"BM", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",
         b"\x00\x00\x00\x18ftypavif\x00\x00\x00\x00mif1avif"]  # fmt: skip


def assert_pixels_or_image_error(data: bytes) -> None:
    """The intake's contract: RGB pixels within the limits, or an ImageError."""
    try:
        images: Sequence[object] = load_views(data, LIMITS).images  # every picture judged
    except ImageError as exc:
        assert str(exc), "an ImageError must say what was wrong"
        return
    assert images, "no pixels and no error"
    for index, image in enumerate(images):
        assert isinstance(image, Image.Image)
        assert image.mode == "RGB"
        width, height = image.size
        assert index or LIMITS.min_side <= min(width, height)  # thumbnails may be smaller
        assert max(width, height) <= LIMITS.max_side


@st.composite
def mutated(draw: st.DrawFn, seeds: dict[str, bytes]) -> bytes:
    """A seed with a few bytes flipped, overwritten, inserted or removed, maybe cut short."""
    data = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at : at + draw(st.integers(1, 64))]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@CAMPAIGN
@given(prefix=st.sampled_from(MAGIC), rest=st.binary(max_size=4096))
def test_arbitrary_bytes_give_pixels_or_an_image_error(prefix: bytes, rest: bytes) -> None:
    assert_pixels_or_image_error(prefix + rest)


@CAMPAIGN
@given(data=mutated(SEEDS))
def test_mutated_images_give_pixels_or_an_image_error(data: bytes) -> None:
    assert_pixels_or_image_error(data)


@pytest.mark.parametrize("name", sorted(corpus_files()))
def test_each_hostile_file_is_answered_in_bounded_time(name: str) -> None:
    started = time.perf_counter()
    assert_pixels_or_image_error(corpus_files()[name])
    assert time.perf_counter() - started < DECODE_DEADLINE.total_seconds()


def test_the_corpus_is_small_and_as_its_script_writes_it() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_corpus", CORPUS / "make_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    files = corpus_files()
    assert set(files) == set(module.FILES)
    for name, make in module.FILES.items():
        assert len(files[name]) <= 128 * 1024, f"{name} is not small"
        assert make() == files[name], f"{name} differs from what make_corpus.py writes"
