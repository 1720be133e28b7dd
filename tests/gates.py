"""Classifiers held at a gate before each batch, so that a test decides when the model runs.

:class:`GatedClassifier` and :func:`gated_server` serve the API tests: the gate tells when a
batch has reached it, and a gate left shut fails the batch. :class:`SimpleGatedClassifier`
serves the engine and worker tests: it only waits, and runs the batch anyway after 30 s.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from nsfwd.api import create_app
from nsfwd.engine.batcher import Engine
from nsfwd.models.classifier import Classifier
from nsfwd.settings import Settings
from prodia_jobs import MODEL, TOKEN
from servers import serve_app


@dataclass
class GatedClassifier(Classifier):
    """The real classifier, held at a gate before each batch so a test controls the timing."""

    gate: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        assert self.gate.wait(timeout=30), "the test never opened the gate"
        return super().predict(batch)


@contextmanager
def gated_server(
    classifier: Classifier, *, max_queue: int
) -> Iterator[tuple[str, GatedClassifier, Engine]]:
    """A server whose model runs only while the gate is open (it starts open for the warm-up)."""
    gated = GatedClassifier(classifier.loaded, classifier.device, classifier.dtype, classifier.name)
    gated.gate.set()
    settings = Settings(
        model=classifier.name, served_model_name=MODEL, api_keys=[TOKEN], max_queue=max_queue
    )
    engine = Engine(gated, max_batch_size=4, max_queue=max_queue, limits=settings.image_limits)
    with serve_app(create_app(engine, settings)) as url, shut(gated):
        yield url, gated, engine


@dataclass
class SimpleGatedClassifier(Classifier):
    """The real classifier, held at a gate before each batch so tests control timing; it waits
    at most 30 s there, then runs the batch anyway."""

    gate: threading.Event | None = None

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        assert self.gate is not None
        self.gate.wait(timeout=30)
        return super().predict(batch)


async def start_shut(engine: Engine, gate: threading.Event) -> None:
    """Start ``engine`` (its warm-up through the open ``gate``), then shut the gate."""
    gate.set()
    await engine.start()
    gate.clear()


@contextmanager
def shut(model: GatedClassifier) -> Iterator[None]:
    """The model's gate shut for the block (``entered`` cleared, so it tells of the next
    batch), and open again after it, so that nothing waits on it for ever."""
    model.gate.clear()
    model.entered.clear()
    try:
        yield
    finally:
        model.gate.set()


def simple_gated_classifier(classifier: Classifier) -> SimpleGatedClassifier:
    """``classifier``'s model behind a new gate, which starts shut."""
    return SimpleGatedClassifier(
        loaded=classifier.loaded,
        device=classifier.device,
        dtype=classifier.dtype,
        name=classifier.name,
        gate=threading.Event(),
    )
