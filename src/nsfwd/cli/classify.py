"""``nsfwd classify``: one record per image or video (or per file that cannot be classified)."""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from nsfwd.cli.options import (
    Commands,
    add_model_options,
    add_pipeline_options,
    add_policy_options,
    add_video_options,
    policy_for,
    progress_bar,
    settings_for,
)

if TYPE_CHECKING:
    from nsfwd.banks.matcher import BankSnapshot
    from nsfwd.batch.output import Writer
    from nsfwd.settings import Settings
    from nsfwd.verdict import Policy

PROGRESS_MIN_FILES = 8
"""Show a progress bar from this many files on; fewer finish before a bar would help."""


def register(sub: Commands[argparse.ArgumentParser]) -> None:
    """Add ``classify`` and its options."""
    classify = sub.add_parser(
        "classify",
        help="classify image and video files and folders, one record per file on stdout",
        description="Classify images and videos (files, or folders searched recursively) and "
        "print one record per file: JSON lines with path, labels, score, flagged and policy (a "
        "video's also judged, with the time of its worst moment, and its flagged segments), or "
        "path and error for a file that cannot be classified. Exits 1 when nothing could be "
        "classified.",
    )
    classify.add_argument(
        "paths",
        nargs="*",  # one or more, checked after --ray gives back an input it took
        metavar="PATH",
        help="image or video files, or folders; with --ray also fsspec URLs (s3://bucket/prefix/, "
        "gs://...) and manifests (.txt of paths or URLs, .csv or .parquet with a path or url "
        "column)",
    )
    add_model_options(classify)
    classify.add_argument(
        "--format", choices=["jsonl", "csv"], default="jsonl", help="stdout's format"
    )
    classify.add_argument(
        "--output",
        type=Path,
        metavar="FILE",
        help="write the records here instead of stdout: FILE.jsonl, FILE.csv or FILE.parquet "
        "(a folder of Parquet files, one table for pyarrow.parquet.read_table)",
    )
    classify.add_argument(
        "--resume",
        action="store_true",
        help="with an --output that exists, classify only the inputs it has no record of, "
        "and add their records to it",
    )
    classify.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run as a Ray Data pipeline: without ADDRESS on a local Ray instance started for "
        "the run; `auto` joins the cluster in $RAY_ADDRESS or the one running here; "
        "ray://HOST:PORT connects a Ray client (needs `pip install 'nsfwd[ray]'`)",
    )
    classify.add_argument(
        "--no-banks",
        action="store_true",
        help="do not check the banks of known images (by default, where a job store exists, "
        "each picture is hashed and a banked one is flagged with its match, as the server does)",
    )
    add_policy_options(classify, regions=True)
    add_video_options(classify)
    add_pipeline_options(classify)
    classify.set_defaults(run=run, usage_error=classify.error)


def _banks(settings: Settings) -> BankSnapshot | None:
    """The job store's banks of known images, where a store exists (``NSFWD_DATABASE_URL``, or
    the SQLite file under ``NSFWD_DATA_DIR``: classify never makes one); None else, and when
    the store cannot be read (said on stderr)."""
    import asyncio

    from nsfwd.banks.matcher import BankMatcher
    from nsfwd.jobs import Store
    from nsfwd.jobs.database import DATABASE_FILE

    if not settings.database_url and not (Path(settings.data_dir) / DATABASE_FILE).is_file():
        return None

    async def load() -> BankSnapshot:
        async with Store.from_settings(settings) as store:
            return await BankMatcher(store.banks).snapshot()

    try:
        return asyncio.run(load())
    except Exception as exc:  # a store out of reach: classify on, without the banks
        print(f"nsfwd classify: cannot read the banks of known images ({exc}); classifying "
              "without them", file=sys.stderr)  # fmt: skip
        return None


def split_ray_address(args: argparse.Namespace) -> None:
    """``--ray PATH``: argparse took the first input for the optional ADDRESS; give it back."""
    if args.ray and not _is_ray_address(args.ray):
        args.paths.insert(0, args.ray)
        args.ray = ""


def _is_ray_address(text: str) -> bool:
    """``auto``, ``local``, ``ray://...`` or ``HOST:PORT``."""
    if text in ("auto", "local") or text.startswith("ray://"):
        return True
    host, sep, port = text.rpartition(":")
    return bool(sep and host and "/" not in host and port.isdigit())


