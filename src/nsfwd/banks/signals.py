"""Banks in and out as text: ThreatExchange's signal lines, which trust and safety tools read.

Export writes one line per hash, ``pdq <64 hexadecimal digits>``: what
``threatexchange hash photo FILE`` and ``threatexchange dataset -P -S`` print, and what
Hasher-Matcher-Actioner banks take as a ``pdq`` signal. Import reads:

* those lines (``pdq`` then the hash; a bare hash counts as ``pdq`` too), ignoring blank lines
  and ``#`` comments, and any words after the hash (``threatexchange dataset -P`` prints the
  collaboration and its opinion there);
* the CSV of ``threatexchange dataset -P --csv``, recognised by its header
  (``signal_type,signal_str,collab,category,tags``).

Signals of other types (``md5``, ``video_md5``, ``raw_text``...) are skipped and counted, so a
whole dataset can be fed in; a ``pdq`` line whose hash is malformed is an error naming its line.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from nsfwd.banks.pdq import HashFormatError, parse_hash

SIGNAL_TYPE: Final = "pdq"
CSV_HEADER: Final = ("signal_type", "signal_str")
"""The first columns of ``threatexchange dataset -P --csv``."""


class SignalFormatError(ValueError):
    """A line that is not a signal ThreatExchange writes."""


@dataclass
class Signals:
    """What an import read: the PDQ hashes, and how many signals of other types it skipped."""

    hashes: list[bytes] = field(default_factory=list)
    skipped: int = 0


def read_signals(lines: Iterable[str]) -> Signals:
    """The PDQ hashes in ThreatExchange text or CSV (see the module); :class:`SignalFormatError`
    names the first bad line."""
    signals = Signals()
    rows: Iterator[str] = iter(lines)
    first = next(rows, None)
    if first is None:
        return signals
    if tuple(part.strip() for part in first.split(",")[:2]) == CSV_HEADER:
        _read_csv(rows, signals)
        return signals
    for number, line in enumerate([first], start=1):
        _read_line(number, line, signals)
    for number, line in enumerate(rows, start=2):
        _read_line(number, line, signals)
    return signals


def _read_line(number: int, line: str, signals: Signals) -> None:
    words = line.split()
    if not words or words[0].startswith("#"):
        return
    if len(words[0]) == 64 and words[0].lower() != SIGNAL_TYPE:  # a bare hash
        words = [SIGNAL_TYPE, *words]
    if words[0].lower() != SIGNAL_TYPE:
        signals.skipped += 1
        return
    if len(words) < 2:
        raise SignalFormatError(f"line {number}: 'pdq' with no hash after it")
    try:
        signals.hashes.append(parse_hash(words[1]))
    except HashFormatError as exc:
        raise SignalFormatError(f"line {number}: {exc}") from None


def _read_csv(rows: Iterator[str], signals: Signals) -> None:
    for number, row in enumerate(csv.reader(rows), start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) < 2:
            raise SignalFormatError(f"line {number}: expected signal_type,signal_str,...")
        if row[0].strip().lower() != SIGNAL_TYPE:
            signals.skipped += 1
            continue
        try:
            signals.hashes.append(parse_hash(row[1]))
        except HashFormatError as exc:
            raise SignalFormatError(f"line {number}: {exc}") from None


def signal_line(value: bytes) -> str:
    """One hash as ThreatExchange prints it: ``pdq <hex>``."""
    return f"{SIGNAL_TYPE} {value.hex()}"
