"""A JPEG's marker structure, read before decoding, so that files whose decoding costs far more
than their size suggests are refused unread.

Decoding a progressive JPEG costs work for every scan over every block of the image, whatever
the scan holds: a scan that refines nothing is a dozen bytes and still walks all the blocks, so
a file of a few hundred kilobytes that repeats one scan 20,000 times keeps a decoder busy for a
minute. Pillow's JPEG parser also reads the bytes before the first scan one at a time in Python,
so megabytes of fill bytes (0xFF padding before a marker), stray bytes between segments or tiny
segments cost seconds before libjpeg sees a pixel.

:func:`read_structure` walks the segments as libjpeg does (fill bytes skipped, stray bytes
between segments skipped, entropy-coded data skipped up to the next marker that is not a
restart marker or a stuffed zero) and counts what costs work; :class:`JpegLimits` says how much
is plausible. Real files have about 10 scans (libjpeg's default progression for colour), a few
dozen segments and no fill bytes; the limits are ten times that or more.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = ["JpegLimits", "JpegStructure", "read_structure"]

_SOS: Final = 0xDA
_EOI: Final = 0xD9
# Markers that stand alone, without a length: TEM, RST0..RST7 and SOI.
_STANDALONE: Final = frozenset({0x01, *range(0xD0, 0xD9)})
# The last 0xFF before a marker that ends a scan's entropy-coded data: one followed by a byte
# that is not a stuffed zero, a restart marker or another (fill) 0xFF. No quantifier, so the
# search runs at C speed with no backtracking, whatever the data.
_SCAN_END: Final = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")
_FF_RUN: Final = re.compile(rb"\xff+")


@dataclass(frozen=True)
class JpegLimits:
    """How much structure a JPEG may have before it is refused unread."""

    max_scans: int = 100
    """Start-of-scan segments. libjpeg's progressive encoding writes 10 for colour, 6 for grey;
    optimisers that search for smaller scan scripts stay near that. Each extra scan over a
    2048x2048 image costs about as much as a fifth of decoding a baseline one."""
    max_segments: int = 1000
    """Marker segments of any kind (a 10 MB ICC profile in 64 KiB chunks is 160)."""
    max_fill_run: int = 256
    """0xFF fill bytes in a row before one marker (encoders write none, or a few)."""
    max_stray_bytes: int = 65536
    """Bytes between segments that belong to none (libjpeg and Pillow skip them; Pillow one at
    a time, before the first scan). Damage that makes a segment's length wrong lands the walk in
    other data, which reads as stray bytes, so this is loose: such files fail to decode anyway."""


@dataclass(frozen=True)
class JpegStructure:
    """What :func:`read_structure` counted, as far as it read."""

    scans: int
    """Start-of-scan segments."""
    segments: int
    """Marker segments, scans and standalone markers included, end-of-image excluded."""
    longest_fill_run: int
    """The longest run of fill bytes seen before a marker, or at least the limit plus one when
    one inside entropy-coded data is over the limit."""
    stray_bytes: int
    """Bytes between segments that are neither markers nor fill."""
    ended: bool
    """Whether an end-of-image marker was reached (if not, the data is truncated)."""
    excess: str | None
    """What is over :class:`JpegLimits`, in words for an API client; ``None`` when nothing is.
    The walk stops at the first excess, so the counts are then partial."""


def read_structure(data: bytes, limits: JpegLimits = JpegLimits()) -> JpegStructure:
    """Walk the segments of ``data`` (a JPEG: it starts with SOI) up to its end-of-image marker,
    the end of the data, or the first count over ``limits``; never decodes, reads each byte at
    most twice, and raises nothing for any input."""
    return _Walk(data, limits).run()


class _Walk:
    """One walk over one file's segments; its counts become a :class:`JpegStructure`."""

    def __init__(self, data: bytes, limits: JpegLimits) -> None:
        self.data = data
        self.limits = limits
        self.scans = 0
        self.segments = 0
        self.longest_fill_run = 0
        self.stray_bytes = 0
        self.ended = False
        self.excess: str | None = None

    def run(self) -> JpegStructure:
        pos: int | None = 2  # after SOI
        while pos is not None and self.excess is None and not self.ended:
            pos = self._next_segment(pos)
        return JpegStructure(
            self.scans,
            self.segments,
            self.longest_fill_run,
            self.stray_bytes,
            self.ended,
            self.excess,
        )

    def _next_segment(self, pos: int) -> int | None:
        """Read the marker at or after ``pos`` and its segment; where to go on, or ``None`` at
        the end of the data."""
        data = self.data
        start = data.find(b"\xff", pos)
        if start < 0:
            self._stray(len(data) - pos)
            return None
        self._stray(start - pos)
        run = _FF_RUN.match(data, start)
        assert run is not None  # data[start] is 0xFF
        run_end = run.end()
        self._fill(run_end - start - 1, start)
        if run_end >= len(data) or self.excess is not None:
            return None
        marker = data[run_end]
        after = run_end + 1
        if marker == 0x00:  # a stuffed zero outside entropy-coded data: garbage
            self._stray(2)
            return after
        if marker == _EOI:
            self.ended = True
            return None
        self._segment(marker)
        if marker in _STANDALONE:
            return after
        if after + 2 > len(data):
            return None
        length = int.from_bytes(data[after : after + 2], "big")
        if length < 2:  # malformed: libjpeg refuses it, so the decoder will
            return None
        end = after + length
        return self._skip_entropy_data(end) if marker == _SOS else end

    def _skip_entropy_data(self, pos: int) -> int | None:
        """Where the fill bytes and marker that end the entropy-coded data from ``pos`` start;
        ``None`` when the data ends first."""
        data = self.data
        found = _SCAN_END.search(data, pos)
        end = len(data) if found is None else found.start()
        # Fill bytes anywhere in the data (before a restart marker or a stuffed zero too) cost
        # little, but padding this long is an attacker's, wherever it is.
        too_long = b"\xff" * (self.limits.max_fill_run + 2)
        if (at := data.find(too_long, pos, end + 1)) >= 0:
            self._fill(self.limits.max_fill_run + 1, at)
            return None
        if found is None:
            return None
        while end > pos and data[end - 1] == 0xFF:  # back to the first fill byte
            end -= 1
        return end

    def _segment(self, marker: int) -> None:
        self.segments += 1
        if marker == _SOS:
            self.scans += 1
            if self.scans > self.limits.max_scans:
                self.excess = (
                    f"it has more than {self.limits.max_scans} scans (start-of-scan markers); "
                    "real progressive JPEGs have about 10, and each one costs a pass over the "
                    "whole image"
                )
        if self.segments > self.limits.max_segments and self.excess is None:
            self.excess = (
                f"it has more than {self.limits.max_segments} marker segments; real JPEGs "
                "have a few dozen"
            )

    def _fill(self, count: int, at: int) -> None:
        self.longest_fill_run = max(self.longest_fill_run, count)
        if count > self.limits.max_fill_run and self.excess is None:
            self.excess = (
                f"it has a run of more than {self.limits.max_fill_run} fill bytes (0xFF "
                f"padding) at byte {at}; encoders write none or a few"
            )

    def _stray(self, count: int) -> None:
        self.stray_bytes += count
        if self.stray_bytes > self.limits.max_stray_bytes and self.excess is None:
            self.excess = (
                f"it has more than {self.limits.max_stray_bytes} stray bytes between its "
                "marker segments"
            )
