"""Load for the server benchmark: clients posting Prodia v1 jobs, in one or several processes.

A Python client spends about a millisecond of CPU on each multipart upload, so one process
cannot offer a fast server more than several hundred requests a second; :func:`run_load` then
spreads the clients over processes (spawned, importing nothing but this module and httpx), which
start together at a barrier and report every latency, so the percentiles cover all of them.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import multiprocessing.process
import queue
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any

import httpx

JOB = json.dumps({"type": "inference.vit.img2label.v1", "config": {"model": "bench"}})


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile with linear interpolation (numpy's default); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class _Shard:
    """The clients of one process: where to post, what, how many at once, which requests."""

    url: str
    bodies: list[bytes]
    concurrency: int
    requests: range


async def _clients(shard: _Shard) -> dict[str, Any]:
    """The shard's clients sharing its request numbers: wall-clock start and end, each
    latency, each status."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    numbers = iter(shard.requests)
    bodies = shard.bodies

    async def client(session: httpx.AsyncClient) -> None:
        for i in numbers:
            files: list[tuple[str, tuple[str, bytes | str, str]]] = [
                ("job", ("job.json", JOB, "application/json")),
                ("input", (f"{i}.jpg", bodies[i % len(bodies)], "image/jpeg")),
            ]
            start = time.perf_counter()
            response = await session.post(
                f"{shard.url}/v2/job", files=files, headers={"Accept": "application/json"}
            )
            latencies.append(time.perf_counter() - start)
            status = str(response.status_code)
            statuses[status] = statuses.get(status, 0) + 1

    limits = httpx.Limits(max_connections=shard.concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits) as session:
        started = time.time()
        await asyncio.gather(*(client(session) for _ in range(shard.concurrency)))
        ended = time.time()
    return {"started": started, "ended": ended, "latencies": latencies, "statuses": statuses}


def _process(shard: _Shard, barrier: Barrier, results: Queue[dict[str, Any]]) -> None:
    barrier.wait()
    results.put(asyncio.run(_clients(shard)))


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def _collect(
    results: Queue[dict[str, Any]], workers: Sequence[multiprocessing.process.BaseProcess]
) -> list[dict[str, Any]]:
    """One result per worker process; RuntimeError if one dies without giving its result."""
    runs: list[dict[str, Any]] = []
    while len(runs) < len(workers):
        try:
            runs.append(results.get(timeout=1))
        except queue.Empty:
            dead = [w for w in workers if w.exitcode not in (None, 0)]
            if dead and results.empty():
                raise RuntimeError(
                    f"a load process exited with status {dead[0].exitcode}"
                ) from None
    for worker in workers:
        worker.join()
    return runs


def run_load(
    url: str, bodies: list[bytes], concurrency: int, requests: int, processes: int = 1
) -> dict[str, Any]:
    """Post ``requests`` jobs from ``concurrency`` clients spread over ``processes`` processes:
    requests/s over the whole run, latency percentiles over every request, statuses."""
    processes = max(1, min(processes, concurrency))
    if processes == 1:
        runs = [asyncio.run(_clients(_Shard(url, bodies, concurrency, range(requests))))]
    else:
        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(processes)
        results: Queue[dict[str, Any]] = context.Queue()
        workers = [
            context.Process(
                target=_process,
                args=(
                    _Shard(url, bodies, clients, range(i, requests, processes)),
                    barrier,
                    results,
                ),
                daemon=True,
            )
            for i, clients in enumerate(_split(concurrency, processes))
        ]
        for worker in workers:
            worker.start()
        runs = _collect(results, workers)
    latencies = [latency for run in runs for latency in run["latencies"]]
    statuses: dict[str, int] = {}
    for run in runs:
        for status, count in run["statuses"].items():
            statuses[status] = statuses.get(status, 0) + count
    seconds = max(run["ended"] for run in runs) - min(run["started"] for run in runs)
    return {
        "concurrency": concurrency,
        "requests": requests,
        "load_processes": processes,
        "statuses": statuses,
        "seconds": seconds,
        "requests_per_s": requests / seconds,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p95_ms": percentile(latencies, 95) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
    }
