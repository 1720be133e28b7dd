"""What runs a loaded model along a :class:`~nsfwd.models.routes.Route`: its torch module in a
precision (eager, or compiled with ``torch.compile``), or its OpenVINO model, float or int8
(:mod:`nsfwd.models.openvino_runtime`)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import torch

from nsfwd.models.buckets import Bucketed
from nsfwd.models.calibration import Calibration
from nsfwd.models.checkpoint import LoadedModel
from nsfwd.models.compiled import CompiledForward, Forward
from nsfwd.models.identity import model_key
from nsfwd.models.routes import Route

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ConvertedAway(torch.nn.Module):
    """Where a classifier on the OpenVINO runtime had its torch network: the network was
    converted and its weights freed; the OpenVINO model runs instead."""

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Never called: such a classifier predicts through its runner."""
        raise RuntimeError("this classifier runs on OpenVINO; its torch network was freed")


@dataclass
class RouteBuilder:
    """Builds a loaded model's network for any route: ``loaded.module`` is on ``device`` in
    float32 when several routes are built from it (each other precision is a copy), or already
    in the one route's precision."""

    loaded: LoadedModel
    device: torch.device
    source: str
    """The Hub id or folder the model loaded from, for logs and exports."""
    folder: Path
    """The checkpoint's folder, whose files key the exports."""
    data_dir: Path | None = None
    """Where OpenVINO exports and compiled models are kept; None: converted in memory."""
    calibration: Calibration | None = None
    compile_mode: str | None = None

    @cached_property
    def model_key(self) -> str:
        """The key of the checkpoint (:func:`~nsfwd.models.identity.model_key`)."""
        return model_key(self.folder, self.source)

    def build(self, route: Route) -> tuple[LoadedModel, Bucketed | None]:
        """The loaded model as ``route`` runs it, and its runner (None: eager torch)."""
        if route.runtime == "openvino":
            return replace(self.loaded, module=ConvertedAway()), self._openvino(route)
        dtype = DTYPES[route.dtype]
        module = self.loaded.module
        if next(module.parameters()).dtype != dtype:
            module = copy.deepcopy(module).to(dtype)
        runner = None
        if self.compile_mode is not None:
            forward = Forward(module, self.loaded.normalize, dtype, self.device)
            runner = CompiledForward(forward, self.compile_mode, len(self.loaded.labels))
        return replace(self.loaded, module=module), runner

    def _openvino(self, route: Route) -> Bucketed:
        from nsfwd.models.openvino_runtime import PRECISIONS, OpenVinoForward, exported, store

        calibration = None
        if route.quantize is not None:
            calibration = self.calibration or Calibration()
        model = exported(
            self.loaded,
            source=self.source,
            model_key=self.model_key,
            data_dir=self.data_dir,
            calibration=calibration,
        )
        return OpenVinoForward(
            model,
            len(self.loaded.labels),
            variant=route.quantize or "float",
            precision=None if route.quantize else PRECISIONS[DTYPES[route.dtype]],
            cache_dir=None if self.data_dir is None else store(self.data_dir) / "compiled",
        )
