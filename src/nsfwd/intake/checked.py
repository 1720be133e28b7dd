"""Images checked before they are accepted, kept prepared for the judgement that follows.

An async job's upload is decoded once to be checked (a bad image is refused at once, not
after it has waited in the queue) and again when its job runs. Where both happen in the same
process (the engine of ``nsfwd serve``, a model replica of ``nsfwd serve --ray``), the
pictures the check prepared are kept, by the digest of the bytes, for the judgement to take.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from PIL import Image

from nsfwd.intake.decode import load_prepared
from nsfwd.intake.limits import ImageLimits
from nsfwd.intake.views import Views

T = TypeVar("T")

KEPT_BYTES = 128 * 1024 * 1024
"""Bytes of prepared pictures kept by default: about 220 pictures at 448x448, some 60 images
of one picture, or two translucent animations of 96."""


def _digest(data: bytes) -> bytes:
    """A short digest that tells two images' bytes apart."""
    return hashlib.blake2b(data, digest_size=16).digest()


def picture_bytes(picture: object) -> int:
    """What a prepared picture holds in memory: a tensor's or array's ``nbytes``, a Pillow
    image's pixels."""
    size = getattr(picture, "nbytes", None)
    if isinstance(size, int):
        return size
    if isinstance(picture, Image.Image):
        return picture.width * picture.height * len(picture.getbands())
    return 0


class CheckedImages(Generic[T]):
    """The pictures of the last images :meth:`check` prepared, at most ``max_bytes`` of them
    (:func:`picture_bytes`), until :meth:`load` takes them. Thread-safe: the decode pool's
    threads share it."""

    def __init__(
        self,
        prepare: Callable[[Image.Image], T],
        limits: ImageLimits,
        max_bytes: int = KEPT_BYTES,
    ) -> None:
        self.prepare = prepare
        self.limits = limits
        self.max_bytes = max_bytes
        self._kept: OrderedDict[bytes, tuple[Views[T], int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def kept_bytes(self) -> int:
        """Bytes of pictures kept now."""
        return self._bytes

    def check(self, data: bytes) -> None:
        """Decode and prepare ``data``, raising its :class:`~nsfwd.intake.ImageError`; keep
        the pictures (dropping the oldest beyond ``max_bytes``; an image larger than that
        alone is not kept)."""
        views = load_prepared(data, self.prepare, self.limits)
        size = sum(picture_bytes(picture) for picture in views.images)
        with self._lock:
            self._drop(_digest(data))
            if size > self.max_bytes:
                return
            self._kept[_digest(data)] = (views, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                self._drop(next(iter(self._kept)))

    def load(self, data: bytes) -> Views[T]:
        """The pictures of ``data``: those a :meth:`check` kept, taken, or decoded now."""
        if self._kept:
            with self._lock:
                views = self._drop(_digest(data))
            if views is not None:
                return views
        return load_prepared(data, self.prepare, self.limits)

    def _drop(self, key: bytes) -> Views[T] | None:
        """Forget the pictures kept under ``key`` (the caller holds the lock)."""
        kept = self._kept.pop(key, None)
        if kept is None:
            return None
        self._bytes -= kept[1]
        return kept[0]
