"""The classifier: a batch of images in, a batch of per-label probabilities out.

It knows nothing of HTTP, asyncio or files, so the same object serves the CLI, the HTTP engine
and, later, a Ray Serve replica or a Ray Data ``map_batches`` worker.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import torch
from PIL import Image

from nsfwd.models.checkpoint import LoadedModel, load_checkpoint
from nsfwd.models.compiled import (
    CompiledForward,
    Forward,
    compile_mode,
    default_buckets,
    use_cache_dir,
)
from nsfwd.models.cpu import computes_natively, cpu_features, cpu_flags, default_cpu_dtype
from nsfwd.models.hub import resolve_model_dir, source_id
from nsfwd.models.names import DEFAULT_MODEL, OPEN_NSFW, default_batch_size
from nsfwd.verdict import Finding, Labels

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(device: str | None = None) -> torch.device:
    """The requested device, else CUDA when present, else the CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def choose_dtype(
    device: torch.device, dtype: str | None = None, *, quantize: str | None = None
) -> tuple[torch.dtype, str]:
    """The precision to run in and why: ``dtype`` when given; else bf16 on a GPU; on the CPU,
    what :func:`~nsfwd.models.cpu.default_cpu_dtype` answers for its flags (bf16 where native,
    fp32 elsewhere), or fp32 for ``quantize``, which starts from fp32 weights; fp32 on any other
    device."""
    if dtype:
        try:
            return DTYPES[dtype], "as asked"
        except KeyError:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}") from None
    if device.type == "cuda":
        return torch.bfloat16, "the GPU default"
    if device.type != "cpu":
        return torch.float32, f"the default on {device.type}"
    if quantize is not None:
        return torch.float32, f"{quantize} quantisation starts from float32"
    name, reason = default_cpu_dtype(cpu_flags())
    return DTYPES[name], reason


QUANTIZATIONS = ("int8",)
"""Opt-in faster CPU modes; results differ slightly from the exact fp32 ones (see BENCHMARKS.md)."""


