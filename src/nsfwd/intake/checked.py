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
        self._kept: OrderedDict[bytes, Views[T]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, data: bytes) -> None:
        """Decode and prepare ``data``, raising its :class:`~nsfwd.intake.ImageError`; keep
        the pictures (dropping the oldest beyond ``size``)."""
        views = load_prepared(data, self.prepare, self.limits)
        with self._lock:
            self._kept[_digest(data)] = views
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)

    def load(self, data: bytes) -> Views[T]:
        """The pictures of ``data``: those a :meth:`check` kept, taken, or decoded now."""
        if self._kept:
            with self._lock:
                views = self._kept.pop(_digest(data), None)
            if views is not None:
                return views
        return load_prepared(data, self.prepare, self.limits)
