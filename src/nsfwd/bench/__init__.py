"""`nsfwd bench`: measure the model, the classify pipeline and the server on this machine, each
suite optional, against Freepik's package in the same run when asked (:func:`run_bench`).

Without ``--model`` a random-weight checkpoint of ``--arch`` is written first (same compute).
README.md's "Benchmarks" lists the suites and options; BENCHMARKS.md holds the figures.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from nsfwd.bench.images import folder_images, make_jpegs, photographs
from nsfwd.bench.parity import EXACT, bench_parity, describe, exact_labels
from nsfwd.bench.report import (
    SUITES,
    BenchConfig,
    BenchReport,
    format_report,
    machine_info,
    reference_dtypes,
)
from nsfwd.bench.server import bench_server
from nsfwd.bench.suites import (
    bench_model,
    bench_pipeline,
    bench_reference,
    median_run,
    timed,
    warm_up,
)
from nsfwd.engine.build import load_classifier
from nsfwd.models.classifier import Classifier
from nsfwd.models.compiled import CACHE_ENV
from nsfwd.models.cpu import computes_natively
from nsfwd.models.openvino_runtime import available as openvino_available
from nsfwd.models.routes import INT8, Route, candidate_routes
from nsfwd.models.tensor_decode import resolve_decode

__all__ = [
    "SUITES",
    "BenchConfig",
    "BenchReport",
    "bench_model",
    "bench_pipeline",
    "bench_reference",
    "bench_server",
    "format_report",
    "make_jpegs",
    "run_bench",
    "timed",
]


def prepare_model(cfg: BenchConfig, workdir: Path) -> str:
    """The model to measure: the one given, or a random-weight ``cfg.arch`` written now."""
    if cfg.model:
        return cfg.model
    from nsfwd.models.synthetic import write_timm_checkpoint

    folder = workdir / cfg.arch
    write_timm_checkpoint(folder, arch=cfg.arch, style="timm_wrapper", dtype=torch.bfloat16)
    return str(folder)


def _parity(
    cfg: BenchConfig,
    model: str,
    classifier: Classifier,
    workdir: Path,
    batch_size: int,
    *,
    routes: dict[Route, Classifier],
) -> dict[str, Any]:
    """The parity suite for every decode path that is not the exact mode itself
    (``parity``, or ``parity_error``, why none), and for each compared route on the first
    decode path (``route_parity``, by route)."""
    decodes = [
        decode
        for decode in dict.fromkeys(resolve_decode(d, classifier) for d in cfg.decode)
        if describe(classifier, decode) != EXACT
    ]
    if not decodes and not routes:
        raise ValueError("the mode under test is the exact mode: nothing to compare")
    photos = photographs(workdir / "photos", cfg.image_size)
    exact = exact_labels(model, photos)
    found: dict[str, Any] = {
        "parity": [bench_parity(classifier, exact, photos, batch_size, d) for d in decodes],
        "route_parity": {
            str(route): bench_parity(other, exact, photos, batch_size, cfg.decode[0])
            for route, other in routes.items()
        },
    }
    if not decodes:
        found["parity_error"] = "the mode under test is the exact mode: nothing to compare"
    return found


def _reference(
    cfg: BenchConfig,
    model: str,
    files: list[Path],
    device: torch.device,
    batch_size: int,
    *,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Freepik's package in each of :func:`reference_dtypes`: ``reference``, the runs, and if
    it could not run, ``reference_error``, why."""
    found: dict[str, Any] = {"reference": []}
    for dtype in reference_dtypes(cfg, device):
        log(f"reference: Freepik's package in {dtype} ...")
        try:
            found["reference"].append(bench_reference(model, files, device, dtype, batch_size))
        except Exception as exc:  # another package: keep what nsfwd's suites measured
            log(f"reference failed: {type(exc).__name__}: {exc}")
            found["reference_error"] = f"{type(exc).__name__}: {exc}"
            break
    return found


def compared_routes(cfg: BenchConfig, classifier: Classifier) -> list[Route]:
    """The routes ``--compare-reference`` measures beside the classifier under test:
    ``cfg.routes``, else torch and OpenVINO in fp32 and, where the CPU has native bf16, bf16,
    and int8 (OpenVINO's only where it is installed); less the one under test."""
    if classifier.device.type != "cpu" or classifier.loaded.style == "onnx":
        return []
    if cfg.routes is not None:
        return [route for route in cfg.routes if route != classifier.route]
    routes = candidate_routes(
        native_bf16=computes_natively(torch.bfloat16), openvino=openvino_available()
    )
    routes += [INT8] if openvino_available() else []
    return [route for route in routes if route != classifier.route]


def load_routes(
    cfg: BenchConfig, model: str, routes: list[Route], *, log: Callable[[str], None]
) -> dict[Route, Classifier]:
    """A classifier for each of ``routes`` that loads (one that cannot is logged and left
    out)."""
    loaded = {}
    for route in routes:
        log(f"routes: loading {route} ...")
        options = replace(cfg, runtime=route.runtime, dtype=route.dtype, quantize=route.quantize)
        try:
            loaded[route] = load_classifier(options, model)
        except (ImportError, ValueError, RuntimeError) as exc:
            log(f"routes: {route} cannot run here: {exc}")
    return loaded


