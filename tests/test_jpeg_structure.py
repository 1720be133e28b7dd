"""The JPEG structure check (nsfwd.intake.jpeg_structure): files that cost far more to decode than
their size suggests are refused before decoding, and real files pass."""

from __future__ import annotations

import random
import time
from io import BytesIO

import pytest
from PIL import Image

from hostile_jpegs import last_scan, progressive, repeated_scans, with_fill_bytes
from nsfwd.intake import ImageComplexityError, load_image, read_header
from nsfwd.intake.jpeg_structure import JpegLimits, read_structure
from photos import variants

LIMITS = JpegLimits()


def test_real_jpegs_pass_with_their_scans_counted() -> None:
    baseline = read_structure(variants()["jpeg_baseline"])
    assert (baseline.scans, baseline.ended, baseline.excess) == (1, True, None)
    colour = read_structure(progressive())
    assert (colour.scans, colour.ended, colour.excess) == (10, True, None)
    for name, data in variants().items():
        if data.startswith(b"\xff\xd8"):
            structure = read_structure(data)
            assert structure.ended and structure.excess is None, name
            assert structure.longest_fill_run == structure.stray_bytes == 0, name


def test_the_repeated_scan_attack_is_refused_fast_before_decoding() -> None:
    data = repeated_scans()
    assert len(data) < 400_000
    assert read_structure(data).scans == LIMITS.max_scans + 1  # the walk stops there
    started = time.perf_counter()
    for check in (load_image, read_header):
        with pytest.raises(ImageComplexityError, match="more than 100 scans") as caught:
            check(data)
        assert caught.value.code == "too_complex"
    assert time.perf_counter() - started < 2.0  # decoding it takes about a minute


def test_the_scan_limit_is_exact() -> None:
    data = progressive((256, 256))
    start, end = last_scan(data)
    at_limit = data[:end] + data[start:end] * (LIMITS.max_scans - 10) + data[end:]
    assert read_structure(at_limit).scans == LIMITS.max_scans
    assert load_image(at_limit).size == (256, 256)
    over = data[:end] + data[start:end] * (LIMITS.max_scans - 9) + data[end:]
    with pytest.raises(ImageComplexityError, match="scans"):
        load_image(over)


@pytest.mark.parametrize("before", [0xC0, 0xDA, 0xD9])  # frame header, first scan, end
def test_runs_of_fill_bytes_are_refused(before: int) -> None:
    data = variants()["jpeg_baseline"]
    allowed = with_fill_bytes(data, LIMITS.max_fill_run, before)
    assert read_structure(allowed).longest_fill_run == LIMITS.max_fill_run
    assert load_image(allowed).size == load_image(data).size
    hostile = with_fill_bytes(data, 5_000_000, before)
    started = time.perf_counter()
    with pytest.raises(ImageComplexityError, match="fill bytes"):
        load_image(hostile)
    assert time.perf_counter() - started < 1.0  # Pillow's parser skips them one at a time
    with pytest.raises(ImageComplexityError, match="fill bytes"):
        load_image(with_fill_bytes(data, LIMITS.max_fill_run + 1, before))


def test_fill_bytes_inside_entropy_coded_data_are_refused() -> None:
    data = variants()["jpeg_baseline"]
    _, end = last_scan(data)
    middle = data.index(b"\xff\x00", data.index(b"\xff\xda"))  # a stuffed zero in the scan
    padded = data[:middle] + b"\xff" * 1000 + data[middle:]
    assert middle < end
    with pytest.raises(ImageComplexityError, match="fill bytes"):
        load_image(padded)


def test_floods_of_segments_and_stray_bytes_are_refused() -> None:
    data = variants()["jpeg_baseline"]
    comments = data[:2] + b"\xff\xfe\x00\x02" * 500_000 + data[2:]
    with pytest.raises(ImageComplexityError, match="1000 marker segments"):
        load_image(comments)
    at = data.index(b"\xff\xdb")  # the first quantisation table
    stray = data[:at] + bytes(LIMITS.max_stray_bytes + 1) + data[at:]
    with pytest.raises(ImageComplexityError, match="stray bytes"):
        load_image(stray)


def test_truncation_is_reported_not_refused() -> None:
    data = progressive((256, 256))
    for cut in (3, 100, len(data) // 2, len(data) - 2):
        structure = read_structure(data[:cut])
        assert not structure.ended and structure.excess is None


def test_any_bytes_are_walked_without_an_exception() -> None:
    rng = random.Random(11)
    base = progressive((256, 256))
    pieces = [b"\xff", b"\x00", b"\xff\xda\x00\x02", b"\xff\xd9", b"\xff\xff", b"\xff\xd0"]
    for _ in range(2000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(2, len(data))
            data[at:at] = rng.choice(pieces) * rng.randint(1, 300)
        read_structure(b"\xff\xd8" + bytes(data[2:]))
        read_structure(b"\xff\xd8" + rng.randbytes(rng.randint(0, 64)))


def test_a_grey_progressive_jpeg_passes() -> None:
    buffer = BytesIO()
    Image.new("L", (300, 200), 90).save(buffer, "JPEG", progressive=True)
    structure = read_structure(buffer.getvalue())
    assert structure.scans == 6 and structure.excess is None
