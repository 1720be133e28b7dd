"""Images on disk: files read within the byte limit, and the image files under folders."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final

from PIL import Image

from nsfwd.intake.decode import load_image
from nsfwd.intake.limits import ImageLimits, check_byte_size
from nsfwd.intake.video import VIDEO_SUFFIXES

IMAGE_SUFFIXES: Final = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".webp"}
    | {".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)
"""What folders are searched for; a file named on the command line is tried whatever its name.
Formats nsfwd refuses are listed too, so such files get an error record rather than vanish."""
MEDIA_SUFFIXES: Final = IMAGE_SUFFIXES | VIDEO_SUFFIXES
"""Images and videos: what folders are searched for."""


def find_media(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Files as given, and image and video files under folders (``nsfwd classify``)."""
    return find_images(paths, MEDIA_SUFFIXES)


def find_images(
    paths: Iterable[str | os.PathLike[str]], suffixes: frozenset[str] = IMAGE_SUFFIXES
) -> Iterator[Path]:
    """Files as given, and image files (or those with other ``suffixes``) under folders
    (recursive, sorted, hidden ones skipped)."""
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            yield path
            continue
        for child in sorted(path.rglob("*")):
            relative = child.relative_to(path).parts
            if any(part.startswith(".") for part in relative):
                continue
            if child.suffix.lower() in suffixes and child.is_file():
                yield child


def read_image_file(path: str | os.PathLike[str], limits: ImageLimits = ImageLimits()) -> bytes:
    """Read an image file's bytes, at most ``limits.max_bytes + 1`` of them, so an oversized
    file is refused with :class:`~nsfwd.intake.errors.ImageTooLargeError` without being read
    whole. Errors opening or reading the file itself (missing, unreadable, a directory) are
    raised as the usual ``OSError``."""
    with Path(path).open("rb") as file:
        data = file.read(limits.max_bytes + 1)
        if len(data) > limits.max_bytes:
            size = os.fstat(file.fileno()).st_size
            check_file_size(max(size, len(data)), limits, os.fspath(path))
    return data


def check_file_size(size: int, limits: ImageLimits, name: str) -> None:
    """Raise :class:`~nsfwd.intake.errors.ImageTooLargeError`, naming the file or URL ``name``,
    when ``size`` bytes exceed ``limits.max_bytes``."""
    check_byte_size(size, limits, where=f"file {name!r}")


def load_image_file(
    path: str | os.PathLike[str], limits: ImageLimits = ImageLimits()
) -> Image.Image:
    """Read an image file (:func:`read_image_file`) and return
    :func:`~nsfwd.intake.decode.load_image` of its bytes."""
    return load_image(read_image_file(path, limits), limits)
