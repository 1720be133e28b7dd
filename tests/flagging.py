"""A classifier that reads the convention of :mod:`format_files`: it flags a picture whose
upper half is blue and lower half red, seen upright, and nothing else, so a test knows from
the labels which picture of a file answered and whether it was turned the right way up."""

from __future__ import annotations

import pytest
import torch

from nsfwd.models.classifier import Classifier


class FlagClassifier(Classifier):
    """The tiny model's plumbing, but P(high) is (blue of the upper half) x (red of the lower
    half), each from 0 to 1: 1 for an upright flag, 0.25 for one on its side, 0 for red."""

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        pixels = batch.float() / 255.0
        half = pixels.shape[2] // 2
        blue_above = pixels[:, 2, :half].mean(dim=(1, 2))
        red_below = pixels[:, 0, half:].mean(dim=(1, 2))
        probs = torch.zeros((batch.shape[0], len(self.labels)))
        probs[:, self.labels.index("high")] = blue_above * red_below
        probs[:, self.labels.index("neutral")] = 1.0 - blue_above * red_below
        return probs


@pytest.fixture(scope="module")
def flagger(timm_checkpoint: object) -> FlagClassifier:
    """The :class:`FlagClassifier` on the tiny EVA-02's plumbing (fp32, CPU)."""
    loaded = Classifier.load(str(timm_checkpoint), dtype="float32")
    return FlagClassifier(loaded.loaded, loaded.device, loaded.dtype, "flagger")
