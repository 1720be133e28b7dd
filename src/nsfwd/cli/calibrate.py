"""``nsfwd calibrate``: a policy's threshold from the user's own labelled images."""

from __future__ import annotations

import argparse
from pathlib import Path

from nsfwd.cli.options import (
    Commands,
    add_model_options,
    add_pipeline_options,
    progress_bar,
    settings_for,
)
from nsfwd.verdict import POLICIES


def register(sub: Commands[argparse.ArgumentParser]) -> None:
    """Add ``calibrate`` and its options."""
    calibrate = sub.add_parser(
        "calibrate",
        help="choose a policy's threshold from your own labelled images",
        description="Classify the labelled images under DIR once (as `nsfwd classify` does), "
        "then per policy compute the precision/recall curve, ROC and AUC, and choose the "
        "threshold that meets --target-precision or --target-recall (else the best F1). DIR "
        "holds one subfolder per true class: safe/ (or neutral/, sfw/, normal/) and unsafe/ "
        "(or nsfw/), or Freepik's buckets neutral/, low/, medium/, high/ (each policy's truth "
        "then follows its definition: moderate should flag medium and high). An image is "
        "flagged when its score is above the threshold.",
    )
    calibrate.add_argument("dir", type=Path, metavar="DIR", help="the labelled images")
    add_model_options(calibrate)
    calibrate.add_argument(
        "--policy",
        dest="calibrate_policy",
        choices=[*POLICIES, "all"],
        default="all",
        help="the policy to calibrate (default: all three)",
    )
    target = calibrate.add_mutually_exclusive_group()
    target.add_argument(
        "--target-precision",
        type=float,
        metavar="P",
        help="choose the threshold with the highest recall whose precision is at least P",
    )
    target.add_argument(
        "--target-recall",
        type=float,
        metavar="R",
        help="choose the threshold with the highest precision whose recall is at least R",
    )
    calibrate.add_argument(
        "--report",
        type=Path,
        metavar="FILE.html",
        help="write a self-contained HTML report: curves, histograms, confusion matrices and "
        "the images nearest the threshold (needs `pip install 'nsfwd[calibrate]'`)",
    )
    calibrate.add_argument(
        "--json",
        type=Path,
        metavar="FILE.json",
        help="write everything, curve points and per-image scores included",
    )
    add_pipeline_options(calibrate)
    calibrate.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Classify the labelled images, calibrate, print and write what was asked for."""
    from nsfwd.calibrate.command import CalibrateOptions, run_calibrate
    from nsfwd.engine.build import load_classifier

    options = CalibrateOptions(
        root=args.dir,
        policy=args.calibrate_policy,
        target_precision=args.target_precision,
        target_recall=args.target_recall,
        report=args.report,
        json=args.json,
        batch_size=args.batch_size,
        workers=args.workers,
        decode=args.decode,
        progress=not args.no_progress,
    )
    settings = settings_for(args)
    return run_calibrate(options, settings, lambda: load_classifier(settings), progress_bar)
