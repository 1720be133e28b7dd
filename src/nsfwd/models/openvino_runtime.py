"""The OpenVINO runtime for a loaded model: the torch module converted once (normalisation,
network and softmax in one graph, batch size free), statically quantised to int8 by NNCF when
asked, kept in the data directory as an export (:mod:`nsfwd.models.openvino_network`), and run
on OpenVINO's CPU plugin at fixed batch sizes (:class:`OpenVinoForward`).

Where things are kept, under ``DATA_DIR/openvino/``: ``MODEL_KEY/float`` and
``MODEL_KEY/int8-float-head-CALIBRATION_KEY`` (the exports), ``compiled/`` (OpenVINO's cache
of compiled models, one per batch size and precision). A key changes with the checkpoint's
files and the versions that shape the graph, so a stale export is never read.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from nsfwd.models.buckets import Bucketed
from nsfwd.models.checkpoint import LoadedModel
from nsfwd.models.compiled import Forward
from nsfwd.models.openvino_network import (
    ExportMeta,
    OpenVinoNetwork,
    Precision,
    openvino_module,
    read_export,
    write_export,
)

if TYPE_CHECKING:
    import openvino as ov

    from nsfwd.models.calibration import Calibration

log = logging.getLogger(__name__)

MAX_BATCH = 4096
"""The largest batch the converted graph is declared for (each size is compiled on its own)."""
INT8_FOLDER = "int8-float-head"
"""The int8 exports' folder prefix, named for how they are quantised (:func:`quantize_int8`),
so that one quantised another way is not read back."""
PRECISIONS: dict[torch.dtype, Precision] = {torch.float32: "f32", torch.bfloat16: "bf16"}
"""The inference precision OpenVINO is asked for, by the dtype nsfwd names it with."""


def available() -> bool:
    """Whether the OpenVINO runtime is installed (``nsfwd[openvino]``), without importing it."""
    return importlib.util.find_spec("openvino") is not None


def store(data_dir: Path) -> Path:
    """Where the exports and OpenVINO's compiled models are kept in ``data_dir``."""
    return data_dir / "openvino"


@contextlib.contextmanager
def _no_telemetry() -> Iterator[None]:
    """OpenVINO's converter and NNCF send usage telemetry unless told otherwise; a
    self-hosted server phones nobody. Both stay silent in a CI environment (``CI=true``,
    ``NNCF_CI``), the one switch they read on every call, so it is set while they run."""
    saved = {name: os.environ.get(name) for name in ("CI", "NNCF_CI")}
    os.environ.update(CI="true", NNCF_CI="1")
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def convert(loaded: LoadedModel) -> ov.Model:
    """The loaded model's forward pass (pixels as :meth:`LoadedModel.prepare` gives them to
    probabilities) as an OpenVINO model with a free batch size, in float32.

    The module goes through ``torch.export`` (with a dynamic batch dimension), not through
    OpenVINO's default of tracing it with ``torch.jit.trace``, which PyTorch deprecates.
    """
    openvino = openvino_module()
    module = loaded.module
    if next(module.parameters()).dtype != torch.float32:
        raise ValueError("the OpenVINO runtime converts from float32 weights")
    forward = Forward(module, loaded.normalize, torch.float32, torch.device("cpu")).eval()
    example = loaded.blank(2)  # 2, not 1: export specialises a dimension of size 1
    element = openvino.Type.u8 if example.dtype == torch.uint8 else openvino.Type.f32
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    started = time.perf_counter()
    with _no_telemetry(), torch.no_grad():
        program = torch.export.export(forward, (example,), dynamic_shapes=({0: batch},))
        model: ov.Model = openvino.convert_model(
            program, input=[([-1, *loaded.input_size], element)]
        )
    log.info("converted to OpenVINO in %.1f s", time.perf_counter() - started)
    return model


def _model_type(module: torch.nn.Module) -> Any:
    """NNCF's model type: transformer for a network with attention layers (its quantiser then
    smooths activations and keeps softmax and layer norms in float), else the generic one."""
    import nncf

    attention = any("Attention" in type(child).__name__ for child in module.modules())
    return nncf.ModelType.TRANSFORMER if attention else None


def head(model: ov.Model) -> str | None:
    """The name of the classifier head: the matrix multiplication that the output's softmax
    reads (through a bias addition or a reshape), or None when there is none. Its input, one
    pooled vector an image, is where an int8 range costs most agreement and saves least time."""
    node = model.get_results()[0].input_value(0).get_node()
    for _ in range(4):
        if node.get_type_name() == "MatMul":
            return str(node.get_friendly_name())
        if node.get_input_size() == 0:
            return None
        node = node.input_value(0).get_node()
    return None


def _float_head(model: ov.Model) -> Any:
    import nncf

    name = head(model)
    return nncf.IgnoredScope(names=[name] if name else [], validate=False)


