"""The verdicts of recent uploads, by content: the same bytes twice are judged once.

The key is everything a judgement depends on: the digest of the bytes, the served model, the
policy (name and threshold: it picks which picture of an animation answers), the banks'
revision (:mod:`nsfwd.banks.matcher`) and, for a video, the sampling a request asked for. A
policy given in a request, a bank changed, or another model asked for therefore never meets an
answer made under other terms. The cache is bounded by entries, the least recently used going
first; an entry is a few hundred bytes (labels and which picture answered; a video's segments
too), never the image.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from nsfwd.timeline import VideoOptions
from nsfwd.verdict import Judgement, Policy

DEFAULT_ENTRIES: Final = 10_000
"""Verdicts kept by default (``NSFWD_VERDICT_CACHE_ENTRIES``): a few megabytes."""


def content_digest(data: bytes) -> bytes:
    """A digest that tells two uploads' bytes apart (BLAKE2b, 128 bits)."""
    return hashlib.blake2b(data, digest_size=16).digest()


@dataclass(frozen=True)
class VerdictKey:
    """What a cached verdict was judged under."""

    digest: bytes
    model: str
    policy: Policy
    banks_revision: int
    video: VideoOptions | None = None
    """A video's sampling as the request gave it (None: the server's)."""


class VerdictCache:
    """At most ``entries`` judgements by :class:`VerdictKey`, least recently used dropped
    first; 0 keeps none. Thread-safe."""

    def __init__(self, entries: int = DEFAULT_ENTRIES) -> None:
        if entries < 0:
            raise ValueError(f"the verdict cache holds 0 or more entries, not {entries}")
        self.entries = entries
        self._kept: OrderedDict[VerdictKey, Judgement] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._kept)

    def get(self, key: VerdictKey) -> Judgement | None:
        """The judgement kept under ``key``, or None."""
        with self._lock:
            judgement = self._kept.get(key)
            if judgement is not None:
                self._kept.move_to_end(key)
            return judgement

    def put(self, key: VerdictKey, judgement: Judgement) -> None:
        """Keep ``judgement`` under ``key``, dropping the least recently used beyond the bound."""
        if not self.entries:
            return
        with self._lock:
            self._kept[key] = judgement
            self._kept.move_to_end(key)
            while len(self._kept) > self.entries:
                self._kept.popitem(last=False)
