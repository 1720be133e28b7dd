"""The engine of ``nsfwd serve --ray``'s ingress: classify by calling a model deployment.

:class:`ServeEngine` is a :class:`~nsfwd.engine.ClassifyEngine` whose model runs in
the replicas of a Ray Serve deployment (:class:`nsfwd.serve.ray.app.ModelServer`),
reached through a ``DeploymentHandle``. It turns what Serve raises into what the routes and
the job worker already handle: Serve's ``BackPressureError`` (every replica busy and the
handle's queue full) into :class:`QueueFullError` (429 with Retry-After), a replica that died
with the request on it into a retry on another replica and, when none answers, into
:class:`EngineClosedError` (503 with Retry-After; a background job is handed back to the
store). It imports no torch: the ingress replicas parse HTTP only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from nsfwd.banks.pdq import PictureHash
from nsfwd.engine import EngineClosedError, QueueFullError
from nsfwd.engine.metrics import Metrics
from nsfwd.intake import ImageError, ImageLimits
from nsfwd.timeline import VideoOptions
from nsfwd.verdict import Judgement, Policy

log = logging.getLogger(__name__)

RETRIES = 2
"""Times a request is sent again after the replica it ran on died: classifying is idempotent."""
STATUS_EVERY_S = 2.0
"""How often the engine reads the deployments' state from Serve's controller for /healthz."""
MODEL_INFO = ("device", "dtype", "runtime", "dtype_reason")
"""What the model replicas tell of how their model runs (``Engine.model_info``)."""


class ServeEngine:
    """A :class:`~nsfwd.engine.ClassifyEngine` over a model deployment's handle."""

    def __init__(
        self,
        handle: Any,
        info: dict[str, Any],
        *,
        app_name: str,
        deployment: str,
        limits: ImageLimits,
        max_queue: int,
        metrics: Metrics | None = None,
    ) -> None:
        """An engine over ``handle``, whose replicas answered ``info`` (see :meth:`connect`)."""
        self.handle = handle
        self.app_name = app_name
        self.deployment = deployment
        self.limits = limits
        self.max_queue = max_queue
        self.max_batch_size = int(info["max_batch_size"])
        self.metrics = metrics or Metrics()
        self.ready = False
        """Started, and at least one model replica running (as of the last status read)."""
        self._started = False
        self._name = str(info["name"])
        self._info = {key: str(info[key]) for key in MODEL_INFO if key in info}
        self._labels = tuple(info.get("labels", ()))
        self.metrics.show_model(self._info)
        self._deployments = "unknown"
        self._running = 0
        self._in_flight = 0
        self._call_seconds = 1.0  # refined after every call; feeds Retry-After
        self._status_task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, handle: Any, **options: Any) -> ServeEngine:
        """Ask the model deployment what it runs (waiting for a replica to be up), and build
        the engine over it: the routes need the model's name before they exist."""
        info: dict[str, Any] = await handle.info.remote()
        return cls(handle, info, **options)

    @property
    def model_name(self) -> str:
        """The model the deployment serves (Hub id or folder)."""
        return self._name

    @property
    def labels(self) -> tuple[str, ...]:
        """The model's labels, as a replica announced them."""
        return self._labels

    @property
    def model_info(self) -> dict[str, str]:
        """The model replicas' ``device``, ``dtype``, ``runtime`` and ``dtype_reason``, and
        ``deployments``: each deployment of the application, its state and its running
        replicas."""
        return {**self._info, "deployments": self._deployments}

    async def start(self) -> None:
        """Read the deployments' state, and keep reading it."""
        self._started = True
        self._running = 1  # the replica that answered connect()
        self.ready = True
        await self._read_status()
        self._status_task = asyncio.create_task(self._watch_status(), name="nsfwd-serve-status")

    async def stop(self) -> None:
        """Stop watching; the model deployment is Serve's to stop."""
        self._started = False
        self.ready = False
        if self._status_task is not None:
            self._status_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._status_task

    def retry_after(self) -> int:
        """Seconds a refused client should wait: about one call's time, at least 1."""
        return max(1, math.ceil(self._call_seconds))

    async def judge(
        self, data: bytes, policy: Policy | None = None, *, video: VideoOptions | None = None
    ) -> Judgement:
        """The worst picture of one encoded image under ``policy`` (default: moderate), or a
        video's worst moment and segments (sampled by ``video``), judged by a model replica
        (:meth:`nsfwd.serve.ray.app.ModelServer.judge`).

        Raises :class:`~nsfwd.intake.ImageError` for a bad image, :class:`QueueFullError` when
        every replica is full and :class:`EngineClosedError` when no replica answers.
        """
        if not self.ready:
            raise EngineClosedError("the model is not loaded yet")
        self._in_flight += 1
        self.metrics.queue_size.set(self._in_flight)
        started = time.perf_counter()
        try:
            answer = await self._call("judge", data, policy, video)
        finally:
            self._in_flight -= 1
            self.metrics.queue_size.set(self._in_flight)
        self._call_seconds = 0.8 * self._call_seconds + 0.2 * (time.perf_counter() - started)
        return self._judgement(answer)

    async def check(self, data: bytes, *, hashed: bool = False) -> list[PictureHash]:
        """Run the image intake on ``data`` in a model replica (an async job's upload, checked
        before it is accepted; or an image's pictures hashed for the banks), raising its
        :class:`~nsfwd.intake.ImageError`. The replica keeps the pictures for the judgement
        that follows; one that lands on another replica decodes the image again."""
        if not self.ready:
            raise EngineClosedError("the model is not loaded yet")
        answer = await self._call("check", data, hashed)
        error = answer.get("error")
        if isinstance(error, ImageError):
            raise error
        if "busy" in answer:
            self.metrics.rejected.inc()
            raise QueueFullError(int(answer["busy"]))
        hashes: list[PictureHash] = answer.get("hashes", [])
        return hashes

    async def _call(self, method: str, *args: Any) -> dict[str, Any]:
        """``method`` of a model replica, called with ``args``; retried on another replica
        when the one it ran on died."""
        call = getattr(self.handle, method)
        for attempt in range(RETRIES + 1):
            try:
                answer: dict[str, Any] = await call.remote(*args)
                return answer
            except BackPressureError:
                self.metrics.rejected.inc()
                raise QueueFullError(self.retry_after()) from None
            except (RayActorError, DeploymentUnavailableError) as exc:
                log.warning("a model replica went away (attempt %d): %s", attempt + 1, exc)
        raise EngineClosedError("no model replica answered (they are restarting)")

    def _judgement(self, answer: dict[str, Any]) -> Judgement:
        """The judgement of a :meth:`ModelServer.judge` answer, the batches it ran in recorded
        in metrics, or the image error it carries, raised."""
        error = answer.get("error")
        if isinstance(error, ImageError):
            raise error
        if "busy" in answer:
            self.metrics.rejected.inc()
            raise QueueFullError(int(answer["busy"]))
        if "queue_seconds" in answer:
            self.metrics.queue_seconds.observe(answer["queue_seconds"])
        for size, seconds in answer.get("batches", ()):  # the batches this image started
            self.metrics.batch_size.observe(size)
            self.metrics.inference_seconds.observe(seconds)
        judgement: Judgement = answer["judgement"]
        return judgement

    async def _watch_status(self) -> None:
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            try:
                await self._read_status()
            except Exception as exc:  # the controller restarting: keep the last state
                log.warning("cannot read Serve's status: %s", exc)

    async def _read_status(self) -> None:
        from ray import serve

        status = await asyncio.to_thread(serve.status)
        app = status.applications.get(self.app_name)
        if app is None:
            self._deployments = "unknown"
            return
        parts = []
        for name, deployment in sorted(app.deployments.items()):
            running = int(deployment.replica_states.get("RUNNING", 0))
            if name == self.deployment:
                self._running = running
            parts.append(f"{name} {deployment.status.value} ({running} running)")
        self._deployments = ", ".join(parts)
        self.ready = self._started and self._running > 0
