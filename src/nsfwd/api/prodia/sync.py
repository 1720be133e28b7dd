"""Prodia's synchronous job API: ``POST /v2/job``, as the official ``prodia`` npm client speaks it.

A multipart job and image in; the finished job out, as JSON or as multipart/form-data as the
``Accept`` header asks (docs/ARCHITECTURE.md says where each error goes, and why).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, Final

from fastapi import APIRouter, Request, Response
from starlette.types import Receive

from nsfwd.api import fairness, openapi
from nsfwd.api.auth import AuthenticationError, Caller, KeyRing
from nsfwd.api.http import strict_json
from nsfwd.api.http.errors import (
    ApiError,
    BadRequestError,
    ClientGoneError,
    TooBusyError,
    UnauthorizedError,
    UnavailableError,
    answer,
)
from nsfwd.api.http.multipart import Part, read_form
from nsfwd.api.prodia.job import (
    IMG2LABEL_V1,
    IMG2LABEL_V2,
    JOB_TYPES,
    JSON_TYPE,
    OPENAPI_REQUEST,
    PING_V1,
    Job,
    failed_response,
    image_refusal,
    job_response,
    json_bytes,
    passthrough,
    video_options,
    wants_multipart,
)
from nsfwd.api.prodia.regions import redaction_of
from nsfwd.engine import ClassifyEngine, EngineClosedError, QueueFullError, pools, run_intake
from nsfwd.engine.served import ServedModels, UnknownModelError, model_kind, quoted
from nsfwd.intake import ImageError
from nsfwd.intake.video import sniff_video
from nsfwd.models.names import NUDENET, not_loaded_hint
from nsfwd.redact import Redaction, redact
from nsfwd.settings import Settings
from nsfwd.timeline import VideoOptions
from nsfwd.verdict import Judgement, Policy, Region

log = logging.getLogger(__name__)

ROUTE: Final = "/v2/job"
JOB_PART_MAX_BYTES: Final = 64 * 1024
"""Largest accepted ``job`` part; a real job is about 100 bytes."""
MAX_PARTS: Final = 16
"""Most parts a request may have (a job is 2; the npm client sends a ``File`` input twice)."""
FORM_OVERHEAD_BYTES: Final = 128 * 1024
"""What a request body may carry beyond the largest image: the job part and multipart framing."""


class ProdiaJobs:
    """The ``POST /v2/job`` endpoint over one engine."""

    def __init__(
        self, models: ClassifyEngine | ServedModels, settings: Settings, keys: KeyRing
    ) -> None:
        """Serve jobs on ``models`` (one engine, or several by name; ``config.model`` picks
        one) to the callers ``keys`` accept; ``settings`` give the limits, and the name of a
        lone engine."""
        self.models = ServedModels.of(models, settings.served_model_name)
        self.engine = self.models.default
        """The default model's engine: its metrics count the requests."""
        self.settings = settings
        self.keys = keys
        self.public_model = self.models.default_name

    @property
    def max_input_bytes(self) -> int:
        """The largest input part: an image (a short video fits within it too)."""
        return self.settings.max_image_bytes

    async def post_job(self, request: Request) -> Response:
        """Run one job and answer with it, completed or failed; see the module docstring."""
        job = Job()
        work = self._run(request, job)
        return await self._guard(
            request, job, ROUTE, work, fail=self._failed, not_done="the job was not run"
        )

    async def _guard(
        self,
        request: Request,
        job: Job,
        route: str,
        work: Awaitable[Response],
        *,
        fail: Callable[[Request, Job, ApiError], Response],
        not_done: str,
    ) -> Response:
        """Await a route's ``work``; refusals and crashes become ``fail``'s answer (a failed
        job), and every answer is counted and timed in the metrics."""
        try:
            return await answer(
                request,
                route,
                work,
                refuse=lambda exc: fail(request, job, exc),
                metrics=self.engine.metrics,
                internal=f"internal error; {not_done}. Retry, and report request id "
                "{request_id} if it persists",
                what=f"job {job.id} ",
            )
        finally:
            fairness.release(request)  # the key's slot, taken by _hold_slot

    async def _read_parts(self, request: Request, job: Job) -> list[Part]:
        """The request's multipart body, read as it streams in, and its job part checked."""
        async with contextlib.aclosing(request.stream()) as chunks:
            parts = await read_form(
                request.headers.get("content-type", ""),
                chunks,
                part_limits={"job": JOB_PART_MAX_BYTES, "input": self.max_input_bytes},
                max_parts=MAX_PARTS,
            )
        self._read_job(parts, job)
        return parts

    async def _identify(self, request: Request) -> Caller | None:
        """The caller the Bearer token names (``None`` when the API is open); else 401."""
        header = request.headers.get("authorization")
        scheme, _, token = (header or "").strip().partition(" ")
        is_bearer = scheme.lower() == "bearer"
        has_token = is_bearer and bool(token.strip())
        try:
            return await self.keys.identify(token if has_token else None, request)
        except AuthenticationError as exc:
            if header is not None and not is_bearer:
                raise UnauthorizedError(
                    "the Authorization header must be 'Bearer <token>'; no other scheme is accepted"
                ) from None
            if header is not None and not has_token:
                raise UnauthorizedError(
                    "the Authorization header says 'Bearer' but has no token after it; send "
                    "'Authorization: Bearer <token>'"
                ) from None
            if exc.missing:
                raise UnauthorizedError(
                    "missing API token: send the header 'Authorization: Bearer <token>' with a "
                    f"token this server accepts ({exc.sources})"
                ) from None
            raise UnauthorizedError(
                "invalid API token: the Bearer token is not one this server accepts, or it was "
                "revoked; check the token you were given"
            ) from None

    def _hold_slot(self, request: Request, caller: Caller | None) -> None:
        """Take one of the caller's request slots, or refuse it 429 past its fair share;
        :meth:`_guard` gives the slot back."""
        self.keys.requests.hold(request, None if caller is None else caller.ref)

    async def _run(self, request: Request, job: Job) -> Response:
        caller = await self._identify(request)
        self._hold_slot(request, caller)
        parts = await self._read_parts(request, job)
        job.restart_clock()
        multipart = wants_multipart(request.headers.get("accept"), default=job.type == IMG2LABEL_V2)
        if job.type == PING_V1:
            return self._completed(job, multipart)
        engine = self._check_model(job)
        detector = self._check_detector(job)
        redaction = redaction_of(job.config)
        if redaction is not None and detector is None and model_kind(engine) != "detector":
            raise BadRequestError(
                "job.config.redact needs regions: name a detector in job.config.model or "
                f"job.config.detector (served: {quoted(self.models.names)})"
            )
        image = self._single_input(parts)
        if redaction is not None and sniff_video(image.data) is not None:
            raise BadRequestError("job.config.redact takes an image, not a video")
        video = self.settings.video_options.overridden(self._video_changes(job, caller))
        policy = self._policy(image, caller)
        judgement = await self._judge(request, engine, image, video, policy)
        if detector is not None:
            found = await self._judge(request, detector, image, video, policy)
            judgement = replace(judgement, regions=found.regions)
        outputs = [
            Part("output", json_bytes(judgement.labels), "labels.json", JSON_TYPE),
            passthrough(image),
        ]
        if redaction is not None and job.type == IMG2LABEL_V2:
            outputs[1] = await self._redacted(outputs[1], judgement.regions or (), redaction)
        return self._completed(
            job, multipart, judgement, outputs if job.type == IMG2LABEL_V2 else []
        )

    def _check_detector(self, job: Job) -> ClassifyEngine | None:
        """The engine of the detector ``job.config.detector`` names, if it names one; a 400
        when it is not served or is not a detector."""
        name = (job.config or {}).get("detector")
        if name is None:
            return None
        try:
            engine = self.models.resolve(name)[1]
        except UnknownModelError as exc:
            raise BadRequestError(f"job.config.detector: {exc.message}") from None
        if model_kind(engine) != "detector":
            raise BadRequestError(
                f"job.config.detector names {name!r}, a classifier; name a detector, such as "
                f"{NUDENET}, served with --model {NUDENET}"
            )
        return engine

    async def _redacted(self, image: Part, regions: Sequence[Region], redaction: Redaction) -> Part:
        """The output image redacted (on the decode pool, under its deadline)."""
        work = partial(redact, image.data, regions, redaction, self.settings.image_limits)
        try:
            copy = await run_intake(pools.named(pools.DECODE), work, self.settings.decode_timeout_s)
        except ImageError as exc:
            raise image_refusal(image, exc) from None
        return Part(image.name, copy.data, image.filename, copy.media_type)

    def _read_job(self, parts: Sequence[Part], job: Job) -> None:
        """Parse the ``job`` part into ``job`` (type and config), or raise saying what is wrong."""
        example = f'{{"type": "{IMG2LABEL_V1}", "config": {{"model": "{self.public_model}"}}}}'
        found = [part for part in parts if part.name == "job"]
        if len(found) != 1:
            names = ", ".join(repr(part.name) for part in parts) or "none"
            raise BadRequestError(
                f"expected one part named 'job' with the job JSON, got {len(found)} (parts: "
                f"{names}); send e.g. {example}"
            )
        try:
            doc = strict_json.loads(found[0].data)
        except RecursionError:
            raise BadRequestError(
                "the job JSON is nested too deeply; send e.g. " + example
            ) from None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN, huge integers
            raise BadRequestError(
                f"the job part is not valid JSON ({exc}); send e.g. {example}"
            ) from None
        if not isinstance(doc, dict):
            raise BadRequestError(
                f"the job must be a JSON object, got {type(doc).__name__}; send e.g. {example}"
            )
        job_type, config = doc.get("type"), doc.get("config")
        if isinstance(job_type, str):
            job.type = job_type
        if isinstance(config, dict):
            job.config = config
        if job_type not in JOB_TYPES:
            shown = "missing" if job_type is None else json.dumps(job_type)[:200]
            raise BadRequestError(
                f"unknown job type {shown}: this server runs {', '.join(JOB_TYPES)}"
            )
        if config is not None and not isinstance(config, dict):
            raise BadRequestError(f"job.config must be a JSON object; send e.g. {example}")

    def _policy(self, image: Part, caller: Caller | None) -> Policy | None:
        """Whose flags make a video's segments: the key's policy, else the server's. ``None``
        for an image, whose worst picture moderate picks (Prodia's labels stay raw)."""
        if sniff_video(image.data) is None:
            return None
        if caller is None:
            return self.settings.verdict_policy
        return self.settings.verdict_policy.overridden(
            caller.policy, caller.threshold, caller.region_thresholds
        )

    def _video_changes(self, job: Job, caller: Caller | None) -> dict[str, Any]:
        """The video options the key and ``job.config`` set, checked over the server's; a 400
        saying what is wrong."""
        changes = ({} if caller is None else dict(caller.video)) | video_options(job.config)
        try:
            self.settings.video_options.overridden(changes)
        except ValueError as exc:
            raise BadRequestError(f"job.config: {exc}") from None
        return changes

    def _check_model(self, job: Job) -> ClassifyEngine:
        """The engine of the model ``job.config.model`` names, or a 400 listing the served
        ones."""
        model = (job.config or {}).get("model")
        if model is None:
            raise BadRequestError(
                f"job.config.model is missing; set it to {json.dumps(self.public_model)}"
            )
        try:
            return self.models.resolve(model)[1]
        except UnknownModelError as exc:
            which = "that" if len(self.models) == 1 else "one of them"
            raise BadRequestError(
                f"{exc.message}; set job.config.model to {which}.{not_loaded_hint(model)}"
            ) from None

    def _single_input(self, parts: Sequence[Part]) -> Part:
        """The one input image; identical repeats (the npm client sends a File twice) count once."""
        inputs = [part for part in parts if part.name == "input"]
        if not inputs:
            names = ", ".join(repr(part.name) for part in parts)
            raise BadRequestError(
                f"no input image: send the image in a multipart part named 'input' "
                f"(parts received: {names})"
            )
        if any(part.data != inputs[0].data for part in inputs[1:]):
            raise BadRequestError(
                f"this job takes one input image, got {len(inputs)} different ones; send one "
                "image per job"
            )
        return inputs[0]

    async def _judge(
        self,
        request: Request,
        engine: ClassifyEngine,
        image: Part,
        video: VideoOptions,
        policy: Policy | None,
    ) -> Judgement:
        """``engine``'s judgement of ``image`` (the worst picture under ``policy``, moderate
        when None; a video's worst moment and segments, sampled by ``video``), unless the
        client goes away first."""
        if not engine.ready:
            raise UnavailableError(
                "the model is not ready (loading, or the server is stopping); retry in a moment"
            )
        try:
            work = engine.judge(image.data, policy, video=video)
            return await _unless_disconnected(work, request.receive)
        except ImageError as exc:
            raise image_refusal(image, exc) from None
        except QueueFullError as exc:
            raise TooBusyError(str(exc), exc.retry_after) from None
        except EngineClosedError as exc:
            raise UnavailableError(f"{exc}; retry in a few seconds") from None

    def _completed(
        self,
        job: Job,
        multipart: bool,
        judgement: Judgement | None = None,
        outputs: Sequence[Part] = (),
    ) -> Response:
        labels = None if judgement is None else judgement.labels
        judged = None if judgement is None or not judgement.chosen else judgement.details()
        regions = None if judgement is None else judgement.region_dicts()
        match = None if judgement is None or judgement.match is None else judgement.match.details()
        segments = None if judgement is None else judgement.segments
        document = json_bytes(
            job.document(
                "completed",
                labels=labels,
                judged=judged,
                regions=regions,
                match=match,
                segments=segments,
            )
        )
        return job_response(document, multipart=multipart, outputs=outputs)

    def _failed(self, request: Request, job: Job, exc: ApiError) -> Response:
        """A failed job; multipart by default for v2 jobs, the multipart ones."""
        accept = request.headers.get("accept")
        return failed_response(accept, job, exc, multipart_by_default=job.type == IMG2LABEL_V2)


