"""``nsfwd censor``: each image with the regions a detector found redacted, written to a folder."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nsfwd.cli.options import Commands, add_model_options, positive, settings_for
from nsfwd.models.names import NUDENET
from nsfwd.redact import DEFAULT_PADDING, DEFAULT_STYLE, STYLES
from nsfwd.verdict import DEFAULT_REGION_THRESHOLDS


def register(sub: Commands[argparse.ArgumentParser]) -> None:
    """Add ``censor`` and its options."""
    censor = sub.add_parser(
        "censor",
        help="write each image with the regions a detector finds redacted",
        description="Find regions with a detector (default: the built-in nudenet) and write a "
        "redacted copy of each image under --output with its input's file name: same format "
        "(every frame of an animation), same size, upright, metadata (EXIF, GPS, XMP) "
        "stripped. Prints one JSON line per input: path, output and the regions redacted, or "
        "path and error. Exits 1 when no image could be redacted.",
    )
    censor.add_argument("paths", nargs="+", metavar="IN", help="image files or folders")
    censor.add_argument(
        "--output",
        type=Path,
        required=True,
        metavar="DIR",
        help="the folder the redacted copies go to (created if missing)",
    )
    add_model_options(censor)
    censor.set_defaults(model=NUDENET)
    model = next(action for action in censor._actions if action.dest == "model")
    model.help = (
        f"the detector: {NUDENET} (built in, nsfwd[nudenet]), or a Hub id or folder of a "
        f"transformers object detector (default: {NUDENET})"
    )
    censor.add_argument(
        "--labels",
        metavar="L,...",
        default=None,
        help="the region labels to redact, comma-separated, or `all` (default: "
        f"{','.join(label for label, _ in DEFAULT_REGION_THRESHOLDS)})",
    )
    censor.add_argument(
        "--style",
        choices=STYLES,
        default=DEFAULT_STYLE,
        help="blur: coarse cells then a Gaussian of a cell's radius; pixelate: the cells; "
        "fill: black (default: %(default)s)",
    )
    censor.add_argument(
        "--padding",
        type=float,
        default=DEFAULT_PADDING,
        metavar="P",
        help="grow each box by P of its width and height on every side (default: %(default)s)",
    )
    censor.add_argument(
        "--batch-size", type=positive, default=None, help="pictures per model batch"
    )
    censor.set_defaults(run=run)


def labels_for(text: str | None) -> frozenset[str] | None:
    """``--labels``: the set named, None for ``all``, else the default explicit classes."""
    if text is None:
        return frozenset(label for label, _ in DEFAULT_REGION_THRESHOLDS)
    if text.strip().lower() == "all":
        return None
    labels = frozenset(filter(None, (label.strip() for label in text.split(","))))
    if not labels:
        raise ValueError("--labels names no label; give L,... or `all`")
    return labels


def run(args: argparse.Namespace) -> int:
    """Redact the images; 0 when at least one copy was written."""
    from nsfwd.batch.pipeline import classify_files
    from nsfwd.engine.build import load_served_model
    from nsfwd.intake import ImageError, read_image_file
    from nsfwd.intake.files import find_images
    from nsfwd.redact import Redaction, redact
    from nsfwd.verdict import Policy, Region

    redaction = Redaction(labels_for(args.labels), args.style, args.padding)
    settings = settings_for(args)
    paths = list(find_images(args.paths))
    if not paths:
        print("nsfwd censor: no image files found under the given paths", file=sys.stderr)
        return 1
    targets = _targets(paths, args.output)
    detector = load_served_model(settings)
    if detector.kind != "detector":
        raise ValueError(
            f"{detector.name} is a classifier: it says whether, not where; censor with a "
            f"detector, e.g. --model {NUDENET} (`pip install 'nsfwd[nudenet]'`)"
        )
    args.output.mkdir(parents=True, exist_ok=True)
    written = 0
    results = classify_files(
        detector,
        paths,
        batch_size=args.batch_size or detector.batch_size,
        limits=settings.image_limits,
        policy=Policy(regions=()),
    )
    for result in results:
        record: dict[str, object] = {"path": result.path}
        target = targets[result.path]
        if result.error is not None or isinstance(target, str):
            record["error"] = result.error or target
        else:
            regions = [Region.from_dict(found) for found in result.regions or ()]
            try:
                data = read_image_file(result.path, settings.image_limits)
                copy = redact(data, regions, redaction, settings.image_limits)
                target.write_bytes(copy.data)
            except (ImageError, OSError) as exc:
                record["error"] = str(exc)
            else:
                written += 1
                record["output"] = str(target)
                record["regions"] = [r.as_dict() for r in redaction.chosen(regions)]
        print(json.dumps(record), flush=True)
    if written == 0:
        print("nsfwd censor: no image could be redacted", file=sys.stderr)
        return 1
    return 0


def _targets(paths: list[Path], folder: Path) -> dict[str, Path | str]:
    """Where each input's copy goes: ``folder`` / its file name; or, for an input whose name an
    earlier one took or that is itself the target, why it gets none."""
    targets: dict[str, Path | str] = {}
    for path in paths:
        target = folder / path.name
        if target.resolve() == path.resolve():
            targets[str(path)] = "its copy would overwrite it; choose another --output"
        elif target in targets.values():
            targets[str(path)] = f"an earlier input's copy is {target} already"
        else:
            targets[str(path)] = target
    return targets
