"""What the engine needs of a loaded model, without torch: :class:`Runner`.

The engine prepares pictures on its decode pool and hands batches of them to the model on one
inference thread; it never looks inside a prepared picture. The torch
:class:`~nsfwd.models.classifier.Classifier` is one runner; the built-in open-nsfw on
onnxruntime (:class:`~nsfwd.models.open_nsfw.OpenNsfw`) is another that needs no torch, so a
server that runs open-nsfw alone (the slim container image) runs without torch installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from PIL import Image

from nsfwd.verdict import Finding

P = TypeVar("P")
"""One prepared picture, as the runner's model takes it (a tensor, an array)."""


class Runner(Protocol[P]):
    """A loaded model as the engine drives it: prepare pictures (thread-safe, on the decode
    pool), then find what batches of them hold (on the one inference thread)."""

    @property
    def name(self) -> str:
        """The model's Hub id, folder or built-in name."""

    @property
    def labels(self) -> tuple[str, ...]:
        """Label names by output index."""

    @property
    def batch_size(self) -> int:
        """The batch size that suits where the model runs."""

    @property
    def kind(self) -> str:
        """``classifier`` or ``detector`` (whose findings carry regions)."""

    @property
    def model_info(self) -> dict[str, str]:
        """Where and how the model runs: ``device``, ``dtype``, ``runtime``, ``dtype_reason``
        (why that route) and ``kind``."""

    def prepare(self, image: Image.Image) -> P:
        """One upright RGB image as the model's input. Thread-safe."""

    def find(self, pictures: Sequence[P], sizes: Sequence[tuple[int, int]]) -> list[Finding]:
        """What the model finds in each prepared picture, in order, in one batch: its labels
        and, for a detector, its regions in the pixels of its view (``sizes``: each view's
        displayed width and height)."""

    def warm_up(self, max_batch_size: int) -> None:
        """Ready the model for batches of up to ``max_batch_size`` before the first request."""
