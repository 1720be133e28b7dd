"""Options and helpers that several commands share: the model, compiling, policies, the batch
pipeline; settings and the policy from parsed arguments; the progress bar."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nsfwd.models.names import DECODE_MODES, DEFAULT_CALIBRATION_IMAGES
from nsfwd.models.routes import QUANTIZATIONS, RUNTIMES
from nsfwd.verdict import (
    DEFAULT_POLICY,
    DEFAULT_THRESHOLD,
    POLICIES,
    Policy,
    parse_region_thresholds,
)

if TYPE_CHECKING:
    from rich.progress import Progress

    from nsfwd.settings import Settings

DECODE_HELP = (
    "how files become the model's pixels: pil (Pillow decodes and resizes on the CPU), tensor "
    "(JPEGs decoded by TorchCodec onto the model's device, with nvjpeg on CUDA, and resized "
    "there with torch; other formats, CMYK JPEGs and JPEGs it refuses go the PIL way) or auto "
    "(tensor, which measured faster on the CPU too; pil for a model whose preprocessing it "
    "cannot reproduce)"
)
SETTINGS_OPTIONS = (
    "model",
    "revision",
    "device",
    "dtype",
    "runtime",
    "quantize",
    "calibration_dir",
    "calibration_images",
    "served_model_name",
    "host",
    "port",
    "http_workers",
    "compile_cache_dir",
    "policy",
    "threshold",
    "region_thresholds",
    "video_interval",
    "video_max_frames",
    "video_min_frames",
)
"""Arguments that override the ``NSFWD_*`` setting of the same name where a command has them."""


def positive(text: str) -> int:
    """An argument that must be a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_model_options(parser: argparse.ArgumentParser, *, several: bool = False) -> None:
    """``--model`` (repeatable with ``several``), ``--revision``, ``--device``, the route
    options (:func:`add_route_options`) and the compile options."""
    if several:
        parser.add_argument(
            "--model",
            action="append",
            metavar="[NAME=]ID_OR_DIR",
            help="a model to serve: Hub id, local folder, open-nsfw (built in, no Hub "
            "needed) or the nudenet detector (nsfwd[nudenet]), under NAME when given (else its "
            "id); repeat it to serve several, each on its own batcher, the first being the "
            "default (replaces $NSFWD_MODEL and $NSFWD_MODELS; without any: "
            "Freepik/nsfw_image_detector and open-nsfw, or open-nsfw alone when the former "
            "cannot be had)",
        )
    else:
        parser.add_argument(
            "--model",
            help="Hub id or local folder of a classifier or object detector, open-nsfw (built "
            "in, no Hub needed) or nudenet (the detector of nsfwd[nudenet]) (default: "
            "$NSFWD_MODEL or Freepik/nsfw_image_detector)",
        )
    parser.add_argument("--revision", help="Hub revision to load (branch, tag or commit)")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda (default: auto)")
    add_route_options(parser)
    add_compile_options(parser)


def add_route_options(parser: argparse.ArgumentParser) -> None:
    """``--dtype``, ``--runtime``, ``--quantize`` and the calibration options: how the model
    runs, where the start-up measurement would otherwise choose."""
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        help="inference precision; alone it keeps the torch runtime, float32 being the exact "
        "mode (default: bfloat16 on a GPU; on a CPU, what the start-up measurement chose)",
    )
    parser.add_argument(
        "--runtime",
        choices=list(RUNTIMES),
        help="torch, or openvino (OpenVINO's CPU plugin: pip install 'nsfwd[openvino]') "
        "(default: $NSFWD_RUNTIME; else, on a CPU, the fastest runtime and precision that "
        "agrees with the exact mode, measured on this machine at the first start and kept "
        "in $NSFWD_DATA_DIR; torch on a GPU)",
    )
    parser.add_argument(
        "--quantize",
        choices=list(QUANTIZATIONS),
        help="int8: the fast CPU mode, static int8 on OpenVINO calibrated by NNCF (slightly "
        "different results; default: none)",
    )
    parser.add_argument(
        "--calibration-dir",
        type=Path,
        metavar="DIR",
        help="with --quantize int8: calibrate on images from this folder, like the ones you "
        "serve (default: $NSFWD_CALIBRATION_DIR, else photo-like JPEGs made on the spot)",
    )
    parser.add_argument(
        "--calibration-images",
        type=positive,
        metavar="N",
        help="with --quantize int8: images to calibrate on, each one float32 forward pass, "
        f"once (default: $NSFWD_CALIBRATION_IMAGES, else {DEFAULT_CALIBRATION_IMAGES})",
    )


def add_compile_options(parser: argparse.ArgumentParser, *, negatable: bool = True) -> None:
    """``--compile`` (``--no-compile`` where ``negatable``) and ``--compile-cache-dir``."""
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction if negatable else "store_true",
        default=None,
        help="torch.compile the network for fixed batch sizes, padding each batch up to one: "
        "the first start spends a minute or more compiling, later ones load the graphs from "
        "the cache; the mode is $NSFWD_COMPILE when it names one, else 'on' (reduce-overhead, "
        "with CUDA graphs, on a GPU; inductor's default mode elsewhere)"
        + (" (default: $NSFWD_COMPILE, else off)" if negatable else " (default: off)"),
    )
    parser.add_argument(
        "--compile-cache-dir",
        type=Path,
        metavar="DIR",
        help="folder that keeps compiled graphs across runs, so later starts skip most of the "
        "compiling (default: $NSFWD_COMPILE_CACHE_DIR, else ~/.cache/nsfwd/torch-compile)",
    )


