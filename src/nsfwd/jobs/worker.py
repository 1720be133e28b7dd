"""The worker: runs the predictions in the store on this replica's engine, under leases, so that
replicas sharing one store share the queue and a killed replica's work is taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Final

from nsfwd.engine import ClassifyEngine, EngineClosedError, ModelFailedError, QueueFullError
from nsfwd.engine.served import ServedModels, UnknownModelError
from nsfwd.fetch import FetchError, FetchPolicy, fetch
from nsfwd.intake import ImageError
from nsfwd.jobs.claims import ClaimLoop, worker_name
from nsfwd.jobs.database import StoreUnavailableError
from nsfwd.jobs.records import Prediction
from nsfwd.jobs.store import Store
from nsfwd.timeline import VideoOptions
from nsfwd.verdict import Judgement, Policy

log = logging.getLogger(__name__)

POLL_S: Final = 0.5
PURGE_EVERY_S: Final = 60.0


class InputError(Exception):
    """The prediction's image cannot be had; ``message`` says why, for the client."""

    def __init__(self, message: str) -> None:
        """Create the error with the client-facing ``message``."""
        super().__init__(message)
        self.message = message


DEFAULT_POLICY: Final = Policy()


def flagged(judgement: Judgement, policy: Policy = DEFAULT_POLICY) -> bool | None:
    """Whether ``policy`` flags the judgement (a bank's match always does); ``None`` for a
    model the policy cannot score."""
    try:
        return judgement.flagged(policy)
    except ValueError:
        return None


def outcome(judgement: Judgement, policy: Policy) -> dict[str, Any]:
    """What a prediction records of its judgement: ``labels``, ``flagged`` under ``policy``,
    ``judged`` (which picture, where more than one was judged, and a detector's regions),
    ``match`` (a bank's) and a video's ``segments``."""
    return {
        "labels": judgement.labels,
        "flagged": flagged(judgement, policy),
        "judged": judgement.stored(),
        "match": None if judgement.match is None else judgement.match.details(),
        "segments": judgement.segments,
    }


