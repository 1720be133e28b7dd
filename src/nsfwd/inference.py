"""The inference side, built from settings: the classifiers they name and the engines around them.

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
from nsfwd.metrics import Metrics
from nsfwd.model_types import (
    DEFAULT_MODEL,
    OPEN_NSFW,
    ModelNotAvailableError,
    ModelSpec,
    warn_default_missing,
)
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
    (say, a folder prepared from it). A ``NAME=`` before their model (a name to serve it
    under) is dropped."""
    source = ModelSpec.parse(options.model).source if options.model else DEFAULT_MODEL
    return Classifier.load(
        model or source,
        revision=options.revision,
        device=options.device,
        dtype=options.dtype,
        quantize=options.quantize,
        compile=options.compile,
        compile_cache_dir=options.compile_cache_dir,
    )


def load_served_classifiers(settings: Settings) -> dict[str, Classifier]:
    """The classifiers ``nsfwd serve`` runs, by the name clients pick each with, the default
    first.

    The models the settings name (:attr:`~nsfwd.settings.Settings.model_specs`), each under its
    ``NAME=`` or the name it loads as; one that cannot load raises
    :class:`ModelNotAvailableError`, stopping the server. With none named, :data:`DEFAULT_MODEL`
    and the built-in :data:`OPEN_NSFW`; where the former cannot be had (no Hub, not cached), a
    warning says how to get it and :data:`OPEN_NSFW` is served alone, so a fresh install
    without the Hub still serves.
    """
    specs = settings.model_specs
    classifiers: dict[str, Classifier] = {}
    if not specs:
        try:
            default = load_classifier(settings, DEFAULT_MODEL)
        except ModelNotAvailableError as exc:
            warn_default_missing(exc)
        else:
            classifiers[settings.served_model_name or default.name] = default
        # The torch options (--device, --dtype, ...) are the Hub model's; the built-in runs
        # on onnxruntime with its own.
        classifiers[OPEN_NSFW] = Classifier.load(OPEN_NSFW)
    for spec in specs:
        classifier = load_spec(settings, spec, among_others=len(specs) > 1)
        name = spec.name or classifier.name
        if name in classifiers:
            raise ValueError(
                f"two models are served as {name!r}; name them apart with NAME=ID_OR_DIR"
            )
        classifiers[name] = classifier
    return classifiers


def load_spec(settings: Settings, spec: ModelSpec, *, among_others: bool = False) -> Classifier:
    """The classifier of one served model, loaded with the settings' options (``--device``,
    ``--dtype``...). The built-in :data:`OPEN_NSFW` runs on onnxruntime with its own: beside
    other models (``among_others``) the torch options are theirs and it ignores them; alone,
    it refuses them."""
    if spec.source == OPEN_NSFW and among_others:
        return Classifier.load(OPEN_NSFW)
    return load_classifier(settings, spec.source)


def build_engines(settings: Settings) -> dict[str, Engine]:
    """An engine (its own batcher and queue) for each classifier ``nsfwd serve`` runs
    (:func:`load_served_classifiers`), by served name, the default first. They share one
    :class:`~nsfwd.metrics.Metrics`, so ``/metrics`` counts the whole server."""
    metrics = Metrics()
    engines: dict[str, Engine] = {}
    pools.configure(decode=settings.decode_workers)
    for name, classifier in load_served_classifiers(settings).items():
        log.info(
            "loaded %s as %r (%s) on %s in %s; labels %s",
            classifier.name,
            name,
            classifier.loaded.style,
            classifier.device,
            classifier.dtype,
            ", ".join(classifier.labels),
        )
        engines[name] = Engine(
            classifier,
            max_batch_size=settings.max_batch_size or classifier.batch_size,
            batch_wait_ms=settings.batch_wait_ms,
            max_queue=settings.max_queue,
            decode_timeout_s=settings.decode_timeout_s,
            limits=settings.image_limits,
            metrics=metrics,
        )
    return engines
