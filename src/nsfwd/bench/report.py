"""What a benchmark is asked to measure, what it found, and the table it prints."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from nsfwd.models.cpu import cpu_class, cpu_features, cpu_flags
from nsfwd.models.names import DEFAULT_CALIBRATION_IMAGES
from nsfwd.models.routes import Route

SUITES = ("model", "pipeline", "parity", "server", "video")
DEFAULT_SUITES = ("model", "pipeline", "parity", "server")
"""What runs without ``--suites``: the video suite encodes a 1080p minute first, so it is
asked for by name."""


@dataclass
class BenchConfig:
    """What to measure and how much."""

    model: str | None = None
    revision: str | None = None
    """The Hub revision of ``model``, when it names a Hub id."""
    arch: str = "eva02_base_patch14_448"
    device: str | None = None
    dtype: str | None = None
    runtime: str | None = None
    quantize: str | None = None
    compile: str | None = None
    compile_cache_dir: Path | None = None
    calibration_dir: Path | None = None
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES
    data_dir: Path | None = None
    """Where the start-up measurement's choice and OpenVINO's models are kept (``nsfwd
    bench`` passes ``NSFWD_DATA_DIR``); None: no measurement, the CPU's flags decide."""
    suites: Sequence[str] = DEFAULT_SUITES
    batch_sizes: Sequence[int] = (1, 2, 4)
    images: int = 16
    images_dir: Path | None = None
    decode: Sequence[str] = ("auto",)
    image_size: tuple[int, int] = (1024, 768)
    batch_size: int | None = None
    concurrency: int = 32
    requests: int = 64
    http_workers: int = 1
    load_processes: int | None = None
    ray_replicas: int | None = None
    """Server suite on Ray Serve with this many model replicas; None: plain ``nsfwd serve``."""
    compare_reference: bool = False
    routes: Sequence[Route] | None = None
    """Routes measured beside the one under test with ``compare_reference``; None: every
    candidate route and int8 (:func:`nsfwd.bench.compared_routes`)."""
    reference_dtypes: Sequence[str] | None = None
    """Freepik's package's dtypes; None for its faster mode here (:func:`reference_dtypes`)."""
    reference_images: int = 8
    rounds: int = 1
    video: Path | None = None
    """The video suite's clip; None: a generated one (:func:`nsfwd.bench.video.make_video`)."""
    video_size: tuple[int, int] = (1920, 1080)
    video_seconds: float = 60.0
    out: Path | None = None


@dataclass
class BenchReport:
    """Everything measured, with where and when."""

    config: dict[str, Any]
    machine: dict[str, Any]
    results: dict[str, Any] = field(default_factory=dict)


def reference_dtypes(cfg: BenchConfig, device: torch.device) -> list[str]:
    """The dtypes to run Freepik's package in: ``cfg.reference_dtypes``, or by default on a
    CPU both fp32 and bf16 (its default; emulated and several times slower on a CPU without
    native bf16: give such a run few ``--reference-images``), so the same run finds its faster
    mode; bf16 on a GPU."""
    if cfg.reference_dtypes is not None:
        return list(cfg.reference_dtypes)
    if device.type == "cpu":
        return ["float32", "bfloat16"]
    return ["bfloat16"]


