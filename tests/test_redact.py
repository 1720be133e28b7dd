"""Redacted copies (:mod:`nsfwd.redact`) and ``nsfwd censor``: only the padded boxes change, no
detail survives in them, the format, frames, timing and size stay, metadata goes."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from format_files import heic, jpeg_with_thumbnail
from nsfwd.cli import main
from nsfwd.intake import ImageError, ImageLimits, load_views
from nsfwd.intake.avif import read_layout as read_avif_layout
from nsfwd.redact import STYLES, Redaction, Style, redact
from nsfwd.verdict import Region
from photos import ASTRONAUT, encode, gray16, photo, with_exif_orientation

FACE = Region("FACE_FEMALE", 0.72, (173, 82, 103, 99))


def _pixels(data: bytes, frame: int = 0) -> np.ndarray:
    with Image.open(BytesIO(data)) as image:
        image.seek(frame)
        return np.asarray(image.convert("RGB")).astype(np.int64)


def _edges(box: tuple[int, int, int, int], redaction: Redaction) -> tuple[int, int, int, int]:
    return redaction.padded(Region("x", 1.0, box), (512, 512))


@pytest.mark.parametrize("style", STYLES)
def test_a_png_changes_only_inside_the_padded_boxes(style: Style) -> None:
    original = ASTRONAUT.read_bytes()
    other = Region("FACE_MALE", 0.6, (400, 380, 60, 50))
    redaction = Redaction(None, style, 0.2)
    copy = redact(original, [FACE, other], redaction)
    assert copy.format == "PNG" and copy.media_type == "image/png"
    before, after = _pixels(original), _pixels(copy.data)
    assert before.shape == after.shape
    inside = np.zeros(before.shape[:2], bool)
    for region in (FACE, other):
        left, top, right, bottom = _edges(region.box, redaction)
        inside[top:bottom, left:right] = True
    changed = (before != after).any(axis=-1)
    assert not changed[~inside].any()
    assert changed[inside].mean() > 0.8  # (fill: some were black already)


def _high_pass(pixels: np.ndarray) -> np.ndarray:
    gray = pixels.mean(axis=-1)
    smooth: np.ndarray = np.asarray(
        Image.fromarray(gray.astype(np.uint8)).filter(ImageFilter.GaussianBlur(2)), float
    )
    high: np.ndarray = gray - smooth
    return high


@pytest.mark.parametrize("style", ["blur", "pixelate"])
def test_no_detail_survives_in_a_redacted_box(style: Style) -> None:
    """The original's fine detail (what a high-pass filter keeps) neither survives nor can be
    told from the copy's: the copy's high frequencies carry a sliver of the original's energy
    and do not correlate with them, as an invertible blur's would."""
    redaction = Redaction(None, style, 0.0)
    copy = redact(ASTRONAUT.read_bytes(), [FACE], redaction)
    x, y, width, height = FACE.box
    inner = (slice(y + 4, y + height - 4), slice(x + 4, x + width - 4))  # off the blend edge
    before = _high_pass(_pixels(ASTRONAUT.read_bytes()))[inner]
    after = _high_pass(_pixels(copy.data))[inner]
    correlation = np.corrcoef(before.ravel(), after.ravel())[0, 1]
    assert abs(correlation) < 0.2
    if style == "blur":  # pixelation's only high frequencies are its cells' edges
        assert np.abs(after).mean() < 0.2 * np.abs(before).mean()
    # A plain Gaussian of the same radius keeps what an inverse filter would bring back.
    plain = Image.open(ASTRONAUT).convert("RGB").filter(ImageFilter.GaussianBlur(2))
    kept = _high_pass(np.asarray(plain).astype(np.int64))[inner]
    assert np.corrcoef(before.ravel(), kept.ravel())[0, 1] > 0.3


def test_fill_is_black() -> None:
    copy = redact(ASTRONAUT.read_bytes(), [FACE], Redaction(style="fill", padding=0))
    x, y, width, height = FACE.box
    assert (_pixels(copy.data)[y : y + height, x : x + width] == 0).all()


def test_labels_choose_the_regions() -> None:
    original = ASTRONAUT.read_bytes()
    assert (
        redact(original, [FACE], Redaction(frozenset({"FACE_MALE"}))).data
        == redact(original, [], Redaction()).data
    )
    assert (
        _pixels(redact(original, [FACE], Redaction(frozenset({"FACE_FEMALE"}))).data)
        != _pixels(original)
    ).any()


