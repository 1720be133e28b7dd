"""Model loading, preprocessing and the batch classifier."""

from nsfwd.models.checkpoint import SEVERITY_LABELS, LoadedModel, load_checkpoint
from nsfwd.models.classifier import Classifier, Labels
from nsfwd.models.hub import DEFAULT_MODEL, ModelNotAvailableError, download, resolve_model_dir

__all__ = [
    "DEFAULT_MODEL",
    "SEVERITY_LABELS",
    "Classifier",
    "Labels",
    "LoadedModel",
    "ModelNotAvailableError",
    "download",
    "load_checkpoint",
    "resolve_model_dir",
]