def machine_info(device: torch.device) -> dict[str, Any]:
    """The facts a benchmark figure needs beside it, the CPU's class (AVX2, AVX512,
    AVX512_BF16, AMX: :func:`~nsfwd.models.cpu.cpu_class`) among them."""
    info: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": len(os.sched_getaffinity(0)),
        "cpu_class": cpu_class(cpu_flags()),
        "cpu_features": cpu_features(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _compile_lines(results: dict[str, Any]) -> list[str]:
    compiled = results.get("compile")
    if not compiled:
        return []
    line = (
        f"compile   {compiled['mode']}  batch sizes {compiled['buckets']}  "
        f"{compiled['warm_up_s']:.1f} s"
    )
    if compiled["mode"].startswith("torch.compile"):
        line += (
            f"  graphs from cache {compiled['fxgraph_cache_hit']}, "
            f"compiled {compiled['fxgraph_cache_miss']}"
        )
    return [line]


def _model_lines(results: dict[str, Any]) -> list[str]:
    return [
        f"model     batch {row['batch_size']:>4}  {row['images_per_s']:9.2f} img/s  "
        f"{row['batch_ms']:9.1f} ms/batch"
        for row in results.get("model", [])
    ]


def _rounds_note(run: dict[str, Any]) -> str:
    rounds = run.get("rounds_s_per_image", [])
    return f"  (median of {len(rounds)} rounds)" if len(rounds) > 1 else ""


def _pipeline_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    pipelines = results.get("pipeline", [])
    for run in pipelines:
        lines.append(
            f"pipeline  {run['images']} images  {run['images_per_s']:9.2f} img/s  "
            f"{run['s_per_image'] * 1e3:9.1f} ms/image  decode {run['decode']}{_rounds_note(run)}"
        )
    for ref in results.get("reference", []):
        line = (
            f"reference {ref['dtype']:<9} {ref['images_per_s']:9.2f} img/s  "
            f"{ref['s_per_image'] * 1e3:9.1f} ms/image{_rounds_note(ref)}"
        )
        ratios = ", ".join(
            f"{run['images_per_s'] / ref['images_per_s']:.2f}x ({run['decode']})"
            for run in pipelines
        )
        if ratios:
            line += f"   nsfwd classify is {ratios}"
        lines.append(line)
    if "reference_error" in results:
        lines.append(f"reference failed: {results['reference_error']}")
    return lines


def _agreement(parity: dict[str, Any] | None) -> str:
    if not parity:
        return "agreement not measured"
    return (
        f"max |dp| {parity['max_abs_dp']:.1e}, mean {parity['mean_abs_dp']:.1e}, "
        f"{parity['moderate_decisions_changed']} decisions changed"
    )


def _routes_lines(results: dict[str, Any], machine: dict[str, Any]) -> list[str]:
    """Every mode measured (the one under test, then each compared route) per image, as a
    ratio to the package's faster mode in this run, with its agreement with the exact mode."""
    pipelines, routes = results.get("pipeline", []), results.get("routes", [])
    references = results.get("reference", [])
    if not pipelines or not (routes or references):
        return []
    parities = results.get("parity") or [None]
    rows = [(f"{machine.get('route', machine['dtype'])} (under test)", pipelines[0], parities[0])]
    rows += [
        (run["route"], run, results.get("route_parity", {}).get(run["route"])) for run in routes
    ]
    faster = min(references, key=lambda ref: ref["s_per_image"]) if references else None
    lines = []
    if faster is not None:
        lines.append(
            f"modes     against Freepik's package in its faster mode here, {faster['dtype']} "
            f"({faster['s_per_image']:.2f} s an image):"
        )
    for name, run, parity in rows:
        ratio = f"{faster['s_per_image'] / run['s_per_image']:5.2f}x" if faster else ""
        lines.append(
            f"mode      {name:<34} {run['s_per_image']:7.3f} s an image {ratio}  "
            f"{_agreement(parity)}{_rounds_note(run)}"
        )
    return lines


def _parity_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    runs = [*results.get("parity", []), *results.get("route_parity", {}).values()]
    for run in runs:
        tested = " ".join(f"{key} {value}" for key, value in run["tested"].items())
        closest = run["closest_to_threshold"]
        lines.append(
            f"parity    {tested} vs exact over {run['images']} photos: max |dp| "
            f"{run['max_abs_dp']:.2e}, mean {run['mean_abs_dp']:.2e}, moderate decisions "
            f"changed {run['moderate_decisions_changed']}"
            + (
                ""
                if closest is None
                else f" (closest exact score to the threshold: {closest:.3f} away)"
            )
        )
    if "parity_error" in results:
        lines.append(f"parity    not run: {results['parity_error']}")
    return lines


def _server_lines(results: dict[str, Any]) -> list[str]:
    server = results.get("server")
    if not server:
        return [f"server    failed: {results['server_error']}"] if "server_error" in results else []
    lines = []
    for key in ("sequential", "concurrent"):
        run = server[key]
        lines.append(
            f"server    {run['concurrency']:>3} clients  {run['requests_per_s']:8.2f} req/s  "
            f"p50 {run['p50_ms']:.0f} ms  p95 {run['p95_ms']:.0f} ms  "
            f"p99 {run['p99_ms']:.0f} ms  statuses {run['statuses']}"
        )
    lines.append(
        f"server    mean batch {server['concurrent']['mean_batch_size']:.2f}  "
        f"{server['speedup_vs_sequential']:.2f}x one-at-a-time  "
        f"cold start {server['cold_start_s']:.1f} s  "
        f"{server.get('http_workers', 1)} HTTP process(es)"
        + (
            f", Ray Serve with {server['ray_replicas']} model replica(s)"
            if server.get("ray_replicas")
            else ""
        )
    )
    return lines


def _video_lines(results: dict[str, Any]) -> list[str]:
    run = results.get("video")
    if not run:
        return []
    return [
        f"video     {run['codec']} {run['size']} {run['seconds']:.0f} s at "
        f"{run['mbit_s']:.1f} Mbit/s: {run['frames_judged']} frames judged; decoding "
        f"{run['decode_s']:.1f} s ({run['decode_cpu_s']:.1f} s CPU), judging "
        f"{run['judge_s']:.1f} s ({run['judge_cpu_s']:.1f} s CPU): decoding is "
        f"{run['decode_over_judge']:.2f} of judging ({run['decode_over_judge_cpu']:.2f} in CPU)",
        f"video     end to end {run['end_to_end_s']:.1f} s, "
        f"{run['frames_judged_per_s']:.2f} frames judged/s (batch {run['batch_size']})",
    ]


def _reason(machine: dict[str, Any]) -> str:
    reason = machine.get("dtype_reason")
    return f" ({reason})" if reason else ""


def format_report(report: BenchReport) -> str:
    """A plain-text table of the report, with ratios against the reference."""
    machine = report.machine
    header = (
        f"nsfwd bench  {machine['date']}  {machine['device']} "
        f"{machine.get('gpu', machine['cpu'])} x{machine['cpu_count']} cpu "
        f"{machine.get('cpu_class', '')} ({machine.get('cpu_features', '?')})  "
        f"{machine.get('route', machine['dtype'])}{_reason(machine)}  "
        f"model: {report.config['model']}"
    )
    results = report.results
    return "\n".join([
        header,
        *_compile_lines(results),
        *_model_lines(results),
        *_pipeline_lines(results),
        *_parity_lines(results),
        *_routes_lines(results, machine),
        *_server_lines(results),
        *_video_lines(results),
    ])  # fmt: skip
