"""The built-in ``open-nsfw`` for the torch side: :class:`~nsfwd.models.open_nsfw.OpenNsfw`
behind a torch module, as a :class:`~nsfwd.models.checkpoint.LoadedModel`, so that
:class:`~nsfwd.models.classifier.Classifier` and what builds on it (``nsfwd classify``, bench,
calibrate, Ray Data) run it unchanged. The server's engine takes the runner itself, without
torch."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from nsfwd.models.checkpoint import LoadedModel
from nsfwd.models.open_nsfw import INPUT_SIZE, OpenNsfw


class OnnxNetwork(torch.nn.Module):
    """The runner as a torch module: an (N, C, H, W) float32 batch in, the session's (N, labels)
    probabilities out."""

    def __init__(self, runner: OpenNsfw) -> None:
        super().__init__()
        self.runner = runner

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Run the whole batch in one session call; the network takes channels last (NHWC)."""
        batch = np.ascontiguousarray(pixels.detach().cpu().permute(0, 2, 3, 1).numpy())
        return torch.from_numpy(self.runner.run(batch))


def _as_float(batch: torch.Tensor) -> torch.Tensor:
    return batch.to(torch.float32)


def as_loaded_model(runner: OpenNsfw) -> LoadedModel:
    """``runner`` as the torch side's model: its preprocessing as a CHW float32 tensor (the
    network module turns the batch back to NHWC, so nothing is recomputed)."""

    def prepare(image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(runner.prepare(image).transpose(2, 0, 1))

    return LoadedModel(
        module=OnnxNetwork(runner),
        labels=runner.labels,
        prepare=prepare,
        normalize=_as_float,
        input_size=INPUT_SIZE,
        style="onnx",
        outputs="probabilities",
    )