def add_policy_options(
    parser: argparse.ArgumentParser,
    applies_to: str = "",
    default: str | None = None,
    *,
    regions: bool = False,
) -> None:
    """``--policy`` and ``--threshold`` (and with ``regions``, ``--region-thresholds``);
    ``default`` words what applies without them (else ``$NSFWD_POLICY`` / ``$NSFWD_THRESHOLD``
    and the built-in defaults)."""
    parser.add_argument(
        "--policy",
        choices=list(POLICIES),
        default=None,
        help="strict flags P(high), moderate P(medium)+P(high), lenient P(low)+P(medium)+P(high)"
        f"{applies_to} (default: {default or f'$NSFWD_POLICY, else {DEFAULT_POLICY}'})",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="flag when the policy's score is above this; `nsfwd calibrate` chooses one from "
        "your labelled images (default: "
        f"{default or f'$NSFWD_THRESHOLD, else {DEFAULT_THRESHOLD}'})",
    )
    if not regions:
        return
    parser.add_argument(
        "--region-thresholds",
        metavar="LABEL=T,...",
        default=None,
        help="a detector's region labels that flag an image, each over its own threshold "
        "(empty: none); beside a classifier's score, either flags (default: "
        f"{default or '$NSFWD_REGION_THRESHOLDS, else NudeNet exposed explicit classes over 0.5'})",
    )


def add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    """The batch pipeline's options, shared by the commands that classify folders."""
    parser.add_argument(
        "--batch-size", type=int, default=None, help="images per batch (default: 2 CPU, 32 GPU)"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="decoding threads (default: CPU count)"
    )
    parser.add_argument(
        "--decode", choices=DECODE_MODES, default="auto", help=f"{DECODE_HELP} (default: auto)"
    )
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")


def positive_seconds(text: str) -> float:
    """An argument that must be a positive number of seconds."""
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def add_video_options(parser: argparse.ArgumentParser) -> None:
    """How videos are sampled and judged: ``--interval``, ``--max-frames``, ``--min-frames``
    and ``--stop-on-flag``."""
    parser.add_argument(
        "--interval",
        dest="video_interval",
        type=positive_seconds,
        metavar="SECONDS",
        help="judge a video's frame every this many seconds, the first and last always "
        "(default: $NSFWD_VIDEO_INTERVAL, else 1)",
    )
    parser.add_argument(
        "--max-frames",
        dest="video_max_frames",
        type=positive,
        metavar="N",
        help="judge at most N frames of a video, spread evenly over a longer one "
        "(default: $NSFWD_VIDEO_MAX_FRAMES, else 300)",
    )
    parser.add_argument(
        "--min-frames",
        dest="video_min_frames",
        type=positive,
        metavar="N",
        help="flagged samples in a row that make a flagged segment of a video (the first or "
        "last frame alone also does) (default: $NSFWD_VIDEO_MIN_FRAMES, else 2)",
    )
    parser.add_argument(
        "--stop-on-flag",
        action="store_true",
        help="stop decoding a video at its first flagged segment (its record then says "
        "it was not judged to the end)",
    )


def settings_for(args: argparse.Namespace) -> Settings:
    """The settings: ``NSFWD_*``, overridden by the arguments the command was given."""
    from nsfwd.settings import Settings

    overrides = {
        key: value for key in SETTINGS_OPTIONS if (value := getattr(args, key, None)) is not None
    }
    if isinstance(overrides.get("model"), list):  # serve: --model repeated
        first, *more = overrides["model"]
        overrides |= {"model": first, "models": more}  # replacing NSFWD_MODELS too
    settings = Settings(**overrides)
    compile_flag = getattr(args, "compile", None)
    if compile_flag is not None:
        settings = settings.model_copy(
            update={"compile": compile_choice(compile_flag, settings.compile)}
        )
    return settings


def compile_choice(flag: bool, configured: str) -> str:
    """``--compile``: the mode $NSFWD_COMPILE names, else ``on``; ``--no-compile``: off."""
    if not flag:
        return "off"
    return configured if configured != "off" else "on"


def policy_for(args: argparse.Namespace) -> Policy:
    """``--policy``, ``--threshold`` and ``--region-thresholds``, else ``$NSFWD_POLICY``,
    ``$NSFWD_THRESHOLD`` and ``$NSFWD_REGION_THRESHOLDS``. Raises ValueError for bad ones."""
    from nsfwd.settings import Settings

    settings = Settings()
    regions = getattr(args, "region_thresholds", None)
    return Policy(
        args.policy or settings.policy,
        settings.threshold if args.threshold is None else args.threshold,
        parse_region_thresholds(settings.region_thresholds if regions is None else regions),
    )


def progress_bar(*, show: bool) -> Progress:
    """A progress bar on stderr (disabled unless ``show``)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not show,
    )


Commands = argparse._SubParsersAction  # argparse names no public type for add_subparsers()
"""What ``add_subparsers`` returns: each command module's ``register`` adds its parser to it."""


def print_listing(
    rows: list[dict[str, Any]], header: list[str], cells: list[list[str]], *,
    as_json: bool, nothing: str,
) -> bool:  # fmt: skip
    """A ``list`` command's output: ``rows`` as a JSON array, or ``nothing`` (what to do) on
    stderr when there are none, or ``cells`` under ``header`` in columns. Whether a table was
    printed."""
    if as_json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(nothing, file=sys.stderr)
    else:
        print_table(header, cells)
        return True
    return False


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """Print ``rows`` under ``header`` in left-aligned columns (``nsfwd keys list``,
    ``nsfwd banks list``)."""
    table = [header, *rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )
