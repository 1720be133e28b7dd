"""The reliability campaign, part 5: a load run at twice capacity.

A real ``nsfwd serve`` process (tiny random-weight EVA-02, CPU) first gets closed-loop load from
:func:`nsfwd.bench.loadgen.run_load` to measure its capacity (jobs a second). Then an open-loop
client offers twice that rate for :data:`SECONDS` seconds (``NSFWD_CAMPAIGN_LOAD_S`` for a longer
run), sending each request on schedule whether or not earlier ones were answered, as independent
clients do. The server must answer only 200 or 429 (never a 5xx, never a dropped connection),
keep its memory flat (resident size after warm-up within 10% of what it was at the end of
warm-up) and answer the requests it admits within a bounded time (p99). The figures are printed
(``pytest -s``) and recorded in RELIABILITY.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from nsfwd.bench.loadgen import JOB, percentile, run_load
from photos import astronaut_jpeg
from serve_process import nsfwd_serve

SECONDS = float(os.environ.get("NSFWD_CAMPAIGN_LOAD_S", "20"))
"""How long the overload lasts."""
WARM_UP = 0.25
"""Share of the run before memory is taken as the reference."""
MAX_QUEUE = 16
MAX_BATCH = 8


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class MemorySampler(threading.Thread):
    """Samples a process's resident size every ``every`` seconds: (seconds since start, bytes)."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, int]] = []
        self.done = threading.Event()
        self.started_at = time.monotonic()

    def run(self) -> None:
        while not self.done.wait(self.every):
            self.samples.append((time.monotonic() - self.started_at, rss_bytes(self.pid)))


async def open_loop(url: str, bodies: list[bytes], rate: float, seconds: float) -> dict[str, Any]:
    """Send a job every ``1 / rate`` seconds for ``seconds``, each on its own schedule; every
    answer's status (or the exception instead) and latency."""
    results: list[tuple[str, float]] = []
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)

    async def one(session: httpx.AsyncClient, index: int) -> None:
        image = bodies[index % len(bodies)]
        files: list[tuple[str, tuple[str, bytes | str, str]]] = [
            ("job", ("job.json", JOB, "application/json")),
            ("input", (f"{index}.jpg", image, "image/jpeg")),
        ]
        started = time.perf_counter()
        try:
            response = await session.post(
                f"{url}/v2/job", files=files, headers={"Accept": "application/json"}
            )
            outcome = str(response.status_code)
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
        results.append((outcome, time.perf_counter() - started))

    async with httpx.AsyncClient(timeout=60, limits=limits) as session:
        tasks = []
        began = time.perf_counter()
        total = int(rate * seconds)
        for index in range(total):
            delay = began + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, index)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - began
    statuses: dict[str, int] = {}
    for outcome, _ in results:
        statuses[outcome] = statuses.get(outcome, 0) + 1
    admitted = [latency for outcome, latency in results if outcome == "200"]
    return {
        "offered_per_s": total / seconds,
        "sent": total,
        "seconds": elapsed,
        "statuses": statuses,
        "admitted_per_s": len(admitted) / elapsed,
        "p50_admitted_s": percentile(admitted, 50),
        "p99_admitted_s": percentile(admitted, 99),
    }


def test_twice_capacity_gets_only_200_and_429_with_flat_memory(
    timm_checkpoint: Path, tmp_path: Path
) -> None:
    env = {
        "NSFWD_API_KEYS": "",
        "NSFWD_SERVED_MODEL_NAME": "bench",  # what nsfwd.bench.loadgen's jobs name
        "NSFWD_MAX_QUEUE": str(MAX_QUEUE),
        "NSFWD_MAX_BATCH_SIZE": str(MAX_BATCH),
        "NSFWD_VERDICT_CACHE_ENTRIES": "0",  # the model's capacity, not the cache's repeats
    }
    bodies = [astronaut_jpeg((256 + 16 * i, 256)) for i in range(8)]
    with nsfwd_serve(timm_checkpoint, tmp_path / "data", tmp_path / "server.log", env=env) as s:
        capacity = run_load(s.url, bodies, concurrency=MAX_QUEUE // 2, requests=48)
        assert capacity["statuses"] == {"200": 48}, capacity
        rate = 2 * capacity["requests_per_s"]
        sampler = MemorySampler(s.process.pid)
        sampler.start()
        try:
            run = asyncio.run(open_loop(s.url, bodies, rate, SECONDS))
        finally:
            sampler.done.set()
            sampler.join()
        assert s.process.poll() is None, "the server died under load"
    warm = [rss for at, rss in sampler.samples if at <= WARM_UP * SECONDS]
    after = [rss for at, rss in sampler.samples if at > WARM_UP * SECONDS]
    assert warm and after, sampler.samples
    reference, peak = warm[-1], max(after)
    queue_wait_s = MAX_QUEUE / capacity["requests_per_s"]  # a full queue, drained at capacity
    figures = {
        "capacity_per_s": round(capacity["requests_per_s"], 1),
        **{k: round(v, 3) if isinstance(v, float) else v for k, v in run.items()},
        "rss_after_warm_up_mib": round(reference / 2**20, 1),
        "rss_peak_after_mib": round(peak / 2**20, 1),
        "rss_growth": round(peak / reference - 1, 4),
    }
    print("load run:", json.dumps(figures))
    assert set(run["statuses"]) <= {"200", "429"}, figures
    assert run["statuses"].get("429", 0) > 0, f"the offered load never filled the queue: {figures}"
    assert run["statuses"].get("200", 0) > 0, figures
    assert peak <= 1.10 * reference, f"memory grew past 10% after warm-up: {figures}"
    assert run["p99_admitted_s"] <= max(2.0, 4 * queue_wait_s), figures
