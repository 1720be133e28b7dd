"""`nsfwd calibrate DIR`: read the layout, classify once, calibrate, print, write the files.

Exit status: 0 when at least one policy was calibrated; 1 when no image could be classified or
no policy could be calibrated (an empty class); 2 for a refused layout or bad options.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from nsfwd.calibrate.calibration import calibrate, relative, score_images
from nsfwd.calibrate.dataset import LayoutError, find_labelled
from nsfwd.calibrate.metrics import Target
from nsfwd.calibrate.summary import format_summary
from nsfwd.verdict import Policy, PolicyName

if TYPE_CHECKING:
    from rich.progress import Progress

    from nsfwd.models.classifier import Classifier
    from nsfwd.settings import Settings

PROGRAM = "nsfwd calibrate"


@dataclass(frozen=True)
class CalibrateOptions:
    """What the command line asked for."""

    root: Path
    policy: str = "all"
    """A policy's name, or ``all``."""
    target_precision: float | None = None
    target_recall: float | None = None
    report: Path | None = None
    json: Path | None = None
    batch_size: int | None = None
    workers: int | None = None
    decode: str = "auto"
    progress: bool = True

    @property
    def policies(self) -> list[PolicyName]:
        """The policies to calibrate."""
        names: tuple[PolicyName, ...] = get_args(PolicyName)
        return [name for name in names if self.policy in (name, "all")]

    def target(self) -> Target | None:
        """The target these options set; ValueError for one out of range."""
        if self.target_precision is not None:
            return Target("precision", self.target_precision)
        if self.target_recall is not None:
            return Target("recall", self.target_recall)
        return None


def run_calibrate(
    options: CalibrateOptions,
    settings: Settings,
    load: Callable[[], Classifier],
    progress: Callable[..., Progress],
) -> int:
    """Run the command; returns the exit status. ``load`` gives the classifier the settings
    name; ``progress(show=...)`` a progress bar on stderr."""
    from nsfwd.models.tensor_decode import resolve_decode

    try:
        target = options.target()
        labelled = find_labelled(options.root)
    except (LayoutError, ValueError) as exc:
        return _fail(str(exc), 2)
    if options.report is not None and importlib.util.find_spec("matplotlib") is None:
        return _fail("--report draws its plots with matplotlib: pip install 'nsfwd[calibrate]'", 2)
    if not labelled.images:
        return _fail(f"no image files in the class folders under {options.root}", 1)
    classifier = load()
    for name in options.policies:
        Policy(name).check(classifier.labels)
    decode = resolve_decode(options.decode, classifier)
    batch_size = options.batch_size or classifier.batch_size
    if classifier.runner is not None:
        classifier.warm_up(batch_size, buckets=[batch_size])
    bar = progress(show=options.progress)
    with bar:
        task = bar.add_task("classifying", total=len(labelled.images))
        images, skipped = score_images(
            classifier,
            labelled,
            options.policies,
            batch_size=batch_size,
            workers=options.workers,
            decode=decode,
            limits=settings.image_limits,
            on_result=lambda _: bar.advance(task),
        )
    for result in skipped:
        print(
            f"{PROGRAM}: skipped {relative(result.path, labelled.root)}: {result.error}",
            file=sys.stderr,
        )
    if not images:
        return _fail("no image could be classified", 1)
    calibration = calibrate(
        classifier.name, labelled, images, skipped, policies=options.policies, target=target
    )
    print(format_summary(calibration))
    if options.json is not None:
        options.json.write_text(json.dumps(calibration.to_json(), indent=2) + "\n")
        print(f"{PROGRAM}: wrote {options.json}", file=sys.stderr)
    if options.report is not None:
        from nsfwd.calibrate.report import write_report

        write_report(calibration, options.report, settings.image_limits)
        print(f"{PROGRAM}: wrote {options.report}", file=sys.stderr)
    if not calibration.calibrated:
        return _fail(
            "no policy could be calibrated: each needs images on both sides of its truth", 1
        )
    return 0


def _fail(message: str, status: int) -> int:
    print(f"{PROGRAM}: {message}", file=sys.stderr)
    return status
