"""The in-process suites: the model on ready tensors, the classify pipeline, Freepik's package."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from nsfwd.batch.pipeline import classify_files
from nsfwd.models.classifier import Classifier
from nsfwd.models.compiled import cache_stats
from nsfwd.models.tensor_decode import resolve_decode


def sync(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    """Seconds per call of ``fn`` over ``repeats`` calls, after one warm-up call."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
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
    """Compile (or load from the cache) a network per bucket: how long, and for
    ``torch.compile`` how many graphs came from inductor's cache. Cold and warm starts differ by
    the cache's contents, so run twice."""
    runner = classifier.runner
    assert runner is not None
    before = cache_stats()
    start = time.perf_counter()
    classifier.warm_up(max(buckets), buckets)
    seconds = time.perf_counter() - start
    after = cache_stats()
    return {
        "mode": runner.name,
        "buckets": list(runner.buckets or ()),
        "warm_up_s": seconds,
        **{key: after[key] - before[key] for key in after},
    }


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
    sync(device)
    start = time.perf_counter()
    run(files)
    sync(device)
    elapsed = time.perf_counter() - start
    return {
        "dtype": dtype,
        "images": len(files),
        "batch_size": batch_size,
        "seconds": elapsed,
        "images_per_s": len(files) / elapsed,
        "s_per_image": elapsed / len(files),
    }


def median_run(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run of ``runs`` (one per round) that took the median time, the slower of the middle
    two for an even count, with every round's seconds per image beside it."""
    ordered = sorted(runs, key=lambda run: run["seconds"])
    return {**ordered[len(ordered) // 2], "rounds_s_per_image": [r["s_per_image"] for r in runs]}
