"""Image sequences that no image decoder here plays: a HEIF's HEVC sequence track (animated
HEIF), decoded frame by frame by FFmpeg through PyAV (the ``av`` package), whose MP4 reader
takes HEIF's ``pict`` tracks as video.

The track has been read and bounded before (:mod:`.heif_structure`: its frame count and size
within the limits); frames are decoded in order, each from the one before, as the pictures
are asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from typing import Any, Final

from PIL import Image

from nsfwd.intake.errors import CorruptImageError, UnsupportedFormatError

INSTALL_HINT: Final = "pip install av"


class SequenceFrames:
    """The frames of one image sequence track, decoded in order on demand."""

    def __init__(self, data: bytes, fmt: str) -> None:
        try:
            import av
        except ImportError as exc:
            raise UnsupportedFormatError(
                f"{fmt} image sequences (animated {fmt}) need PyAV, which this server lacks "
                f"({INSTALL_HINT})"
            ) from exc
        self.format = fmt
        try:
            self.container: Any = av.open(BytesIO(data), mode="r")
            stream = self.container.streams.video[0]
        except (av.FFmpegError, IndexError, ValueError) as exc:
            raise CorruptImageError(f"{fmt} image sequence cannot be read ({exc})") from exc
        self._errors: tuple[type[BaseException], ...] = (av.FFmpegError, ValueError)
        self._frames: Iterator[Any] = self.container.decode(stream)
        self._next = 0

    def frame(self, index: int) -> Image.Image:
        """Frame ``index`` as an RGB picture; the frames before it are decoded on the way
        (each is predicted from the ones before). Raises :class:`CorruptImageError` for a
        sequence that ends early or does not decode."""
        if index < self._next:
            raise ValueError(f"frame {index} was passed already")
        try:
            while True:
                decoded = next(self._frames, None)
                if decoded is None:
                    raise CorruptImageError(
                        f"{self.format} image sequence ends before its frame {index}"
                    )
                self._next += 1
                if self._next > index:
                    picture: Image.Image = decoded.to_image()
                    return picture
        except self._errors as exc:
            raise CorruptImageError(
                f"{self.format} image sequence cannot be decoded ({exc})"
            ) from exc

    def close(self) -> None:
        """Let FFmpeg go."""
        self.container.close()
