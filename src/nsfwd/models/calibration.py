"""The images int8 is calibrated on: a folder of the user's own (``--calibration-dir``), or the
bench's photo-like JPEGs, made on the spot (:func:`nsfwd.bench.images.make_jpegs`).

Static int8 fixes each activation's range from what these images produce, so images like the
ones the server will judge calibrate best; the photo-like set needs nothing but is only a
stand-in. Its :attr:`Calibration.key` names the set, so a changed folder is calibrated anew.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from nsfwd.intake.errors import ImageError
from nsfwd.intake.files import find_images, load_image_file
from nsfwd.models.names import DEFAULT_CALIBRATION_IMAGES

log = logging.getLogger(__name__)

PHOTO_LIKE_SIZE = (1024, 768)


@dataclass(frozen=True)
class Calibration:
    """Which images int8 is calibrated on, and how many at most."""

    folder: Path | None = None
    """A folder of the user's images (searched as ``nsfwd classify`` does); None for the
    bench's photo-like JPEGs."""
    images: int = DEFAULT_CALIBRATION_IMAGES

    def __post_init__(self) -> None:
        if self.images < 1:
            raise ValueError(f"calibrate on at least one image, not {self.images}")
        if self.folder is not None and not self.folder.is_dir():
            raise ValueError(f"the calibration folder {self.folder} is not a folder")

    def _files(self) -> list[Path]:
        assert self.folder is not None
        return sorted(find_images([self.folder]))[: self.images]

    @property
    def key(self) -> str:
        """A short name that changes with the set: its kind, size and, for a folder, its
        files (paths, sizes and modification times)."""
        if self.folder is None:
            return f"photo-like-{self.images}"
        digest = hashlib.sha256(str(self.folder.resolve()).encode())
        for path in self._files():
            stat = path.stat()
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return f"folder-{digest.hexdigest()[:16]}"

    def describe(self) -> str:
        """The set in words, for logs and the export's metadata."""
        if self.folder is None:
            return f"{self.images} photo-like JPEGs (nsfwd.bench.images)"
        return f"up to {self.images} images from {self.folder}"

    def samples(self, prepare: Callable[[Image.Image], torch.Tensor]) -> list[torch.Tensor]:
        """Each image of the set through ``prepare``; files that cannot be read are skipped
        (logged). ValueError when none can."""
        if self.folder is None:
            from nsfwd.bench.images import make_jpegs

            with tempfile.TemporaryDirectory(prefix="nsfwd-calibration-") as tmp:
                files = make_jpegs(Path(tmp), self.images, PHOTO_LIKE_SIZE)
                return [prepare(load_image_file(path)) for path in files]
        samples = []
        for path in self._files():
            try:
                samples.append(prepare(load_image_file(path)))
            except (OSError, ImageError) as exc:
                log.warning("calibration: skipping %s: %s", path, exc)
        if not samples:
            raise ValueError(f"no image under {self.folder} could be read for calibration")
        return samples
