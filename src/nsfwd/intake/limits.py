"""How big an accepted image may be, checked from its header before any pixel is decoded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from nsfwd.intake.errors import ImageDimensionsError, ImageTooLargeError

MIB: Final = 1024 * 1024
ANIMATION_STILLS: Final = 32
"""An animation may decode as many pixels as this many stills of the largest size."""
MAX_FRAMES: Final = 5000
"""Pictures one file may hold by default: frames, pages, images and thumbnails."""


@dataclass(frozen=True)
class ImageLimits:
    """Limits that an accepted image must meet; the defaults suit the service.

    ``max_pixels`` is checked from the header, before decoding, and so bounds the memory
    that decoding one image can take (about 4 bytes per pixel).
    """

    max_bytes: int = 10 * MIB
    """Largest accepted encoded size in bytes."""
    min_side: int = 128
    """Smallest accepted width and height in pixels."""
    max_side: int = 2048
    """Largest accepted width and height in pixels."""
    max_pixels: int = 2048 * 2048
    """Largest accepted width times height."""
    max_animation_pixels: int = ANIMATION_STILLS * 2048 * 2048
    """Largest accepted width times height times frames: every frame of an animation is
    decoded (each is drawn over the one before), so this bounds the work; checked from the
    header, before decoding."""
    max_frames: int = MAX_FRAMES
    """Most pictures one file may hold (an animation's frames, a TIFF's pages, a HEIF's
    images and thumbnails), whatever their size: each costs a pass of the decoder's own
    bookkeeping, however small it is; checked from the header."""

    def __post_init__(self) -> None:
        """Refuse limits that no image could meet or that make no sense."""
        names = ("max_bytes", "min_side", "max_side", "max_pixels", "max_animation_pixels")
        for name in (*names, "max_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ImageLimits.{name} must be a positive int, got {value!r}")
        if self.min_side > self.max_side:
            raise ValueError(
                f"ImageLimits.min_side ({self.min_side}) exceeds max_side ({self.max_side})"
            )

    def describe(self) -> str:
        """Return the dimension limits as a short human phrase, for error messages."""
        return (
            f"each side must be {self.min_side}..{self.max_side} px "
            f"and the image at most {self.max_pixels:,} pixels"
        )


def check_byte_size(size: int, limits: ImageLimits, *, where: str) -> None:
    """Raise :class:`ImageTooLargeError` if ``size`` bytes exceed ``limits.max_bytes``."""
    if size > limits.max_bytes:
        raise ImageTooLargeError(
            f"{where} is {size:,} bytes ({size / MIB:.1f} MiB); the limit is "
            f"{limits.max_bytes:,} bytes ({limits.max_bytes / MIB:.1f} MiB)"
        )


def check_dimensions(
    size: tuple[int, int], limits: ImageLimits, *, what: str = "image", smallest: bool = True
) -> None:
    """Raise :class:`ImageDimensionsError` unless ``size`` is within ``limits``. With
    ``smallest`` off only the upper limits apply: a file's further pictures (a thumbnail, a
    small page) are judged however small, but cost no more than the image."""
    width, height = size
    problems = [
        f"{name} {value} px is below the minimum of {limits.min_side} px"
        for name, value in (("width", width), ("height", height))
        if smallest and value < limits.min_side
    ] + [
        f"{name} {value} px is above the maximum of {limits.max_side} px"
        for name, value in (("width", width), ("height", height))
        if value > limits.max_side
    ]
    if width * height > limits.max_pixels:
        problems.append(
            f"{width * height:,} pixels is above the maximum of {limits.max_pixels:,} pixels"
        )
    if problems:
        raise ImageDimensionsError(
            f"{what} is {width}x{height} px: {'; '.join(problems)} ({limits.describe()})"
        )


def check_frame_count(frames: int, limits: ImageLimits, what: str = "frames") -> None:
    """Raise :class:`ImageDimensionsError` when a file holds more than
    :attr:`ImageLimits.max_frames` pictures (``what`` names them: frames, pages...)."""
    if frames > limits.max_frames:
        raise ImageDimensionsError(
            f"the file holds {frames:,} {what}; the limit is {limits.max_frames:,} "
            f"(frames, pages or images per file)"
        )


def check_decode_budget(pixels: int, pictures: int, limits: ImageLimits) -> None:
    """Raise :class:`ImageDimensionsError` when decoding ``pictures`` pictures of different
    sizes (a TIFF's pages, a HEIF's images and thumbnails) costs more than
    :attr:`ImageLimits.max_animation_pixels` pixels."""
    if pixels > limits.max_animation_pixels:
        raise ImageDimensionsError(
            f"its {pictures:,} pictures add up to {pixels:,} pixels to decode, above the "
            f"limit of {limits.max_animation_pixels:,} pixels (width x height x frames)"
        )


def check_pixel_budget(width: int, height: int, frames: int, limits: ImageLimits) -> None:
    """Raise :class:`ImageDimensionsError` when decoding ``frames`` frames of ``width`` x
    ``height`` is over :attr:`ImageLimits.max_animation_pixels` (every frame of an animation is
    decoded, each drawn over the one before, so this bounds the work)."""
    pixels = width * height * frames
    if pixels > limits.max_animation_pixels:
        raise ImageDimensionsError(
            f"animation is {width}x{height} px x {frames:,} frames = {pixels:,} "
            f"pixels to decode, above the limit of {limits.max_animation_pixels:,} pixels "
            f"(width x height x frames)"
        )
