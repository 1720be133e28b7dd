"""What intake refuses, and why: the typed errors every surface renders in its own protocol.

``code`` is a short stable machine name (API responses, metrics); ``str(error)`` says what was
wrong and, where one applies, the limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Final


class ImageError(ValueError):
    """Base class: the input is not an image this service accepts.

    ``code`` is a short stable machine name for API responses and metrics; ``str(error)`` is a
    human message saying what was wrong and, where one applies, the limit.
    """

    code: ClassVar[str] = "invalid_image"

    def __init__(self, message: str) -> None:
        """Create the error with its human-readable ``message``."""
        super().__init__(message)
        self.message = message


class UnscorableImageError(ImageError):
    """The model's scores for the image are not finite numbers (NaN or infinite).

    NaN is not above any threshold, so such an image would pass every policy as unflagged;
    it is refused instead (fail closed), like an image that breaks the limits.
    """

    code: ClassVar[str] = "unscorable"

    @classmethod
    def for_labels(cls, labels: Sequence[str]) -> UnscorableImageError:
        """The error for an image whose scores for ``labels`` are not finite."""
        return cls(
            f"the model's scores for it ({', '.join(labels)}) are not finite numbers (NaN or "
            "infinite); it cannot be judged, so it is refused rather than passed as safe"
        )


class ImageTooLargeError(ImageError):
    """The encoded input is larger than :attr:`ImageLimits.max_bytes` (HTTP 400)."""

    code: ClassVar[str] = "too_large"


class UnsupportedFormatError(ImageError):
    """The content is none of the accepted formats (:data:`~nsfwd.intake.sniff.ACCEPTED`);
    the message names what it looks like, if known, and lists the accepted ones."""

    code: ClassVar[str] = "unsupported_format"


class ImageDimensionsError(ImageError):
    """A side is outside the limits, the pixel count is too high, or it is a decompression bomb."""

    code: ClassVar[str] = "bad_dimensions"


class CorruptImageError(ImageError):
    """The data is in a supported format but truncated, corrupt or otherwise undecodable."""

    code: ClassVar[str] = "corrupt"


class ImageComplexityError(ImageError):
    """Decoding the image would cost far more than its size suggests (a JPEG with hundreds of
    scans, or megabytes of padding), or it took longer than the server allows."""

    code: ClassVar[str] = "too_complex"


IMAGE_ERRORS: Final[tuple[type[ImageError], ...]] = (
    ImageError,
    UnscorableImageError,
    ImageTooLargeError,
    UnsupportedFormatError,
    ImageDimensionsError,
    CorruptImageError,
    ImageComplexityError,
)
"""Every intake error class, for code that must name them (the inference socket carries an
error by its class name)."""
