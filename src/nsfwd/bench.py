"""`nsfwd bench`: measure the model, the classify pipeline and the server on this machine.

Suites (each optional):

* ``model``: images/s and latency per batch size on ready tensors (no decoding);
* ``pipeline``: ``nsfwd classify``'s path end to end over a folder of JPEGs, decoding included
  (``--decode``: Pillow's path or the tensor path, as ``nsfwd classify --decode``);
* ``server``: a real ``nsfwd serve`` process on loopback under N concurrent clients posting
  Prodia v1 jobs, against one client at a time: req/s, p50/p95/p99 latency, mean batch size;
* ``--compile``: the same suites through the ``torch.compile`` mode, after compiling (or loading
  from the cache) a graph per batch size; the report says how long that took and whether the
  graphs came from the cache (run twice with one ``--compile-cache-dir`` for cold vs warm);
* ``--compare-reference``: Freepik's ``nsfw-image-detector`` on the same checkpoint, images and
  device in the same run, reported as ratios (machines are noisy; ratios travel better).

Without ``--model`` a random-weight checkpoint of ``--arch`` is written first (same compute).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

from nsfwd.models import Classifier
from nsfwd.models.compiled import CACHE_ENV, cache_stats
from nsfwd.models.tensor_decode import resolve_decode
from nsfwd.pipeline import classify_files
from nsfwd.policies import Policy

SUITES = ("model", "pipeline", "server")


@dataclass
class BenchConfig:
    """What to measure and how much."""

    model: str | None = None
    arch: str = "eva02_base_patch14_448"
    device: str | None = None
    dtype: str | None = None
    quantize: str | None = None
    compile: str | None = None
    compile_cache_dir: Path | None = None
    suites: Sequence[str] = SUITES
    batch_sizes: Sequence[int] = (1, 2, 4)
    images: int = 16
    decode: str = "auto"
    image_size: tuple[int, int] = (1024, 768)
    batch_size: int | None = None
    concurrency: int = 32
    requests: int = 64
    http_workers: int = 1
    compare_reference: bool = False
    reference_dtypes: Sequence[str] = ("float32", "bfloat16")
    reference_images: int = 8
    out: Path | None = None


@dataclass
class BenchReport:
    """Everything measured, with where and when."""

    config: dict[str, Any]
    machine: dict[str, Any]
    results: dict[str, Any] = field(default_factory=dict)


def machine_info(device: torch.device) -> dict[str, Any]:
    """The facts a benchmark figure needs beside it."""
    info: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    """Seconds per call of ``fn`` over ``repeats`` calls, after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def bench_model(classifier: Classifier, batch_sizes: Sequence[int]) -> list[dict[str, float]]:
    """Images/s and batch latency on ready tensors, per batch size."""
    rows = []
    for size in batch_sizes:
        batch = classifier.blank(size)
        repeats = 3 if classifier.device.type == "cpu" else 20
        times = timed(partial(classifier.predict, batch), classifier.device, repeats)
        median = statistics.median(times)
        rows.append({"batch_size": size, "images_per_s": size / median, "batch_ms": median * 1e3})
    return rows


def warm_up(classifier: Classifier, buckets: Sequence[int]) -> dict[str, Any]:
    """Compile (or load from the cache) a graph per bucket: how long, and how many came from
    inductor's cache. Cold and warm starts differ by the cache's contents, so run twice."""
    assert classifier.compiled is not None
    before = cache_stats()
    start = time.perf_counter()
    classifier.warm_up(max(buckets), buckets)
    seconds = time.perf_counter() - start
    after = cache_stats()
    return {
        "mode": classifier.compiled.mode,
        "buckets": list(classifier.compiled.buckets or ()),
        "warm_up_s": seconds,
        **{key: after[key] - before[key] for key in after},
    }


