"""Issue 22 at the intake: GIF, HEIC/HEIF, AVIF, TIFF and BMP, each judged on every picture a
viewer may see (frames, pages, top-level images, thumbnails), upright and in its colours; and
each format's structure read and bounded before a pixel is decoded.

Files come from the real encoders (:mod:`format_files`); the hostile ones that no encoder
writes are built here byte by byte (the corpus in tests/corpus/ has small ones of each kind,
tests/test_formats_hostile.py the big ones).
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

import numpy as np
import pytest
from PIL import Image

from format_files import (
    BLUE,
    RED,
    SIZE,
    avif_benign_for_10ms,
    avif_hiding_a_second_image,
    benign,
    bmp_rle8,
    encode,
    flag,
    gif_benign_for_10ms,
    heic,
    heic_hiding_a_second_image,
    heic_rotated,
    jpeg_with_thumbnail,
    tiff_worse_second_page,
)
from heif_boxes import coded_image, container
from nsfwd.intake import (
    ImageLimits,
    load_image,
    load_views,
    read_header,
    sniff_format,
)
from nsfwd.intake.headers import read_layout
from nsfwd.intake.heif import read as read_heif
from nsfwd.intake.pictures import Layout, Picture
from nsfwd.intake.views import View, Views
from test_viewer import swapped_red_blue_profile


def seen(views: Views[Image.Image]) -> list[tuple[int, str, str | None, str]]:
    """Each view as (index, picture kind, backdrop, what it shows: flag, benign or other)."""
    return [(v.frame, v.picture, v.backdrop, shows(v.image)) for v in views.views]


def shows(image: Image.Image) -> str:
    width, height = image.size
    top, bottom = (
        image.getpixel((width // 2, height // 4)),
        image.getpixel((width // 2, 3 * height // 4)),
    )
    if _near(top, BLUE) and _near(bottom, RED):
        return "flag"
    if _near(top, RED) and _near(bottom, RED):
        return "benign"
    return f"{top}/{bottom}"


def _near(pixel: Any, colour: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 8 for a, b in zip(pixel[:3], colour, strict=True))


# --- what is judged ----------------------------------------------------------------------------


def test_every_frame_of_a_gif_is_judged_with_its_time_on_screen() -> None:
    data = gif_benign_for_10ms()
    assert sniff_format(data) == "GIF"
    views = load_views(data)
    assert seen(views) == [(0, "frame", None, "benign"), (1, "frame", None, "flag")]
    assert shows(load_image(data)) == "benign"  # load_image: still the first frame
    # Each frame's time on screen rides beside its index: browsers show 10 ms for 100 ms.
    assert read_layout(data, "GIF", ImageLimits()).durations_ms == [100.0, 5000.0]
    header = read_header(data)
    assert (header.format, header.frames, header.width) == ("GIF", 2, 160)


def test_gif_frames_are_composited_as_displayed_over_white_and_black() -> None:
    """Frame 1 draws a small opaque square over frame 0 (kept, disposal 1); frame 0 is
    transparent but for its centre."""
    first = Image.new("RGBA", SIZE, (0, 0, 0, 0))
    first.paste((255, 0, 0, 255), (40, 40, 120, 120))
    second = first.copy()
    second.paste((0, 0, 255, 255), (70, 70, 90, 90))
    data = encode(first, "GIF", save_all=True, append_images=[second], disposal=1, duration=100)
    views = load_views(data)
    corners = [(v.frame, v.backdrop, v.image.getpixel((5, 5)), v.image.getpixel((80, 80)),
                v.image.getpixel((50, 50))) for v in views.views]  # fmt: skip
    assert corners == [
        (0, "white", (255, 255, 255), (255, 0, 0), (255, 0, 0)),
        (0, "black", (0, 0, 0), (255, 0, 0), (255, 0, 0)),
        (1, "white", (255, 255, 255), (0, 0, 255), (255, 0, 0)),
        (1, "black", (0, 0, 0), (0, 0, 255), (255, 0, 0)),
    ]


def test_every_top_level_image_of_a_heic_is_judged_and_the_primary_first() -> None:
    data = heic_hiding_a_second_image()
    assert sniff_format(data) == "HEIF"
    assert seen(load_views(data)) == [(0, "image", None, "benign"), (1, "image", None, "flag")]
    assert shows(load_image(data)) == "benign"
    header = read_header(data)
    assert (header.format, header.frames, header.thumbnails) == ("HEIF", 2, 0)


def test_a_heic_is_judged_upright_by_its_own_turn() -> None:
    data = heic_rotated()
    [view] = load_views(data).views
    assert view.size == SIZE and shows(view.image) == "flag"


def test_heic_thumbnails_are_judged_and_turned_with_their_image() -> None:
    import pillow_heif

    built = pillow_heif.from_pillow(benign((320, 320)))
    info: dict[str, Any] = built[0].info
    info["thumbnails"] = [64]
    out = BytesIO()
    built.save(out, quality=90)
    views = load_views(out.getvalue())
    assert [(v.frame, v.picture, v.size) for v in views.views] == [
        (0, "image", (320, 320)), (1, "thumbnail", (64, 64))
    ]  # fmt: skip
    assert read_header(out.getvalue()).thumbnails == 1


def test_a_heic_grid_is_bounded_by_its_tiles_and_judged_whole() -> None:
    data = heic(flag((700, 600)), tile_size=256)  # 3 x 3 tiles of 256
    container_, layout, _ = read_heif(data, "HEIF", ImageLimits())
    [grid] = [item for item in container_.items.values() if item.type == b"grid"]
    assert grid.grid == (3, 3, 700, 600)
    assert layout.pictures[0].cost == 9 * 256 * 256  # the tiles decoded, not the output
    [view] = load_views(data).views
    assert view.size == (700, 600) and shows(view.image) == "flag"


def test_heic_colours_follow_its_icc_profile() -> None:
    data = heic(Image.new("RGB", SIZE, RED), icc_profile=swapped_red_blue_profile())
    converted, stored = load_views(data).views  # the stored colours are judged too
    assert (converted.colours, stored.colours) == ("converted", "stored")
    pixel = converted.image.getpixel((80, 80))
    assert isinstance(pixel, tuple) and pixel[0] < 40 and pixel[2] > 200, pixel


def test_heic_transparency_is_judged_over_white_and_black() -> None:
    picture = Image.new("RGBA", SIZE, (0, 0, 255, 0))
    picture.paste((255, 0, 0, 255), (40, 40, 120, 120))
    views = load_views(heic(picture))
    assert [(v.backdrop, v.image.getpixel((5, 5))) for v in views.views][:2] == [
        ("white", (255, 255, 255)), ("black", (0, 0, 0))
    ]  # fmt: skip
    assert [v.backdrop for v in views.views][2:] in ([], ["grey"])  # where the edge is blended


def test_an_animated_avif_is_judged_on_its_frames_and_its_still_image() -> None:
    data = avif_benign_for_10ms()
    assert sniff_format(data) == "AVIF"
    views = load_views(data)
    assert seen(views) == [
        (0, "frame", None, "benign"), (1, "frame", None, "flag"), (2, "image", None, "benign")
    ]  # fmt: skip
    assert read_heif(data, "AVIF", ImageLimits())[1].durations_ms == [10.0, 5000.0, None]


def test_every_top_level_image_and_thumbnail_of_an_avif_is_judged() -> None:
    data = avif_hiding_a_second_image()
    assert seen(load_views(data)) == [(0, "image", None, "benign"), (1, "image", None, "flag")]
    images = [coded_image(encode(p, "AVIF", quality=95)) for p in (benign(), flag((64, 64)))]
    with_thumbnail = container([b"avif", b"mif1"], images, references=[(b"thmb", 2, [1])])
    assert seen(load_views(with_thumbnail)) == [
        (0, "image", None, "benign"), (1, "thumbnail", None, "flag")
    ]  # fmt: skip


def test_an_avif_is_upright_and_transparent_as_shown() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Pillow writes it as 'irot'
    turned = encode(flag().transpose(Image.Transpose.ROTATE_90), "AVIF", quality=95,
                    exif=exif.tobytes())  # fmt: skip
    assert seen(load_views(turned)) == [(0, "image", None, "flag")]
    picture = Image.new("RGBA", SIZE, (0, 0, 255, 0))
    picture.paste((255, 0, 0, 255), (40, 40, 120, 120))
    views = load_views(encode(picture, "AVIF", quality=95))
    assert [v.backdrop for v in views.views] == ["white", "black"]


def test_every_page_of_a_tiff_is_judged() -> None:
    data = tiff_worse_second_page()
    assert seen(load_views(data)) == [(0, "page", None, "benign"), (1, "page", None, "flag")]
    assert read_header(data).frames == 2


def _tiff(picture: Image.Image, **params: Any) -> bytes:
    return encode(picture, "TIFF", **params)


def two_tone() -> Image.Image:
    """The flag in black and white (its blue half black)."""
    return flag().convert("L").point(lambda v: 255 * (v > 50)).convert("1")


def sixteen_bit() -> Image.Image:
    """The flag in 16-bit grayscale over the full range."""
    return Image.fromarray(np.asarray(flag().convert("L"), dtype=np.uint16) * 257)


TIFFS = {
    "raw": _tiff(flag()),
    "lzw": _tiff(flag(), compression="tiff_lzw"),
    "deflate": _tiff(flag(), compression="tiff_adobe_deflate"),
    "packbits": _tiff(flag(), compression="packbits"),
    "jpeg": _tiff(flag(), compression="jpeg", quality=95),
    "palette": _tiff(flag().convert("P")),
    "bits-1": _tiff(two_tone()),
    "gray-16": _tiff(sixteen_bit()),
    "cmyk": _tiff(flag().convert("CMYK")),
    "rgba": _tiff(flag().convert("RGBA")),
    "bigtiff": _tiff(flag(), big_tiff=True),
    "rotated": _tiff(flag().transpose(Image.Transpose.ROTATE_90), exif={0x0112: 6}),
}


@pytest.mark.parametrize("name", sorted(TIFFS))
def test_tiffs_of_every_common_compression_and_mode(name: str) -> None:
    [view] = load_views(TIFFS[name]).views
    if name in ("bits-1", "gray-16"):
        top, bottom = view.image.getpixel((80, 40)), view.image.getpixel((80, 120))
        assert top != bottom, name  # gray: the halves differ, the flag's shape survives
    else:
        assert shows(view.image) == "flag", name


@pytest.mark.parametrize(
    "data",
    [
        encode(flag(), "BMP"),
        encode(flag().convert("P"), "BMP"),
        encode(two_tone(), "BMP"),
        bmp_rle8(flag((200, 150))),
    ],
    ids=["rgb", "palette", "bits-1", "rle8"],
)
def test_bmps_including_run_length_coded_ones(data: bytes) -> None:
    assert sniff_format(data) == "BMP"
    [view] = load_views(data).views
    top, bottom = (
        view.image.getpixel((view.size[0] // 2, 10)),
        view.image.getpixel((5, view.size[1] - 10)),
    )
    assert top != bottom


def test_a_jpegs_exif_thumbnail_is_judged_turned_as_its_image() -> None:
    data = jpeg_with_thumbnail(
        benign((400, 300)), flag((160, 120)).transpose(Image.Transpose.ROTATE_90), 6
    )
    views = load_views(data)
    assert seen(views) == [(0, "frame", None, "benign"), (1, "thumbnail", None, "flag")]
    assert views.views[1].size == (160, 120)
    header = read_header(data)
    assert (header.frames, header.thumbnails, header.orientation) == (1, 1, 6)


def test_a_broken_thumbnail_does_not_refuse_its_image() -> None:
    data = bytearray(jpeg_with_thumbnail(benign((400, 300)), flag((160, 120))))
    thumb = data.index(b"\xff\xd8\xff", 10)
    data[thumb + 200 : thumb + 260] = bytes(60)  # damage inside the thumbnail's own headers
    views = load_views(bytes(data))
    assert views.views[0].picture == "frame"
    assert shows(views.views[0].image) == "benign"


def test_which_picture_answered_says_what_it_is() -> None:
    from nsfwd.verdict import Policy, worst

    views = Views([View(None, 0, None), View(None, 1, None, picture="thumbnail")], 2)
    labels = [{"neutral": 0.9, "high": 0.1}, {"neutral": 0.1, "high": 0.9}]
    judged = worst(views, labels, Policy("strict").score)
    assert judged.details() == {
        "frame": 1, "frames": 2, "frames_judged": 2, "backdrop": None, "colours": None,
        "picture": "thumbnail",
    }  # fmt: skip
    from nsfwd.verdict import Judgement

    assert Judgement.from_stored(judged.labels, judged.stored()).picture == "thumbnail"


def test_pictures_beyond_the_judged_frames_are_sampled_and_thumbnails_kept() -> None:
    pictures = [Picture(i, "frame", SIZE, 160 * 160, 40.0) for i in range(100)]
    layout = Layout((*pictures, Picture(100, "thumbnail", (16, 16), 256)), decodes_all=True)
    judged = layout.to_judge()
    assert len(judged) == 33 and judged[0].index == 0 and judged[-2].index == 99
    assert judged[-1].kind == "thumbnail"
    assert layout.durations_ms[:2] == [40.0, 40.0] and layout.durations_ms[-1] is None


def test_the_tensor_path_judges_a_jpegs_thumbnail_too(classifier: Any) -> None:
    from nsfwd.models.tensor_decode import TensorDecoder

    data = jpeg_with_thumbnail(benign((400, 300)), flag((160, 120)))
    [views] = TensorDecoder(classifier).prepare_views([data])
    assert isinstance(views, Views)
    assert [(v.frame, v.picture) for v in views.views] == [(0, "frame"), (1, "thumbnail")]
    assert views.frames == 2
