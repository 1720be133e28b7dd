"""``nudenet``: NudeNet 3.4's 320n body-part detector (a YOLOv8n, 18 classes) on onnxruntime.

The ``nudenet`` package (the optional extra ``nsfwd[nudenet]``) ships the network as ONNX with
its weights; only that file is used from it. The package's licence file is the AGPL-3.0 (its
metadata says MIT), so the pre- and post-processing here are our own, written to give the same
detections as its ``NudeDetector().detect``:

* the picture goes to the network as its model was trained: padded with black at the right or
  the bottom to a square, resized to 320x320 by OpenCV's bilinear ``cv2.resize`` (half-pixel
  centres, no antialiasing, fixed-point weights on uint8: the package's OpenCV dependency, which
  the extra installs; Pillow's bilinear resize antialiases and gives other pixels), channels in
  B, G, R order, over 255;
* each of its anchors gives a box (centre, size) and a score per class; the best class over
  :data:`MIN_SCORE` is a candidate, mapped back to the picture's pixels and clipped to it, and
  candidates overlapping a better one by more than :data:`MAX_OVERLAP` (intersection over union,
  whatever their classes) are dropped.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from PIL import Image

from nsfwd.models.names import NUDENET, ModelNotAvailableError
from nsfwd.verdict import Region

INPUT_SIDE: Final = 320
"""The network's input: a 320x320 square."""
MIN_SCORE: Final = 0.25
"""Detections scoring at most this are dropped (NudeNet's own cut)."""
MAX_OVERLAP: Final = 0.45
"""A detection overlapping a better-scoring one by more than this (IoU) is dropped."""


def prepare(image: Image.Image) -> torch.Tensor:
    """One upright RGB picture as the network's (3, 320, 320) uint8 input: padded to a square
    at the right or the bottom, resized, channels in B, G, R order (divided by 255 on the way
    in, :func:`normalize`)."""
    import cv2

    pixels = np.asarray(image.convert("RGB"))
    height, width = pixels.shape[:2]
    side = max(height, width)
    square = np.zeros((side, side, 3), dtype=np.uint8)
    square[:height, :width] = pixels[:, :, ::-1]
    resized = cv2.resize(square, (INPUT_SIDE, INPUT_SIDE), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))


def normalize(batch: torch.Tensor) -> torch.Tensor:
    """uint8 pixels to the network's float32 input, over 255."""
    # numpy, not torch: a torch op leaves its OpenMP threads spinning for a while, and they
    # took the cores onnxruntime's threads then wanted (a third more time per image, 2 cores).
    scaled = batch.numpy().astype(np.float32) * np.float32(1 / 255)  # OpenCV's blob scaling
    return torch.from_numpy(scaled)


def decode(output: np.ndarray, size: tuple[int, int], labels: Sequence[str]) -> list[Region]:
    """The regions in one picture of ``size`` (width, height) from the network's output for it,
    (4 + classes, anchors): boxes as centre and size in input pixels, then a score per class.
    Best first."""
    rows = output.T
    scores = rows[:, 4:].max(axis=1)
    keep = scores > MIN_SCORE
    rows, scores = rows[keep], scores[keep]
    classes = rows[:, 4:].argmax(axis=1)
    width, height = size
    scale = max(width, height) / INPUT_SIDE
    centre_x, centre_y, box_w, box_h = (rows[:, i].astype(np.float64) for i in range(4))
    x0 = np.clip((centre_x - box_w / 2) * scale, 0, width)
    y0 = np.clip((centre_y - box_h / 2) * scale, 0, height)
    x1 = np.clip((centre_x + box_w / 2) * scale, 0, width)
    y1 = np.clip((centre_y + box_h / 2) * scale, 0, height)
    corners = np.stack([x0, y0, x1, y1], axis=1)
    regions = []
    for i in suppress_overlaps(corners, scores.astype(np.float64), MAX_OVERLAP):
        left, top, right, bottom = (round(float(v)) for v in corners[i])
        box = (left, top, right - left, bottom - top)
        regions.append(Region(labels[int(classes[i])], float(scores[i]), box))
    return regions


def suppress_overlaps(corners: np.ndarray, scores: np.ndarray, max_overlap: float) -> list[int]:
    """Greedy non-maximum suppression: indices of the boxes (x0, y0, x1, y1) kept, best score
    first (ties in input order), dropping each that overlaps a kept one by more than
    ``max_overlap`` intersection over union."""
    order = np.argsort(-scores, kind="stable")
    areas = (corners[:, 2] - corners[:, 0]) * (corners[:, 3] - corners[:, 1])
    kept: list[int] = []
    for i in order:
        if kept:
            others = corners[kept]
            across = np.minimum(others[:, 2], corners[i, 2]) - np.maximum(
                others[:, 0], corners[i, 0]
            )
            down = np.minimum(others[:, 3], corners[i, 3]) - np.maximum(others[:, 1], corners[i, 1])
            shared = np.clip(across, 0, None) * np.clip(down, 0, None)
            union = areas[kept] + areas[i] - shared
            overlap = np.divide(shared, union, out=np.zeros_like(shared), where=union > 0)
            if (overlap > max_overlap).any():
                continue
        kept.append(int(i))
    return kept


class NudeNetNetwork(torch.nn.Module):
    """The 320n ONNX session as a torch module: an (N, 3, 320, 320) float32 batch in, its
    (N, 4 + classes, anchors) output out, in one session call (the graph's batch dimension is
    free). ``session.run`` is thread-safe."""

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session
        self.input_name: str = session.get_inputs()[0].name

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Run the batch through the session."""
        batch = np.ascontiguousarray(pixels.detach().cpu().numpy(), dtype=np.float32)
        (out,) = self.session.run(None, {self.input_name: batch})
        return torch.from_numpy(np.asarray(out, dtype=np.float32))


def weights_path() -> Path:
    """The 320n ONNX file inside the installed ``nudenet`` package (read as a file: its code
    is not imported)."""
    from importlib.util import find_spec

    spec = find_spec("nudenet")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"the {NUDENET} detector needs the nudenet package, which ships its weights; "
            "install it with `pip install 'nsfwd[nudenet]'` (its licence file is the AGPL-3.0)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "320n.onnx"
    if not path.is_file():
        raise ModelNotAvailableError(f"the nudenet package has no {path.name}; reinstall it")
    return path


def class_names(session: Any) -> tuple[str, ...]:
    """The class names by index, from the ONNX file's own metadata (``names``, a Python dict
    literal written by Ultralytics' exporter)."""
    try:
        names = ast.literal_eval(session.get_modelmeta().custom_metadata_map["names"])
        return tuple(str(names[i]) for i in range(len(names)))
    except (KeyError, ValueError, SyntaxError, TypeError) as exc:
        raise ModelNotAvailableError(f"the {NUDENET} weights do not name their classes") from exc


def load_session() -> Any:
    """An onnxruntime session on the package's weights (CPU provider)."""
    try:
        import cv2  # noqa: F401 (prepare's resize)
        import onnxruntime  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ModelNotAvailableError(
            f"the {NUDENET} detector needs onnxruntime and OpenCV ({exc}); install them with "
            "`pip install 'nsfwd[nudenet]'`"
        ) from exc
    return onnxruntime.InferenceSession(str(weights_path()), providers=["CPUExecutionProvider"])
