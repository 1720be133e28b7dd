"""A redacted copy: the same image with chosen regions blurred, pixelated or filled.

The copy keeps the format (JPEG, PNG, WebP, GIF, TIFF, BMP, HEIC/HEIF, AVIF), every frame of
an animation with its timing and looping, every page of a TIFF, and the size of the picture as
a viewer sees it; it is written upright (turned as the intake turns it: a JPEG's EXIF
orientation, a PNG's eXIf chunk before its image data, a TIFF's tag as Pillow's loader applies
it, or a HEIF's own turns), without EXIF, GPS, XMP or text chunks (the ICC profile stays, so
colours look the same).
Thumbnails go with the metadata. A HEIF copy holds its top-level images, each redacted, the
primary first (an image sequence beside them is left out: pillow-heif writes none); an AVIF
copy holds its image sequence, or else its primary image alone (Pillow writes one of the two).
What a copy cannot hold is left out, never left unredacted. Pixels outside the padded boxes
keep their values, so a PNG differs from the original only inside them (a JPEG, lossy WebP,
HEIC or AVIF is re-encoded, a JPEG with its own quantisation tables; 16-bit grayscale comes
back in 8 bits, its high byte, as the intake shows it).

Styles (:data:`STYLES`), none of which an inverse filter can undo:

* ``pixelate``: the box becomes a grid of at most :data:`CELLS` cells along its longer side,
  each the mean of its pixels;
* ``blur`` (the default): ``pixelate``, then a Gaussian blur of one cell's radius, which
  smooths the cells' edges; what survives is the cell means, nothing finer;
* ``fill``: solid black.

A plain Gaussian blur is not used alone: its kernel is known, and at modest radii deconvolution
brings much of the detail back.

Frames an animation's judgement skipped (past the frame budget, the intake's frame rule,
:mod:`nsfwd.intake.frames`, chose the others: :func:`~nsfwd.intake.decode.judged_pictures`)
take the regions of the judged frames before and after them. Pillow (and pillow-heif for HEIF)
only; no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Final, Literal

from PIL import Image, ImageFilter

from nsfwd.intake import CorruptImageError, ImageError, ImageLimits
from nsfwd.intake.colour import WIDE_GRAY_MODES
from nsfwd.intake.decode import ORIENTATION_TRANSPOSE, judged_pictures, open_pictures
from nsfwd.intake.pictures import Picture
from nsfwd.intake.sniff import MEDIA_TYPES
from nsfwd.intake.source import PillowSource, Source
from nsfwd.intake.views import wide_gray_to_8bit
from nsfwd.verdict import Region

Style = Literal["blur", "pixelate", "fill"]
STYLES: Final[tuple[Style, ...]] = ("blur", "pixelate", "fill")
DEFAULT_STYLE: Final[Style] = "blur"
DEFAULT_PADDING: Final = 0.1
"""Each box grows by this fraction of its width (left and right) and height (top and bottom)."""
CELLS: Final = 8
"""Most cells along a box's longer side when pixelating (and before blurring)."""
_WEBP_QUALITY: Final = 90
_HEIF_QUALITY: Final = 90
"""HEIC and AVIF copies are re-encoded (lossy) at this quality."""
_BLACK: Final[dict[str, int | tuple[int, ...]]] = {
    "L": 0,
    "RGB": (0, 0, 0),
    "RGBA": (0, 0, 0, 255),
    "CMYK": (0, 0, 0, 255),
}


