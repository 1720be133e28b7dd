"""Random-weight checkpoints written in the real on-disk formats (tests never download).

Random EVA-02 weights give near-uniform probabilities whatever the image, which would make parity
checks pass vacuously; ``write_timm_checkpoint`` therefore scales the classifier head so the
probabilities move by tenths between images. The compute is the same as the real model's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import timm
import torch
from safetensors.torch import save_file
from timm.models import save_for_hf

SEVERITY = ["neutral", "low", "medium", "high"]
Style = Literal["timm", "timm_wrapper"]


def _sensitive_model(arch: str, num_classes: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes).eval()
    head = model.get_classifier()
    assert isinstance(head, torch.nn.Linear)
    with torch.no_grad():
        head.weight.normal_(0.0, 1.5 / head.in_features**0.5)
        head.bias.zero_()
    return model


def write_timm_checkpoint(
    folder: Path,
    *,
    arch: str = "eva02_tiny_patch14_224",
    labels: list[str] | None = None,
    style: Style = "timm",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Path:
    """Write a random-weight timm classifier as ``save_for_hf`` or transformers would."""
    labels = labels or SEVERITY
    model = _sensitive_model(arch, len(labels), seed)
    folder.mkdir(parents=True, exist_ok=True)
    if style == "timm":
        save_for_hf(
            model.to(dtype),
            str(folder),
            model_config={"label_names": labels},
            safe_serialization=True,
        )
        return folder
    save_for_hf(model, str(folder), safe_serialization=True)
    config = json.loads((folder / "config.json").read_text())
    config.pop("model_args", None)
    config.update(
        model_type="timm_wrapper",
        architectures=["TimmWrapperForImageClassification"],
        id2label={str(i): name for i, name in enumerate(labels)},
        label2id={name: i for i, name in enumerate(labels)},
        torch_dtype=str(dtype).removeprefix("torch."),
    )
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    state = {f"timm_model.{k}": v.to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def write_vit_checkpoint(folder: Path, labels: tuple[str, ...] = ("normal", "nsfw")) -> Path:
    """Write a tiny random transformers ViT classifier, shaped like Falconsai's."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=64,
        patch_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder
