"""The inference side, built from settings: the classifiers they name and the engines around them.

``nsfwd classify``, ``nsfwd serve`` (in its own process or in the inference process that
``--http-workers`` starts) and ``nsfwd bench`` all load their classifier here, so a loading
option added to the settings reaches every one of them. Torch is imported for the models that
run on it: a server of the built-in open-nsfw alone runs on onnxruntime without it (the slim
container image has no torch); the HTTP side never imports it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from nsfwd.engine import pools
from nsfwd.engine.batcher import Engine
from nsfwd.engine.metrics import Metrics
from nsfwd.engine.served import served_specs, takes_torch_options
from nsfwd.models.names import DEFAULT_MODEL, OPEN_NSFW, ModelNotAvailableError, ModelSpec
from nsfwd.models.open_nsfw import load_open_nsfw
from nsfwd.models.runner import Runner

if TYPE_CHECKING:
    from nsfwd.models.classifier import Classifier
    from nsfwd.models.model import Model
    from nsfwd.settings import Settings

log = logging.getLogger(__name__)

TORCH_STACK = ("torch", "torchvision", "timm", "transformers", "safetensors")
"""The packages the torch models need, which the slim install leaves out."""


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
    def runtime(self) -> str | None:
        """``torch``, ``openvino``, or None: the start-up measurement's choice on a CPU."""

    @property
    def quantize(self) -> str | None:
        """``int8`` or None."""

    @property
    def calibration_dir(self) -> Path | None:
        """Images to calibrate int8 on; None: photo-like ones."""

    @property
    def calibration_images(self) -> int:
        """How many images int8 is calibrated on, at most."""

    @property
    def data_dir(self) -> Path | None:
        """Where OpenVINO models and the start-up measurement's choices are kept; None: nothing
        is measured or kept."""

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
    source = _source(options, model)
    _torch_stack(source)
    from nsfwd.models.classifier import Classifier

    return Classifier.load(source, **_load_options(options))


def load_served_model(options: ClassifierOptions, model: str | None = None) -> Model:
    """:func:`load_classifier`, but a detector (``nudenet``, a transformers object detector)
    loads as a :class:`~nsfwd.models.detector.Detector`: for the hosts that run either
    (``nsfwd serve``, ``nsfwd classify``, ``nsfwd censor``)."""
    return _load_model(_source(options, model), **_load_options(options))


def _load_model(source: str, **options: Any) -> Model:
    """:func:`~nsfwd.models.model.load_model`, once torch is known to be here."""
    _torch_stack(source)
    from nsfwd.models.model import load_model

    return load_model(source, **options)


def _torch_stack(model: str) -> None:
    """Raise :class:`ModelNotAvailableError` saying why when ``model`` cannot load because
    torch (or a package of its stack) is not installed here."""
    try:
        import nsfwd.models.model  # noqa: F401  (the torch side, classifiers and detectors)
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in TORCH_STACK:
            raise
        raise ModelNotAvailableError(
            f"{model} runs on torch, which is not installed here ({exc}); only the "
            f"built-in {OPEN_NSFW} runs without it (NSFWD_MODEL={OPEN_NSFW}). Install torch, "
            "or use the nsfwd image with torch rather than the slim one"
        ) from exc


def _source(options: ClassifierOptions, model: str | None) -> str:
    """``model``, else the options' model without its ``NAME=``, else the default."""
    if model:
        return model
    return ModelSpec.parse(options.model).source if options.model else DEFAULT_MODEL


def _load_options(options: ClassifierOptions) -> dict[str, Any]:
    """How to load, from the options: the keyword arguments both loaders take."""
    from nsfwd.models.calibration import Calibration

    return {
        "revision": options.revision,
        "device": options.device,
        "dtype": options.dtype,
        "runtime": options.runtime,
        "quantize": options.quantize,
        "compile": options.compile,
        "compile_cache_dir": options.compile_cache_dir,
        "data_dir": options.data_dir,
        "calibration": Calibration(options.calibration_dir, options.calibration_images),
    }


def load_served_classifiers(settings: Settings) -> dict[str, Runner[Any]]:
    """The models (classifiers and detectors) ``nsfwd serve`` runs
    (:func:`~nsfwd.engine.served.served_specs`), by the name clients pick each with (its
    ``NAME=``, or the name it loads as), the default first.
    One that cannot load raises :class:`ModelNotAvailableError`, stopping the server."""
    classifiers: dict[str, Runner[Any]] = {}
    for spec in served_specs(settings):
        classifier = load_spec(settings, spec)
        name = spec.name or classifier.name
        if name in classifiers:
            raise ValueError(
                f"two models are served as {name!r}; name them apart with NAME=ID_OR_DIR"
            )
        classifiers[name] = classifier
    return classifiers


def load_spec(settings: Settings, spec: ModelSpec) -> Runner[Any]:
    """The runner of one served model, loaded with the settings' options (``--device``,
    ``--dtype``...) where they apply to it (:func:`~nsfwd.engine.served.takes_torch_options`):
    the built-in open-nsfw on onnxruntime without torch, any other on torch (a
    :class:`~nsfwd.models.classifier.Classifier` or :class:`~nsfwd.models.detector.Detector`)."""
    if spec.source == OPEN_NSFW:
        if not takes_torch_options(spec, settings):
            return load_open_nsfw()
        return load_open_nsfw(
            device=settings.device,
            dtype=settings.dtype,
            runtime=settings.runtime,
            quantize=settings.quantize,
            compile=settings.compile,
        )
    if not takes_torch_options(spec, settings):
        return _load_model(spec.source)
    return load_served_model(settings, spec.source)


def build_engines(settings: Settings) -> dict[str, Engine]:
    """An engine (its own batcher and queue) for each model ``nsfwd serve`` runs
    (:func:`load_served_classifiers`), by served name, the default first. They share one
    :class:`~nsfwd.engine.metrics.Metrics`, so ``/metrics`` counts the whole server."""
    metrics = Metrics()
    engines: dict[str, Engine] = {}
    for name, classifier in load_served_classifiers(settings).items():
        info = classifier.model_info
        log.info(
            "loaded %s %s as %r on %s, %s in %s (%s); labels %s",
            classifier.kind,
            classifier.name,
            name,
            info["device"],
            info["runtime"],
            info["dtype"],
            info["dtype_reason"],
            ", ".join(classifier.labels),
        )
        engines[name] = build_engine(settings, classifier, metrics)
    return engines


def build_engine(
    settings: Settings, classifier: Runner[Any], metrics: Metrics | None = None
) -> Engine:
    """The engine that runs ``classifier`` under the settings' bounds (batch size, queue,
    decode pool and deadline, image limits): the same in every host, ``nsfwd serve`` and a
    Ray Serve model replica alike."""
    pools.configure(decode=settings.decode_workers)
    return Engine(
        classifier,
        max_batch_size=settings.max_batch_size or classifier.batch_size,
        batch_wait_ms=settings.batch_wait_ms,
        max_queue=settings.max_queue,
        decode_timeout_s=settings.decode_timeout_s,
        limits=settings.image_limits,
        metrics=metrics,
        video_limits=settings.video_limits,
        video=settings.video_options,
    )
