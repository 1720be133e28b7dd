"""The classifier: a batch of images in, a batch of per-label probabilities out.

It knows nothing of HTTP, asyncio or files, so the same object serves the CLI, the HTTP engine
and, later, a Ray Serve replica or a Ray Data ``map_batches`` worker.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import torch
from PIL import Image

from nsfwd.models.buckets import Bucketed, default_buckets
from nsfwd.models.calibration import Calibration
from nsfwd.models.checkpoint import LoadedModel, load_checkpoint
from nsfwd.models.choice import Choice, Choices, choose, prepared_images
from nsfwd.models.compiled import compile_mode, use_cache_dir
from nsfwd.models.cpu import (
    computes_natively,
    cpu_features,
    cpu_flags,
    default_cpu_dtype,
    has_int8_dot_products,
)
from nsfwd.models.hub import resolve_model_dir, source_id
from nsfwd.models.identity import machine, machine_key
from nsfwd.models.names import DEFAULT_MODEL, OPEN_NSFW, default_batch_size
from nsfwd.models.openvino_runtime import available as openvino_available
from nsfwd.models.routes import (
    AS_ASKED,
    EXACT,
    Plan,
    Route,
    check_options,
    plan,
    route_info,
)
from nsfwd.models.runners import DTYPES, RouteBuilder
from nsfwd.verdict import Finding, Labels

__all__ = ["DTYPES", "Classifier", "choose_dtype", "pick_device"]

log = logging.getLogger(__name__)


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


def _warn_if_slow_on_this_cpu(dtype: torch.dtype) -> None:
    if not computes_natively(dtype):
        name = str(dtype).removeprefix("torch.")
        log.warning(
            "%s on this CPU (%s) is emulated: it runs several times slower than float32, "
            "the exact mode; --quantize int8 is the fast CPU mode",
            name,
            cpu_features(),
        )


@dataclass
class Classifier:
    """A loaded image classifier on one device."""

    loaded: LoadedModel
    device: torch.device
    dtype: torch.dtype
    name: str
    runner: Bucketed | None = None
    """What runs the network at fixed batch sizes (``torch.compile``'s graphs, or OpenVINO's
    compiled model); None: the torch module, eagerly."""
    quantized: str | None = None
    """The quantisation applied (``int8``), or None for the model's own weights."""
    dtype_reason: str = AS_ASKED
    """Why this route (:attr:`runtime`, :attr:`dtype`, :attr:`quantized`): ``as asked``, the
    device's default, or what the start-up measurement found (:mod:`nsfwd.models.choice`)."""
    runtime: str = "torch"
    """``torch`` or ``openvino``."""
    kind: Final = "classifier"

    @classmethod
    def load(
        cls,
        model: str = DEFAULT_MODEL,
        *,
        revision: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        runtime: str | None = None,
        quantize: str | None = None,
        compile: str | None = None,
        compile_cache_dir: str | os.PathLike[str] | None = None,
        data_dir: Path | None = None,
        calibration: Calibration | None = None,
    ) -> Classifier:
        """Load ``model`` (a Hub id, a folder, or :data:`~nsfwd.models.names.OPEN_NSFW`, the
        built-in model, which wins over a folder of that name: write ``./open-nsfw`` for the
        folder) onto ``device``.

        The route (``runtime``, ``dtype``, ``quantize``) is what the options fix
        (:func:`~nsfwd.models.routes.plan`: ``runtime`` alone runs in the device's default
        precision). With none on a CPU and a ``data_dir``, the start-up measurement chooses
        (:mod:`nsfwd.models.choice`), once per machine and model, keeping its choice and the
        OpenVINO models it converts in ``data_dir``; without ``data_dir`` nothing is measured:
        torch in the CPU's default precision for its flags.

        ``quantize="int8"`` is static int8 on OpenVINO, calibrated on ``calibration`` (default:
        the bench's photo-like JPEGs): it trades a little agreement with the exact mode for CPU
        speed. ``compile`` (``on`` or a ``torch.compile`` mode; see
        :mod:`nsfwd.models.compiled`) compiles the network for fixed batch sizes, caching the
        graphs in ``compile_cache_dir`` (default: ``~/.cache/nsfwd/torch-compile``). Call
        :meth:`warm_up` before serving.
        """
        if model == OPEN_NSFW:
            return cls._load_open_nsfw(
                device=device, dtype=dtype, runtime=runtime, quantize=quantize, compile=compile
            )
        torch_device = pick_device(device)
        mode = compile_mode(compile, torch_device)
        check_options(
            torch_device, dtype=dtype, runtime=runtime, quantize=quantize, compiled=bool(mode)
        )
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        if mode is not None:
            use_cache_dir(compile_cache_dir)
        folder = resolve_model_dir(model, revision)
        hub_id = source_id(folder) or (None if Path(model).expanduser().is_dir() else model)
        loaded = load_checkpoint(folder, hub_id)
        if torch_device.type == "cpu":
            torch.set_num_threads(len(os.sched_getaffinity(0)))
        default, why = choose_dtype(torch_device)
        default_name = str(default).removeprefix("torch.")
        planned = plan(
            torch_device,
            dtype=dtype,
            runtime=runtime,
            quantize=quantize,
            compiled=mode is not None,
            default_dtype=(default_name, why),
            native_bf16=computes_natively(torch.bfloat16),
            openvino=openvino_available(),
        )
        routes = planned.routes
        if len(routes) > 1 and data_dir is None:  # nowhere to keep a choice: the flags decide
            routes = [Route("torch", default_name)]
            planned = Plan(routes, why)
        single = len(routes) == 1 and routes[0].runtime == "torch"
        base = DTYPES[routes[0].dtype] if single else torch.float32
        loaded.module.to(device=torch_device, dtype=base).eval()
        builder = RouteBuilder(
            loaded,
            torch_device,
            source=hub_id or model,
            folder=folder,
            data_dir=data_dir,
            calibration=calibration,
            compile_mode=mode,
        )
        if len(routes) == 1:
            classifier = cls._built(builder, routes[0], planned.reason)
        else:
            assert data_dir is not None
            classifier = cls._chosen(builder, routes, data_dir)
        log.info("dtype %s: %s", classifier.route.dtype, classifier.dtype_reason)
        log.info("runtime %s", classifier.route)
        if dtype and classifier.runtime == "torch" and torch_device.type == "cpu":
            _warn_if_slow_on_this_cpu(classifier.dtype)  # a chosen precision is native
        if quantize and not has_int8_dot_products(cpu_flags()):
            log.warning(
                "int8 on this CPU (%s, no VNNI or AMX-INT8) ran no faster than float32 where "
                "measured (BENCHMARKS.md), and agrees less with the exact mode",
                cpu_features(),
            )
        return classifier

    @classmethod
    def _built(cls, builder: RouteBuilder, route: Route, reason: str) -> Classifier:
        loaded, runner = builder.build(route)
        return cls(
            loaded=loaded,
            device=builder.device,
            dtype=DTYPES[route.dtype],
            name=builder.source,
            runner=runner,
            quantized=route.quantize,
            dtype_reason=reason,
            runtime=route.runtime,
        )

    @classmethod
    def _chosen(cls, builder: RouteBuilder, routes: list[Route], data_dir: Path) -> Classifier:
        """The classifier on the route the start-up measurement chose for this model on this
        machine: kept from an earlier start (or by a process starting beside this one), else
        measured now (and kept)."""
        facts = machine()
        choices = Choices(data_dir)
        runnables: dict[Route, Classifier] = {}

        def measure() -> Choice:
            runnables.update(cls._candidates(builder, routes))
            log.info(
                "measuring %s on this machine (once; the choice is kept in %s) ...",
                ", ".join(map(str, runnables)),
                choices.path,
            )
            pixels, images = prepared_images(builder.loaded.prepare)
            return choose(
                [route for route in routes if route in runnables],
                dict(runnables),
                pixels,
                images,
                batch_size=default_batch_size("cpu"),
            )

        key = f"{builder.model_key}/{machine_key(facts)}"
        choice = choices.kept_or_measured(
            key, routes, measure, {"model": builder.source, "machine": facts}
        )
        if choice.route not in runnables:  # kept: build that route alone
            return cls._built(builder, choice.route, choice.reason)
        chosen = runnables[choice.route]
        chosen.dtype_reason = choice.reason
        return chosen

    @classmethod
    def _candidates(cls, builder: RouteBuilder, routes: list[Route]) -> dict[Route, Classifier]:
        """A classifier for the exact mode and each of ``routes`` that can run this model."""
        runnables: dict[Route, Classifier] = {}
        for route in dict.fromkeys([EXACT, *routes]):
            try:
                runnables[route] = cls._built(builder, route, "")
            except Exception as exc:  # a runtime that cannot take this model is no candidate
                log.warning("%s cannot run %s, no candidate then: %s", route, builder.source, exc)
        return runnables

    @classmethod
    def _load_open_nsfw(
        cls,
        *,
        device: str | None,
        dtype: str | None,
        runtime: str | None,
        quantize: str | None,
        compile: str | None,
    ) -> Classifier:
        """The built-in open-nsfw: onnxruntime on the CPU in float32, so the torch options that
        choose something else are refused rather than silently ignored."""
        from nsfwd.models.open_nsfw import load_open_nsfw
        from nsfwd.models.open_nsfw_torch import as_loaded_model

        runner = load_open_nsfw(
            device=device, dtype=dtype, runtime=runtime, quantize=quantize, compile=compile
        )
        return cls(
            loaded=as_loaded_model(runner),
            device=torch.device("cpu"),
            dtype=torch.float32,
            name=OPEN_NSFW,
            dtype_reason=runner.model_info["dtype_reason"],
            runtime=runner.model_info["runtime"],
        )

    @property
    def route(self) -> Route:
        """How this classifier runs: runtime, precision, quantisation."""
        return Route(self.runtime, str(self.dtype).removeprefix("torch."), self.quantized)

    @property
    def batch_size(self) -> int:
        """The batch size that suits this classifier's device."""
        return default_batch_size(self.device.type)

    @property
    def labels(self) -> tuple[str, ...]:
        """Label names by output index."""
        return self.loaded.labels

    @property
    def model_info(self) -> dict[str, str]:
        """Where and how the model runs (:meth:`~nsfwd.models.runner.Runner.model_info`)."""
        return route_info(self.device, self.route, self.dtype_reason, self.kind)

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
        return self.loaded.blank(size)

    def warm_up(self, max_batch_size: int, buckets: Sequence[int] | None = None) -> None:
        """Ready the model for batches of up to ``max_batch_size`` before the first request.

        With a :attr:`runner` (compiled, or OpenVINO): fixes the batch sizes :meth:`predict`
        pads to (``buckets``, by default powers of two below ``max_batch_size`` and
        ``max_batch_size`` itself) and compiles, or loads from the cache, a network for each.
        Eager: one single-image batch. Call it from the thread that will predict (torch keeps
        its CUDA graph trees per thread).
        """
        if self.runner is None:
            self.predict(self.blank(1))
            return
        sizes = buckets if buckets is not None else default_buckets(max_batch_size)
        self.runner.warm_up(sizes, lambda size: self.predict(self.blank(size)))

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
        :meth:`prepare` outputs. With a :attr:`runner`, any N works: batches are padded to a
        bucket (and split beyond the largest one), so only the warmed-up networks run."""
        with torch.inference_mode():
            pixels = batch.to(self.device, non_blocking=True)  # asynchronous from pinned memory
            if self.runner is not None:
                return self.runner(pixels).cpu()
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

    def label(self, pictures: Sequence[torch.Tensor]) -> list[Labels]:
        """Label probabilities for each :meth:`prepare` output, in order, in one batch."""
        return self.to_labels(self.predict(self.stack(pictures)))

    def find(
        self, pictures: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]]
    ) -> list[Finding]:
        """Each picture's labels, in one batch (what the engine's inference thread runs)."""
        return [Finding(labels) for labels in self.label(pictures)]

    def classify(self, images: Sequence[Image.Image]) -> list[Labels]:
        """Label probabilities for each image, in order."""
        if not images:
            return []
        return self.label([self.prepare(image) for image in images])
