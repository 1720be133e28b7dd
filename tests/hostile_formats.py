"""Hostile files in the formats of issue 22, built byte by byte where no encoder writes them:
LZW bombs in GIF and TIFF, a huge logical screen around one tiny frame, a flood of 1x1 frames,
a TIFF of thousands of pages, HEIFs of 10,000 items or of a grid of 65,280 tiles, and headers
that lie. The small ones are in the seed corpus (tests/corpus/make_corpus.py); the big ones
are built by tests/test_formats_hostile.py as it runs."""

from __future__ import annotations

import struct
from io import BytesIO

from PIL import Image

from heif_boxes import CodedImage, coded_image, container, full_box


def _gif(screen: tuple[int, int], frames: list[bytes]) -> bytes:
    """A GIF89a with a two-colour global palette, ``screen`` as its logical screen and
    ``frames`` (each an image descriptor and its data, :func:`_gif_frame`)."""
    header = b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    return header + b"".join(frames) + b";"


def _gif_frame(rect: tuple[int, int, int, int], lzw: bytes, delay_cs: int | None = None) -> bytes:
    """One frame: a graphic control extension (where ``delay_cs`` is given), the image
    descriptor of ``rect`` (left, top, width, height) and the LZW data in sub-blocks."""
    control = b"" if delay_cs is None else b"!\xf9\x04\x00" + struct.pack("<H", delay_cs) + b"\0\0"
    blocks = b"".join(
        bytes([len(lzw[i : i + 255])]) + lzw[i : i + 255] for i in range(0, len(lzw), 255)
    )
    return control + b"," + struct.pack("<HHHHB", *rect, 0) + b"\x02" + blocks + b"\x00"


_ONE_PIXEL_LZW = b"\x44\x01"
"""Minimum code size 2: clear code, index 0, end of information (a 1x1 frame)."""


def gif_huge_screen() -> bytes:
    """A 65535 x 65535 logical screen holding one 1x1 frame."""
    return _gif((65535, 65535), [_gif_frame((0, 0, 1, 1), _ONE_PIXEL_LZW)])


def gif_many_frames(count: int = 100_000) -> bytes:
    """``count`` frames of 1x1 on a 200x200 screen, each shown 10 ms."""
    frame = _gif_frame((0, 0, 1, 1), _ONE_PIXEL_LZW, delay_cs=1)
    return _gif((200, 200), [frame] * count)


def gif_lzw_bomb(frames: int = 40) -> bytes:
    """An LZW bomb: ``frames`` frames of 2048 x 2048 of one colour (LZW packs each in a few
    kilobytes), 167 million pixels in all to decode."""
    picture = Image.new("P", (2048, 2048), 0)
    picture.putpalette([0, 0, 0, 255, 255, 255])
    out = BytesIO()
    picture.save(out, "GIF")
    data = out.getvalue()
    start = data.index(b",")  # the image descriptor, then the LZW data up to the trailer
    return _gif((2048, 2048), [data[start:-1]] * frames)


def gif_lying_frame() -> bytes:
    """A GIF whose frame rectangle reaches far outside its 200 x 200 screen."""
    return _gif((200, 200), [_gif_frame((60000, 60000, 5000, 5000), _ONE_PIXEL_LZW)])


def tiff_lzw_bomb(pages: int = 40) -> bytes:
    """An LZW-compressed TIFF of ``pages`` pages of 2048 x 2048 of one colour (LZW packs each
    in a few tens of kilobytes)."""
    page = Image.new("L", (2048, 2048), 0)
    out = BytesIO()
    page.save(out, "TIFF", compression="tiff_lzw", save_all=True,
              append_images=[page] * (pages - 1))  # fmt: skip
    return out.getvalue()


