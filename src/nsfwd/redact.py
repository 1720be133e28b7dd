"""A redacted copy: the same image with chosen regions blurred, pixelated or filled.

The copy keeps the format (JPEG, PNG, WebP; GIF once the intake accepts it), every frame of an
animation with its timing and looping, and the size of the picture as a viewer sees it; it is
written upright (turned as the intake and browsers turn it: a JPEG's EXIF orientation, a PNG's
eXIf chunk before its image data), without EXIF, GPS, XMP or text chunks (the ICC profile
stays, so colours look the same). Pixels outside the padded boxes keep their values,
so a PNG differs from the original only inside them (a JPEG or lossy WebP is re-encoded, a
JPEG with its own quantisation tables; 16-bit grayscale comes back in 8 bits, its high byte,
as the intake shows it).

Styles (:data:`STYLES`), none of which an inverse filter can undo:

* ``pixelate``: the box becomes a grid of at most :data:`CELLS` cells along its longer side,
  each the mean of its pixels;
* ``blur`` (the default): ``pixelate``, then a Gaussian blur of one cell's radius, which
  smooths the cells' edges; what survives is the cell means, nothing finer;
* ``fill``: solid black.

A plain Gaussian blur is not used alone: its kernel is known, and at modest radii deconvolution
brings much of the detail back.

Frames an animation's judgement skipped (past the frame budget, :mod:`nsfwd.intake.frames`
chose the others) take the regions of the judged frames before and after them. Pillow only; no
torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Final, Literal

from PIL import Image, ImageFilter

from nsfwd.intake import CorruptImageError, ImageError, ImageHeader, ImageLimits, read_header
from nsfwd.intake.colour import WIDE_GRAY_MODES
from nsfwd.intake.decode import ORIENTATION_TRANSPOSE, judged_frames
from nsfwd.intake.views import wide_gray_to_8bit
from nsfwd.verdict import Region

Style = Literal["blur", "pixelate", "fill"]
STYLES: Final[tuple[Style, ...]] = ("blur", "pixelate", "fill")
DEFAULT_STYLE: Final[Style] = "blur"
DEFAULT_PADDING: Final = 0.1
"""Each box grows by this fraction of its width (left and right) and height (top and bottom)."""
CELLS: Final = 8
"""Most cells along a box's longer side when pixelating (and before blurring)."""
MEDIA_TYPES: Final = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
}
_WEBP_QUALITY: Final = 90
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

    Runs the intake's checks before decoding (:func:`~nsfwd.intake.read_header`) and raises
    its :class:`~nsfwd.intake.ImageError` for an image they refuse or that does not decode.
    """
    header = read_header(data, limits or ImageLimits())
    chosen = redaction.chosen(regions)
    try:
        with Image.open(BytesIO(data), formats=[header.format]) as image:
            judged = judged_frames(data, image, header.format, header.frames)
            frames, timing = _redacted_frames(image, header, judged, chosen, redaction)
            return Redacted(_encode(image, header.format, frames, timing), header.format)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise CorruptImageError(f"{header.format} data cannot be redacted ({exc})") from exc


def _redacted_frames(
    image: Image.Image,
    header: ImageHeader,
    judged: Sequence[int],
    regions: Sequence[Region],
    redaction: Redaction,
) -> tuple[list[Image.Image], list[int]]:
    """Every frame, upright (as ``header`` says), with its regions covered (a frame not
    ``judged`` takes those of its judged neighbours); and each frame's duration (ms)."""
    turn = ORIENTATION_TRANSPOSE.get(header.orientation)
    frames, durations = [], []
    for index in range(header.frames):
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
