"""An exported network on OpenVINO's CPU plugin, without torch: numpy pixels in, probabilities
out, compiled for fixed batch sizes.

An export is a folder: OpenVINO's IR (``model.xml`` and ``model.bin``, the whole forward pass
from pixels to probabilities, batch size free) and ``nsfwd-model.json`` (:class:`ExportMeta`:
labels, input, how the pixels are prepared). nsfwd writes one for every model it runs on the
OpenVINO runtime (:mod:`nsfwd.models.openvino_runtime`, in the data directory); a host without
torch can load such a folder with :func:`read_export` and run it through
:class:`OpenVinoNetwork`. Compiled batch sizes are kept in OpenVINO's own model cache
(``CACHE_DIR``), so a restart compiles nothing.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import openvino as ov

log = logging.getLogger(__name__)

MODEL_FILE = "model.xml"
META_FILE = "nsfwd-model.json"
EXPORT_FORMAT = 1
"""The version of the folder format: a change to what the files hold bumps it."""
INSTALL_HINT = "pip install 'nsfwd[openvino]'"

Precision = Literal["f32", "bf16"]
"""OpenVINO's inference precision hints that nsfwd uses."""


@dataclass(frozen=True)
class ExportMeta:
    """What a host needs beside the IR to classify images with it."""

    labels: tuple[str, ...]
    input_size: tuple[int, int, int]
    """(channels, height, width) of one image."""
    input_dtype: Literal["uint8", "float32"]
    """``uint8``: pixels as the image holds them, normalised inside the graph (timm models);
    ``float32``: the model's processor output (transformers models)."""
    variant: str
    """``float`` (the network's own weights) or ``int8`` (statically quantised)."""
    preprocessing: dict[str, Any] = field(default_factory=dict)
    """How pixels are prepared before the graph: timm's data config (``interpolation``,
    ``crop_pct``, ``crop_mode``, ``mean``, ``std``) for timm models; empty for others."""
    source: str = ""
    """The model it was exported from (Hub id or folder)."""
    calibration: str = ""
    """For ``int8``: the images it was calibrated on."""
    format: int = EXPORT_FORMAT

    def to_json(self) -> str:
        """The metadata as the JSON file holds it."""
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ExportMeta:
        """Metadata read back from :meth:`to_json`'s text; ValueError when it is not that."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
            raise ValueError(f"not an nsfwd export of format {EXPORT_FORMAT}")
        data["labels"] = tuple(data["labels"])
        data["input_size"] = tuple(data["input_size"])
        return cls(**data)


def openvino_module() -> Any:
    """The ``openvino`` package; ImportError saying how to install it."""
    try:
        import openvino
    except ImportError as exc:
        raise ImportError(f"the OpenVINO runtime is not installed: {INSTALL_HINT}") from exc
    return openvino


@cache
def core() -> ov.Core:
    """This process's OpenVINO core (one per process, as OpenVINO advises)."""
    core: ov.Core = openvino_module().Core()
    return core


def read_export(folder: Path) -> tuple[ov.Model, ExportMeta]:
    """The IR and metadata in ``folder``; ValueError when either is missing or unreadable."""
    try:
        meta = ExportMeta.from_json((folder / META_FILE).read_text())
        model = core().read_model(folder / MODEL_FILE)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ValueError(f"{folder} holds no readable nsfwd export: {exc}") from exc
    return model, meta


def write_export(model: ov.Model, meta: ExportMeta, folder: Path) -> Path:
    """Save ``model`` and ``meta`` as ``folder``, atomically: written into a sibling folder
    first and renamed, so a process reading it never sees half an export. When another process
    wrote it first, theirs is kept."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = folder.with_name(f".{folder.name}.{os.getpid()}.{threading.get_ident()}")
    partial.mkdir()
    openvino_module().save_model(model, partial / MODEL_FILE, compress_to_fp16=False)
    (partial / META_FILE).write_text(meta.to_json())
    try:
        partial.rename(folder)
    except OSError:  # written meanwhile by another process: theirs is as good
        for child in partial.iterdir():
            child.unlink()
        partial.rmdir()
    return folder


def default_threads() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0))


class OpenVinoNetwork:
    """An OpenVINO model compiled on the CPU for each batch size asked for, one at a time.

    ``precision`` is the inference precision hint (None: the plugin's default, which is bf16
    on CPUs with native bf16); ``cache_dir`` keeps compiled models across restarts. Thread-safe:
    a batch runs under a lock, so one compiled model serves one caller at a time, which is
    what nsfwd's single inference thread needs.
    """

    def __init__(
        self,
        model: ov.Model,
        *,
        precision: Precision | None = None,
        cache_dir: Path | None = None,
        threads: int | None = None,
    ) -> None:
        self.model = model
        self.precision = precision
        self.cache_dir = cache_dir
        self.threads = threads
        self._requests: dict[int, Any] = {}
        self._lock = threading.Lock()

    def config(self) -> dict[str, str]:
        """The CPU plugin's settings: one stream with every thread on it (latency), the
        precision hint, the cache."""
        config = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": str(self.threads or default_threads()),
        }
        if self.precision is not None:
            config["INFERENCE_PRECISION_HINT"] = self.precision
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(self.cache_dir)
        return config

    def compile(self, sizes: Sequence[int]) -> None:
        """Compile (or load from the cache) the model for each batch size in ``sizes``."""
        for size in sizes:
            if size in self._requests:
                continue
            shaped = self.model.clone()
            shape = shaped.input(0).get_partial_shape()
            rest = [shape[axis].get_length() for axis in range(1, shape.rank.get_length())]
            shaped.reshape({shaped.input(0): [size, *rest]})  # the image's dimensions are fixed
            compiled = core().compile_model(shaped, "CPU", self.config())
            self._requests[size] = compiled.create_infer_request()

    @property
    def sizes(self) -> tuple[int, ...]:
        """The batch sizes compiled so far."""
        return tuple(sorted(self._requests))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for ``batch``, whose size must be one of :attr:`sizes`."""
        request = self._requests.get(len(batch))
        if request is None:
            raise ValueError(
                f"no model compiled for batches of {len(batch)}; compiled: {self.sizes}"
            )
        with self._lock:
            request.infer([np.ascontiguousarray(batch)])
            output: np.ndarray = request.get_output_tensor(0).data.copy()
        return output
