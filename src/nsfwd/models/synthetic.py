"""Random-weight checkpoints in the real on-disk formats, for tests and benchmarks.

The same architecture with random weights costs the same compute as the trained one, so
benchmarks run on these where the Hub cannot be reached. Random EVA-02 weights give near-uniform
probabilities whatever the image, which would make parity checks pass vacuously, so the classifier
head is drawn with a larger scale: probabilities then move by tenths between images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file

from nsfwd.models.checkpoint import SEVERITY_LABELS, TIMM_PREFIX

Style = Literal["timm", "timm_wrapper"]
HEAD_SCALE = 1.5


def random_timm_model(
    arch: str, num_classes: int, seed: int = 0, model_args: dict[str, Any] | None = None
) -> torch.nn.Module:
    """A timm classifier with random weights and an input-sensitive head; ``model_args`` go
    to ``timm.create_model`` (``depth=2`` for a network that costs little to trace)."""
    import timm

    torch.manual_seed(seed)
    created: Any = timm.create_model(
        arch, pretrained=False, num_classes=num_classes, **(model_args or {})
    )
    model: torch.nn.Module = created
    head = created.get_classifier()
    assert isinstance(head, torch.nn.Linear)
    with torch.no_grad():
        head.weight.normal_(0.0, HEAD_SCALE / head.in_features**0.5)
        head.bias.zero_()
    return model.eval()


def write_timm_checkpoint(
    folder: Path,
    *,
    arch: str = "eva02_tiny_patch14_224",
    labels: tuple[str, ...] | list[str] = SEVERITY_LABELS,
    style: Style = "timm",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    model_args: dict[str, Any] | None = None,
) -> Path:
    """Write a random-weight timm classifier as ``save_for_hf`` (``timm``) or transformers'
    TimmWrapper (``timm_wrapper``: ``model_type``, ``id2label``, ``timm_model.`` keys) would.
    ``model_args`` (timm style only) change the architecture and are kept in the config."""
    from timm.models import save_for_hf

    labels = list(labels)
    model = random_timm_model(arch, len(labels), seed, model_args).to(dtype)
    folder.mkdir(parents=True, exist_ok=True)
    if style == "timm":
        save_for_hf(
            model,
            str(folder),
            model_config={"label_names": labels},
            model_args=model_args,
            safe_serialization=True,
        )
        return folder
    if model_args:
        raise ValueError("model_args are kept in timm-style checkpoints only")
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
    state = {TIMM_PREFIX + k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def write_detector_checkpoint(
    folder: Path, labels: tuple[str, ...] = ("EXPOSED", "COVERED", "FACE"), seed: int = 0
) -> Path:
    """Write a tiny random-weight transformers object detector (YOLOS, the smallest of the
    DETR kin to configure: a plain ViT) with its image processor, as ``save_pretrained`` does.

    Random heads score every class near 1 / (classes + 1), under any sensible cut, so the first
    label's logit is raised: each detection token then finds that label with a high score, in
    a box the random box head places, and every surface has regions to carry."""
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessor

    torch.manual_seed(seed)
    config = YolosConfig(
        image_size=[64, 64],
        patch_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_detection_tokens=4,
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    model = YolosForObjectDetection(config).eval()
    with torch.no_grad():
        last = model.class_labels_classifier.layers[-1]
        last.bias.zero_()
        last.bias[0] = 6.0
    model.save_pretrained(folder)
    YolosImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder
