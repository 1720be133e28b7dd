"""What the HTTP side needs of an engine, and the errors an engine raises, without torch.

The routes and the job worker talk to a :class:`ClassifyEngine`: the batching
:class:`nsfwd.engine.batcher.Engine` in this process, or :class:`nsfwd.engine.remote.RemoteEngine`
in an HTTP worker process, which forwards to the one inference process. Only the former needs torch,
so this interface lives apart from it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol, TypeVar

from nsfwd.banks.pdq import PictureHash
from nsfwd.engine.metrics import Metrics
from nsfwd.engine.pools import BoundedPool, PoolDeadlineError
from nsfwd.intake import ImageComplexityError, ImageLimits
from nsfwd.timeline import VideoOptions
from nsfwd.verdict import Judgement, Policy

T = TypeVar("T")

DECODE_TIMEOUT_S: Final = 10.0
"""How long decoding one image may run by default (``NSFWD_DECODE_TIMEOUT_S``)."""


async def run_intake(pool: BoundedPool, fn: Callable[[], T], deadline_s: float) -> T:
    """Run image intake work (checks, decoding) on ``pool``; an image whose decoding runs past
    ``deadline_s`` is refused with :class:`~nsfwd.intake.ImageComplexityError`, and its thread
    written off (:mod:`nsfwd.engine.pools`), so that it holds no slot while it runs on."""
    try:
        return await pool.run(fn, deadline_s=deadline_s)
    except PoolDeadlineError:
        raise ImageComplexityError(
            f"decoding it took longer than {deadline_s:g} s, the server's limit for one image"
        ) from None


class QueueFullError(RuntimeError):
    """The engine holds as many pictures as it may; the caller should retry later."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is at capacity; retry in {retry_after} s")
        self.retry_after = retry_after


class EngineClosedError(RuntimeError):
    """The engine is not running (not started yet, or shutting down)."""


class ModelFailedError(RuntimeError):
    """The model raised on a batch, and again on the image alone (an out-of-memory error, a
    device fault): not the image's fault as far as anyone can tell, so a background job runs
    again later rather than failing for good."""


class ClassifyEngine(Protocol):
    """What the HTTP routes and the job worker need of an engine:
    :class:`nsfwd.engine.batcher.Engine` in this process, or
    :class:`nsfwd.engine.remote.RemoteEngine` in front of an inference process."""

    max_batch_size: int
    max_queue: int
    limits: ImageLimits
    metrics: Metrics
    ready: bool

    @property
    def model_name(self) -> str:
        """The loaded model's Hub id (or folder)."""

    @property
    def model_info(self) -> dict[str, str]:
        """Where and how the model runs: ``device``, ``dtype`` and ``dtype_reason`` (why that
        precision), as :class:`nsfwd.engine.batcher.Engine` reports them."""

    @property
    def labels(self) -> tuple[str, ...]:
        """The model's labels, in its order."""

    async def start(self) -> None:
        """Get ready to classify."""

    async def stop(self) -> None:
        """Stop; waiting requests fail with :class:`EngineClosedError`."""

    async def judge(
        self, data: bytes, policy: Policy | None = None, *, video: VideoOptions | None = None
    ) -> Judgement:
        """The labels of the worst picture a viewer may see of one encoded image under
        ``policy`` (default: moderate), and which picture that was; for a video, of its worst
        moment, with its segments, sampled and judged by ``video`` (default: the server's)."""

    async def check(self, data: bytes, *, hashed: bool = False) -> list[PictureHash]:
        """Run the image intake on ``data`` as :meth:`judge` would (decoding it on the
        bounded decode pool), raising the same :class:`~nsfwd.intake.ImageError`, and keep what
        it made for a while, so that a :meth:`judge` of the same bytes soon after (an async
        job's, or the judgement that follows a bank lookup) does not decode them again.
        ``hashed``: return the PDQ hash of every picture :meth:`judge` would judge (else an
        empty list). Admitted as :meth:`judge` is: :class:`QueueFullError` when full."""
