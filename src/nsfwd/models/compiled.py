"""The optional ``torch.compile`` mode: fixed batch buckets, padding up to them, and a compile
cache that outlives the process (docs/ARCHITECTURE.md, "Model loading").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch

from nsfwd.models.buckets import Bucketed
from nsfwd.models.checkpoint import Normalize

log = logging.getLogger(__name__)

COMPILE_CHOICES = (
    "off",
    "on",
    "default",
    "reduce-overhead",
    "max-autotune",
    "max-autotune-no-cudagraphs",
)
"""``off``; ``on`` (``reduce-overhead`` on CUDA, for CUDA graphs, ``default`` elsewhere); or a
``torch.compile`` mode by name."""

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def compile_mode(choice: str | None, device: torch.device) -> str | None:
    """The ``torch.compile`` mode ``choice`` stands for on ``device``; None when off."""
    if choice is None or choice == "off":
        return None
    if choice not in COMPILE_CHOICES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_CHOICES)}, not {choice!r}")
    if choice == "on":
        return "reduce-overhead" if device.type == "cuda" else "default"
    return choice


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/nsfwd/torch-compile`` (``~/.cache/nsfwd/torch-compile``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "nsfwd" / "torch-compile"


def use_cache_dir(folder: str | os.PathLike[str] | None) -> Path:
    """Make ``folder`` (default: :func:`default_cache_dir`) inductor's cache for this process.

    Inductor reads ``TORCHINDUCTOR_CACHE_DIR`` whenever it looks a cache entry up, and memoises
    a few paths derived from it; those are cleared here, as torch's own ``temporary_cache_dir``
    does. The setting is process-wide, like inductor's cache itself.
    """
    path = Path(folder).expanduser() if folder else default_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".nsfwd-write-test"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise ValueError(
            f"cannot use {path} as the compile cache ({exc.strerror or exc}); "
            "set NSFWD_COMPILE_CACHE_DIR (or --compile-cache-dir) to a writable folder"
        ) from None
    path = path.resolve()
    if os.environ.get(CACHE_ENV) != str(path):
        os.environ[CACHE_ENV] = str(path)
        from torch._inductor.utils import clear_caches

        clear_caches()
    return path


def cache_stats() -> dict[str, int]:
    """This process's inductor and AOTAutograd disk-cache hits and misses so far."""
    # torch publishes these counts nowhere else; read here only, for the start-up log line.
    from torch._dynamo.utils import counters

    return {
        "fxgraph_cache_hit": counters["inductor"]["fxgraph_cache_hit"],
        "fxgraph_cache_miss": counters["inductor"]["fxgraph_cache_miss"],
        "autograd_cache_hit": counters["aot_autograd"]["autograd_cache_hit"],
        "autograd_cache_miss": counters["aot_autograd"]["autograd_cache_miss"],
    }


class Forward(torch.nn.Module):
    """Normalise the pixels, run the network, softmax: one graph for the compiler to fuse.

    A timm checkpoint's :class:`Normalize` is redone here with its mean and std as buffers on
    ``device``, so the graph takes no CPU tensors (which would keep CUDA graphs away).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        network: torch.nn.Module,
        normalize: Callable[[torch.Tensor], torch.Tensor],
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.network = network
        self.dtype = dtype
        self.normalize = None if isinstance(normalize, Normalize) else normalize
        if isinstance(normalize, Normalize):
            self.register_buffer("mean", normalize.mean.to(device))
            self.register_buffer("std", normalize.std.to(device))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Probabilities (N, labels) in float32, on the batch's device."""
        if self.normalize is None:  # Normalize's operations: uint8 / 255, - mean, / std
            if batch.dtype != torch.uint8:
                raise TypeError(f"expected uint8 pixels, got {batch.dtype}")
            pixels = batch.to(torch.float32).div(255).sub(self.mean).div(self.std)
        else:
            pixels = self.normalize(batch)
        logits = self.network(pixels.to(self.dtype))
        return torch.softmax(logits.float(), dim=-1)


class CompiledForward(Bucketed):
    """A compiled :class:`Forward` that only ever sees bucket-sized batches."""

    def __init__(self, forward: Forward, mode: str, num_labels: int) -> None:
        super().__init__(num_labels)
        self.mode = mode
        self._forward = forward
        self._compiled = self._compile()

    @property
    def name(self) -> str:
        """``torch.compile`` and its mode."""
        return f"torch.compile {self.mode}"

    def _compile(self, sizes: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
        # Each batch size is a recompile of the same code: allow one per size (and some), so
        # that dynamo never falls back to eager.
        limit = max(8, 2 * sizes + 8)
        compile_: Any = torch.compile  # its overloads do not list recompile_limit yet
        compiled = compile_(self._forward, mode=self.mode, dynamic=False, recompile_limit=limit)
        return cast(Callable[[torch.Tensor], torch.Tensor], compiled)

    def _make(self, buckets: tuple[int, ...]) -> None:
        self._compiled = self._compile(len(buckets))

    def _run(self, padded: torch.Tensor) -> torch.Tensor:
        return self._compiled(padded)

    def warm_up(self, buckets: Sequence[int], run: Callable[[int], object]) -> float:
        """Fix the buckets and compile each, or load it from the cache (``run(size)`` predicts
        a batch of that size); logs how many graphs came from the cache."""
        before = cache_stats()
        seconds = super().warm_up(buckets, run)
        after = cache_stats()
        log.info(
            "compiled (%s) for batch sizes %s in %.1f s: %d graphs from the cache in %s, "
            "%d compiled",
            self.mode,
            ", ".join(map(str, self.buckets or ())),
            seconds,
            after["fxgraph_cache_hit"] - before["fxgraph_cache_hit"],
            os.environ.get(CACHE_ENV, "?"),
            after["fxgraph_cache_miss"] - before["fxgraph_cache_miss"],
        )
        return seconds