def make_jpegs(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """Photo-like JPEGs (smooth colour fields with texture), ~100-200 KB at 1024x768."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        coarse = rng.integers(0, 256, (size[1] // 64 + 1, size[0] // 64 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
        noise = rng.normal(0, 12, (size[1], size[0], 3))
        pixels = np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
        path = folder / f"bench-{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def bench_pipeline(
    classifier: Classifier, files: list[Path], batch_size: int, decode: str = "auto"
) -> dict[str, Any]:
    """`nsfwd classify`'s pipeline over ``files``: decode, preprocess, batch, infer."""
    decode = resolve_decode(decode, classifier)
    run = partial(classify_files, classifier, batch_size=batch_size, decode=decode)
    list(run(files[:batch_size]))  # warm-up
    start = time.perf_counter()
    results = list(run(files))
    elapsed = time.perf_counter() - start
    failed = sum(r.labels is None for r in results)
    return {
        "images": len(files),
        "decode": decode,
        "batch_size": batch_size,
        "seconds": elapsed,
        "images_per_s": len(files) / elapsed,
        "s_per_image": elapsed / len(files),
        "failed": failed,
    }


def agreement(exact: Classifier, fast: Classifier, files: list[Path]) -> dict[str, Any]:
    """How far a fast mode's labels stray from the exact mode's on the same images."""
    exact_results = list(classify_files(exact, files, batch_size=exact.batch_size))
    fast_results = list(classify_files(fast, files, batch_size=fast.batch_size))
    moderate = Policy("moderate")
    max_dp = 0.0
    changed = 0
    for a, b in zip(exact_results, fast_results, strict=True):
        if a.labels is None or b.labels is None:
            continue
        max_dp = max(max_dp, *(abs(a.labels[k] - b.labels[k]) for k in a.labels))
        changed += moderate.flagged(a.labels) != moderate.flagged(b.labels)
    return {"images": len(files), "max_abs_dp": max_dp, "moderate_decisions_changed": changed}


def bench_reference(
    model_dir: str, files: list[Path], device: torch.device, dtype: str, batch_size: int
) -> dict[str, Any]:
    """Freepik's package the way its README uses it: PIL images in, predict_proba out."""
    from nsfw_image_detector import NSFWDetector

    detector = NSFWDetector(model_name=model_dir, device=str(device), dtype=getattr(torch, dtype))

    def run(paths: list[Path]) -> None:
        for start in range(0, len(paths), batch_size):
            chunk = [Image.open(p).convert("RGB") for p in paths[start : start + batch_size]]
            detector.predict_proba(chunk)

    run(files[:1])  # warm-up
    _sync(device)
    start = time.perf_counter()
    run(files)
    _sync(device)
    elapsed = time.perf_counter() - start
    return {
        "dtype": dtype,
        "images": len(files),
        "batch_size": batch_size,
        "seconds": elapsed,
        "images_per_s": len(files) / elapsed,
        "s_per_image": elapsed / len(files),
    }


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


async def _load(url: str, files: list[bytes], concurrency: int, requests: int) -> dict[str, Any]:
    job = json.dumps({"type": "inference.vit.img2label.v1", "config": {"model": "bench"}})
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = iter(range(requests))

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            body = files[i % len(files)]
            start = time.perf_counter()
            response = await client.post(
                f"{url}/v2/job",
                files=[
                    ("job", ("job.json", job, "application/json")),
                    ("input", (f"{i}.jpg", body, "image/jpeg")),
                ],
                headers={"Accept": "application/json"},
            )
            latencies.append(time.perf_counter() - start)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": requests,
        "statuses": statuses,
        "seconds": elapsed,
        "requests_per_s": requests / elapsed,
        "p50_ms": _percentile(latencies, 50) * 1e3,
        "p95_ms": _percentile(latencies, 95) * 1e3,
        "p99_ms": _percentile(latencies, 99) * 1e3,
    }


