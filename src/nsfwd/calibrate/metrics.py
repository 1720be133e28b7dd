"""Precision, recall, ROC and the threshold choice, for "flagged when score > threshold".

Every threshold in ``[a, b)``, where ``a`` and ``b`` are neighbouring distinct scores, flags
the same images: those scoring ``b`` or more. So the operating points are one per distinct
score (plus "flag everything" when the lowest score is above 0), each with the roundest
threshold inside its interval (0.4 rather than 0.41373), which flags exactly what the interval
does and leaves room on both sides for scores that land near it.

The curves are computed here with numpy rather than scikit-learn because scikit-learn's
``precision_recall_curve`` and ``roc_curve`` flag ``score >= threshold``: their thresholds would
be off by one distinct score from what nsfwd applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

TargetMetric = Literal["precision", "recall"]


@dataclass(frozen=True)
class Target:
    """What the chosen threshold must reach: a precision or a recall of at least ``value``."""

    metric: TargetMetric
    value: float

    def __post_init__(self) -> None:
        if not 0.0 < self.value <= 1.0:
            raise ValueError(
                f"a target {self.metric} must be above 0 and at most 1, not {self.value}"
            )

    def describe(self) -> str:
        """How the threshold is chosen under this target, e.g. "highest recall at precision
        >= 0.9"."""
        other = "recall" if self.metric == "precision" else "precision"
        return f"highest {other} at {self.metric} >= {self.value:g}"


@dataclass(frozen=True)
class Counts:
    """A confusion matrix: unsafe images flagged (tp) and missed (fn), safe ones flagged (fp)
    and passed (tn)."""

    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def precision(self) -> float | None:
        """Of the images flagged, the share that are unsafe; None when nothing is flagged."""
        flagged = self.tp + self.fp
        return self.tp / flagged if flagged else None

    @property
    def recall(self) -> float | None:
        """Of the unsafe images, the share flagged; None when there are none."""
        positives = self.tp + self.fn
        return self.tp / positives if positives else None

    @property
    def false_positive_rate(self) -> float | None:
        """Of the safe images, the share flagged; None when there are none."""
        negatives = self.fp + self.tn
        return self.fp / negatives if negatives else None

    @property
    def f1(self) -> float:
        """The harmonic mean of precision and recall (0 when either is 0 or undefined)."""
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn) if self.tp else 0.0


@dataclass(frozen=True)
class OperatingPoint:
    """One threshold and what it flags."""

    threshold: float
    """The roundest value in ``[lower, upper)``: any threshold there flags the same images."""
    lower: float
    """The highest score this threshold passes (0 when it flags everything)."""
    upper: float
    """The lowest score this threshold flags."""
    counts: Counts


@dataclass(frozen=True)
class Choice:
    """The chosen operating point, and how it was chosen."""

    point: OperatingPoint
    how: str
    """e.g. "highest recall at precision >= 0.9", or "best F1" with the reason."""
    target_met: bool | None
    """Whether the target was met; None without a target."""


Array = npt.NDArray[np.float64]


def counts_at(scores: Sequence[float], truth: Sequence[bool], threshold: float) -> Counts:
    """The confusion matrix when images scoring above ``threshold`` are flagged."""
    flagged = np.asarray(scores, dtype=np.float64) > threshold
    unsafe = np.asarray(truth, dtype=bool)
    return Counts(
        tp=int(np.sum(flagged & unsafe)),
        fp=int(np.sum(flagged & ~unsafe)),
        tn=int(np.sum(~flagged & ~unsafe)),
        fn=int(np.sum(~flagged & unsafe)),
    )


def operating_points(scores: Sequence[float], truth: Sequence[bool]) -> list[OperatingPoint]:
    """Every distinct way a threshold can flag these images, from the fewest flagged to all.

    The "flag nothing" point is left out (its precision is undefined), and so is "flag
    everything" when the lowest score is 0 (no threshold in [0, 1] flags a score of 0).
    """
    values = np.asarray(scores, dtype=np.float64)
    unsafe = np.asarray(truth, dtype=bool)
    if values.size == 0:
        return []
    order = np.argsort(-values, kind="stable")
    ranked, ranked_unsafe = values[order], unsafe[order]
    # The last index (in descending order) of each run of equal scores: flagging down to it
    # flags the whole run.
    ends = np.r_[np.flatnonzero(np.diff(ranked)), ranked.size - 1]
    tps = np.cumsum(ranked_unsafe)[ends]
    fps = ends + 1 - tps
    positives, negatives = int(unsafe.sum()), int((~unsafe).sum())
    points = []
    for end, tp, fp in zip(ends, tps, fps, strict=True):
        upper = float(ranked[end])
        lower = float(ranked[end + 1]) if end + 1 < ranked.size else 0.0
        if upper <= lower:  # the lowest score is 0: nothing in [0, 1] flags it
            continue
        counts = Counts(int(tp), int(fp), negatives - int(fp), positives - int(tp))
        points.append(OperatingPoint(round_threshold(lower, upper), lower, upper, counts))
    return points


def round_threshold(lower: float, upper: float) -> float:
    """The value in ``[lower, upper)`` with the fewest decimals, nearest the middle."""
    middle = lower + (upper - lower) / 2
    for digits in range(1, 18):
        candidate = round(middle, digits)
        if lower <= candidate < upper:
            return candidate
    return lower


def roc_auc(points: Sequence[OperatingPoint]) -> float | None:
    """The area under the ROC curve (ties count half); None without both classes."""
    if not points:
        return None
    last = points[-1].counts
    if last.tp + last.fn == 0 or last.fp + last.tn == 0:
        return None
    fpr, tpr = roc_curve(points)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # the trapezoid rule


def roc_curve(points: Sequence[OperatingPoint]) -> tuple[Array, Array]:
    """False and true positive rates from "flag nothing" (0, 0) through ``points``.

    Without the "flag everything" point (a lowest score of 0) the curve does not reach (1, 1);
    it is closed there, as flagging everything would.
    """
    fpr = [0.0] + [p.counts.false_positive_rate or 0.0 for p in points]
    tpr = [0.0] + [p.counts.recall or 0.0 for p in points]
    if fpr[-1] < 1.0 or tpr[-1] < 1.0:
        fpr.append(1.0)
        tpr.append(1.0)
    return np.asarray(fpr), np.asarray(tpr)


def choose(points: Sequence[OperatingPoint], target: Target | None) -> Choice:
    """The point that meets ``target`` best (highest recall at precision >= P, or highest
    precision at recall >= R), else the one with the best F1; ``points`` must not be empty.

    Ties go to the other metric, then to the higher threshold (fewer images flagged).
    """
    if not points:
        raise ValueError("no operating points to choose from")
    if target is not None:
        other: TargetMetric = "recall" if target.metric == "precision" else "precision"
        met = [p for p in points if _metric(p, target.metric) >= target.value]
        if met:
            best = max(
                met, key=lambda p: (_metric(p, other), _metric(p, target.metric), p.threshold)
            )
            return Choice(best, target.describe(), True)
    best = max(points, key=lambda p: (p.counts.f1, _metric(p, "precision"), p.threshold))
    if target is None:
        return Choice(best, "best F1", None)
    return Choice(best, f"best F1: no threshold reaches {target.metric} {target.value:g}", False)


def _metric(point: OperatingPoint, metric: TargetMetric) -> float:
    value = point.counts.precision if metric == "precision" else point.counts.recall
    return value or 0.0