def _rounds(
    cfg: BenchConfig,
    model: str,
    classifier: Classifier,
    files: list[Path],
    batch_size: int,
    *,
    routes: dict[Route, Classifier],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The pipeline suite per decode path, then per compared route (the first decode path),
    and the reference per dtype, alternating for ``cfg.rounds`` rounds; each figure is the
    median of its rounds (:func:`median_run`)."""
    pipeline: dict[str, list[dict[str, Any]]] = {}
    by_route: dict[Route, list[dict[str, Any]]] = {}
    reference: dict[str, list[dict[str, Any]]] = {}
    reference_error = None
    for round_ in range(cfg.rounds):
        shown = f" (round {round_ + 1} of {cfg.rounds})" if cfg.rounds > 1 else ""
        if "pipeline" in cfg.suites:
            for decode in cfg.decode:
                log(f"pipeline: {len(files)} images, decode {decode}{shown} ...")
                run = bench_pipeline(classifier, files, batch_size, decode)
                pipeline.setdefault(decode, []).append(run)
            for route, other in routes.items():
                log(f"pipeline: {len(files)} images, {route}{shown} ...")
                run = bench_pipeline(other, files, batch_size, cfg.decode[0])
                by_route.setdefault(route, []).append(run)
        if cfg.compare_reference and reference_error is None:
            subset = files[: cfg.reference_images]
            runs = _reference(cfg, model, subset, classifier.device, batch_size, log=log)
            reference_error = runs.get("reference_error")
            for run in runs["reference"]:
                reference.setdefault(run["dtype"], []).append(run)
    found: dict[str, Any] = {}
    if "pipeline" in cfg.suites:
        found["pipeline"] = [median_run(runs) for runs in pipeline.values()]
        found["routes"] = [
            {"route": str(route), **median_run(runs)} for route, runs in by_route.items()
        ]
    if cfg.compare_reference:
        found["reference"] = [median_run(runs) for runs in reference.values()]
    if reference_error is not None:
        found["reference_error"] = reference_error
    return found


def _config(cfg: BenchConfig, model: str) -> dict[str, Any]:
    config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items() if k != "out"}
    config.update(
        model=model if cfg.model else f"random {cfg.arch}",
        out=str(cfg.out),
        compile_cache_dir=os.environ.get(CACHE_ENV) if cfg.compile else None,
    )
    return config


def _video_suite(
    cfg: BenchConfig, classifier: Classifier, batch_size: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """The video suite (:mod:`nsfwd.bench.video`) on ``cfg.video`` or a generated clip."""
    from nsfwd.bench.video import bench_video, make_video

    video = cfg.video
    if video is None:
        width, height = cfg.video_size
        name = f"nsfwd-bench-{width}x{height}-{cfg.video_seconds:g}s.mp4"
        log(f"video: encoding a {width}x{height} clip of {cfg.video_seconds:g} s ...")
        video = make_video(Path(tempfile.gettempdir()) / name, cfg.video_size, cfg.video_seconds)
    log("video: decoding the sampled frames, judging them, then both together ...")
    return bench_video(classifier, video, batch_size)


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> BenchReport:
    """Run the configured suites and return (and optionally write) the report."""
    with tempfile.TemporaryDirectory(prefix="nsfwd-bench-") as tmp:
        workdir = Path(tmp)
        model = prepare_model(cfg, workdir)
        classifier = load_classifier(cfg, model)
        report = BenchReport(config=_config(cfg, model), machine=machine_info(classifier.device))
        report.machine["dtype"] = str(classifier.dtype).removeprefix("torch.")
        report.machine["route"] = str(classifier.route)
        report.machine["dtype_reason"] = classifier.dtype_reason
        routes = {}
        if cfg.compare_reference and {"pipeline", "parity"} & set(cfg.suites):
            routes = load_routes(cfg, model, compared_routes(cfg, classifier), log=log)
        if cfg.compare_reference:
            report.config["reference_dtypes"] = reference_dtypes(cfg, classifier.device)
        results = report.results
        batch_size = cfg.batch_size or classifier.batch_size
        if classifier.runner is not None and {"model", "pipeline", "parity"} & set(cfg.suites):
            log(f"{classifier.runner.name}: a network per batch size ...")
            results["compile"] = warm_up(classifier, [*cfg.batch_sizes, batch_size])
        for other in routes.values():
            if other.runner is not None:
                other.warm_up(batch_size, [batch_size])
        if cfg.images_dir:
            files = folder_images(cfg.images_dir, cfg.images)
        else:
            files = make_jpegs(workdir / "images", cfg.images, cfg.image_size)
        if "model" in cfg.suites:
            log("model: ready tensors through the network ...")
            results["model"] = bench_model(classifier, cfg.batch_sizes)
        results.update(_rounds(cfg, model, classifier, files, batch_size, routes=routes, log=log))
        if "parity" in cfg.suites:
            log("parity: the modes under test against the exact mode on photographs ...")
            try:
                results.update(_parity(cfg, model, classifier, workdir, batch_size, routes=routes))
            except (ImportError, ValueError) as exc:
                results["parity_error"] = str(exc)
        if "video" in cfg.suites:
            results["video"] = _video_suite(cfg, classifier, batch_size, log)
        server_route = classifier.route
        del classifier, routes  # the server suite loads its own copy in another process
        if "server" in cfg.suites:
            log(f"server: 1 client, then {cfg.concurrency} concurrent clients ...")
            try:
                results["server"] = bench_server(
                    model, files, cfg, batch_size, workdir, route=server_route
                )
            except RuntimeError as exc:  # keep what the other suites measured
                log(str(exc))
                results["server_error"] = str(exc)
    if cfg.out:
        cfg.out.write_text(json.dumps(asdict(report), indent=2) + "\n")
    return report
