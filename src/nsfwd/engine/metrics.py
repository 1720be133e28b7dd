"""Prometheus metrics, one registry per engine so several apps can live in one process.

When ``PROMETHEUS_MULTIPROC_DIR`` is set (``nsfwd serve --http-workers N`` sets it for the
processes it starts), every process writes its values there and :meth:`Metrics.render` sums
them all, so any worker answers ``/metrics`` for the whole server.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The instruments nsfwd exports at ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.queue_size = Gauge(
            "nsfwd_queue_size",
            "Images admitted and not yet answered",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.batch_size = Histogram(
            "nsfwd_batch_size",
            "Images per model batch",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "nsfwd_inference_seconds",
            "Time one batch spends on the model",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_seconds = Histogram(
            "nsfwd_queue_seconds",
            "Time an image waits between preprocessing and the model",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "nsfwd_request_seconds",
            "End-to-end time of classification requests",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "nsfwd_requests",
            "Classification requests by route and status code",
            ["route", "status"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "nsfwd_rejected", "Images refused because the queue was full", registry=self.registry
        )
        self.model = Gauge(
            "nsfwd_model_info",
            "The loaded model's device, precision and runtime (1 per combination in use)",
            ["device", "dtype", "runtime"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.dropped = Counter(
            "nsfwd_dropped",
            "Images dropped before inference because their client went away",
            registry=self.registry,
        )
        self.bank_matches = Counter(
            "nsfwd_bank_matches",
            "Images flagged by a bank of known images, by bank",
            ["bank"],
            registry=self.registry,
        )
        self.verdict_cache = Counter(
            "nsfwd_verdict_cache",
            "Judgements asked of the verdict cache, by outcome (hit or miss)",
            ["outcome"],
            registry=self.registry,
        )

    def show_model(self, info: dict[str, str]) -> None:
        """Export the model's ``device``, ``dtype`` and ``runtime`` (an
        :attr:`Engine.model_info`) as ``nsfwd_model_info``; in multi-process mode, the inference
        process's value reaches every worker's ``/metrics``."""
        runtime = info.get("runtime", "torch")
        self.model.labels(device=info["device"], dtype=info["dtype"], runtime=runtime).set(1)

    def render(self) -> bytes:
        """The registry (or every process's values, in multi-process mode) in Prometheus'
        text format."""
        shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not shared:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, shared)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
