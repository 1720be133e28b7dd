"""Build a torch module, its labels and its preprocessing from a checkpoint folder.

Two families are understood:

* timm checkpoints, in either on-disk style: the one ``timm.models.save_for_hf`` / ``push_to_hub``
  writes (plain timm weight keys) and transformers' ``TimmWrapperForImageClassification``
  (``model_type: timm_wrapper``, weight keys possibly prefixed ``timm_model.``). Both carry
  ``architecture`` and ``pretrained_cfg``; preprocessing comes from the latter through
  ``timm.data.resolve_data_config``, exactly as timm itself does it.
* any other transformers image classifier, through ``AutoModelForImageClassification`` and
  ``AutoImageProcessor`` (labels from ``id2label``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from safetensors.torch import load_file

from nsfwd.models.names import DEFAULT_MODEL, ModelNotAvailableError

Prepare = Callable[[Image.Image], torch.Tensor]
"""One upright RGB image in, one CHW tensor of the network's input size out (see
:class:`LoadedModel`)."""

SEVERITY_LABELS = ("neutral", "low", "medium", "high")

# Hub models whose config.json does not name its labels.
KNOWN_LABELS: dict[str, tuple[str, ...]] = {DEFAULT_MODEL: SEVERITY_LABELS}

TIMM_PREFIX = "timm_model."
_DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")


@dataclass
class LoadedModel:
    """A classifier network ready for inference, with what it needs around it."""

    module: torch.nn.Module
    labels: tuple[str, ...]
    prepare: Prepare
    """Resize and crop on the CPU. For timm models it stops before the float conversion and gives
    uint8 pixels, so that a batch crosses to the device (or another process) at a quarter of the
    size and :attr:`normalize` runs there; other models give their processor's float output."""
    normalize: Callable[[torch.Tensor], torch.Tensor]
    """A batch of :attr:`prepare` outputs, on any device, to the network's float32 input."""
    input_size: tuple[int, int, int]
    style: str
    """``timm`` (plain timm keys), ``timm_wrapper`` (transformers style), ``transformers``, or
    ``onnx`` (the built-in open-nsfw, :mod:`nsfwd.models.open_nsfw`)."""
    outputs: Literal["logits", "probabilities"] = "logits"
    """What :attr:`module` returns: logits, to which the classifier applies a softmax, or
    probabilities already (a network whose graph ends in its own softmax)."""
    preprocessing: dict[str, Any] = field(default_factory=dict)
    """What :attr:`prepare` does, for a host that prepares pixels without torch: timm's data
    config (``interpolation``, ``crop_pct``, ``crop_mode``, ``mean``, ``std``) for timm
    models; empty for others."""

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One image to the network's normalised CHW float32 input (``prepare``, then
        ``normalize``)."""
        return self.normalize(self.prepare(image).unsqueeze(0))[0]

    def blank(self, size: int) -> torch.Tensor:
        """A batch of ``size`` prepared all-black images, for warming the model up."""
        dtype = self.prepare(Image.new("RGB", self.input_size[:0:-1])).dtype
        return torch.zeros((size, *self.input_size), dtype=dtype)


class Normalize:
    """uint8 pixels to normalised float32, with the very operations of torchvision's
    ``ToTensor`` and ``Normalize`` (divide by 255, subtract the mean, divide by the std), so a
    batch normalised here, on any device, matches timm's transform bit for bit on the CPU."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalise an (N, C, H, W) uint8 batch on the device it lies on."""
        if batch.dtype != torch.uint8:
            raise TypeError(f"expected uint8 pixels, got {batch.dtype}")
        pixels = batch.to(torch.float32).div_(255)
        mean, std = self.mean.to(batch.device), self.std.to(batch.device)
        return pixels.sub_(mean).div_(std)


def _as_float(batch: torch.Tensor) -> torch.Tensor:
    """The normalisation of models whose processor already gives normalised floats."""
    return batch.to(torch.float32)


def split_timm_transform(
    transform: Callable[[Image.Image], torch.Tensor],
) -> tuple[Prepare, Normalize]:
    """Split timm's eval transform (geometry, to-tensor, normalize) at the float conversion."""
    from timm.data.transforms import MaybeToTensor
    from torchvision import transforms

    steps = list(getattr(transform, "transforms", []))
    kinds = [type(step) for step in steps[-2:]]
    if kinds not in (
        [MaybeToTensor, transforms.Normalize],
        [transforms.ToTensor, transforms.Normalize],
    ):
        raise ModelNotAvailableError(f"unexpected timm eval transform: {transform}")
    normalize = steps[-1]
    geometry = transforms.Compose([*steps[:-2], transforms.PILToTensor()])
    mean = torch.as_tensor(normalize.mean).tolist()
    std = torch.as_tensor(normalize.std).tolist()
    return geometry, Normalize(tuple(mean), tuple(std))


