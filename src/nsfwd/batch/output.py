"""Writers for `nsfwd classify` records: JSON lines or CSV on a text stream, or an output file
(``--output``: JSON lines, CSV or a Parquet folder) that ``--resume`` can read back."""

from __future__ import annotations

import csv
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

if TYPE_CHECKING:
    import pyarrow as pa

from nsfwd.batch.pipeline import FileResult
from nsfwd.verdict import Policy, Region


def record(result: FileResult, policy: Policy) -> dict[str, Any]:
    """The JSON record for one file: labels and verdict, or the error; ``judged`` (which frame
    and backdrop the labels are of; a video's worst moment) where more than one picture of it
    was judged; ``regions`` for a detector; ``match`` where a bank of known images matched it
    (flagged whatever the score); a video's ``segments``."""
    if result.labels is None:
        return {"path": result.path, "error": result.error}
    score = policy.score(result.labels)
    regions = [Region.from_dict(found) for found in result.regions or ()]
    found = {
        "path": result.path,
        "labels": result.labels,
        "flagged": policy.flagged(result.labels, regions) or result.match is not None,
        "policy": policy.name,
        "score": score,
        "threshold": policy.threshold,
    }
    if result.judged is not None:
        found["judged"] = result.judged
    if result.regions is not None:
        found["regions"] = result.regions
    if result.match is not None:
        found["match"] = result.match
    if result.segments is not None:
        found["segments"] = result.segments
    return found


class Writer(Protocol):
    """Writes one record per file."""

    def write(self, result: FileResult) -> None:
        """Write the record for ``result``."""


class JsonLinesWriter:
    """One JSON object per line, flushed as it is written so pipes see progress."""

    def __init__(self, stream: TextIO, policy: Policy) -> None:
        self.stream = stream
        self.policy = policy

    def write(self, result: FileResult) -> None:
        """Write the record for ``result``."""
        self.stream.write(json.dumps(record(result, self.policy)) + "\n")
        self.stream.flush()


class CsvWriter:
    """A header, then a row per file: path, one column per label, score, flagged, policy, error."""

    def __init__(
        self, stream: TextIO, policy: Policy, labels: tuple[str, ...], *, header: bool = True
    ) -> None:
        self.policy = policy
        self.labels = labels
        self.stream = stream
        self.writer = csv.writer(stream, lineterminator="\n")
        if header:  # not when adding to a file that has one (--resume)
            self.writer.writerow(["path", *labels, "score", "flagged", "policy", "error"])

    def write(self, result: FileResult) -> None:
        """Write the row for ``result``."""
        rec = record(result, self.policy)
        if result.labels is None:
            row = [rec["path"], *([""] * len(self.labels)), "", "", "", rec["error"]]
        else:
            probs = [f"{result.labels[label]:.6g}" for label in self.labels]
            verdict = "true" if rec["flagged"] else "false"
            row = [rec["path"], *probs, f"{rec['score']:.6g}", verdict, self.policy.name, ""]
        self.writer.writerow(row)
        self.stream.flush()


OUTPUT_FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
"""``--output`` suffixes and the format each writes."""

PARQUET_ROWS_PER_FILE = 10_000
"""Records per Parquet part file: each is written whole, under a hidden name renamed into place,
so an interrupted run leaves only complete parts for ``--resume`` to read."""


