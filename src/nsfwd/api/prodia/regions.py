"""Regions on Prodia's job API: ``config.detector`` (a detector beside the classifier
``config.model`` names) and ``config.redact`` (the v2 output image redacted).

``config.redact`` is ``true`` (the defaults) or ``{"style": "blur" | "pixelate" | "fill",
"labels": [...] | "all", "padding": P}`` (:class:`~nsfwd.redact.Redaction`; ``labels``
defaults to the explicit classes the region thresholds name by default). The answer's
``config.regions`` lists every region found, redacted or not.
"""

from __future__ import annotations

from typing import Any

from nsfwd.api.http.errors import BadRequestError
from nsfwd.redact import DEFAULT_PADDING, DEFAULT_STYLE, STYLES, Redaction
from nsfwd.verdict import DEFAULT_REGION_THRESHOLDS

EXAMPLE = '{"redact": {"style": "blur", "labels": ["FEMALE_BREAST_EXPOSED"], "padding": 0.1}}'


def redaction_of(config: dict[str, Any] | None) -> Redaction | None:
    """The redaction ``config.redact`` asks for, None when it asks for none; a 400 saying what
    is wrong otherwise."""
    asked = (config or {}).get("redact")
    if asked is None or asked is False:
        return None
    if asked is True:
        asked = {}
    if not isinstance(asked, dict) or set(asked) - {"style", "labels", "padding"}:
        raise BadRequestError(
            "job.config.redact must be true or an object with style, labels and padding; "
            f"send e.g. {EXAMPLE}"
        )
    style = asked.get("style", DEFAULT_STYLE)
    padding = asked.get("padding", DEFAULT_PADDING)
    labels = asked.get("labels")
    if style not in STYLES:
        raise BadRequestError(f"job.config.redact.style must be one of {', '.join(STYLES)}")
    if isinstance(padding, bool) or not isinstance(padding, int | float) or not 0 <= padding <= 1:
        raise BadRequestError("job.config.redact.padding must be a number between 0 and 1")
    return Redaction(_labels(labels), style, float(padding))


def _labels(labels: Any) -> frozenset[str] | None:
    if labels is None:
        return frozenset(label for label, _ in DEFAULT_REGION_THRESHOLDS)
    if labels == "all":
        return None
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise BadRequestError(
            'job.config.redact.labels must be a list of region labels or "all"; send e.g. '
            + EXAMPLE
        )
    return frozenset(labels)