def tiff_many_pages(count: int = 6000, side: int = 128) -> bytes:
    """A TIFF of ``count`` pages of ``side`` x ``side``, every page's IFD pointing at the same
    strip of pixels (a hundred bytes a page)."""
    entries = 8
    ifd_size = 2 + entries * 12 + 4
    pixel_at = 8
    first = pixel_at + side * side
    out = bytearray(b"II*\x00" + struct.pack("<I", first) + bytes(side * side))
    for page in range(count):
        at = first + page * ifd_size
        following = at + ifd_size if page + 1 < count else 0
        tags = [
            (256, 3, 1, side), (257, 3, 1, side), (258, 3, 1, 8), (259, 3, 1, 1),
            (262, 3, 1, 1), (273, 4, 1, pixel_at), (278, 3, 1, side), (279, 4, 1, side * side),
        ]  # fmt: skip
        out += struct.pack("<H", entries)
        for tag, kind, number, value in tags:
            out += struct.pack("<HHII", tag, kind, number, value)
        out += struct.pack("<I", following)
    return bytes(out)


def _small_heic() -> CodedImage:
    import pillow_heif

    out = BytesIO()
    pillow_heif.from_pillow(Image.new("RGB", (128, 128), (200, 30, 30))).save(out, quality=30)
    return coded_image(out.getvalue())


def heif_declaring_items(count: int = 10_000) -> bytes:
    """A HEIF of one image whose ``iinf`` box declares ``count`` items."""
    data = bytearray(container([b"heic", b"mif1"], [_small_heic()]))
    at = data.index(b"iinf") + 8  # after the box type, its version and flags
    data[at : at + 2] = struct.pack(">H", min(count, 0xFFFF))
    return bytes(data)


def heif_many_items(count: int = 10_000) -> bytes:
    """A HEIF of one image whose ``iinf`` box holds ``count`` item entries (each a few bytes)."""
    data = container([b"heic", b"mif1"], [_small_heic()])
    at = data.index(b"iinf") - 4
    size = struct.unpack(">I", data[at : at + 4])[0]
    entries = b"".join(
        full_box(b"infe", 2, 0, struct.pack(">HH4s", 2 + i, 0, b"hvc1"), b"\0")
        for i in range(count)
    )
    iinf = full_box(b"iinf", 0, 0, struct.pack(">H", min(count + 1, 0xFFFF)),
                    data[at + 14 : at + size], entries)  # fmt: skip
    meta_at = data.index(b"meta") - 4
    meta_size = struct.unpack(">I", data[meta_at : meta_at + 4])[0]
    grown = meta_size + len(iinf) - size
    return (
        data[:meta_at] + struct.pack(">I", grown) + data[meta_at + 4 : at] + iinf
        + data[at + size :]
    )  # fmt: skip


def heif_grid(rows: int = 255, columns: int = 256, tiles: int | None = None) -> bytes:
    """A HEIF whose primary item is a grid of ``rows`` x ``columns`` 128-pixel tiles (the
    largest a grid holds is 256 x 256), referencing ``tiles`` tile items (the same one, each
    reference counted: all of them unless fewer are given, a header that lies)."""
    tile = _small_heic()
    width, height = columns * 128, rows * 128
    grid = CodedImage(
        b"grid",
        struct.pack(">BBBBII", 0, 1, rows - 1, columns - 1, width, height),
        (full_box(b"ispe", 0, 0, struct.pack(">II", width, height)),),
    )
    referenced = rows * columns if tiles is None else tiles
    return container(
        [b"heic", b"mif1"],
        [grid, tile],
        primary=1,
        references=[(b"dimg", 1, [2] * min(referenced, 0xFFFF))],
        hidden=[2],
    )


def truncated_heic() -> bytes:
    """A HEIC cut off inside its ``meta`` box."""
    data = container([b"heic", b"mif1"], [_small_heic()])
    return data[: data.index(b"iloc") + 6]


def avif_endless_sequence() -> bytes:
    """An animated AVIF whose sample table claims a million frames."""
    frames = [Image.new("RGB", (128, 128), (i * 60, 0, 0)) for i in range(3)]
    out = BytesIO()
    frames[0].save(out, "AVIF", save_all=True, append_images=frames[1:], duration=100, quality=20)
    data = bytearray(out.getvalue())
    at = data.index(b"stsz") + 4 + 4 + 4  # type, version and flags, sample size
    data[at : at + 4] = struct.pack(">I", 1_000_000)
    for kind in (b"mvhd", b"tkhd", b"mdhd"):  # the encoder's clock, so the bytes repeat
        at = data.index(kind) + 4
        times = 16 if data[at] == 1 else 8
        data[at + 4 : at + 4 + times] = bytes(times)
    return bytes(data)