@dataclass(frozen=True)
class Redaction:
    """What to redact and how: the ``labels`` whose regions go (None: every region found),
    the ``style``, and the ``padding`` added around each box (a fraction of its size)."""

    labels: frozenset[str] | None = None
    style: Style = DEFAULT_STYLE
    padding: float = DEFAULT_PADDING

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {', '.join(STYLES)}, not {self.style!r}")
        if not 0.0 <= self.padding <= 1.0:
            raise ValueError(f"padding must be between 0 and 1, not {self.padding}")

    def chosen(self, regions: Sequence[Region]) -> list[Region]:
        """The regions this redaction covers."""
        return [r for r in regions if self.labels is None or r.label in self.labels]

    def padded(self, region: Region, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """``region``'s box grown by :attr:`padding` and clipped to a picture of ``size``, as
        (left, top, right, bottom) pixel edges."""
        x, y, width, height = region.box
        grow_x, grow_y = width * self.padding, height * self.padding
        return (
            max(0, math.floor(x - grow_x)),
            max(0, math.floor(y - grow_y)),
            min(size[0], math.ceil(x + width + grow_x)),
            min(size[1], math.ceil(y + height + grow_y)),
        )


@dataclass(frozen=True)
class Redacted:
    """A redacted copy: its bytes, its format (``JPEG``, ``PNG``...) and media type."""

    data: bytes
    format: str

    @property
    def media_type(self) -> str:
        """The copy's content type."""
        return MEDIA_TYPES[self.format]


def redact(
    data: bytes,
    regions: Sequence[Region],
    redaction: Redaction = Redaction(),
    limits: ImageLimits | None = None,
) -> Redacted:
    """``data`` with ``redaction``'s regions covered, in its own format (see the module).

    Runs the intake's checks before decoding (:func:`~nsfwd.intake.decode.open_pictures`) and raises
    its :class:`~nsfwd.intake.ImageError` for an image they refuse or that does not decode.
    """
    chosen = redaction.chosen(regions)
    limits = limits or ImageLimits()
    source = open_pictures(data, limits)
    fmt, layout = source.format, source.layout
    try:
        with source:
            judged = _judged(data, source, limits)
            if fmt in ("HEIF", "AVIF"):
                return Redacted(_redacted_container(source, judged, chosen, redaction), fmt)
            facts = source.facts if isinstance(source, PillowSource) else None
        turn = None if facts is None else ORIENTATION_TRANSPOSE.get(facts.orientation)
        count = sum(1 for picture in layout.pictures if picture.kind != "thumbnail")
        with Image.open(BytesIO(data), formats=[fmt]) as image:
            frames, timing = _redacted_frames(image, count, judged, chosen, redaction, turn=turn)
            return Redacted(_encode(image, fmt, frames, timing), fmt)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise CorruptImageError(f"{fmt} data cannot be redacted ({exc})") from exc


def _judged(data: bytes, source: Source, limits: ImageLimits) -> list[int]:
    """The pictures the judgement looked at (the intake's rule), by index (thumbnails are not
    written)."""
    judged = judged_pictures(data, source, limits)
    return [picture.index for picture in judged if picture.kind != "thumbnail"]


def _redacted_frames(
    image: Image.Image,
    count: int,
    judged: Sequence[int],
    regions: Sequence[Region],
    redaction: Redaction,
    *,
    turn: Image.Transpose | None = None,
) -> tuple[list[Image.Image], list[int]]:
    """Every frame (or page), upright (by ``turn``), with its regions covered (a frame not
    ``judged`` takes those of its judged neighbours); and each one's duration (ms)."""
    frames, durations = [], []
    for index in range(count):
        image.seek(index)
        stored = wide_gray_to_8bit(image) if image.mode in WIDE_GRAY_MODES else image
        frame = stored.convert(_working_mode(stored))
        frame.info = {}  # Pillow's writers take EXIF, XMP and comments from it
        if turn is not None:
            frame = frame.transpose(turn)
        for region in _frame_regions(regions, index, judged):
            _cover(frame, redaction.padded(region, frame.size), redaction.style)
        frames.append(frame)
        durations.append(int(image.info.get("duration", 0) or 0))
    return frames, durations


def _redacted_container(
    source: Source, judged: Sequence[int], regions: Sequence[Region], redaction: Redaction
) -> bytes:
    """A HEIF's top-level images or an AVIF's sequence (else its primary image), decoded
    upright, redacted and encoded again in the same format (see the module)."""
    layout = source.layout
    frames = [picture for picture in layout.pictures if picture.kind == "frame"]
    images = [picture for picture in layout.pictures if picture.kind == "image"]
    kept = (frames or images[:1]) if source.format == "AVIF" else (images or frames)
    pictures = []
    for picture in kept:
        loaded = source.load(picture)
        if loaded is None:  # only a thumbnail may not decode, and none is kept
            raise CorruptImageError(f"{source.format} picture {picture.index} cannot be decoded")
        pictures.append(_redacted_picture(loaded, picture, judged, regions, redaction))
    if source.format == "HEIF":
        return _encode_heif(pictures)
    return _encode_avif(pictures, [picture.duration_ms for picture in kept])


def _redacted_picture(
    loaded: Image.Image,
    picture: Picture,
    judged: Sequence[int],
    regions: Sequence[Region],
    redaction: Redaction,
) -> Image.Image:
    """One decoded picture in RGB (RGBA where it has transparency), its regions covered, with
    its ICC profile and no other metadata."""
    mode = "RGBA" if loaded.has_transparency_data or "A" in loaded.mode else "RGB"
    redacted = loaded.convert(mode)
    icc = loaded.info.get("icc_profile")
    redacted.info = {"icc_profile": icc} if icc else {}
    for region in _frame_regions(regions, picture.index, judged):
        _cover(redacted, redaction.padded(region, redacted.size), redaction.style)
    return redacted


def _encode_heif(pictures: Sequence[Image.Image]) -> bytes:
    """HEIC of ``pictures`` as top-level images, the first primary (pillow-heif)."""
    import pillow_heif

    file = pillow_heif.from_pillow(pictures[0])
    for picture in pictures[1:]:
        file.add_from_pillow(picture)
    out = BytesIO()
    file.save(out, quality=_HEIF_QUALITY)
    return out.getvalue()


def _encode_avif(pictures: Sequence[Image.Image], durations: Sequence[float | None]) -> bytes:
    """AVIF of ``pictures``: a still image, or an image sequence with their durations."""
    options: dict[str, Any] = {"quality": _HEIF_QUALITY}
    icc = pictures[0].info.get("icc_profile")
    if icc:
        options["icc_profile"] = icc
    if len(pictures) > 1:
        options |= {
            "save_all": True,
            "append_images": list(pictures[1:]),
            "duration": [round(duration or 0) for duration in durations],
        }
    out = BytesIO()
    pictures[0].save(out, format="AVIF", **options)
    return out.getvalue()


def _working_mode(image: Image.Image) -> str:
    """The mode frames are redacted in: the stored one where it is plain (L, RGB, RGBA,
    CMYK), else RGBA or RGB as it has transparency or not."""
    if image.mode in ("L", "RGB", "RGBA", "CMYK") and not (
        image.mode != "RGBA" and image.has_transparency_data
    ):
        return image.mode
    return "RGBA" if image.has_transparency_data or "A" in image.mode else "RGB"


def _frame_regions(regions: Sequence[Region], index: int, judged: Sequence[int]) -> list[Region]:
    """The regions covered in frame ``index``: its own where it was judged, else those of the
    judged frames on either side of it."""
    if index in judged:
        frames = {index}
    else:
        frames = {max((f for f in judged if f < index), default=index)}
        frames.add(min((f for f in judged if f > index), default=index))
    return [region for region in regions if region.frame in frames]


def _cover(frame: Image.Image, box: tuple[int, int, int, int], style: Style) -> None:
    """Redact ``box`` (left, top, right, bottom) of ``frame`` in place."""
    left, top, right, bottom = box
    if right <= left or bottom <= top:
        return
    if style == "fill":
        frame.paste(_BLACK[frame.mode], box)
        return
    patch = frame.crop(box)
    width, height = patch.size
    cell = max(1, math.ceil(max(width, height) / CELLS))
    small = patch.resize(
        (max(1, round(width / cell)), max(1, round(height / cell))), Image.Resampling.BOX
    )
    covered = small.resize((width, height), Image.Resampling.NEAREST)
    if style == "blur":
        covered = covered.filter(ImageFilter.GaussianBlur(cell))
    frame.paste(covered, box)


def _encode(image: Image.Image, fmt: str, frames: list[Image.Image], durations: list[int]) -> bytes:
    """The frames in ``fmt``, with the original's ICC profile, looping and timing, and no
    other metadata."""
    options: dict[str, Any] = {}
    icc = image.info.get("icc_profile")
    if icc and fmt != "GIF":
        options["icc_profile"] = icc
    if fmt == "JPEG":
        options |= _jpeg_options(image)
    elif fmt == "WEBP":
        options |= {"quality": _WEBP_QUALITY}
    if len(frames) > 1:
        options |= {
            "save_all": True,
            "append_images": frames[1:],
            "duration": durations,
            "loop": int(image.info.get("loop", 0) or 0),
        }
        if fmt == "GIF":
            options["disposal"] = 1
        elif fmt == "PNG":
            options |= {"disposal": 0, "blend": 0}
    out = BytesIO()
    frames[0].save(out, format=fmt, **options)
    return out.getvalue()


def _jpeg_options(image: Image.Image) -> dict[str, Any]:
    """Re-encode a JPEG with its own quantisation tables and chroma subsampling, so the copy
    is of the original's quality."""
    from PIL import JpegImagePlugin

    options: dict[str, Any] = {"quality": 95}
    tables = getattr(image, "quantization", None)
    if tables:
        options = {"qtables": [list(table) for _, table in sorted(tables.items())]}
    sampling = JpegImagePlugin.get_sampling(image)
    if sampling != -1:
        options["subsampling"] = sampling
    return options
