"""The detector: a batch of pictures in, the regions found in each out.

Beside :class:`~nsfwd.models.classifier.Classifier`, with the same steps (``prepare`` on the
decode threads, ``stack``, ``predict`` on the inference thread), so the engine batches it and
``nsfwd classify`` runs it unchanged. Two kinds load: the built-in ``nudenet``
(:mod:`nsfwd.models.nudenet`, onnxruntime) and any transformers object-detection checkpoint
(DETR, YOLOS, RT-DETR and kin: ``*ForObjectDetection`` in its config), run on the pictures
squashed to the processor's size, so one batch holds pictures of any shape and the boxes map
straight back to each picture's pixels. A detector's labels are each class's best region
score in a picture (0 where none was found), so policies, records and the APIs that speak of
labels take it too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import torch
from PIL import Image

from nsfwd.models.checkpoint import read_config
from nsfwd.models.names import NUDENET, ModelNotAvailableError, default_batch_size
from nsfwd.models.routes import Route, route_info
from nsfwd.verdict import Finding, Labels, Region

log = logging.getLogger(__name__)

MIN_SCORE: Final = 0.25
"""A transformers detector's regions scoring below this are dropped (NudeNet's own cut)."""


@dataclass
class LoadedDetector:
    """A detector network with what it needs around it."""

    module: torch.nn.Module
    """A batch of :attr:`normalize`\\ d pictures in, the network's raw output out."""
    labels: tuple[str, ...]
    prepare: Callable[[Image.Image], torch.Tensor]
    """One upright RGB picture to the network's input size (CHW), on the CPU."""
    normalize: Callable[[torch.Tensor], torch.Tensor]
    """A batch of :attr:`prepare` outputs to the network's float32 input."""
    regions: Callable[[Any, Sequence[tuple[int, int]]], list[list[Region]]]
    """The raw output of a batch and each picture's (width, height) to the regions in each,
    in the picture's pixels, best first."""
    input_size: tuple[int, int, int]
    style: str
    """``onnx`` (the built-in ``nudenet``) or ``transformers``."""


