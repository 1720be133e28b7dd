"""The report's plots, drawn by matplotlib as SVG: precision/recall, ROC and the score
histograms, each with the chosen threshold marked.

Figures are built with :class:`matplotlib.figure.Figure` directly, not pyplot, so no GUI
backend or global figure state is involved. Text is drawn as paths, so an SVG shows the same
everywhere without fonts.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from nsfwd.calibrate.calibration import PolicyCalibration, ScoredImage
from nsfwd.calibrate.metrics import Counts, OperatingPoint, roc_curve
from nsfwd.verdict import DEFAULT_THRESHOLD

SIZE = (4.6, 3.6)  # inches; at 72 dpi about 330x260 CSS pixels
CHOSEN = "#d62728"
DEFAULT = "#7f7f7f"
SAFE = "#1f77b4"
UNSAFE = "#ff7f0e"


def pr_curve(result: PolicyCalibration) -> str:
    """Precision against recall over every threshold, the chosen one and 0.5 marked."""
    fig, ax = _figure()
    recall = [p.counts.recall or 0.0 for p in result.points]
    precision = [p.counts.precision or 0.0 for p in result.points]
    ax.plot(recall, precision, drawstyle="steps-post", color=SAFE, linewidth=1.5)
    _mark(ax, result.choice.point if result.choice else None, "recall", "precision", CHOSEN)
    _mark_default(ax, result.at_default, "recall", "precision")
    positives = sum(result.truth) / max(1, len(result.truth))
    ax.axhline(positives, color=DEFAULT, linewidth=0.8, linestyle=":", label="flag everything")
    _frame(ax, "recall", "precision", f"{result.policy}: precision / recall")
    return _svg(fig)


def roc(result: PolicyCalibration) -> str:
    """True against false positive rate, the chosen threshold and 0.5 marked, AUC in the
    title."""
    fig, ax = _figure()
    fpr, tpr = roc_curve(result.points)
    ax.plot(fpr, tpr, color=SAFE, linewidth=1.5)
    ax.plot([0, 1], [0, 1], color=DEFAULT, linewidth=0.8, linestyle=":", label="chance")
    point = result.choice.point if result.choice else None
    _mark(ax, point, "false_positive_rate", "recall", CHOSEN)
    _mark_default(ax, result.at_default, "false_positive_rate", "recall")
    auc = "" if result.auc is None else f" (AUC {result.auc:.3f})"
    _frame(ax, "false positive rate", "true positive rate (recall)", f"{result.policy}: ROC{auc}")
    return _svg(fig)


def histogram(result: PolicyCalibration, images: Sequence[ScoredImage]) -> str:
    """The policy's scores per true class, with the chosen threshold and 0.5 as lines."""
    fig, ax = _figure()
    scores = np.asarray([image.scores[result.policy] for image in images])
    unsafe = np.asarray(result.truth, dtype=bool)
    bins = [i / 20 for i in range(21)]
    unsafe_name = " or ".join(result.unsafe_classes)
    ax.hist(scores[~unsafe], bins=bins, color=SAFE, alpha=0.6, label=f"not {unsafe_name}")
    ax.hist(scores[unsafe], bins=bins, color=UNSAFE, alpha=0.6, label=unsafe_name)
    if result.threshold is not None:
        ax.axvline(
            result.threshold, color=CHOSEN, linewidth=1.5, label=f"chosen {result.threshold!r}"
        )
    ax.axvline(DEFAULT_THRESHOLD, color=DEFAULT, linewidth=1, linestyle="--", label="0.5")
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"{result.policy} score")
    ax.set_ylabel("images")
    ax.set_title(f"{result.policy}: scores by true class")
    ax.legend(fontsize="small")
    return _svg(fig)


def _figure() -> tuple[Figure, Axes]:
    fig = Figure(figsize=SIZE, layout="constrained")
    return fig, fig.add_subplot()


def _mark(ax: Axes, point: OperatingPoint | None, x: str, y: str, colour: str) -> None:
    if point is None:
        return
    ax.plot(
        [getattr(point.counts, x) or 0.0],
        [getattr(point.counts, y) or 0.0],
        "o",
        color=colour,
        markersize=7,
        label=f"chosen {point.threshold!r}",
    )


def _mark_default(ax: Axes, counts: Counts, x: str, y: str) -> None:
    xv, yv = getattr(counts, x), getattr(counts, y)
    if xv is None or yv is None:  # nothing flagged at 0.5: no precision to mark
        return
    ax.plot([xv], [yv], "s", color=DEFAULT, markersize=6, label=f"{DEFAULT_THRESHOLD}")


def _frame(ax: Axes, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, linewidth=0.3)
    ax.legend(fontsize="small", loc="lower left")


def _svg(fig: Figure) -> str:
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "nsfwd-calibrate"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()
