"""The models one server runs, each on its own engine, under the names clients pick them by.

``nsfwd serve`` may serve several models (``--model`` repeated, ``NSFWD_MODELS``); every
protocol names one per request (Prodia's ``config.model``, Eachlabs' ``model``, OpenAI's
``model``) and :class:`ServedModels` turns that name into the engine that runs it. The first
model is the default, the one Eachlabs' slug names. No torch here: HTTP workers of
``--http-workers`` hold :class:`~nsfwd.engine.remote.RemoteEngine` stand-ins.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from nsfwd.engine import ClassifyEngine
from nsfwd.models.names import (
    DEFAULT_MODEL,
    NUDENET,
    OPEN_NSFW,
    ModelNotAvailableError,
    ModelSpec,
    warn_default_missing,
)

if TYPE_CHECKING:
    from nsfwd.settings import Settings

log = logging.getLogger(__name__)


class UnknownModelError(LookupError):
    """A request named a model this server does not run; ``message`` lists the ones it does."""

    def __init__(self, requested: object, served: list[str]) -> None:
        """Create the error for the ``requested`` name; ``served`` are the names that work."""
        self.requested = requested
        self.served = served
        self.message = (
            f"unknown model {json.dumps(requested)[:200]}: this server runs {quoted(served)}"
        )
        super().__init__(self.message)


def quoted(names: list[str]) -> str:
    """``"a", "b"``: names as a message lists them."""
    return ", ".join(json.dumps(name) for name in names)


class ServedModels(Mapping[str, ClassifyEngine]):
    """Engines by served name, in the order they were given; the first is the default.

    Each engine is also found under the name its model loaded as (its Hub id or folder, say,
    when it is served as ``--served-model-name`` or ``NAME=``), unless that is another model's
    served name."""

    def __init__(self, engines: Mapping[str, ClassifyEngine]) -> None:
        """Serve ``engines`` (name -> engine, at least one)."""
        if not engines:
            raise ValueError("a server needs at least one model")
        self._engines = dict(engines)
        self._aliases: dict[str, str] = {}
        for name, engine in self._engines.items():
            if engine.model_name not in self._engines:
                self._aliases.setdefault(engine.model_name, name)

    @classmethod
    def of(cls, engines: ClassifyEngine | Mapping[str, ClassifyEngine], name: str | None = None
           ) -> ServedModels:  # fmt: skip
        """``engines`` as served models: a mapping as it is, one engine under ``name`` (or the
        name its model loaded as)."""
        if isinstance(engines, ServedModels):
            return engines
        if isinstance(engines, Mapping):
            return cls(engines)
        return cls({name or engines.model_name: engines})

    def __getitem__(self, name: str) -> ClassifyEngine:
        return self._engines[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._engines)

    def __len__(self) -> int:
        return len(self._engines)

    @property
    def names(self) -> list[str]:
        """The served names, the default first."""
        return list(self._engines)

    @property
    def default_name(self) -> str:
        """The first model's name."""
        return next(iter(self._engines))

    @property
    def default(self) -> ClassifyEngine:
        """The first model's engine."""
        return self._engines[self.default_name]

    @property
    def ready(self) -> bool:
        """Whether every engine is ready."""
        return all(engine.ready for engine in self._engines.values())

    def name_of(self, requested: object) -> str | None:
        """The served name ``requested`` picks (it, or the name its model loaded as); None
        when it picks none."""
        if not isinstance(requested, str):
            return None
        if requested in self._engines:
            return requested
        return self._aliases.get(requested)

    def resolve(self, requested: object) -> tuple[str, ClassifyEngine]:
        """The served name and engine ``requested`` picks; :class:`UnknownModelError` else."""
        name = self.name_of(requested)
        if name is None:
            raise UnknownModelError(requested, self.names)
        return name, self._engines[name]

    async def start(self) -> None:
        """Start every engine, in order (a failure stops those already started)."""
        started: list[ClassifyEngine] = []
        try:
            for engine in self._engines.values():
                await engine.start()
                started.append(engine)
        except BaseException:
            await asyncio.gather(*(engine.stop() for engine in started), return_exceptions=True)
            raise

    async def stop(self) -> None:
        """Stop every engine."""
        for engine in self._engines.values():
            await engine.stop()


def model_kind(engine: ClassifyEngine) -> str:
    """``classifier`` or ``detector``, as the engine's model says (an engine from before
    detectors says nothing: a classifier)."""
    return engine.model_info.get("kind", "classifier")


def served_specs(settings: Settings) -> list[ModelSpec]:
    """The models a server runs, the default first: those the settings name
    (:attr:`~nsfwd.settings.Settings.model_specs`); with none named, :data:`DEFAULT_MODEL` and
    the built-in :data:`OPEN_NSFW`, or, where the former cannot be had here (no Hub, not in
    the cache), a warning saying how to get it and :data:`OPEN_NSFW` alone, so that a fresh
    install without the Hub still serves. An install without torch (the slim container image)
    runs :data:`OPEN_NSFW` alone, which needs none."""
    if specs := settings.model_specs:
        return specs
    if importlib.util.find_spec("torch") is None:
        log.info("torch is not installed: serving the built-in %s model alone", OPEN_NSFW)
        return [ModelSpec(OPEN_NSFW)]
    from nsfwd.models.hub import resolve_model_dir

    try:
        resolve_model_dir(DEFAULT_MODEL, settings.revision)
    except ModelNotAvailableError as exc:
        warn_default_missing(exc)
        return [ModelSpec(OPEN_NSFW)]
    return [ModelSpec(DEFAULT_MODEL, settings.served_model_name), ModelSpec(OPEN_NSFW)]


def takes_torch_options(spec: ModelSpec, settings: Settings) -> bool:
    """Whether ``spec`` loads with the settings' torch options (``--device``, ``--dtype``...).
    The built-in :data:`OPEN_NSFW` and :data:`NUDENET` run on onnxruntime with their own: alone
    and named, they refuse them; beside other models, or chosen by nsfwd when none was named,
    they are the others' and they ignore them."""
    if spec.source not in (OPEN_NSFW, NUDENET):
        return True
    return len(settings.model_specs) == 1
