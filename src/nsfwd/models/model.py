"""What the engine and the batch pipeline run: a classifier or a detector, and loading either.

Both take the same steps (``prepare``, ``stack``, ``predict``, then ``findings`` for each
picture's labels and, for a detector, regions), so everything after loading treats them alike;
``kind`` tells them apart where an answer differs (``GET /v1/models``, Prodia's
``config.regions``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nsfwd.models.classifier import Classifier
from nsfwd.models.detector import Detector, is_detector_checkpoint
from nsfwd.models.hub import resolve_model_dir
from nsfwd.models.names import NUDENET
from nsfwd.models.routes import refused_options

Model = Classifier | Detector
"""A loaded model, either kind."""


def is_detector(model: str, revision: str | None = None) -> bool:
    """Whether ``model`` (a name, Hub id or folder) is a detector: ``nudenet``, or a
    transformers object-detection checkpoint."""
    if model == NUDENET:
        return True
    folder = Path(model).expanduser()
    if not folder.is_dir():
        try:
            folder = resolve_model_dir(model, revision)
        except Exception:  # not to be had: Classifier.load says why, with its hints
            return False
    return is_detector_checkpoint(folder)


def load_model(
    model: str,
    *,
    revision: str | None = None,
    device: str | None = None,
    **options: Any,
) -> Model:
    """Load ``model`` as a :class:`Detector` when it is one (:func:`is_detector`), else as a
    :class:`Classifier` with every option (``options``: :meth:`Classifier.load`'s ``dtype``,
    ``runtime``, ``quantize``, ``compile``...). Detectors run in float32 on torch, uncompiled and
    unquantised; asking otherwise is a ValueError rather than an option silently ignored."""
    if not is_detector(model, revision):
        return Classifier.load(model, revision=revision, device=device, **options)
    fixed = {key: options.get(key) for key in ("dtype", "runtime", "quantize", "compile")}
    if clashes := refused_options(**fixed):
        raise ValueError(
            f"detectors run in float32 on torch, uncompiled; drop {', '.join(clashes)}"
        )
    return Detector.load(model, revision=revision, device=device)
