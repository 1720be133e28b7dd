"""Networks built for fixed batch sizes ("buckets"): torch.compile's graphs and OpenVINO's
compiled models. Every batch is padded with zero images up to the next bucket (and split beyond
the largest), and the padded rows are dropped, so only the sizes made at warm-up ever run.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch

log = logging.getLogger(__name__)


def default_buckets(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two below ``max_batch_size``, then ``max_batch_size`` itself:
    1, 2, 4, 8, 16, 32 for 32; 1, 2, 4, 6 for 6."""
    if max_batch_size < 1:
        raise ValueError(f"the batch size must be at least 1, not {max_batch_size}")
    sizes = []
    size = 1
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    return (*sizes, max_batch_size)


def check_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
    """``buckets`` sorted without repeats; ValueError when empty or not all positive."""
    sizes = tuple(sorted(set(buckets)))
    if not sizes or sizes[0] < 1:
        raise ValueError(f"batch buckets must be positive sizes, got {list(buckets)}")
    return sizes


class Bucketed(ABC):
    """Probabilities (N, labels) for batches of pixels, computed only at the bucket sizes.

    Subclasses make a network for each bucket (:meth:`_make`, at :meth:`warm_up`) and run a
    bucket-sized batch through it (:meth:`_run`).
    """

    made_by_running = True
    """Whether running a bucket is what makes it (torch.compile traces and compiles on the
    first call); False where :meth:`_make` leaves it ready (OpenVINO compiles ahead), so
    :meth:`warm_up` runs only the smallest, to check the whole path."""

    def __init__(self, num_labels: int) -> None:
        self.num_labels = num_labels
        self.buckets: tuple[int, ...] | None = None
        """Batch sizes made; None until :meth:`warm_up`: then the next power of two."""

    @property
    @abstractmethod
    def name(self) -> str:
        """What runs, for logs and reports (``torch.compile default``, ``openvino f32``...)."""

    @abstractmethod
    def _make(self, buckets: tuple[int, ...]) -> None:
        """Get ready to run these batch sizes (called by :meth:`warm_up` before running each)."""

    @abstractmethod
    def _run(self, padded: torch.Tensor) -> torch.Tensor:
        """Probabilities for one bucket-sized batch, on the batch's device."""

    def bucket_for(self, size: int) -> int:
        """The bucket a batch of ``size`` rows (at most the largest bucket) is padded to."""
        if self.buckets is None:
            return 1 << (size - 1).bit_length()
        return next(bucket for bucket in self.buckets if bucket >= size)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Probabilities for ``batch`` (already on the device): chunks of the largest bucket,
        each padded with zeros up to its bucket."""
        if len(batch) == 0:
            return torch.empty((0, self.num_labels), device=batch.device)
        step = self.buckets[-1] if self.buckets else len(batch)
        outputs = []
        for start in range(0, len(batch), step):
            chunk = batch[start : start + step]
            rows = len(chunk)
            # Always a fresh, contiguous tensor made here, even when no padding is needed, so
            # every call meets the same guards (an inference-mode tensor, say) as the warm-up
            # and never sends dynamo back to trace.
            padded = chunk.new_zeros((self.bucket_for(rows), *chunk.shape[1:]))
            padded[:rows] = chunk
            # Cloned: a CUDA graph's output is overwritten by the next replay of that graph.
            outputs.append(self._run(padded)[:rows].clone())
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def warm_up(self, buckets: Sequence[int], run: Callable[[int], object]) -> float:
        """Fix the buckets and make each, then run each (``run(size)`` predicts a batch of
        that size), or only the smallest where making them was enough
        (:attr:`made_by_running`); the seconds it took."""
        self.buckets = check_buckets(buckets)
        started = time.perf_counter()
        self._make(self.buckets)
        for size in self.buckets if self.made_by_running else self.buckets[:1]:
            run(size)
        return time.perf_counter() - started
