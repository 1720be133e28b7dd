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
from dataclasses import replace
from typing import Generic, TypeVar

from PIL import Image

from nsfwd.banks.pdq import PictureHash, hash_picture
from nsfwd.intake.decode import load_prepared
from nsfwd.intake.limits import ImageLimits
from nsfwd.intake.views import Views

T = TypeVar("T")

KEPT = 64
"""Images kept prepared by default (about 600 KB a picture at 448x448)."""


def _digest(data: bytes) -> bytes:
    """A short digest that tells two images' bytes apart."""
    return hashlib.blake2b(data, digest_size=16).digest()


class CheckedImages(Generic[T]):
    """The pictures of the last ``size`` images :meth:`check` prepared, until :meth:`load`
    takes them. Thread-safe: the decode pool's threads share it."""

    def __init__(
        self, prepare: Callable[[Image.Image], T], limits: ImageLimits, size: int = KEPT
    ) -> None:
        self.prepare = prepare
        self.limits = limits
        self.size = size
        self._kept: OrderedDict[bytes, tuple[Views[T], list[PictureHash] | None]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, data: bytes, *, hashed: bool = False) -> list[PictureHash]:
        """Decode and prepare ``data``, raising its :class:`~nsfwd.intake.ImageError`; keep
        the pictures (dropping the oldest beyond ``size``). ``hashed``: also hash each
        picture, and return the hashes (each with its frame); an image kept already (with its
        hashes, where they are asked for) is not decoded again."""
        key = _digest(data)
        with self._lock:
            kept = self._kept.get(key)
        if kept is not None and (kept[1] is not None or not hashed):
            return kept[1] or []
        views, hashes = self._decode(data, hashed)
        with self._lock:
            self._kept[key] = views, hashes
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)
        return hashes or []

    def load(self, data: bytes) -> Views[T]:
        """The pictures of ``data``: those a :meth:`check` kept, taken, or decoded now."""
        if self._kept:
            with self._lock:
                kept = self._kept.pop(_digest(data), None)
            if kept is not None:
                return kept[0]
        return load_prepared(data, self.prepare, self.limits)

    def _decode(self, data: bytes, hashed: bool) -> tuple[Views[T], list[PictureHash] | None]:
        if not hashed:
            return load_prepared(data, self.prepare, self.limits), None

        def prepare(picture: Image.Image) -> tuple[T, PictureHash]:
            return self.prepare(picture), hash_picture(picture)

        both = load_prepared(data, prepare, self.limits)
        hashes = [replace(view.image[1], frame=view.frame) for view in both.views]
        return both.map(lambda pair: pair[0]), hashes
