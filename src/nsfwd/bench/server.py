"""The server suite: a real ``nsfwd serve`` process on loopback, one client, then many."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from nsfwd.bench.loadgen import run_load
from nsfwd.bench.report import BenchConfig
from nsfwd.models.compiled import CACHE_ENV
from nsfwd.models.openvino_runtime import store
from nsfwd.models.routes import Route


def load_processes(cfg: BenchConfig) -> int:
    """Processes for the concurrent clients: ``cfg.load_processes``, else one per 16 clients
    and at most a quarter of the cores (one on a small machine)."""
    if cfg.load_processes:
        return cfg.load_processes
    return max(1, min(cfg.concurrency // 16, len(os.sched_getaffinity(0)) // 4))


def _mean_batch_size(url: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    values = {}
    for line in text.splitlines():
        if line.startswith(("nsfwd_batch_size_sum", "nsfwd_batch_size_count")):
            name, value = line.split()
            values[name] = float(value)
    return values.get("nsfwd_batch_size_sum", 0.0), values.get("nsfwd_batch_size_count", 0.0)


def _server_data(workdir: Path, data_dir: Path | None) -> Path:
    """The server's data directory: its own, with the OpenVINO models of ``data_dir``."""
    folder = workdir / "server-data"
    folder.mkdir(exist_ok=True)
    if data_dir is not None and store(data_dir).is_dir():
        store(folder).symlink_to(store(data_dir).resolve(), target_is_directory=True)
    return folder


def _route_options(cfg: BenchConfig, route: Route | None) -> list[str]:
    """``nsfwd serve``'s options for ``route``, so the server runs what the bench measured
    without measuring again, or else ``cfg``'s."""
    dtype, runtime, quantize = cfg.dtype, cfg.runtime, cfg.quantize
    if route is not None:
        dtype, runtime, quantize = route.dtype, route.runtime, route.quantize
    options = []
    for name, value in (("--dtype", dtype), ("--runtime", runtime), ("--quantize", quantize)):
        if value:
            options += [name, value]
    if quantize:
        options += ["--calibration-images", str(cfg.calibration_images)]
        if cfg.calibration_dir:
            options += ["--calibration-dir", str(cfg.calibration_dir)]
    return options


def bench_server(
    model_dir: str,
    files: list[Path],
    cfg: BenchConfig,
    batch_size: int,
    workdir: Path,
    *,
    route: Route | None = None,
) -> dict[str, Any]:
    """A real `nsfwd serve` process (its job store in ``workdir``) running ``route`` (default:
    what ``cfg`` asks for): one client at a time, then ``cfg.concurrency`` at once. It shares
    the OpenVINO models kept in ``cfg.data_dir``, so its cold start is one with a warm cache."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **{k: v for k, v in os.environ.items() if k != "NSFWD_DATABASE_URL"},
        "NSFWD_MAX_BATCH_SIZE": str(batch_size),
        "NSFWD_MAX_QUEUE": str(max(cfg.concurrency * 2, 64)),
        "NSFWD_API_KEYS": "",
        # The clients post the same images again: the model's throughput, not the cache's.
        "NSFWD_VERDICT_CACHE_ENTRIES": "0",
        # A store of its own: keys in the user's ./data would close the open API to the bench.
        "NSFWD_DATA_DIR": str(_server_data(workdir, cfg.data_dir)),
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
    ready = "ok"
    if cfg.ray_replicas:
        command += ["--ray", "--replicas", str(cfg.ray_replicas)]
        ready = f"nsfwd-model HEALTHY ({cfg.ray_replicas} running)"  # every replica up
    if cfg.device:
        command += ["--device", cfg.device]
    command += _route_options(cfg, route)
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
            cold_start = _wait_healthy(url, process, log_path, ready)
            sequential_requests = max(4, min(cfg.requests // 4, 32))
            sequential = run_load(url, bodies, 1, sequential_requests)
            before = _mean_batch_size(url)
            concurrent = run_load(url, bodies, cfg.concurrency, cfg.requests, load_processes(cfg))
            after = _mean_batch_size(url)
        finally:
            process.terminate()  # on Ray, it stops the instance it started before it exits
            process.wait(timeout=120)
    log_path.unlink()
    batches = after[1] - before[1]
    concurrent["mean_batch_size"] = (after[0] - before[0]) / batches if batches else 0.0
    return {
        "http_workers": cfg.http_workers,
        "ray_replicas": cfg.ray_replicas,
        "cold_start_s": cold_start,
        "sequential": sequential,
        "concurrent": concurrent,
        "speedup_vs_sequential": concurrent["requests_per_s"] / sequential["requests_per_s"],
    }


def _wait_healthy(
    url: str, process: subprocess.Popen[bytes], log_path: Path, ready: str = "ok"
) -> float:
    """Seconds until ``url``/healthz answers 200 with ``ready`` in its body; raises with the
    server's log if it dies."""
    started = time.perf_counter()
    while True:
        if process.poll() is not None:
            tail = "\n".join(log_path.read_text().splitlines()[-20:])
            raise RuntimeError(f"nsfwd serve exited during start-up:\n{tail}")
        try:
            res = httpx.get(f"{url}/healthz", timeout=2)
            if res.status_code == 200 and ready in res.text:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
