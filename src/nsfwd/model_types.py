"""The model names the HTTP side shares with the inference side, without torch.

The routes, the job worker and the remote engine handle label probabilities and model ids but
never a tensor, and the command line reports a missing model without loading one; keeping these
names out of :mod:`nsfwd.models` lets all of them run without the inference stack.
"""

from __future__ import annotations

DEFAULT_MODEL = "Freepik/nsfw_image_detector"
"""The Hub id served when no model is named (EVA-02 base, labels neutral/low/medium/high)."""

Labels = dict[str, float]
"""Probability per label, summing to 1."""


class ModelNotAvailableError(RuntimeError):
    """The model could not be found locally nor fetched from the Hub."""
