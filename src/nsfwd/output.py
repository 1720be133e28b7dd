"""Writers for `nsfwd classify` records: JSON lines or CSV on a text stream."""

from __future__ import annotations

import csv
import json
from typing import Any, Protocol, TextIO

from nsfwd.pipeline import FileResult
from nsfwd.policies import Policy


def record(result: FileResult, policy: Policy) -> dict[str, Any]:
    """The JSON record for one file: labels and verdict, or the error."""
    if result.labels is None:
        return {"path": result.path, "error": result.error}
    score = policy.score(result.labels)
    return {
        "path": result.path,
        "labels": result.labels,
        "flagged": score > policy.threshold,
        "policy": policy.name,
        "score": score,
        "threshold": policy.threshold,
    }


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

    def __init__(self, stream: TextIO, policy: Policy, labels: tuple[str, ...]) -> None:
        self.policy = policy
        self.labels = labels
        self.stream = stream
        self.writer = csv.writer(stream, lineterminator="\n")
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