def read_config(folder: Path) -> dict[str, Any]:
    """The checkpoint's config.json as a dict."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(f"cannot read {folder / 'config.json'}: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelNotAvailableError(f"{folder / 'config.json'} is not a JSON object")
    return config


def load_checkpoint(folder: Path, hub_id: str | None = None) -> LoadedModel:
    """Load the checkpoint in ``folder``; ``hub_id`` helps find labels the config omits."""
    config = read_config(folder)
    if "architecture" in config and "pretrained_cfg" in config:
        return _load_timm(folder, config, hub_id)
    return _load_transformers(folder, config)


def _labels(config: dict[str, Any], num_classes: int, hub_id: str | None) -> tuple[str, ...]:
    names = config.get("label_names")
    if isinstance(names, list) and len(names) == num_classes:
        return tuple(str(n) for n in names)
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and len(id2label) == num_classes:
        ordered = tuple(str(id2label[k]) for k in sorted(id2label, key=int))
        if not all(_DEFAULT_LABEL.match(name) for name in ordered):
            return ordered
    known = KNOWN_LABELS.get(hub_id or "")
    if known is not None and len(known) == num_classes:
        return known
    return tuple(f"LABEL_{i}" for i in range(num_classes))


def _load_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelNotAvailableError(f"{folder} holds no *.safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))
    return {k.removeprefix(TIMM_PREFIX): v for k, v in state.items()}


def _build_uninitialised(build: Callable[[], torch.nn.Module]) -> torch.nn.Module | None:
    """The network with memory for its weights but without their random initialisation, which
    costs seconds of start-up for values the checkpoint then overwrites: built on the
    meta device, then given empty memory. Every weight and persistent buffer comes from the
    checkpoint (loaded strictly); the buffers a checkpoint does not hold (RoPE frequencies, ...)
    are recomputed by :func:`_recompute_buffers`. None, to build it the usual way, where that is
    not safe: a timm without ``init_non_persistent_buffers``, a module whose computed buffers it
    does not cover, or one that cannot be built on the meta device."""
    try:
        with torch.device("meta"):
            module = build()
    except Exception:  # any failure on the meta device: build it the usual way
        return None
    if not all(
        hasattr(child, "init_non_persistent_buffers")
        for child in module.modules()
        if child._non_persistent_buffers_set
    ):
        return None
    return module.to_empty(device="cpu")


def _recompute_buffers(module: torch.nn.Module) -> None:
    """Refill the buffers a checkpoint does not hold (for a normally built module, with the
    values they already have)."""
    for child in module.modules():
        recompute = getattr(child, "init_non_persistent_buffers", None)
        if child._non_persistent_buffers_set and callable(recompute):
            recompute()


def _load_timm(folder: Path, config: dict[str, Any], hub_id: str | None) -> LoadedModel:
    import timm
    from timm.data import create_transform, resolve_data_config

    num_classes = int(config.get("num_classes") or len(config.get("label_names") or []))
    model_args = dict(config.get("model_args") or {})
    model_args.pop("num_classes", None)
    build = partial(
        timm.create_model,
        config["architecture"],
        pretrained=False,
        num_classes=num_classes,
        **model_args,
    )
    try:
        module = _build_uninitialised(build)
        if module is None:
            module = build()
    except RuntimeError as exc:
        raise ModelNotAvailableError(
            f"timm {timm.__version__} cannot build {config['architecture']!r}: {exc}"
        ) from exc
    try:
        module.load_state_dict(_load_state_dict(folder), strict=True)
    except RuntimeError as exc:
        raise ModelNotAvailableError(
            f"the weights in {folder} do not fit {config['architecture']!r} with "
            f"{num_classes} classes: {exc}"
        ) from exc
    _recompute_buffers(module)
    data_config = resolve_data_config(pretrained_cfg=config["pretrained_cfg"], model=module)
    prepare, normalize = split_timm_transform(create_transform(**data_config, is_training=False))
    style = "timm_wrapper" if config.get("model_type") == "timm_wrapper" else "timm"
    steps = ("interpolation", "crop_pct", "crop_mode", "mean", "std")
    return LoadedModel(
        module=module,
        labels=_labels(config, num_classes, hub_id),
        prepare=prepare,
        normalize=normalize,
        input_size=tuple(data_config["input_size"]),
        style=style,
        preprocessing={key: data_config[key] for key in steps if key in data_config},
    )


class _HFLogits(torch.nn.Module):
    """Adapts a transformers classifier to return plain logits, as timm modules do."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(pixel_values=pixel_values).logits
        return logits


def _load_transformers(folder: Path, config: dict[str, Any]) -> LoadedModel:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    try:
        model = AutoModelForImageClassification.from_pretrained(folder)
        processor = AutoImageProcessor.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelNotAvailableError(
            f"{folder} is not a timm checkpoint nor a transformers image classifier: {exc}"
        ) from exc

    def prepare(image: Image.Image) -> torch.Tensor:
        pixels: torch.Tensor = processor(images=image, return_tensors="pt")["pixel_values"][0]
        return pixels

    labels = tuple(str(model.config.id2label[i]) for i in range(model.config.num_labels))
    size = processor.size or {}
    height = int(size.get("height") or size.get("shortest_edge") or 224)
    width = int(size.get("width") or size.get("shortest_edge") or height)
    return LoadedModel(
        module=_HFLogits(model),
        labels=labels,
        prepare=prepare,
        normalize=_as_float,
        input_size=(3, height, width),
        style="transformers",
    )