def test_a_jpeg_stays_a_jpeg_upright_of_its_size_without_exif_gps_or_xmp() -> None:
    upright = photo("astronaut").resize((600, 400))
    exif = Image.Exif()
    exif[0x0112] = 6
    exif.get_ifd(0x8825)[2] = (51.0, 30.0, 0.0)  # GPSLatitude
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
    data = encode(stored, "JPEG", quality=90, exif=exif.tobytes(), xmp=xmp, comment=b"secret")
    copy = redact(data, [Region("X", 0.9, (10, 10, 50, 50))], Redaction(style="fill", padding=0))
    with Image.open(BytesIO(copy.data)) as image:
        assert (image.format, image.size) == ("JPEG", (600, 400))
        assert not image.getexif() and "xmp" not in image.info and "comment" not in image.info
        assert b"Exif" not in copy.data and b"xmpmeta" not in copy.data
        pixels = np.asarray(image.convert("RGB")).astype(int)
    assert pixels[15:55, 15:55].max() < 20  # the box, in the upright picture
    rest = np.abs(pixels[100:, 100:] - np.asarray(upright)[100:, 100:]).mean()
    assert rest < 3  # re-encoded with the original's tables


@pytest.mark.parametrize("fmt", ["WEBP", "PNG", "GIF"])
def test_an_animation_comes_back_animated_with_every_frame_redacted(fmt: str) -> None:
    base = photo("astronaut").resize((256, 256))
    frames = [base.rotate(angle) for angle in (0, 20, 40, 60)]
    data = encode(
        frames[0], fmt, save_all=True, append_images=frames[1:], duration=[80, 90, 100, 110], loop=0
    )
    regions = [Region("X", 0.9, (20 + 10 * i, 20, 40, 40), frame=i) for i in range(4)]
    copy = redact(data, regions, Redaction(style="fill", padding=0))
    with Image.open(BytesIO(copy.data)) as image:
        count: int = getattr(image, "n_frames")  # noqa: B009 (not in Pillow's stubs)
        assert (image.format, count, image.size) == (fmt, 4, (256, 256))
        durations = []
        for index in range(4):
            image.seek(index)
            image.load()
            durations.append(image.info.get("duration"))
            pixels = np.asarray(image.convert("RGB")).astype(int)
            x = 20 + 10 * index
            assert pixels[22:58, x + 2 : x + 38].max() < 25, index  # this frame's own box
        assert image.info.get("loop") == 0
    assert durations == [80, 90, 100, 110]


def test_every_page_and_top_level_image_is_redacted_in_its_format() -> None:
    """A TIFF keeps its pages, a HEIC its images (the primary first), an animated AVIF its
    frames and their timing (and the still image Pillow writes beside them: the first frame);
    a JPEG's EXIF thumbnail goes with the EXIF."""
    base = photo("astronaut").resize((128, 128))
    frames = [base, base.rotate(30)]
    timed = {"duration": [40, 700], "quality": 90}
    files = {
        "TIFF": encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        "HEIF": heic(*frames),
        "AVIF": encode(frames[0], "AVIF", save_all=True, append_images=frames[1:], **timed),
        "JPEG": jpeg_with_thumbnail(frames[0], frames[1]),
    }
    regions = [Region("X", 0.9, (10 + 40 * i, 10, 40, 40), frame=i) for i in range(2)]
    boxes = {"TIFF": [0, 1], "HEIF": [0, 1], "AVIF": [0, 1, 0], "JPEG": [0]}
    for fmt, data in files.items():
        copy = redact(data, regions, Redaction(style="fill", padding=0))
        assert copy.format == fmt, fmt
        views = load_views(copy.data).views
        assert [view.frame for view in views] == list(range(len(boxes[fmt]))), fmt
        for view, box in zip(views, boxes[fmt], strict=True):
            pixels = np.asarray(view.image).astype(int)
            x = 10 + 40 * box
            assert pixels[14:46, x + 4 : x + 36].max() < 40, (fmt, view.frame)
            assert pixels[60:, 60:].mean() > 40, (fmt, view.frame)  # still a photograph
    avif = read_avif_layout(redact(files["AVIF"], regions).data, ImageLimits())
    assert [p.duration_ms for p in avif.pictures if p.kind == "frame"] == [40, 700]


def test_the_copy_covers_the_frames_the_intake_judged() -> None:
    """40 frames, past the budget: frame 17 stays a minute, so the intake judges it whatever
    its position (:mod:`nsfwd.intake.frames`). Its region is covered there and, in the frames
    the intake skipped, in those between its judged neighbours; nowhere else."""
    base = photo("astronaut").resize((128, 128))
    frames = [base.point(lambda v, i=i: min(255, v + i)) for i in range(40)]
    durations = [50] * 40
    durations[17] = 60_000
    data = encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=durations)
    judged = sorted({view.frame for view in load_views(data).views})
    assert 17 in judged and len(judged) < 40
    region = Region("X", 0.9, (0, 0, 30, 30), frame=17)
    copy = redact(data, [region], Redaction(style="fill", padding=0))
    before = max(f for f in judged if f < 17)
    after = min((f for f in judged if f > 17), default=40)
    for index in range(40):
        covered = index == 17 or (index not in judged and before < index < after)
        assert (_pixels(copy.data, index)[:30, :30].max() < 25) == covered, index


def test_bad_input_is_the_intakes_error() -> None:
    with pytest.raises(ImageError):
        redact(b"not an image", [], Redaction())
    with pytest.raises(ValueError, match="style"):
        Redaction(style="smudge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="padding"):
        Redaction(padding=2)


def test_censor_writes_redacted_copies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("nudenet")
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "astronaut.png").write_bytes(ASTRONAUT.read_bytes())
    (inputs / "turned.jpg").write_bytes(with_exif_orientation(photo("astronaut"), 6))
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    status = main(["censor", "--labels", "FACE_FEMALE", "--style", "fill", "--padding", "0",
                   str(inputs), "--output", str(out)])  # fmt: skip
    printed = capsys.readouterr()
    assert status == 0, printed.err
    records = {Path(r["path"]).name: r for r in map(json.loads, printed.out.splitlines())}
    assert "error" in records["broken.png"]
    for name in ("astronaut.png", "turned.jpg"):
        (face,) = records[name]["regions"]
        assert face["label"] == "FACE_FEMALE" and records[name]["output"] == str(out / name)
        x, y, width, height = face["box"]
        with Image.open(out / name) as image:
            assert image.size == (512, 512)
            assert (
                np.asarray(image.convert("RGB"))[
                    y + 2 : y + height - 2, x + 2 : x + width - 2
                ].max()
                < 25
            )
    assert not (out / "broken.png").exists()


def test_censor_redacts_every_frame_of_a_gif_and_keeps_its_timing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("nudenet")
    base = photo("astronaut")
    frames = [base, base.transpose(Image.Transpose.FLIP_LEFT_RIGHT), base]
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    timed = {"duration": [120, 40, 900], "loop": 3}
    anim = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], **timed)
    (inputs / "anim.gif").write_bytes(anim)
    status = main(["censor", "--labels", "FACE_FEMALE", "--style", "fill", "--padding", "0",
                   str(inputs), "--output", str(out)])  # fmt: skip
    printed = capsys.readouterr()
    assert status == 0, printed.err
    (record,) = map(json.loads, printed.out.splitlines())
    faces = {region["frame"]: region["box"] for region in record["regions"]}
    assert sorted(faces) == [0, 1, 2] and record["output"] == str(out / "anim.gif")
    with Image.open(out / "anim.gif") as image:
        assert (image.format, getattr(image, "n_frames"), image.size) == ("GIF", 3, (512, 512))  # noqa: B009
        assert image.info.get("loop") == 3
        durations = []
        for index, (x, y, width, height) in sorted(faces.items()):
            image.seek(index)
            durations.append(image.info.get("duration"))
            pixels = np.asarray(image.convert("RGB"))
            assert pixels[y + 2 : y + height - 2, x + 2 : x + width - 2].max() < 25, index
    assert durations == [120, 40, 900]
    assert faces[0] != faces[1]  # the mirrored frame's face was found where it is


def test_censor_refuses_a_classifier(
    tmp_path: Path, vit_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["censor", "--model", str(vit_checkpoint), str(ASTRONAUT), "--output",
                   str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2
    assert "is a classifier" in err and "--model nudenet" in err
    assert not (tmp_path / "out").exists()


def test_censor_refuses_to_overwrite_its_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("nudenet")
    (tmp_path / "a.png").write_bytes(ASTRONAUT.read_bytes())
    assert main(["censor", str(tmp_path / "a.png"), "--output", str(tmp_path)]) == 1
    (record,) = map(json.loads, capsys.readouterr().out.splitlines())
    assert "would overwrite it" in record["error"]


def test_sixteen_bit_grayscale_keeps_its_picture() -> None:
    """Pillow's plain conversion clips 16-bit values at 255, which would turn it white."""
    wide, expected = gray16(photo("camera"))
    copy = redact(encode(wide, "PNG"), [FACE], Redaction(style="fill", padding=0))
    pixels = np.asarray(Image.open(BytesIO(copy.data)).convert("L")).astype(int)
    x, y, width, height = FACE.box
    assert (pixels[y : y + height, x : x + width] == 0).all()
    pixels[y : y + height, x : x + width] = np.asarray(expected)[y : y + height, x : x + width]
    assert np.array_equal(pixels, np.asarray(expected))