def quantize_int8(module: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantisation of the Linear layers, for the CPU.

    Weights are stored as int8 and activations are quantised batch by batch at run time
    (fbgemm kernels); attention and normalisation stay in fp32. EVA's fused ``qkv`` layers (as
    in EVA-02-Ti and -S; EVA-02-B has separate q, k and v) are quantised too where timm can add
    their q and v biases after the layer (``qkv_bias_separate``); on an older timm, whose
    attention calls ``F.linear`` on ``qkv.weight`` itself, they stay in fp32.
    """
    qconfig = torch.ao.quantization.default_dynamic_qconfig
    spec = {
        name: qconfig
        for name, child in module.named_modules()
        if isinstance(child, torch.nn.Linear) and _quantizable(module, name)
    }
    with warnings.catch_warnings():
        # torch.ao's eager quantisation points users at torchao; it still works and needs no
        # extra dependency, so keep it until torch drops it.
        warnings.simplefilter("ignore")
        quantized: torch.nn.Module = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            module, spec, dtype=torch.qint8
        )
    for child in quantized.modules():
        if getattr(child, "q_bias", None) is not None and hasattr(child, "qkv_bias_separate"):
            setattr(child, "qkv_bias_separate", True)  # noqa: B010 (a plain attribute, not a module)
    return quantized


def _quantizable(root: torch.nn.Module, name: str) -> bool:
    """Whether the Linear layer ``name`` may become a quantised one: all but a fused ``qkv``
    whose attention reads ``qkv.weight`` directly (EVA on a timm without qkv_bias_separate)."""
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    if leaf != "qkv" or getattr(parent, "q_bias", None) is None:
        return True
    return hasattr(parent, "qkv_bias_separate")


def _warn_if_slow_on_this_cpu(dtype: torch.dtype) -> None:
    if not computes_natively(dtype):
        name = str(dtype).removeprefix("torch.")
        log.warning(
            "%s on this CPU (%s) is emulated: it runs several times slower than float32, "
            "the exact mode and this CPU's default; --quantize int8 is the fast CPU mode",
            name,
            cpu_features(),
        )


def _quantized(module: torch.nn.Module, quantize: str, device: torch.device) -> torch.nn.Module:
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, not {quantize!r}")
    if device.type != "cpu":
        raise ValueError("int8 quantisation is a CPU mode; on a GPU, bf16 is the fast path")
    if next(module.parameters()).dtype != torch.float32:
        raise ValueError("int8 quantisation starts from float32 weights; drop --dtype")
    return quantize_int8(module)


@dataclass
class Classifier:
    """A loaded image classifier on one device."""

    loaded: LoadedModel
    device: torch.device
    dtype: torch.dtype
    name: str
    compiled: CompiledForward | None = None
    """The ``torch.compile`` mode's runner, when the classifier was loaded with ``compile``."""
    quantized: str | None = None
    """The quantisation applied (``int8``), or None for the model's own weights."""
    dtype_reason: str = "as asked"
    """Why :attr:`dtype`: ``as asked``, or why the default for this device (and CPU) is it."""
    kind: Final = "classifier"

    @classmethod
    def load(
        cls,
        model: str = DEFAULT_MODEL,
        *,
        revision: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        quantize: str | None = None,
        compile: str | None = None,
        compile_cache_dir: str | os.PathLike[str] | None = None,
    ) -> Classifier:
        """Load ``model`` (a Hub id, a folder, or :data:`~nsfwd.models.names.OPEN_NSFW`, the
        built-in model, which wins over a folder of that name: write ``./open-nsfw`` for the
        folder) onto ``device`` in ``dtype`` (auto when None).

        ``quantize="int8"`` trades a little agreement with the exact model for CPU speed.
        ``compile`` (``on`` or a ``torch.compile`` mode; see :mod:`nsfwd.models.compiled`)
        compiles the network for fixed batch sizes, caching the graphs in ``compile_cache_dir``
        (default: ``~/.cache/nsfwd/torch-compile``); call :meth:`warm_up` before serving.
        """
        if model == OPEN_NSFW:
            return cls._load_open_nsfw(
                device=device, dtype=dtype, quantize=quantize, compile=compile
            )
        mode = compile_mode(compile, pick_device(device))
        if mode is not None and quantize is not None:
            raise ValueError("compile and quantize do not combine; choose one")
        if mode is not None:
            use_cache_dir(compile_cache_dir)
        folder = resolve_model_dir(model, revision)
        hub_id = source_id(folder) or (None if Path(model).expanduser().is_dir() else model)
        loaded = load_checkpoint(folder, hub_id)
        torch_device = pick_device(device)
        torch_dtype, reason = choose_dtype(torch_device, dtype, quantize=quantize)
        log.info("dtype %s: %s", str(torch_dtype).removeprefix("torch."), reason)
        if torch_device.type == "cpu":
            torch.set_num_threads(len(os.sched_getaffinity(0)))
            if dtype:  # the default is native by construction
                _warn_if_slow_on_this_cpu(torch_dtype)
        loaded.module.to(device=torch_device, dtype=torch_dtype).eval()
        if quantize is not None:
            loaded = replace(loaded, module=_quantized(loaded.module, quantize, torch_device))
        compiled = None
        if mode is not None:
            forward = Forward(loaded.module, loaded.normalize, torch_dtype, torch_device)
            compiled = CompiledForward(forward, mode, len(loaded.labels))
        return cls(
            loaded=loaded,
            device=torch_device,
            dtype=torch_dtype,
            name=hub_id or model,
            compiled=compiled,
            quantized=quantize,
            dtype_reason=reason,
        )

    @classmethod
    def _load_open_nsfw(
        cls,
        *,
        device: str | None,
        dtype: str | None,
        quantize: str | None,
        compile: str | None,
    ) -> Classifier:
        """The built-in open-nsfw: onnxruntime on the CPU in float32, so the torch options that
        choose something else are refused rather than silently ignored."""
        clashes = [
            option
            for option, clash in (
                ("--device", device is not None and torch.device(device).type != "cpu"),
                ("--dtype", dtype not in (None, "float32")),
                ("--quantize", quantize is not None),
                ("--compile", compile_mode(compile, torch.device("cpu")) is not None),
            )
            if clash
        ]
        if clashes:
            raise ValueError(
                f"{OPEN_NSFW} runs on onnxruntime on the CPU in float32; drop {', '.join(clashes)}"
            )
        from nsfwd.models.open_nsfw import load_open_nsfw

        return cls(
            loaded=load_open_nsfw(),
            device=torch.device("cpu"),
            dtype=torch.float32,
            name=OPEN_NSFW,
        )

    @property
    def batch_size(self) -> int:
        """The batch size that suits this classifier's device."""
        return default_batch_size(self.device.type)

    @property
    def labels(self) -> tuple[str, ...]:
        """Label names by output index."""
        return self.loaded.labels

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(channels, height, width) the network takes."""
        return self.loaded.input_size

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """One upright RGB image resized and cropped to the network's input, as a CHW tensor
        (uint8 for timm models; normalised on the device by :meth:`predict`). Thread-safe."""
        return self.loaded.prepare(image)

    def blank(self, size: int) -> torch.Tensor:
        """A batch of ``size`` prepared all-black images, for warming the model up."""
        dtype = self.prepare(Image.new("RGB", self.input_size[:0:-1])).dtype
        return torch.zeros((size, *self.input_size), dtype=dtype)

    def warm_up(self, max_batch_size: int, buckets: Sequence[int] | None = None) -> None:
        """Ready the model for batches of up to ``max_batch_size`` before the first request.

        Compiled: fixes the batch sizes :meth:`predict` pads to (``buckets``, by default powers
        of two below ``max_batch_size`` and ``max_batch_size`` itself) and compiles, or loads
        from the cache, a graph for each. Eager: one single-image batch. Call it from the
        thread that will predict (torch keeps its CUDA graph trees per thread).
        """
        if self.compiled is None:
            self.predict(self.blank(1))
            return
        sizes = buckets if buckets is not None else default_buckets(max_batch_size)
        self.compiled.warm_up(sizes, lambda size: self.predict(self.blank(size)))

    def stack(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """One (N, C, H, W) batch of :meth:`prepare` outputs (or the tensor decode path's),
        for :meth:`predict`. Thread-safe, so it can run while the model works on the batch
        before.

        For a CUDA classifier, images prepared on the CPU are stacked into page-locked memory,
        which :meth:`predict` copies to the GPU by DMA without holding up its thread (pageable
        memory is first copied again by the driver, synchronously); images already on the GPU
        are stacked there.
        """
        if not images:
            raise ValueError("no images to stack")
        on_cpu = all(image.device.type == "cpu" for image in images)
        if self.device.type != "cuda" or not on_cpu:
            return torch.stack([image.to(self.device) for image in images])
        first = images[0]
        pinned = torch.empty((len(images), *first.shape), dtype=first.dtype, pin_memory=True)
        return torch.stack(list(images), out=pinned)

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        """Probabilities (N, labels) as float32 on the CPU for an (N, C, H, W) batch of
        :meth:`prepare` outputs. Compiled, any N works: batches are padded to a bucket (and
        split beyond the largest one), so only the warmed-up graphs run."""
        with torch.inference_mode():
            pixels = batch.to(self.device, non_blocking=True)  # asynchronous from pinned memory
            if self.compiled is not None:
                return self.compiled(pixels).cpu()
            pixels = self.loaded.normalize(pixels)
            outputs: torch.Tensor = self.loaded.module(pixels.to(self.dtype)).float()
            if self.loaded.outputs == "logits":
                outputs = torch.softmax(outputs, dim=-1)
            return outputs.cpu()

    def to_labels(self, probs: torch.Tensor) -> list[Labels]:
        """Rows of probabilities to dicts keyed by label name."""
        return [dict(zip(self.labels, row, strict=True)) for row in probs.tolist()]

    def findings(self, probs: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[Finding]:
        """:meth:`to_labels` of a batch's probabilities, as the engine takes a model's answer
        for each picture (a classifier finds no regions, so ``sizes`` go unused)."""
        return [Finding(labels) for labels in self.to_labels(probs)]

    def classify(self, images: Sequence[Image.Image]) -> list[Labels]:
        """Label probabilities for each image, in order."""
        if not images:
            return []
        batch = self.stack([self.prepare(image) for image in images])
        return self.to_labels(self.predict(batch))