async def _unless_disconnected(work: Any, receive: Receive) -> Judgement:
    """Await ``work``; if the client disconnects first, cancel it and raise ClientGoneError.

    Cancelling the engine call marks its queued image done, so the batcher skips it.
    """
    task: asyncio.Task[Judgement] = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if watcher.done() and not watcher.cancelled() and watcher.exception() is not None:
        log.debug("watching for a disconnect failed", exc_info=watcher.exception())
    if task.done() and not task.cancelled():
        return task.result()
    raise ClientGoneError


async def _disconnect(receive: Receive) -> None:
    """Return once the client has gone (the body is already read, so nothing else arrives)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def create_router(
    models: ClassifyEngine | ServedModels, settings: Settings, keys: KeyRing
) -> APIRouter:
    """The Prodia routes over ``models``, for the callers ``keys`` accept."""
    jobs = ProdiaJobs(models, settings, keys)
    router = APIRouter(tags=["prodia"])
    router.add_api_route(
        ROUTE,
        jobs.post_job,
        methods=["POST"],
        summary="Run a job (Prodia v2 job API)",
        openapi_extra=OPENAPI_REQUEST | openapi.key("bearer"),
        responses=openapi.prodia_job_answers(
            "The completed job (v2: its outputs follow it)", "200"
        ),
        response_class=Response,
    )
    return router
