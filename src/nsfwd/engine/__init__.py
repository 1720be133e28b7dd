"""The engine: what turns judged pictures into verdicts, many requests at a time.

What the HTTP side needs of an engine and the errors it raises (:mod:`.protocol`), importable
from here without torch; the batcher that runs a model (:mod:`.batcher`, over a
:class:`~nsfwd.models.runner.Runner`), the bounded thread pools (:mod:`.pools`), the models a
server runs by name (:mod:`.served`), the engine over a socket for ``--http-workers``
(:mod:`.remote`), engines built from settings (:mod:`.build`: torch for the models that run on
it) and their metrics (:mod:`.metrics`).
"""

from nsfwd.engine.protocol import (
    DECODE_TIMEOUT_S,
    ClassifyEngine,
    EngineClosedError,
    ModelFailedError,
    QueueFullError,
    run_intake,
)

__all__ = [
    "DECODE_TIMEOUT_S",
    "ClassifyEngine",
    "EngineClosedError",
    "ModelFailedError",
    "QueueFullError",
    "run_intake",
]
