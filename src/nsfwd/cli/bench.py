"""``nsfwd bench``: the model, the classify pipeline, parity and the server, measured here."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from nsfwd.cli.options import (
    Commands,
    add_compile_options,
    add_route_options,
    compile_choice,
    positive,
)
from nsfwd.models.names import DECODE_MODES
from nsfwd.models.routes import QUANTIZATIONS, RUNTIMES, Route

if TYPE_CHECKING:
    from nsfwd.bench import BenchConfig


def register(sub: Commands[argparse.ArgumentParser]) -> None:
    """Add ``bench`` and its options."""
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
    add_route_options(bench)
    add_compile_options(bench, negatable=False)
    bench.add_argument(
        "--suites",
        default="model,pipeline,parity,server",
        help="comma-separated, of model, pipeline, parity (the mode under test against fp32 on "
        "the CPU with Pillow decoding, on scikit-image's photographs), server, video (decoding a "
        "video's sampled frames beside judging them, and both together) "
        "(default: model,pipeline,parity,server)",
    )
    bench.add_argument(
        "--video",
        type=Path,
        help="the video suite's clip (default: a generated phone-like H.264 clip of "
        "--video-size and --video-seconds, about 10 Mbit/s, kept in the temp folder for reuse)",
    )
    bench.add_argument("--video-size", default="1920x1080", help="WxH of the generated clip")
    bench.add_argument(
        "--video-seconds", type=float, default=60.0, help="length of the generated clip"
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
        type=_decode_modes,
        default=["auto"],
        help="the pipeline and parity suites' decode paths, comma-separated, each as "
        "`nsfwd classify --decode` takes it: pil,tensor measures both in one run (default: auto)",
    )
    bench.add_argument("--image-size", default="1024x768", help="WxH of the JPEGs")
    bench.add_argument("--concurrency", type=int, default=32, help="server suite clients")
    bench.add_argument("--requests", type=int, default=64, help="server suite requests")
    _add_server_options(bench)
    bench.add_argument(
        "--compare-reference",
        action="store_true",
        help="also run Freepik's package, and on a CPU every other runtime and precision and "
        "the int8 mode, each as a ratio to the package's faster mode in the same run, with "
        "its agreement with the exact mode (parity suite)",
    )
    bench.add_argument(
        "--routes",
        type=_routes,
        help="with --compare-reference on a CPU: the routes measured beside the one under test, "
        "comma-separated RUNTIME:PRECISION (torch:float32, openvino:bfloat16, openvino:int8), "
        "or none (default: torch and openvino in float32, and bfloat16 where the CPU has "
        "native bf16, and openvino:int8; OpenVINO's only where it is installed)",
    )
    bench.add_argument(
        "--reference-dtypes",
        help="dtypes to run Freepik's package in, comma-separated (default: float32,bfloat16 "
        "on a CPU, the faster one being the yardstick; bfloat16 on a GPU)",
    )
    bench.add_argument(
        "--reference-images",
        type=int,
        default=8,
        help="images for each reference run (few on a CPU without native bf16, where the "
        "package's bf16 is emulated and takes several seconds an image)",
    )
    bench.add_argument(
        "--rounds",
        type=positive,
        default=1,
        help="run the pipeline suite and the reference this many times, alternating, and report "
        "each figure as the median of its rounds: on a noisy machine the drift then falls on "
        "both alike",
    )
    bench.add_argument("--json", type=Path, help="write the full report here")
    bench.set_defaults(run=run)


def _add_server_options(bench: argparse.ArgumentParser) -> None:
    """How the server suite runs its server and its clients."""
    bench.add_argument(
        "--http-workers",
        type=positive,
        default=1,
        help="server suite: HTTP worker processes in front of the inference process",
    )
    bench.add_argument(
        "--load-processes",
        type=positive,
        help="server suite: processes the concurrent clients run in (default: one per 16 "
        "clients, at most a quarter of the cores); one Python process cannot post much over "
        "a few hundred uploads a second",
    )
    bench.add_argument(
        "--ray-replicas",
        type=positive,
        help="server suite: serve through Ray Serve (`nsfwd serve --ray --replicas N`, a local "
        "Ray instance) instead of uvicorn alone",
    )


def _decode_modes(text: str) -> list[str]:
    modes = [part.strip() for part in text.split(",") if part.strip()]
    wrong = [mode for mode in modes if mode not in DECODE_MODES]
    if wrong or not modes:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(DECODE_MODES)}, got {text!r}"
        )
    return modes


def _size(option: str, text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT``; ValueError naming ``option`` otherwise."""
    width, _, height = text.partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise ValueError(f"{option} takes WIDTHxHEIGHT, such as 1024x768, not {text!r}")
    return int(width), int(height)


def _routes(text: str) -> list[Route]:
    if text.strip() == "none":
        return []
    routes = []
    for part in filter(None, (part.strip() for part in text.split(","))):
        runtime, _, precision = part.partition(":")
        route = (
            Route(runtime, "float32", precision)
            if precision in QUANTIZATIONS
            else Route(runtime, precision)
        )
        if runtime not in RUNTIMES or precision not in ("float32", "bfloat16", *QUANTIZATIONS):
            raise argparse.ArgumentTypeError(
                f"expected RUNTIME:PRECISION such as torch:float32 or openvino:int8, not {part!r}"
            )
        routes.append(route)
    return routes


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
    width, height = _size("--image-size", args.image_size)
    from nsfwd.settings import Settings

    settings = Settings()
    compile_mode, compile_cache_dir = None, None
    if args.compile:
        compile_mode = compile_choice(True, settings.compile)
        compile_cache_dir = args.compile_cache_dir or settings.compile_cache_dir
    return BenchConfig(
        model=args.model,
        arch=args.arch,
        device=args.device,
        dtype=args.dtype or settings.dtype,
        runtime=args.runtime or settings.runtime,
        quantize=args.quantize or settings.quantize,
        compile=compile_mode,
        compile_cache_dir=compile_cache_dir,
        calibration_dir=args.calibration_dir or settings.calibration_dir,
        calibration_images=args.calibration_images or settings.calibration_images,
        data_dir=settings.data_dir,
        suites=suites,
        batch_sizes=_ints(args.batch_sizes),
        images=args.images,
        images_dir=args.images_dir,
        decode=args.decode,
        image_size=(width, height),
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        requests=args.requests,
        http_workers=args.http_workers,
        load_processes=args.load_processes,
        ray_replicas=args.ray_replicas,
        compare_reference=args.compare_reference,
        routes=args.routes,
        reference_dtypes=(
            None
            if args.reference_dtypes is None
            else [d for d in args.reference_dtypes.split(",") if d]
        ),
        reference_images=args.reference_images,
        rounds=args.rounds,
        video=args.video,
        video_size=_size("--video-size", args.video_size),
        video_seconds=args.video_seconds,
        out=args.json,
    )


def run(args: argparse.Namespace) -> int:
    """Run the suites and print the report."""
    from nsfwd.bench import format_report, run_bench

    try:
        cfg = bench_config(args)
        report = run_bench(cfg, log=lambda message: print(message, file=sys.stderr))
    except ValueError as exc:  # arguments, or a model and mode that do not go together
        print(f"nsfwd bench: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0
