"""The text `nsfwd calibrate` prints: per policy the chosen threshold, what it catches and
misses, the same at 0.5, and the line that applies it."""

from __future__ import annotations

from nsfwd.calibrate.calibration import Calibration, PolicyCalibration, usage
from nsfwd.calibrate.metrics import Counts
from nsfwd.verdict import DEFAULT_THRESHOLD


def format_summary(calibration: Calibration) -> str:
    """The printed summary: a header about the data, then a block per policy."""
    counts = dict.fromkeys(calibration.labelled.classes, 0)
    for image in calibration.images:
        counts[image.label] += 1
    classified = len(calibration.images)
    per_class = ", ".join(f"{n} {name}" for name, n in counts.items())
    header = [
        f"calibrated {calibration.model} on {classified} images under "
        f"{calibration.labelled.root} ({calibration.labelled.layout} layout: {per_class})",
        "flagged means score > threshold",
    ]
    if calibration.skipped:
        header.append(
            f"skipped {_plural(len(calibration.skipped), 'file')} that could not be "
            "classified (listed above)"
        )
    blocks = ["\n".join(header)]
    blocks += [_policy_block(result) for result in calibration.policies.values()]
    return "\n\n".join(blocks)


def _policy_block(result: PolicyCalibration) -> str:
    if result.choice is None:
        return f"{result.policy}: cannot be calibrated: {result.problem}"
    point = result.choice.point
    unsafe = " or ".join(result.unsafe_classes)
    auc = "n/a" if result.auc is None else f"{result.auc:.3f}"
    lines = [
        f"{result.policy}: threshold {point.threshold!r} ({result.choice.how})",
        f"  at {point.threshold!r}: {_rates(point.counts)}, ROC AUC {auc}",
        f"    {_errors(point.counts, unsafe)}",
        f"  at {DEFAULT_THRESHOLD} (the default): {_rates(result.at_default)}",
        f"    {_errors(result.at_default, unsafe)}",
        f"  use it like this: {usage(result.policy, point.threshold)}",
    ]
    return "\n".join(lines)


def _rates(counts: Counts) -> str:
    precision = "n/a (nothing flagged)" if counts.precision is None else f"{counts.precision:.3f}"
    recall = "n/a" if counts.recall is None else f"{counts.recall:.3f}"
    return f"precision {precision}, recall {recall}, F1 {counts.f1:.3f}"


def _errors(counts: Counts, unsafe: str) -> str:
    positives, negatives = counts.tp + counts.fn, counts.fp + counts.tn
    return (
        f"{counts.tp} of {positives} {unsafe} images flagged; "
        f"{_plural(counts.fp, 'false positive')} (of {negatives} others), "
        f"{_plural(counts.fn, 'false negative')}"
    )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")