class Worker:
    """Claims, runs and finishes predictions from ``store`` on the served ``models``; see the
    module."""

    def __init__(
        self,
        store: Store,
        models: ServedModels,
        *,
        concurrency: int,
        lease_s: float = 30.0,
        fetch_policy: FetchPolicy | None = None,
        video_fetch_policy: FetchPolicy | None = None,
        policy: Policy = DEFAULT_POLICY,
        video: VideoOptions | None = None,
        poll_s: float = POLL_S,
        purge_every_s: float = PURGE_EVERY_S,
        name: str | None = None,
        keeps_input: Callable[[Prediction], bool] | None = None,
    ) -> None:
        """Run up to ``concurrency`` predictions at once, each under a lease of ``lease_s``.

        Each prediction runs on the model it names among ``models`` (none named: the first).
        ``fetch_policy`` says where image URLs may be fetched from (without it, URL inputs fail
        with a message), ``video_fetch_policy`` video URLs (default: ``fetch_policy``);
        ``policy`` decides the verdict (``flagged``) where the prediction does not carry its
        key's own (what it leaves unset comes from here); ``video`` samples and judges videos
        where the prediction's options leave it to the server; ``poll_s`` is how often
        to look for work queued elsewhere; ``purge_every_s`` how often to purge.
        ``keeps_input`` says which predictions' uploads their results need (the others' bytes
        are deleted when they succeed; ``None``: every upload is kept until it expires).
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.store = store
        self.models = models
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.fetch_policy = fetch_policy
        self.video_fetch_policy = video_fetch_policy or fetch_policy
        self.policy = policy
        self.video = video or VideoOptions()
        self.poll_s = poll_s
        self.purge_every_s = purge_every_s
        self.name = name or worker_name()
        self.keeps_input = keeps_input
        self._claims = ClaimLoop(
            store.predictions,
            self._run,
            owner=self.name,
            slots=concurrency,
            lease_s=lease_s,
            poll_s=poll_s,
            name="prediction",
            renew=store.predictions.renew_leases,
        )
        self._purge: asyncio.Task[None] | None = None
        self._seconds_per_prediction = 1.0  # refined as predictions finish; feeds retry_after

    @property
    def running(self) -> int:
        """Predictions this worker is running now."""
        return self._claims.running

    async def start(self) -> None:
        """Start claiming work (the engine must be started)."""
        self._claims.start()
        self._purge = asyncio.create_task(self._purge_loop(), name="nsfwd-purge")

    async def stop(self) -> None:
        """Stop claiming, cancel what is running and hand it back to the queue."""
        if self._purge is not None:
            self._purge.cancel()
            await asyncio.gather(self._purge, return_exceptions=True)
            self._purge = None
        running = await self._claims.stop()
        if running:
            try:
                released = await self.store.predictions.release(self.name, running)
            except Exception:
                log.exception("could not hand %d predictions back; their leases will expire",
                              len(running))  # fmt: skip
            else:
                log.info("handed %d unfinished predictions back to the queue", released)

    def retry_after(self, excess: int = 1) -> int:
        """Seconds until about ``excess`` running or queued predictions have finished here."""
        seconds = excess * self._seconds_per_prediction / self.concurrency
        return min(60, max(1, math.ceil(seconds)))

    # --- purging -----------------------------------------------------------------------------

    async def _purge_loop(self) -> None:
        while True:
            try:
                await self.store.predictions.purge_expired()
            except Exception:
                log.exception("purging expired predictions failed")
            await asyncio.sleep(self.purge_every_s)

    # --- one prediction ----------------------------------------------------------------------

    async def _run(self, prediction: Prediction) -> None:
        if prediction.attempts > 1:
            log.warning("prediction %s: attempt %d (a previous run was interrupted)",
                        prediction.id, prediction.attempts)  # fmt: skip
        started = time.perf_counter()
        judgement: Judgement | None = None
        error: str | None = None
        digest: str | None = None
        try:
            data = await self._image(prediction)
            digest = hashlib.sha256(data).hexdigest()
            started = time.perf_counter()  # predict_time: decoding and inference, not the fetch
            judgement = await self._judge(prediction, data)
        except InputError as exc:
            error = exc.message
        except EngineClosedError:
            log.info("prediction %s: the engine stopped; handing it back", prediction.id)
            with contextlib.suppress(Exception):  # else its lease runs out: same end, later
                await self.store.predictions.release(self.name, [prediction.id])
            return
        except StoreUnavailableError as exc:  # not the job's fault: it runs again later
            log.warning("prediction %s: %s; it runs again once its lease runs out",
                        prediction.id, exc)  # fmt: skip
            return
        except ModelFailedError as exc:  # out of memory, a device fault: likely passing
            attempts = self.store.predictions.max_attempts
            if prediction.attempts < attempts:
                log.warning("prediction %s: %s; it runs again once its lease runs out "
                            "(attempt %d of %d)", prediction.id, exc, prediction.attempts,
                            attempts)  # fmt: skip
                return
            error = (
                f"the model failed on this image in each of {attempts} attempts ({exc}); "
                "report the prediction id to the server's operator"
            )
        except Exception:
            log.exception("prediction %s failed", prediction.id)
            error = (
                f"internal error while running prediction {prediction.id}; submit it again, and "
                "report the id to the server's operator if it persists"
            )
        elapsed = time.perf_counter() - started
        try:
            finished = await self.store.predictions.finish(
                prediction.id,
                self.name,
                **({} if judgement is None else outcome(judgement, self._policy(prediction))),
                error=error,
                predict_time=None if judgement is None else elapsed,
                input_sha256=digest,
                keep_input=self.keeps_input is None or self.keeps_input(prediction),
            )
        except StoreUnavailableError as exc:
            log.warning("prediction %s: its result could not be stored (%s); it runs again "
                        "once its lease runs out", prediction.id, exc)  # fmt: skip
            return
        if finished is None:
            log.warning("prediction %s: lease lost before finishing; result dropped",
                        prediction.id)  # fmt: skip
        elif judgement is not None:
            self._seconds_per_prediction = 0.8 * self._seconds_per_prediction + 0.2 * elapsed

    def _policy(self, prediction: Prediction) -> Policy:
        """The policy of the prediction's API key, where it has its own; else the server's."""
        try:
            return self.policy.overridden(
                prediction.policy, prediction.threshold, prediction.region_thresholds
            )
        except ValueError as exc:  # only a hand-edited row; keys are checked when created
            log.warning("prediction %s: %s; applying the server's policy", prediction.id, exc)
            return self.policy

    def _video(self, prediction: Prediction) -> VideoOptions | None:
        """The video options of a video prediction: its key's and request's over the server's
        (``None``: an image, or the server's alone)."""
        if not prediction.video:
            return None
        try:
            return self.video.overridden(prediction.video)
        except ValueError as exc:  # the server's limits changed since it was created
            log.warning("prediction %s: %s; applying the server's video options",
                        prediction.id, exc)  # fmt: skip
            return None

    async def _image(self, prediction: Prediction) -> bytes:
        if prediction.input_url is None:
            upload = await self.store.predictions.get_input(prediction.id)
            if upload is None:
                raise InputError("the uploaded image is gone (the job expired); submit it again")
            return upload.data
        policy = self.fetch_policy if prediction.video is None else self.video_fetch_policy
        if policy is None:
            raise InputError("this server does not fetch image URLs; upload the image instead")
        try:
            return await fetch(prediction.input_url, policy.for_key(prediction.api_key))
        except FetchError as exc:
            raise InputError(exc.message) from None

    async def _judge(self, prediction: Prediction, data: bytes) -> Judgement:
        """The judgement of the prediction's model (the worst picture under the prediction's
        policy); waits while its engine is full (it is shared with live traffic)."""
        engine = _engine_for(self.models, prediction)
        while True:
            try:
                return await engine.judge(
                    data, self._policy(prediction), video=self._video(prediction)
                )
            except QueueFullError as exc:
                await asyncio.sleep(min(exc.retry_after, self.lease_s / 3))
            except ImageError as exc:
                raise InputError(_input_error(prediction, exc.message)) from None


def _engine_for(models: ServedModels, prediction: Prediction) -> ClassifyEngine:
    """The engine of the model ``prediction`` names (none: the default); :class:`InputError`
    when this server no longer runs it (it was restarted with other models)."""
    if prediction.model is None:
        return models.default
    try:
        return models.resolve(prediction.model)[1]
    except UnknownModelError as exc:
        raise InputError(f"{exc.message} now; submit it again naming one of them") from None


def _input_error(prediction: Prediction, message: str) -> str:
    if prediction.input_url is not None:
        what = "image" if prediction.video is None else "video"
        return f"the {what} at {prediction.input_url[:200]}: {message}"
    if prediction.input_filename:
        return f"input {prediction.input_filename!r}: {message}"
    return f"input image: {message}"