def output_format(path: str | os.PathLike[str]) -> str:
    """``jsonl``, ``csv`` or ``parquet`` for an ``--output`` path; ValueError for another suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(f"--output takes a .jsonl, .csv or .parquet path, not {os.fspath(path)!r}")
    return OUTPUT_FORMATS[suffix]


class ParquetWriter:
    """Records as rows of Parquet part files in a folder (one dataset for
    ``pyarrow.parquet.read_table``): path, labels (a struct of the label probabilities), score,
    flagged, policy, error. Call :meth:`close` to write the last part."""

    def __init__(
        self,
        folder: Path,
        policy: Policy,
        labels: tuple[str, ...],
        rows_per_file: int = PARQUET_ROWS_PER_FILE,
    ) -> None:
        pa = _pyarrow()
        self.folder = folder
        self.policy = policy
        self.labels = labels
        self.rows_per_file = rows_per_file
        self.schema = parquet_schema(labels)
        self._rows: list[dict[str, Any]] = []
        self._run = uuid.uuid4().hex[:12]
        self._parts = 0
        self._pa = pa
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, result: FileResult) -> None:
        """Buffer the row for ``result``; a full part is written out."""
        rec = record(result, self.policy)
        self._rows.append(
            {
                "path": rec["path"],
                "labels": rec.get("labels"),
                "score": rec.get("score"),
                "flagged": rec.get("flagged"),
                "policy": rec.get("policy"),
                "error": rec.get("error"),
            }
        )
        if len(self._rows) >= self.rows_per_file:
            self._flush()

    def close(self) -> None:
        """Write the records still buffered."""
        if self._rows:
            self._flush()

    def _flush(self) -> None:
        pq = self._pa.parquet
        table = self._pa.Table.from_pylist(self._rows, schema=self.schema)
        name = f"part-{self._run}-{self._parts:05d}.parquet"
        hidden = self.folder / f".{name}.tmp"  # pyarrow's dataset discovery skips dot files
        pq.write_table(table, hidden)
        hidden.replace(self.folder / name)
        self._parts += 1
        self._rows = []


def parquet_schema(labels: tuple[str, ...]) -> pa.Schema:
    """The Parquet records' columns for a model with these labels."""
    pa = _pyarrow()

    return pa.schema(
        [
            ("path", pa.string()),
            ("labels", pa.struct([(label, pa.float64()) for label in labels])),
            ("score", pa.float64()),
            ("flagged", pa.bool_()),
            ("policy", pa.string()),
            ("error", pa.string()),
        ]
    )


@contextmanager
def open_output(
    path: Path, policy: Policy, labels: tuple[str, ...], *, resume: bool
) -> Iterator[Writer]:
    """A writer of records into ``path`` (its format from the suffix), added to what is there when
    ``resume``. Call :func:`recorded_paths` first: it refuses an output that exists without
    ``resume``, and trims a line an interrupted run left half written."""
    fmt = output_format(path)
    if fmt == "parquet":
        writer = ParquetWriter(path, policy, labels)
        try:
            yield writer
        finally:
            writer.close()
        return
    adding = resume and path.exists() and path.stat().st_size > 0
    with path.open("a" if adding else "w", encoding="utf-8", newline="") as stream:
        if fmt == "csv":
            yield CsvWriter(stream, policy, labels, header=not adding)
        else:
            yield JsonLinesWriter(stream, policy)


def recorded_paths(path: Path, *, resume: bool) -> set[str]:
    """The paths already recorded in ``path``, the inputs ``--resume`` skips (none when it does
    not exist). ValueError when it exists and ``resume`` is off: a finished or interrupted run is
    not overwritten by accident."""
    fmt = output_format(path)
    if not path.exists():
        return set()
    if not resume:
        raise ValueError(
            f"{path} exists: pass --resume to classify only the inputs it lacks, or remove it"
        )
    if fmt == "parquet":
        return _parquet_paths(path)
    _trim_partial_line(path)
    with path.open(encoding="utf-8", newline="") as stream:
        if fmt == "csv":
            rows = csv.reader(stream)
            next(rows, None)  # the header
            return {row[0] for row in rows if row}
        return {json.loads(line)["path"] for line in stream if line.strip()}


def _pyarrow() -> Any:
    """pyarrow, or a ValueError that says how to install it."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as exc:
        raise ValueError(
            "Parquet output needs pyarrow: pip install 'nsfwd[ray]' (or pyarrow)"
        ) from exc
    return pyarrow


def _parquet_paths(path: Path) -> set[str]:
    pq = _pyarrow().parquet

    if path.is_dir() and not any(path.glob("*.parquet")):
        return set()
    table = pq.read_table(path, columns=["path"])
    return {str(item) for item in table.column("path").to_pylist()}


def _trim_partial_line(path: Path) -> None:
    """Cut a last line without its newline: a record an interrupted run was writing."""
    with path.open("rb+") as file:
        data = file.read()
        if data and not data.endswith(b"\n"):
            file.truncate(data.rfind(b"\n") + 1)
