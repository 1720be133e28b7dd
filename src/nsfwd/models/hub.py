"""Where a model's files come from: a local folder, the Hugging Face cache, or the Hub.

A model is named either by a folder holding ``config.json`` and ``*.safetensors`` or by a Hub
repository id. Hub downloads go through ``huggingface_hub``, so ``HF_HOME``, ``HF_HUB_OFFLINE``,
``HF_TOKEN`` and ``HF_ENDPOINT`` behave as they do everywhere else.
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

from nsfwd.models.names import ModelNotAvailableError

# Only what loading needs: the config, the weights and a transformers image processor.
MODEL_FILES = ["config.json", "*.safetensors", "preprocessor_config.json"]

# Written by `nsfwd download` beside the model files, so a copied folder still knows its Hub id.
SOURCE_FILE = "nsfwd-source.json"


def offline_hint(model: str) -> str:
    """Tell a user on an offline machine how to supply ``model``."""
    return (
        f"On a machine with internet access run `nsfwd download {model} --to DIR`, copy DIR to "
        "this machine, then pass `--model DIR` (or set NSFWD_MODEL=DIR)."
    )


def resolve_model_dir(model: str, revision: str | None = None) -> Path:
    """Return a local folder holding ``model``'s files, downloading them when needed."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotAvailableError(f"{path} is a folder but holds no config.json")
        return path
    if path.exists():
        raise ModelNotAvailableError(f"{path} is a file; --model wants a folder or a Hub id")
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelNotAvailableError(f"no model folder at {path}")
    try:
        return Path(snapshot_download(model, revision=revision, allow_patterns=MODEL_FILES))
    except RepositoryNotFoundError as exc:
        raise ModelNotAvailableError(
            f"model {model!r} is neither a local folder nor a repository on the Hugging Face Hub"
        ) from exc
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise ModelNotAvailableError(
            f"cannot load model {model!r}: it is not in the local Hugging Face cache and the Hub "
            f"could not be reached ({type(exc).__name__}). {offline_hint(model)}"
        ) from exc


def download(model: str, to: Path | None = None, revision: str | None = None) -> Path:
    """Fetch ``model`` from the Hub into ``to`` (or the Hugging Face cache); return the folder."""
    try:
        folder = snapshot_download(
            model, revision=revision, allow_patterns=MODEL_FILES, local_dir=to
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        raise ModelNotAvailableError(f"cannot download {model!r}: {exc}") from exc
    if to is not None:
        source = {"model": model, "revision": revision}
        (Path(folder) / SOURCE_FILE).write_text(json.dumps(source) + "\n")
    return Path(folder)


def source_id(folder: Path) -> str | None:
    """The Hub id a folder was downloaded from by `nsfwd download`, if it says."""
    try:
        source = json.loads((folder / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None
    model = source.get("model") if isinstance(source, dict) else None
    return model if isinstance(model, str) else None
