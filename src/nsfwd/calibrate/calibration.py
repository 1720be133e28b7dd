"""Classify a labelled folder once, then calibrate each policy on its scores.

:func:`score_images` runs the same pipeline as `nsfwd classify` (so a score here is the score
`nsfwd classify` prints for the file) and scores every image under every policy;
:func:`calibrate` turns those scores and the folder's truth into a :class:`Calibration`: per
policy the operating points, the ROC AUC, the chosen threshold and the confusion matrices at it
and at the default 0.5. :meth:`Calibration.to_json` is what ``--json`` writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nsfwd.batch.pipeline import FileResult, classify_files
from nsfwd.calibrate.dataset import LabelledSet
from nsfwd.calibrate.metrics import (
    Choice,
    Counts,
    OperatingPoint,
    Target,
    choose,
    counts_at,
    operating_points,
    roc_auc,
)
from nsfwd.intake import ImageLimits
from nsfwd.models.classifier import Classifier
from nsfwd.verdict import DEFAULT_THRESHOLD, Labels, Policy, PolicyName


@dataclass(frozen=True)
class ScoredImage:
    """One classified image: its true class, the model's labels and every policy's score."""

    path: str
    label: str
    labels: Labels
    scores: dict[str, float]


@dataclass(frozen=True)
class PolicyCalibration:
    """What calibrating one policy gave, or why it could not be calibrated."""

    policy: PolicyName
    unsafe_classes: tuple[str, ...]
    """The classes this policy should flag."""
    truth: tuple[bool, ...]
    """Per scored image (in :attr:`Calibration.images` order): should this policy flag it."""
    points: tuple[OperatingPoint, ...]
    choice: Choice | None
    """None when the policy could not be calibrated (:attr:`problem` says why)."""
    at_default: Counts
    auc: float | None
    problem: str | None = None

    @property
    def threshold(self) -> float | None:
        """The chosen threshold, or None."""
        return None if self.choice is None else self.choice.point.threshold


@dataclass(frozen=True)
class Calibration:
    """Everything `nsfwd calibrate` found, for the summary, ``--json`` and ``--report``."""

    model: str
    labelled: LabelledSet
    target: Target | None
    images: tuple[ScoredImage, ...]
    skipped: tuple[FileResult, ...]
    """Files that could not be classified, each with its error."""
    policies: dict[str, PolicyCalibration]

    @property
    def calibrated(self) -> list[PolicyCalibration]:
        """The policies that could be calibrated."""
        return [result for result in self.policies.values() if result.choice is not None]

    def to_json(self) -> dict[str, Any]:
        """Everything, as JSON: per policy the choice, the counts at it and at 0.5 and the
        curve points; per image the labels and scores, so a notebook can redo it all."""
        return {
            "model": self.model,
            "dir": str(self.labelled.root),
            "layout": self.labelled.layout,
            "target": None if self.target is None else {self.target.metric: self.target.value},
            "flagged": "score > threshold",
            "counts": _class_counts(self),
            "skipped": [{"path": r.path, "error": r.error} for r in self.skipped],
            "policies": {name: _policy_json(result) for name, result in self.policies.items()},
            "images": [
                {"path": i.path, "class": i.label, "labels": i.labels, "scores": i.scores}
                for i in self.images
            ],
        }


def score_images(
    classifier: Classifier,
    labelled: LabelledSet,
    policies: Sequence[PolicyName],
    *,
    batch_size: int,
    workers: int | None = None,
    decode: str = "pil",
    limits: ImageLimits | None = None,
    on_result: Callable[[FileResult], None] | None = None,
) -> tuple[list[ScoredImage], list[FileResult]]:
    """Classify every image of ``labelled`` as `nsfwd classify` does, in the same order; the
    scored images and the files that could not be classified. ``on_result`` sees each file as
    it finishes (for a progress bar)."""
    label_of = {str(image.path): image.label for image in labelled.images}
    scorers = {name: Policy(name) for name in policies}
    results: Iterable[FileResult] = classify_files(
        classifier,
        [image.path for image in labelled.images],
        batch_size=batch_size,
        workers=workers,
        decode=decode,
        limits=limits,
    )
    scored, skipped = [], []
    for result in results:
        if on_result is not None:
            on_result(result)
        if result.labels is None:
            skipped.append(result)
            continue
        scores: dict[str, float] = {
            name: policy.score(result.labels) for name, policy in scorers.items()
        }
        scored.append(ScoredImage(result.path, label_of[result.path], result.labels, scores))
    return scored, skipped


def calibrate(
    model: str,
    labelled: LabelledSet,
    images: Sequence[ScoredImage],
    skipped: Sequence[FileResult],
    *,
    policies: Sequence[PolicyName],
    target: Target | None,
) -> Calibration:
    """Calibrate each of ``policies`` on the scored images (see :func:`calibrate_policy`)."""
    results: dict[str, PolicyCalibration] = {
        name: calibrate_policy(name, labelled.positive_classes(name), images, target)
        for name in policies
    }
    return Calibration(model, labelled, target, tuple(images), tuple(skipped), results)


def calibrate_policy(
    policy: PolicyName,
    unsafe_classes: tuple[str, ...],
    images: Sequence[ScoredImage],
    target: Target | None,
) -> PolicyCalibration:
    """The operating points of ``policy`` over ``images``, the one ``target`` picks (else the
    best F1), the ROC AUC, and the counts at the default threshold.

    A policy whose truth leaves one side empty (no image it should flag, or none it should
    pass) cannot be calibrated: precision or recall would be undefined; :attr:`problem` says
    which side is missing.
    """
    scores = [image.scores[policy] for image in images]
    truth = tuple(image.label in unsafe_classes for image in images)
    points = tuple(operating_points(scores, truth))
    at_default = counts_at(scores, truth, DEFAULT_THRESHOLD)
    problem = _missing_side(policy, unsafe_classes, truth)
    if problem is not None:
        return PolicyCalibration(
            policy, unsafe_classes, truth, points, None, at_default, None, problem
        )
    return PolicyCalibration(
        policy, unsafe_classes, truth, points, choose(points, target), at_default, roc_auc(points)
    )


def _missing_side(
    policy: PolicyName, unsafe_classes: tuple[str, ...], truth: Sequence[bool]
) -> str | None:
    flagged = " or ".join(unsafe_classes)
    if not any(truth):
        return (
            f"no image {policy} should flag: no {flagged} image was classified "
            "(its folder is missing or empty, or its files could not be read)"
        )
    if all(truth):
        return (
            f"no image {policy} should pass: every classified image is {flagged}, so "
            "there is nothing to tell false positives from"
        )
    return None


def usage(policy: str, threshold: float) -> str:
    """The one line that applies ``threshold`` under ``policy``: settings and options."""
    return (
        f"NSFWD_POLICY={policy} NSFWD_THRESHOLD={threshold!r} (read by nsfwd serve and nsfwd "
        f"classify), or --policy {policy} --threshold {threshold!r}"
    )


def _counts_json(counts: Counts) -> dict[str, Any]:
    return {
        "precision": counts.precision,
        "recall": counts.recall,
        "f1": counts.f1,
        "true_positives": counts.tp,
        "false_positives": counts.fp,
        "true_negatives": counts.tn,
        "false_negatives": counts.fn,
    }


def _policy_json(result: PolicyCalibration) -> dict[str, Any]:
    common: dict[str, Any] = {"unsafe_classes": list(result.unsafe_classes)}
    default = {"threshold": DEFAULT_THRESHOLD, **_counts_json(result.at_default)}
    if result.choice is None:
        return {"error": result.problem, **common, "default": default}
    point = result.choice.point
    return {
        "threshold": point.threshold,
        **_counts_json(point.counts),
        "chosen_by": result.choice.how,
        "target_met": result.choice.target_met,
        "auc": result.auc,
        "positives": point.counts.tp + point.counts.fn,
        "negatives": point.counts.fp + point.counts.tn,
        **common,
        "setting": {"NSFWD_POLICY": result.policy, "NSFWD_THRESHOLD": point.threshold},
        "use": usage(result.policy, point.threshold),
        "default": default,
        "curve": [
            {
                "threshold": p.threshold,
                "flags_from": p.upper,
                "precision": p.counts.precision,
                "recall": p.counts.recall,
                "false_positive_rate": p.counts.false_positive_rate,
                "true_positives": p.counts.tp,
                "false_positives": p.counts.fp,
            }
            for p in result.points
        ],
    }


def _class_counts(calibration: Calibration) -> dict[str, dict[str, int]]:
    found = calibration.labelled.counts()
    classified = dict.fromkeys(found, 0)
    for image in calibration.images:
        classified[image.label] += 1
    return {"found": found, "classified": classified}


def relative(path: str, root: Path) -> str:
    """``path`` relative to the calibration folder, for display."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path