def quantize_int8(
    model: ov.Model, samples: Sequence[np.ndarray], module: torch.nn.Module
) -> ov.Model:
    """``model`` statically quantised to int8 by NNCF's post-training quantisation: weights and
    activations of the matrix multiplications in int8, with ranges calibrated on ``samples``
    (each a batch of one image's pixels); the classifier head (:func:`head`) stays in float."""
    try:
        import nncf
    except ImportError as exc:
        raise ImportError(
            "int8 is calibrated by NNCF, which is not installed: pip install 'nsfwd[openvino]'"
        ) from exc
    started = time.perf_counter()
    # NNCF's progress bars go to stderr: stdout holds `nsfwd classify`'s records.
    with _no_telemetry(), contextlib.redirect_stdout(sys.stderr):
        quantized: ov.Model = nncf.quantize(
            model,
            nncf.Dataset(list(samples)),
            model_type=_model_type(module),
            subset_size=len(samples),
            ignored_scope=_float_head(model),
        )
    log.info(
        "quantised to int8 (NNCF, %d calibration images) in %.1f s",
        len(samples),
        time.perf_counter() - started,
    )
    return quantized


def _meta(loaded: LoadedModel, source: str, variant: str, calibration: str = "") -> ExportMeta:
    prepared = loaded.blank(1)
    return ExportMeta(
        labels=loaded.labels,
        input_size=loaded.input_size,
        input_dtype="uint8" if prepared.dtype == torch.uint8 else "float32",
        variant=variant,
        preprocessing=loaded.preprocessing,
        source=source,
        calibration=calibration,
    )


def exported(
    loaded: LoadedModel,
    *,
    source: str,
    model_key: str,
    data_dir: Path | None,
    calibration: Calibration | None = None,
) -> ov.Model:
    """The OpenVINO model of ``loaded``: float, or int8 calibrated on ``calibration``; read
    from the data directory, else converted (and quantised) now and kept there (with no data
    directory, made in memory only)."""
    if data_dir is None:
        model = convert(loaded)
        return model if calibration is None else _quantized(loaded, model, calibration)
    folder = store(data_dir) / model_key
    float_folder = folder / "float"
    int8_folder = None if calibration is None else folder / f"{INT8_FOLDER}-{calibration.key}"
    target = int8_folder or float_folder
    model = _kept(target)
    if model is not None:
        return model
    model = _kept(float_folder)
    if model is None:
        model = convert(loaded)
        write_export(model, _meta(loaded, source, "float"), float_folder)
    if calibration is None:
        return model
    quantized = _quantized(loaded, model, calibration)
    write_export(quantized, _meta(loaded, source, "int8", calibration.describe()), target)
    return quantized


def _kept(folder: Path) -> ov.Model | None:
    """The export kept in ``folder``, or None. One that cannot be read (a disk that filled up,
    files edited by hand) is removed, to be made again."""
    if not folder.exists():
        return None
    try:
        model, _ = read_export(folder)
    except ValueError as exc:
        log.warning("%s; converting again", exc)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    log.info("OpenVINO model from %s", folder)
    return model


def _quantized(loaded: LoadedModel, model: ov.Model, calibration: Calibration) -> ov.Model:
    samples = [pixels.unsqueeze(0).numpy() for pixels in calibration.samples(loaded.prepare)]
    return quantize_int8(model, samples, loaded.module)


class OpenVinoForward(Bucketed):
    """An OpenVINO model, as exported, on the CPU plugin at fixed batch sizes: the
    :class:`~nsfwd.models.buckets.Bucketed` runner of a classifier on the OpenVINO runtime.
    A compiled model runs its first batch no slower than later ones, so warming up runs one
    image, not a batch of each size: seconds of a cold start on a small CPU."""

    made_by_running = False

    def __init__(
        self,
        model: ov.Model,
        num_labels: int,
        *,
        variant: str,
        precision: Precision | None,
        cache_dir: Path | None,
    ) -> None:
        super().__init__(num_labels)
        self.variant = variant
        self.network = OpenVinoNetwork(model, precision=precision, cache_dir=cache_dir)

    @property
    def name(self) -> str:
        """``openvino`` and its precision (``f32``, ``bf16``) or ``int8``."""
        return f"openvino {self.variant if self.variant != 'float' else self.network.precision}"

    def _make(self, buckets: tuple[int, ...]) -> None:
        self.network.threads = torch.get_num_threads()  # as torch was told (a Ray actor's share)
        started = time.perf_counter()
        self.network.compile(buckets)
        log.info(
            "%s compiled for batch sizes %s in %.1f s (cache: %s)",
            self.name,
            ", ".join(map(str, buckets)),
            time.perf_counter() - started,
            self.network.cache_dir,
        )

    def _run(self, padded: torch.Tensor) -> torch.Tensor:
        if len(padded) not in self.network.sizes:  # a host that did not warm up: compile now
            self._make((len(padded),))
        return torch.from_numpy(self.network(padded.numpy()))
