"""Random-weight checkpoints written in the real on-disk formats (tests never download)."""

from __future__ import annotations

from pathlib import Path

import torch

from nsfwd.models.synthetic import write_timm_checkpoint

SEVERITY = ["neutral", "low", "medium", "high"]
VIT = "vit"
"""The tiny ViT's name where a server serves it beside the tiny EVA-02."""

__all__ = ["SEVERITY", "VIT", "write_timm_checkpoint", "write_vit_checkpoint"]


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
