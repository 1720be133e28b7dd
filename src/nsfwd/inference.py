"""The inference side, built from settings: the classifier they name and the engine around it.

``nsfwd classify``, ``nsfwd serve`` (in its own process or in the inference process that
``--http-workers`` starts) and ``nsfwd bench`` all load their classifier here, so a loading
option added to the settings reaches every one of them. This module imports torch; the HTTP
side never imports it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from nsfwd import pools
from nsfwd.engine import Engine
from nsfwd.model_types import DEFAULT_MODEL, OPEN_NSFW, ModelNotAvailableError
from nsfwd.models import Classifier

if TYPE_CHECKING:
    from nsfwd.settings import Settings

log = logging.getLogger(__name__)


class ClassifierOptions(Protocol):
    """Which classifier to load and how: :class:`~nsfwd.settings.Settings` and
    :class:`~nsfwd.bench.BenchConfig` both carry these."""

    @property
    def model(self) -> str | None:
        """Hub id or folder; None for the default model."""

    @property
    def revision(self) -> str | None:
        """Hub revision to pin."""

    @property
    def device(self) -> str | None:
        """torch device; auto-detected when None."""

    @property
    def dtype(self) -> str | None:
        """float32, bfloat16 or float16; chosen for the device when None."""

    @property
    def quantize(self) -> str | None:
        """``int8`` or None."""

    @property
    def compile(self) -> str | None:
        """``on``, a ``torch.compile`` mode, or ``off``/None."""

    @property
    def compile_cache_dir(self) -> Path | None:
        """Where compiled graphs are kept."""


def load_classifier(options: ClassifierOptions, model: str | None = None) -> Classifier:
    """Load the classifier ``options`` describe; ``model``, when given, replaces their model
    (say, a folder prepared from it)."""
    return Classifier.load(
        model or options.model or DEFAULT_MODEL,
        revision=options.revision,
        device=options.device,
        dtype=options.dtype,
        quantize=options.quantize,
        compile=options.compile,
        compile_cache_dir=options.compile_cache_dir,
    )


def load_served_classifier(settings: Settings) -> Classifier:
    """The classifier ``nsfwd serve`` runs: the one the settings name; with no model named at
    all (no ``--model``, no ``NSFWD_MODEL``), :data:`DEFAULT_MODEL`, or, where that cannot be
    had (no Hub and not cached), the built-in :data:`OPEN_NSFW` with a warning, so a fresh
    install without the Hub still serves. A model named explicitly that cannot load raises
    :class:`ModelNotAvailableError`, stopping the server."""
    if "model" in settings.model_fields_set:
        return load_classifier(settings)
    try:
        return load_classifier(settings)
    except ModelNotAvailableError as exc:
        log.warning(
            "no model configured, and the default %s cannot be loaded: %s Serving the built-in "
            "%s model instead, which needs no Hub. To serve %s, run `nsfwd download %s` where "
            "the Hub is reachable and restart; set NSFWD_MODEL=%s to choose %s and silence this "
            "warning.",
            DEFAULT_MODEL,
            exc,
            OPEN_NSFW,
            DEFAULT_MODEL,
            DEFAULT_MODEL,
            OPEN_NSFW,
            OPEN_NSFW,
        )
        return load_classifier(settings, OPEN_NSFW)


def build_engine(settings: Settings) -> Engine:
    """Load the classifier ``nsfwd serve`` runs (:func:`load_served_classifier`) and wrap it in
    an engine."""
    classifier = load_served_classifier(settings)
    pools.configure(decode=settings.decode_workers)
    log.info(
        "loaded %s (%s) on %s in %s; labels %s",
        classifier.name,
        classifier.loaded.style,
        classifier.device,
        classifier.dtype,
        ", ".join(classifier.labels),
    )
    return Engine(
        classifier,
        max_batch_size=settings.max_batch_size or classifier.batch_size,
        batch_wait_ms=settings.batch_wait_ms,
        max_queue=settings.max_queue,
        decode_timeout_s=settings.decode_timeout_s,
        limits=settings.image_limits,
    )
