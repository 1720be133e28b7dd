"""Write the hostile seed corpus next to this script: small files, each an attack from issue 11
or a classic of image fuzzing. Deterministic: running it again writes the same bytes.

    python tests/corpus/make_corpus.py

tests/test_campaign_intake.py feeds every file here to the image intake (and uses them as
seeds to mutate); a longer atheris run can start from them too (RELIABILITY.md).
"""

from __future__ import annotations

import io
import random
import struct
import sys
import zlib
from pathlib import Path

from PIL import Image

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))  # the builders of issue 22's files, beside the tests

import hostile_formats  # noqa: E402


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """An RGB image of random pixels (nothing compresses it away)."""
    rng = random.Random(seed)
    return Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))


def encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk with its length and CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, depth: int, colour: int, idat: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def truncated_jpeg() -> bytes:
    """A baseline JPEG cut off halfway through its entropy-coded data."""
    data = encoded(noise((256, 256)), "JPEG", quality=80)
    return data[: len(data) // 2]


def huge_declared_png() -> bytes:
    """A 100-byte PNG whose header declares 100,000 x 100,000 pixels."""
    return png(100_000, 100_000, 8, 2, zlib.compress(b"\x00" * 64))


def bomb_png() -> bytes:
    """A decompression bomb: 1-bit 16,000 x 16,000 (32 MB of rows) of zeros in about 32 KB."""
    width = height = 16_000
    row = b"\x00" + b"\x00" * (width // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return png(width, height, 1, 0, idat)


def many_scans_jpeg(repeats: int = 5000) -> bytes:
    """A progressive JPEG whose last scan is repeated ``repeats`` times (a real one has ~10
    scans; each extra one costs the decoder a pass over every coefficient). A flat picture
    keeps each scan a few bytes long."""
    data = encoded(Image.new("RGB", (256, 256), (90, 120, 150)), "JPEG", progressive=True)
    last_scan = data.rindex(b"\xff\xda")
    body, end = data[last_scan:-2], data[-2:]
    assert end == b"\xff\xd9"
    return data[:-2] + body * repeats + end


def fill_bytes_jpeg(run: int = 60_000) -> bytes:
    """A JPEG with a long run of 0xFF fill bytes before its first scan (legal padding that
    decoders skip one byte at a time)."""
    data = encoded(noise((128, 128), seed=2), "JPEG", quality=50)
    scan = data.index(b"\xff\xda")
    return data[:scan] + b"\xff" * run + data[scan:]


def _frames() -> list[Image.Image]:
    benign = Image.new("RGB", (128, 128), (240, 240, 240))
    return [benign, Image.new("RGB", (128, 128), (200, 60, 60)), noise((128, 128), seed=4)]


def animated_webp() -> bytes:
    """An animated WebP whose benign first frame shows for 1 ms; the others for seconds."""
    first, *rest = _frames()
    return encoded(first, "WEBP", save_all=True, append_images=rest, duration=[1, 3000, 3000],
                   loop=0, quality=50)  # fmt: skip


def apng_hidden_default() -> bytes:
    """An APNG whose default image (not part of the animation, never shown) is benign."""
    first, *rest = _frames()
    return encoded(first, "PNG", save_all=True, append_images=rest, default_image=True,
                   duration=[1000, 1000, 1000])  # fmt: skip


def wrong_crc_png() -> bytes:
    """A PNG whose IDAT checksum is wrong (Pillow alone would not notice)."""
    data = bytearray(encoded(Image.radial_gradient("L").resize((128, 128)), "PNG"))
    end = data.index(b"IEND") - 4
    data[end - 1] ^= 0xFF  # the last byte of the IDAT's CRC
    return bytes(data)


FILES = {
    "truncated.jpg": truncated_jpeg,
    "huge-declared-size.png": huge_declared_png,
    "bomb.png": bomb_png,
    "many-scans.jpg": many_scans_jpeg,
    "fill-bytes.jpg": fill_bytes_jpeg,
    "animated.webp": animated_webp,
    "apng-hidden-default.png": apng_hidden_default,
    "wrong-crc.png": wrong_crc_png,
    # issue 22: GIF, TIFF, HEIF and AVIF (tests/hostile_formats.py; the big ones are built by
    # tests/test_formats_hostile.py)
    "gif-huge-screen.gif": hostile_formats.gif_huge_screen,
    "gif-lying-frame.gif": hostile_formats.gif_lying_frame,
    "gif-5001-frames.gif": lambda: hostile_formats.gif_many_frames(5001),
    "gif-lzw-bomb.gif": lambda: hostile_formats.gif_lzw_bomb(1),
    "tiff-1000-pages.tif": lambda: hostile_formats.tiff_many_pages(1000),
    "tiff-lzw-bomb.tif": lambda: hostile_formats.tiff_lzw_bomb(1),
    "heif-10000-items.heic": hostile_formats.heif_declaring_items,
    "heif-lying-grid.heic": lambda: hostile_formats.heif_grid(16, 16, tiles=1),
    "heif-truncated.heic": hostile_formats.truncated_heic,
    "avif-million-frames.avif": hostile_formats.avif_endless_sequence,
}


def main() -> None:
    for name, make in FILES.items():
        data = make()
        (HERE / name).write_bytes(data)
        print(f"{name}: {len(data):,} bytes")


if __name__ == "__main__":
    main()
