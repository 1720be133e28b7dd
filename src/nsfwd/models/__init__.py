"""Model loading, preprocessing and the batch classifier."""

from nsfwd.hub import download, resolve_model_dir
from nsfwd.model_types import ModelNotAvailableError
from nsfwd.models.checkpoint import SEVERITY_LABELS, LoadedModel, load_checkpoint
from nsfwd.models.classifier import Classifier

__all__ = [
    "SEVERITY_LABELS",
    "Classifier",
    "LoadedModel",
    "ModelNotAvailableError",
    "download",
    "load_checkpoint",
    "resolve_model_dir",
]
