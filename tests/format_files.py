"""Files in the formats of issue 22, written by the real encoders (Pillow writes GIF, TIFF, BMP
and AVIF; pillow-heif writes HEIC), each hiding a picture where a careless judge would not look.

The pictures follow one convention, so that a model that reads it (:mod:`flagging`) says which
picture it saw: a **flag** is blue on its upper half and red on its lower half, seen upright;
a **benign** picture is red all over. Only a flag seen the right way up is flagged.
"""

from __future__ import annotations

import struct
from io import BytesIO
from typing import Any

import pillow_heif
from PIL import Image

from heif_boxes import coded_image, container

SIZE = (160, 160)
RED, BLUE, WHITE, BLACK = (255, 0, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def benign(size: tuple[int, int] = SIZE) -> Image.Image:
    """Red all over."""
    return Image.new("RGB", size, RED)


def flag(size: tuple[int, int] = SIZE) -> Image.Image:
    """Blue above, red below: flagged when seen upright."""
    picture = Image.new("RGB", size, RED)
    picture.paste(BLUE, (0, 0, size[0], size[1] // 2))
    return picture


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    out = BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def heic(*images: Image.Image, **params: Any) -> bytes:
    """A HEIC of ``images`` (the first primary), written by pillow-heif."""
    file = pillow_heif.from_pillow(images[0])
    for image in images[1:]:
        file.add_from_pillow(image)
    out = BytesIO()
    file.save(out, quality=params.pop("quality", 90), **params)
    return out.getvalue()


# --- the attacks of issue 22's "Done when" -----------------------------------------------------


def gif_benign_for_10ms() -> bytes:
    """An animated GIF whose benign first frame is shown for 10 ms, then a flag that stays."""
    return encode(benign(), "GIF", save_all=True, append_images=[flag()], duration=[10, 5000])


def heic_hiding_a_second_image() -> bytes:
    """A HEIC whose primary image is benign and whose second top-level image is a flag."""
    return heic(benign(), flag())


def heic_rotated() -> bytes:
    """A HEIC of a flag stored turned on its side, with the turn (``irot``, from EXIF
    orientation 6) that shows it upright."""
    exif = Image.Exif()
    exif[0x0112] = 6  # pillow-heif writes the turn as 'irot' and the EXIF says 1 again
    return heic(flag().transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes())


def tiff_worse_second_page() -> bytes:
    """A two-page TIFF: a benign page, then a flag."""
    return encode(benign(), "TIFF", save_all=True, append_images=[flag()], compression="tiff_lzw")


def avif_benign_for_10ms() -> bytes:
    """An animated AVIF (near-lossless) whose benign first frame shows for 10 ms."""
    return encode(benign(), "AVIF", save_all=True, append_images=[flag()], duration=[10, 5000],
                  quality=95)  # fmt: skip


def avif_hiding_a_second_image() -> bytes:
    """An AVIF whose primary image is benign and whose second top-level image is a flag."""
    images = [coded_image(encode(picture, "AVIF", quality=95)) for picture in (benign(), flag())]
    return container([b"avif", b"mif1", b"miaf"], images)


def jpeg_with_thumbnail(
    picture: Image.Image, thumbnail: Image.Image, orientation: int = 1
) -> bytes:
    """A JPEG of ``picture`` whose EXIF block carries ``thumbnail`` (and an orientation), as
    cameras write them."""
    small = encode(thumbnail, "JPEG", quality=90)
    # A little-endian TIFF: IFD0 with the orientation, IFD1 locating the thumbnail after it.
    ifd0_at, ifd1_at = 8, 8 + 2 + 12 + 4
    thumb_at = ifd1_at + 2 + 2 * 12 + 4
    tiff = (
        b"II*\x00" + struct.pack("<I", ifd0_at)
        + struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
        + struct.pack("<I", ifd1_at)
        + struct.pack("<H", 2)
        + struct.pack("<HHII", 0x0201, 4, 1, thumb_at)
        + struct.pack("<HHII", 0x0202, 4, 1, len(small))
        + struct.pack("<I", 0)
        + small
    )  # fmt: skip
    return encode(picture, "JPEG", quality=90, exif=b"Exif\x00\x00" + tiff)


def bmp_rle8(picture: Image.Image) -> bytes:
    """An 8-bit palette BMP, run-length coded (RLE8) a row at a time, bottom row first."""
    indexed = picture.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    width, height = indexed.size
    rows = [indexed.tobytes()[y * width : (y + 1) * width] for y in range(height)]
    runs = bytearray()
    for row in reversed(rows):
        x = 0
        while x < width:
            run = 1
            while x + run < width and run < 255 and row[x + run] == row[x]:
                run += 1
            runs += bytes([run, row[x]])
            x += run
        runs += b"\x00\x00"  # end of line
    runs += b"\x00\x01"  # end of bitmap
    palette = (indexed.getpalette() or [])[: 3 * 256]
    palette += [0] * (3 * 256 - len(palette))
    table = b"".join(bytes([palette[3 * i + 2], palette[3 * i + 1], palette[3 * i], 0])
                     for i in range(256))  # fmt: skip
    header = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(runs), 2835, 2835, 256, 0)
    at = 14 + len(header) + len(table)
    return b"BM" + struct.pack("<IHHI", at + len(runs), 0, 0, at) + header + table + bytes(runs)
