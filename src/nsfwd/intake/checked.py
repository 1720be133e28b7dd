"""Images checked before they are accepted, kept prepared for the judgement that follows.

An async job's upload is decoded once to be checked (a bad image is refused at once, not
after it has waited in the queue) and again when its job runs. Where both happen in the same
process (the engine of ``nsfwd serve``, a model replica of ``nsfwd serve --ray``), the
pictures the check prepared are kept, by the digest of the bytes, for the judgement to take.

A check may also hash each picture (PDQ, :mod:`nsfwd.banks.pdq`) for the banks of known
images, from the decoded picture before the model's preparation: the judgement that follows
then needs no second decoding either.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

from PIL import Image

from nsfwd.banks.pdq import PictureHash, hash_picture
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


@dataclass(frozen=True)
class _Kept(Generic[T]):
    """One checked image's prepared pictures, their hashes (if asked for) and their bytes."""

    views: Views[T]
    hashes: list[PictureHash] | None
    size: int


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
        self._kept: OrderedDict[bytes, _Kept[T]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def kept_bytes(self) -> int:
        """Bytes of pictures kept now."""
        return self._bytes

    def check(self, data: bytes, *, hashed: bool = False) -> list[PictureHash]:
        """Decode and prepare ``data``, raising its :class:`~nsfwd.intake.ImageError`; keep
        the pictures (dropping the oldest beyond ``max_bytes``; an image larger than that
        alone is not kept). ``hashed``: also hash each picture, and return the hashes (each
        with its frame); an image kept already (with its hashes, where they are asked for) is
        not decoded again."""
        key = _digest(data)
        with self._lock:
            kept = self._kept.get(key)
        if kept is not None and (kept.hashes is not None or not hashed):
            return kept.hashes or []
        views, hashes = self._decode(data, hashed)
        size = sum(picture_bytes(picture) for picture in views.images)
        with self._lock:
            self._drop(key)
            if size <= self.max_bytes:
                self._kept[key] = _Kept(views, hashes, size)
                self._bytes += size
                while self._bytes > self.max_bytes:
                    self._drop(next(iter(self._kept)))
        return hashes or []

    def load(self, data: bytes) -> Views[T]:
        """The pictures of ``data``: those a :meth:`check` kept, taken, or decoded now."""
        if self._kept:
            with self._lock:
                kept = self._drop(_digest(data))
            if kept is not None:
                return kept.views
        return load_prepared(data, self.prepare, self.limits)

    def _drop(self, key: bytes) -> _Kept[T] | None:
        """Forget the pictures kept under ``key`` (the caller holds the lock)."""
        kept = self._kept.pop(key, None)
        if kept is not None:
            self._bytes -= kept.size
        return kept

    def _decode(self, data: bytes, hashed: bool) -> tuple[Views[T], list[PictureHash] | None]:
        if not hashed:
            return load_prepared(data, self.prepare, self.limits), None

        def prepare(picture: Image.Image) -> tuple[T, PictureHash]:
            return self.prepare(picture), hash_picture(picture)

        both = load_prepared(data, prepare, self.limits)
        hashes = [replace(view.image[1], frame=view.frame) for view in both.views]
        return both.map(lambda pair: pair[0]), hashes