def _mean_batch_size(url: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    values = {}
    for line in text.splitlines():
        if line.startswith(("nsfwd_batch_size_sum", "nsfwd_batch_size_count")):
            name, value = line.split()
            values[name] = float(value)
    return values.get("nsfwd_batch_size_sum", 0.0), values.get("nsfwd_batch_size_count", 0.0)


def bench_server(
    model_dir: str, files: list[Path], cfg: BenchConfig, batch_size: int
) -> dict[str, Any]:
    """A real `nsfwd serve` process: one client at a time, then ``cfg.concurrency`` at once."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **{k: v for k, v in os.environ.items() if k != "NSFWD_DATABASE_URL"},
        "NSFWD_MAX_BATCH_SIZE": str(batch_size),
        "NSFWD_MAX_QUEUE": str(max(cfg.concurrency * 2, 64)),
        "NSFWD_API_KEYS": "",
        # A store of its own: keys in the user's ./data would close the open API to the bench.
        "NSFWD_DATA_DIR": str(files[0].parent.parent / "server-data"),
    }
    command = [
        sys.executable,
        "-m",
        "nsfwd",
        "serve",
        "--model",
        model_dir,
        "--served-model-name",
        "bench",
        "--port",
        str(port),
        "--http-workers",
        str(cfg.http_workers),
    ]
    if cfg.device:
        command += ["--device", cfg.device]
    if cfg.dtype:
        command += ["--dtype", cfg.dtype]
    if cfg.quantize:
        command += ["--quantize", cfg.quantize]
    # Explicit either way, so an NSFWD_COMPILE in the environment cannot skew the comparison.
    env["NSFWD_COMPILE"] = cfg.compile or "off"
    if cfg.compile:
        command += ["--compile-cache-dir", os.environ[CACHE_ENV]]
    bodies = [p.read_bytes() for p in files]
    log_path = Path(tempfile.mkstemp(prefix="nsfwd-bench-server-", suffix=".log")[1])
    with (
        log_path.open("w") as log_file,
        subprocess.Popen(command, env=env, stdout=log_file, stderr=log_file) as process,
    ):
        try:
            cold_start = _wait_healthy(url, process, log_path)
            sequential_requests = max(4, min(cfg.requests // 4, 32))
            sequential = asyncio.run(_load(url, bodies, 1, sequential_requests))
            before = _mean_batch_size(url)
            concurrent = asyncio.run(_load(url, bodies, cfg.concurrency, cfg.requests))
            after = _mean_batch_size(url)
        finally:
            process.terminate()
    log_path.unlink()
    batches = after[1] - before[1]
    concurrent["mean_batch_size"] = (after[0] - before[0]) / batches if batches else 0.0
    return {
        "http_workers": cfg.http_workers,
        "cold_start_s": cold_start,
        "sequential": sequential,
        "concurrent": concurrent,
        "speedup_vs_sequential": concurrent["requests_per_s"] / sequential["requests_per_s"],
    }


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log_path: Path) -> float:
    """Seconds until ``url``/healthz answers 200; raises with the server's log if it dies."""
    started = time.perf_counter()
    while True:
        if process.poll() is not None:
            tail = "\n".join(log_path.read_text().splitlines()[-20:])
            raise RuntimeError(f"nsfwd serve exited during start-up:\n{tail}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.2)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def prepare_model(cfg: BenchConfig, workdir: Path) -> str:
    """The model to measure: the one given, or a random-weight ``cfg.arch`` written now."""
    if cfg.model:
        return cfg.model
    from nsfwd.models.synthetic import write_timm_checkpoint

    folder = workdir / cfg.arch
    write_timm_checkpoint(folder, arch=cfg.arch, style="timm_wrapper", dtype=torch.bfloat16)
    return str(folder)


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> BenchReport:
    """Run the configured suites and return (and optionally write) the report."""
    with tempfile.TemporaryDirectory(prefix="nsfwd-bench-") as tmp:
        workdir = Path(tmp)
        model = prepare_model(cfg, workdir)
        classifier = Classifier.load(
            model,
            device=cfg.device,
            dtype=cfg.dtype,
            quantize=cfg.quantize,
            compile=cfg.compile,
            compile_cache_dir=cfg.compile_cache_dir,
        )
        config = {k: v for k, v in asdict(cfg).items() if k != "out"}
        config.update(
            model=model if cfg.model else f"random {cfg.arch}",
            out=str(cfg.out),
            compile_cache_dir=os.environ.get(CACHE_ENV) if cfg.compile else None,
        )
        report = BenchReport(config=config, machine=machine_info(classifier.device))
        report.machine["dtype"] = str(classifier.dtype).removeprefix("torch.")
        batch_size = cfg.batch_size or classifier.batch_size
        if classifier.compiled is not None and {"model", "pipeline"} & set(cfg.suites):
            log("compile: a graph per batch size ...")
            report.results["compile"] = warm_up(classifier, [*cfg.batch_sizes, batch_size])
        files = make_jpegs(workdir / "images", cfg.images, cfg.image_size)
        if "model" in cfg.suites:
            log("model: ready tensors through the network ...")
            report.results["model"] = bench_model(classifier, cfg.batch_sizes)
        if "pipeline" in cfg.suites:
            width, height = cfg.image_size
            log(f"pipeline: {len(files)} JPEGs {width}x{height}, decode {cfg.decode} ...")
            report.results["pipeline"] = bench_pipeline(classifier, files, batch_size, cfg.decode)
        if cfg.quantize:
            log(f"agreement: {cfg.quantize} against the exact mode on the same images ...")
            exact = Classifier.load(model, device=cfg.device, dtype=cfg.dtype)
            report.results["agreement"] = agreement(exact, classifier, files)
            del exact
        if cfg.compare_reference:
            reference = []
            for dtype in cfg.reference_dtypes:
                log(f"reference: Freepik's package in {dtype} ...")
                subset = files[: cfg.reference_images]
                reference.append(
                    bench_reference(model, subset, classifier.device, dtype, batch_size)
                )
            report.results["reference"] = reference
        del classifier  # the server suite loads its own copy in another process
        if "server" in cfg.suites:
            log(f"server: 1 client, then {cfg.concurrency} concurrent clients ...")
            try:
                report.results["server"] = bench_server(model, files, cfg, batch_size)
            except RuntimeError as exc:  # keep what the other suites measured
                log(str(exc))
                report.results["server_error"] = str(exc)
    if cfg.out:
        cfg.out.write_text(json.dumps(asdict(report), indent=2) + "\n")
    return report


def format_report(report: BenchReport) -> str:
    """A plain-text table of the report, with ratios against the reference."""
    lines = [
        f"nsfwd bench  {report.machine['date']}  {report.machine['device']} "
        f"{report.machine.get('gpu', report.machine['cpu'])} x{report.machine['cpu_count']} cpu  "
        f"{report.machine['dtype']}  model: {report.config['model']}",
    ]
    results = report.results
    compiled = results.get("compile")
    if compiled:
        lines.append(
            f"compile   {compiled['mode']}  batch sizes {compiled['buckets']}  "
            f"{compiled['warm_up_s']:.1f} s  graphs from cache {compiled['fxgraph_cache_hit']}, "
            f"compiled {compiled['fxgraph_cache_miss']}"
        )
    for row in results.get("model", []):
        lines.append(
            f"model     batch {row['batch_size']:>4}  {row['images_per_s']:9.2f} img/s  "
            f"{row['batch_ms']:9.1f} ms/batch"
        )
    agreed = results.get("agreement")
    if agreed:
        lines.append(
            f"agreement {report.config['quantize']} vs exact over {agreed['images']} images: "
            f"max |dp| {agreed['max_abs_dp']:.4f}, moderate decisions changed "
            f"{agreed['moderate_decisions_changed']}"
        )
    pipeline = results.get("pipeline")
    if pipeline:
        lines.append(
            f"pipeline  {pipeline['images']} images  {pipeline['images_per_s']:9.2f} img/s  "
            f"{pipeline['s_per_image'] * 1e3:9.1f} ms/image  decode {pipeline['decode']}"
        )
    for ref in results.get("reference", []):
        line = (
            f"reference {ref['dtype']:<9} {ref['images_per_s']:9.2f} img/s  "
            f"{ref['s_per_image'] * 1e3:9.1f} ms/image"
        )
        if pipeline:
            line += f"   nsfwd classify is {pipeline['images_per_s'] / ref['images_per_s']:.2f}x"
        lines.append(line)
    server = results.get("server")
    if server:
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
        )
    return "\n".join(lines)