def run(args: argparse.Namespace) -> int:
    """Classify the paths; 0 when at least one image was classified."""
    split_ray_address(args)
    if not args.paths:
        args.usage_error("the following arguments are required: PATH")
    try:
        policy = policy_for(args)
        done = _already_recorded(args)
    except ValueError as exc:
        print(f"nsfwd classify: {exc}", file=sys.stderr)
        return 2
    if args.ray is not None:
        return _classify_on_ray(args, policy, done)
    from nsfwd.batch.pipeline import VideoJob, classify_files
    from nsfwd.engine.build import load_served_model
    from nsfwd.intake.files import find_media
    from nsfwd.models.classifier import Classifier
    from nsfwd.models.tensor_decode import resolve_decode

    settings = settings_for(args)
    try:
        videos = VideoJob(
            settings.video_limits,
            replace(settings.video_options, stop_on_flag=args.stop_on_flag),
            settings.decode_timeout_s,
        )
    except ValueError as exc:
        print(f"nsfwd classify: {exc}", file=sys.stderr)
        return 2
    found = list(find_media(args.paths))
    paths = [path for path in found if str(path) not in done]
    if not paths:
        if found:
            print(f"nsfwd classify: every input is in {args.output} already", file=sys.stderr)
            return 0
        print("nsfwd classify: no image or video files under the given paths", file=sys.stderr)
        return 1
    banks = None if args.no_banks else _banks(settings)
    classifier = load_served_model(settings)
    policy.check(classifier.labels)
    decode = "pil"  # a detector's pictures keep their sizes, which the tensor path drops
    if isinstance(classifier, Classifier):
        decode = resolve_decode(args.decode, classifier)  # refuse `tensor` before any output
    stack = ExitStack()
    writer = _writer(args, stack, policy, classifier.labels)
    batch_size = args.batch_size or classifier.batch_size
    if isinstance(classifier, Classifier) and classifier.runner is not None:
        # One graph: every batch is batch_size images but the last, which is padded up to it.
        classifier.warm_up(batch_size, buckets=[batch_size])
    results = classify_files(
        classifier,
        paths,
        batch_size=batch_size,
        workers=args.workers,
        limits=settings.image_limits,
        decode=decode,
        policy=policy,
        banks=banks,
        videos=videos,
    )
    classified = 0
    progress = progress_bar(show=len(paths) >= PROGRESS_MIN_FILES and not args.no_progress)
    with stack, progress:
        task = progress.add_task("classifying", total=len(paths))
        for result in results:
            writer.write(result)
            classified += result.labels is not None
            progress.advance(task)
    if classified == 0:
        print("nsfwd classify: nothing could be classified", file=sys.stderr)
        return 1
    return 0


def _writer(
    args: argparse.Namespace, stack: ExitStack, policy: Policy, labels: tuple[str, ...]
) -> Writer:
    """Where the records go: ``--output``'s file, else stdout in ``--format``."""
    from nsfwd.batch.output import CsvWriter, JsonLinesWriter, open_output

    if args.output is not None:
        return stack.enter_context(open_output(args.output, policy, labels, resume=args.resume))
    if args.format == "csv":
        return CsvWriter(sys.stdout, policy, labels)
    return JsonLinesWriter(sys.stdout, policy)


def _already_recorded(args: argparse.Namespace) -> set[str]:
    """The inputs ``--resume`` skips: those ``--output`` has records of."""
    from nsfwd.batch.output import output_format, recorded_paths

    if args.output is None:
        if args.resume:
            raise ValueError("--resume needs --output: the file whose records it continues")
        return set()
    output_format(args.output)
    return recorded_paths(args.output, resume=args.resume)


def _classify_on_ray(args: argparse.Namespace, policy: Policy, done: set[str]) -> int:
    """``nsfwd classify --ray``: the same records, from a Ray Data pipeline."""
    from nsfwd.batch.pipeline import VideoJob
    from nsfwd.batch.ray_data import RayJob, RayUnavailableError

    if args.stop_on_flag:
        print("nsfwd classify: --stop-on-flag does not combine with --ray (the workers decode "
              "a video's frames ahead of the model)", file=sys.stderr)  # fmt: skip
        return 2
    settings = settings_for(args)
    banks = None if args.no_banks else _banks(settings)
    try:
        job = RayJob.start(
            args.paths,
            settings,
            address=args.ray or None,
            batch_size=args.batch_size,
            decode=args.decode,
            skip=done,
            progress=not args.no_progress,
            policy=policy,
            videos=VideoJob(
                settings.video_limits, settings.video_options, settings.decode_timeout_s
            ),
            banks=banks,
        )
    except RayUnavailableError as exc:
        print(f"nsfwd classify: {exc}", file=sys.stderr)
        return 2
    with job, ExitStack() as stack:
        try:
            labels = job.labels()
        except StopIteration:  # no records at all
            if done:
                print(f"nsfwd classify: every input is in {args.output} already", file=sys.stderr)
                return 0
            print("nsfwd classify: no image or video files under the given paths", file=sys.stderr)
            return 1
        policy.check(labels)
        writer = _writer(args, stack, policy, labels)
        for result in job.results():
            writer.write(result)
        stack.close()  # the output complete before the last line says so
        print(f"nsfwd classify: {job.summary.describe()}", file=sys.stderr)
    if job.summary.classified == 0:
        print("nsfwd classify: nothing could be classified", file=sys.stderr)
        return 1
    return 0
