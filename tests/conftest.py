"""Shared fixtures: random-weight checkpoints in every on-disk style the loader accepts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from checkpoints import write_timm_checkpoint, write_vit_checkpoint
from nsfwd.models import Classifier


@pytest.fixture(scope="session")
def timm_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny EVA-02 in the style timm's save_for_hf / push_to_hub writes."""
    return write_timm_checkpoint(tmp_path_factory.mktemp("timm-style"))


@pytest.fixture(scope="session")
def wrapper_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny EVA-02 in transformers' TimmWrapper style, bf16 weights as Freepik ships."""
    import torch

    folder = tmp_path_factory.mktemp("wrapper-style")
    return write_timm_checkpoint(folder, style="timm_wrapper", dtype=torch.bfloat16)


@pytest.fixture(scope="session")
def vit_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny transformers ViT with labels normal/nsfw."""
    return write_vit_checkpoint(tmp_path_factory.mktemp("vit"))


@pytest.fixture(scope="session")
def classifier(timm_checkpoint: Path) -> Classifier:
    """The tiny EVA-02 loaded on the CPU."""
    return Classifier.load(str(timm_checkpoint))


@pytest.fixture(scope="session")
def server_url(classifier: Classifier) -> Iterator[str]:
    """A real nsfwd server on loopback (tiny EVA-02, API key ``test-key``), shared by the suite."""
    from nsfwd.api import create_app
    from nsfwd.engine import Engine
    from nsfwd.settings import Settings
    from servers import serve_app

    settings = Settings(
        model=str(classifier.name),
        served_model_name="Freepik/nsfw_image_detector",
        api_keys=["test-key"],
    )
    engine = Engine(classifier, max_batch_size=8, max_queue=64, limits=settings.image_limits)
    with serve_app(create_app(engine, settings)) as url:
        yield url