@dataclass
class Detector:
    """A loaded object detector on one device (the CPU for ``nudenet``)."""

    loaded: LoadedDetector
    name: str
    device: torch.device
    dtype: torch.dtype = torch.float32
    dtype_reason: str = "detectors run in float32"
    kind: Final = "detector"
    compiled: None = None
    """Detectors are not compiled (the attribute the classifier's callers look at)."""

    @property
    def route(self) -> Route:
        """How this detector runs: onnxruntime (``nudenet``) or torch, in float32."""
        return Route("onnxruntime" if self.loaded.style == "onnx" else "torch", "float32")

    @property
    def model_info(self) -> dict[str, str]:
        """Where and how the model runs (:meth:`~nsfwd.models.runner.Runner.model_info`)."""
        return route_info(self.device, self.route, self.dtype_reason, self.kind)

    def find(self, pictures: Sequence[Any], sizes: Sequence[tuple[int, int]]) -> list[Finding]:
        """Each picture's regions and labels, in one batch (the engine's inference thread)."""
        return self.findings(self.predict(self.stack(pictures)), sizes)

    @classmethod
    def load(
        cls, model: str, *, revision: str | None = None, device: str | None = None
    ) -> Detector:
        """Load ``model``: :data:`~nsfwd.models.names.NUDENET`, or a Hub id or folder holding a
        transformers object detector, onto ``device`` (auto: CUDA when present)."""
        if model == NUDENET:
            if device is not None and torch.device(device).type != "cpu":
                raise ValueError(f"{NUDENET} runs on onnxruntime on the CPU; drop --device")
            return cls(_load_nudenet(), NUDENET, torch.device("cpu"))
        from nsfwd.models.classifier import pick_device
        from nsfwd.models.hub import resolve_model_dir, source_id

        folder = resolve_model_dir(model, revision)
        name = source_id(folder) or (None if Path(model).expanduser().is_dir() else model)
        torch_device = pick_device(device)
        loaded = load_transformers_detector(folder)
        loaded.module.to(torch_device).eval()
        return cls(loaded, name or model, torch_device)

    @property
    def batch_size(self) -> int:
        """The batch size that suits this detector's device."""
        return default_batch_size(self.device.type)

    @property
    def labels(self) -> tuple[str, ...]:
        """Class names by index."""
        return self.loaded.labels

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(channels, height, width) the network takes."""
        return self.loaded.input_size

    def prepare(self, image: Image.Image) -> torch.Tensor:
        """One upright RGB picture as the network's input. Thread-safe."""
        return self.loaded.prepare(image)

    def stack(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """One (N, C, H, W) batch of :meth:`prepare` outputs."""
        if not images:
            raise ValueError("no images to stack")
        return torch.stack([image.to(self.device) for image in images])

    def predict(self, batch: torch.Tensor) -> Any:
        """The network's raw output for a batch (see :meth:`findings`)."""
        with torch.inference_mode():
            return self.loaded.module(self.loaded.normalize(batch.to(self.device)))

    def findings(self, output: Any, sizes: Sequence[tuple[int, int]]) -> list[Finding]:
        """Per picture of ``sizes`` (width, height): its regions, and as labels each class's
        best region score."""
        return [
            Finding(self.region_labels(regions), regions)
            for regions in self.loaded.regions(output, sizes)
        ]

    def region_labels(self, regions: Sequence[Region]) -> Labels:
        """Each class's best score among ``regions`` (0 for a class not found)."""
        labels = dict.fromkeys(self.labels, 0.0)
        for region in regions:
            labels[region.label] = max(labels.get(region.label, 0.0), region.score)
        return labels

    def warm_up(self, max_batch_size: int, buckets: Sequence[int] | None = None) -> None:
        """Run one blank picture, so the first request does not pay for set-up."""
        blank = Image.new("RGB", self.input_size[:0:-1])
        self.predict(self.stack([self.prepare(blank)]))

    def detect(self, images: Sequence[Image.Image]) -> list[list[Region]]:
        """The regions in each picture, in order."""
        if not images:
            return []
        output = self.predict(self.stack([self.prepare(image) for image in images]))
        return [
            finding.regions or [] for finding in self.findings(output, [i.size for i in images])
        ]


def is_detector_checkpoint(folder: Path) -> bool:
    """Whether the checkpoint in ``folder`` is a transformers object detector (its config's
    ``architectures`` name a ``*ForObjectDetection`` class)."""
    try:
        config = read_config(folder)
    except ModelNotAvailableError:
        return False
    architectures = config.get("architectures") or []
    return any(str(name).endswith("ForObjectDetection") for name in architectures)


def _load_nudenet() -> LoadedDetector:
    from nsfwd.models import nudenet

    session = nudenet.load_session()
    labels = nudenet.class_names(session)

    def regions(output: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[list[Region]]:
        rows = output.numpy()
        return [nudenet.decode(rows[i], size, labels) for i, size in enumerate(sizes)]

    return LoadedDetector(
        module=nudenet.NudeNetNetwork(session),
        labels=labels,
        prepare=nudenet.prepare,
        normalize=nudenet.normalize,
        regions=regions,
        input_size=(3, nudenet.INPUT_SIDE, nudenet.INPUT_SIDE),
        style="onnx",
    )


class _HFDetections(torch.nn.Module):
    """A transformers detector called on pixel values alone."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> Any:
        return self.model(pixel_values=pixel_values)


def _fixed_size(processor: Any) -> tuple[int, int]:
    """(height, width) the pictures are squashed to: the processor's own when it names both,
    else a square of its shortest edge (DETR's processors resize by edges, which would give
    every picture its own shape)."""
    size = processor.size
    height, width = getattr(size, "height", None), getattr(size, "width", None)
    if isinstance(size, dict):
        height, width = size.get("height"), size.get("width")
    if height and width:
        return int(height), int(width)
    edge = getattr(size, "shortest_edge", None)
    if isinstance(size, dict):
        edge = size.get("shortest_edge")
    side = int(edge or 800)
    return side, side


def load_transformers_detector(folder: Path) -> LoadedDetector:
    """A transformers object detector and its image processor from ``folder``; the boxes come
    from the processor's own ``post_process_object_detection``."""
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    try:
        model = AutoModelForObjectDetection.from_pretrained(folder)
        processor = AutoImageProcessor.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelNotAvailableError(
            f"{folder} is not a transformers object detector that loads here: {exc}"
        ) from exc
    height, width = _fixed_size(processor)
    labels = tuple(str(model.config.id2label[i]) for i in range(model.config.num_labels))

    def prepare(image: Image.Image) -> torch.Tensor:
        pixels: torch.Tensor = processor(
            images=image, size={"height": height, "width": width}, return_tensors="pt"
        )["pixel_values"][0]
        return pixels

    def regions(output: Any, sizes: Sequence[tuple[int, int]]) -> list[list[Region]]:
        found = processor.post_process_object_detection(
            output, threshold=MIN_SCORE, target_sizes=[(h, w) for w, h in sizes]
        )
        return [_regions(each, labels, size) for each, size in zip(found, sizes, strict=True)]

    return LoadedDetector(
        module=_HFDetections(model),
        labels=labels,
        prepare=prepare,
        normalize=lambda batch: batch.to(torch.float32),
        regions=regions,
        input_size=(3, height, width),
        style="transformers",
    )


def _regions(
    found: dict[str, torch.Tensor], labels: Sequence[str], size: tuple[int, int]
) -> list[Region]:
    """One picture's post-processed detections as regions (boxes clipped to the picture), best
    first."""
    width, height = size
    regions = []
    for score, label, box in zip(
        found["scores"].tolist(), found["labels"].tolist(), found["boxes"].tolist(), strict=True
    ):
        x0, x1 = (round(min(max(v, 0.0), width)) for v in (box[0], box[2]))
        y0, y1 = (round(min(max(v, 0.0), height)) for v in (box[1], box[3]))
        if x1 > x0 and y1 > y0 and 0 <= label < len(labels):
            regions.append(Region(labels[label], float(score), (x0, y0, x1 - x0, y1 - y0)))
    return sorted(regions, key=lambda region: -region.score)
