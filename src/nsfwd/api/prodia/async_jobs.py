"""Prodia's asynchronous job API: ``POST /v2/job/async`` stores a job checked as ``POST /v2/job``
checks it, then ``GET /v2/job/async/{id}/...`` gives its state, the whole job, its outputs'
names and each output. A job is visible only to the key that submitted it. Its input may be a
video of up to ``max_video_bytes``, judged in the background like an image.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from nsfwd.api import fairness, openapi
from nsfwd.api.auth import KeyRing
from nsfwd.api.http.errors import ApiError, BadRequestError, TooBusyError, UnavailableError
from nsfwd.api.http.multipart import Part
from nsfwd.api.prodia.job import (
    IMG2LABEL_V2,
    JSON_TYPE,
    OPENAPI_REQUEST,
    PING_V1,
    Job,
    failed_response,
    image_refusal,
    job_response,
    json_bytes,
    media_type,
    passthrough,
    timestamp,
    wants_multipart,
)
from nsfwd.api.prodia.sync import ProdiaJobs
from nsfwd.engine import ClassifyEngine, EngineClosedError, QueueFullError
from nsfwd.engine.served import ServedModels
from nsfwd.intake import ImageError
from nsfwd.intake.video import sniff_video
from nsfwd.jobs import CapacityError, Limits, Prediction, Store, Upload
from nsfwd.jobs.worker import Worker
from nsfwd.settings import Settings
from nsfwd.verdict import split_stored

log = logging.getLogger(__name__)

ROUTE: Final = "/v2/job/async"
LABELS_FILE: Final = "labels.json"
STATES: Final = {
    "queued": "processing",
    "processing": "processing",
    "succeeded": "processed",
    "failed": "failed",
}
"""Prodia's ``state.current`` for each prediction status."""


def document(prediction: Prediction, now: datetime | None = None) -> dict[str, Any]:
    """The stored job as Prodia renders a job."""
    doc: dict[str, Any] = {
        "type": prediction.job_type,
        "id": prediction.id,
        "created_at": timestamp(prediction.created_at),
        "updated_at": timestamp(
            prediction.finished_at or prediction.started_at or prediction.created_at
        ),
        "state": {"current": STATES[prediction.status]},
        "config": dict(prediction.config or {}),
    }
    if prediction.labels is not None:
        doc["config"]["labels"] = prediction.labels
    judged, regions = split_stored(prediction.judged)
    if judged is not None:
        doc["config"]["judged"] = judged
    if regions is not None:
        doc["config"]["regions"] = regions
    if prediction.match is not None:
        doc["config"]["match"] = prediction.match
    if prediction.segments is not None:
        doc["config"]["segments"] = prediction.segments
    end = prediction.finished_at or now or datetime.now(UTC)
    doc["metrics"] = {"elapsed": max((end - prediction.created_at).total_seconds(), 1e-6)}
    if prediction.status == "failed":
        doc["error"] = prediction.error or "the job failed"
    return doc


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    if seconds >= 60:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def output_name(filename: str | None, fallback: str) -> str:
    """The name an uploaded image is listed under: its own, without folders, unless it is
    missing or would clash with ``labels.json``."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return fallback if not name or name in (LABELS_FILE, ".", "..") else name


class ProdiaAsyncJobs(ProdiaJobs):
    """The async routes over a store; jobs are parsed and checked exactly as ``POST /v2/job``."""

    def __init__(
        self,
        models: ClassifyEngine | ServedModels,
        settings: Settings,
        keys: KeyRing,
        store: Store,
        worker: Worker,
    ) -> None:
        """Serve async jobs stored in ``store`` and run by ``worker``."""
        super().__init__(models, settings, keys)
        self.store = store
        self.worker = worker

    @property
    def max_input_bytes(self) -> int:
        """The largest input part: an image, or a video of up to ``max_video_bytes``."""
        return max(self.settings.max_image_bytes, self.settings.max_video_bytes)

    async def _owner(self, request: Request) -> str | None:
        """Check the Bearer token; returns what jobs record as their owner (``None`` when the
        API is open)."""
        caller = await self._identify(request)
        return None if caller is None else caller.ref

    # --- POST /v2/job/async --------------------------------------------------------------

    async def submit(self, request: Request) -> Response:
        """Store one job for the workers and answer 201 with it; see the module docstring."""
        job = Job()
        work = self._submit(request, job)
        return await self._guard(
            request, job, ROUTE, work, fail=self._refuse, not_done="the job was not stored"
        )

    async def _submit(self, request: Request, job: Job) -> Response:
        caller = await self._identify(request)
        self._hold_slot(request, caller)
        parts = await self._read_parts(request, job)
        job.restart_clock()
        if job.type == PING_V1:
            raise BadRequestError(
                f"{PING_V1} has nothing to run in the background: POST it to /v2/job instead"
            )
        self._check_model(job)
        image = self._single_input(parts)
        video = self._video_changes(job, caller)
        await self._validate(image)
        output = passthrough(image)
        unnamed = passthrough(Part(image.name, image.data)).filename or "input"
        assert job.type is not None
        try:
            prediction = await self.store.predictions.create(
                protocol="prodia",
                job_type=job.type,
                model=str((job.config or {})["model"]),
                api_key=None if caller is None else caller.ref,
                config=job.config,
                upload=Upload(
                    data=image.data,
                    filename=output_name(image.filename, unnamed),
                    content_type=output.content_type or "application/octet-stream",
                ),
                limits=self._limits(),
                policy=None if caller is None else caller.policy,
                threshold=None if caller is None else caller.threshold,
                region_thresholds=None if caller is None else caller.region_thresholds,
                video=video if sniff_video(image.data) is not None else None,
            )
        except CapacityError as exc:
            raise self._capacity_error(exc) from None
        multipart = wants_multipart(request.headers.get("accept"), default=False)
        return job_response(json_bytes(document(prediction)), multipart=multipart, status=201)

    def _limits(self) -> Limits:
        """What a new job must fit in: the async queue, the caller's share of it (the store
        counts only a key's jobs; the open API has none) and the stored upload bytes."""
        return Limits(
            max_unfinished=self.settings.max_async_queued,
            max_in_flight=self.settings.key_max_async_jobs,
            max_stored_bytes=self.settings.max_stored_upload_bytes,
        )

    def _capacity_error(self, exc: CapacityError) -> ApiError:
        """The refusal for a limit the store found reached: the key's share or the queue is a
        429, full storage a 503 (the server's state, not the caller's); both with Retry-After."""
        retry_after = self.worker.retry_after(exc.count - exc.limit + 1)
        if exc.scope == "storage":
            retry_after = self.worker.retry_after(self.worker.concurrency)
            return UnavailableError(
                f"the server is holding as many uploaded images as it may ({exc}); retry in "
                f"{retry_after} s, after running jobs have finished",
                retry_after,
            )
        if exc.scope == "key":
            return TooBusyError(
                f"this API key has as many async jobs as it may ({exc}); retry in "
                f"{retry_after} s, after some of them have finished",
                retry_after,
            )
        return TooBusyError(
            f"the async job queue is full ({exc}); retry in {retry_after} s", retry_after
        )

    async def _validate(self, image: Part) -> None:
        """Decode the image now, on the engine's bounded decode pool, so that a bad one is
        refused at submission; the engine keeps the pixels for the job, which then does not
        decode it again."""
        try:
            await self.engine.check(image.data)
        except ImageError as exc:
            raise image_refusal(image, exc) from None
        except QueueFullError as exc:
            raise TooBusyError(str(exc), exc.retry_after) from None
        except EngineClosedError as exc:
            raise UnavailableError(f"{exc}; retry in a few seconds") from None

    def _refuse(self, request: Request, job: Job, exc: ApiError) -> Response:
        """A refused submission, as a failed job: JSON, or a ``job`` part when multipart is
        asked for (as ``POST /v2/job`` does, but JSON by default for every job type)."""
        accept = request.headers.get("accept")
        return failed_response(accept, job, exc, multipart_by_default=False)

    # --- GET /v2/job/async/{id}/... ----------------------------------------------------------

    async def _find(self, request: Request, job_id: str) -> Prediction:
        """The caller's job ``job_id`` (else 404), holding one of the key's read slots until
        the answer is sent (:meth:`_reading`)."""
        owner = await self._owner(request)
        self.keys.reads.hold(request, owner)
        prediction = await self.store.predictions.get(job_id)
        if (
            prediction is None
            or prediction.protocol != "prodia"
            or (owner is not None and prediction.api_key != owner)
            or (prediction.expires_at is not None and prediction.expires_at <= self.store.clock())
        ):  # expired, but not purged yet: gone all the same
            raise ApiError(
                f"no job {job_id[:64]!r}: the id is unknown, or the job expired (results are "
                f"kept {_duration(self.settings.result_ttl_s)} after they finish); check the id "
                f"returned by POST {ROUTE}",
                status=404,
            )
        return prediction

    async def state(self, request: Request, job_id: str) -> Response:
        """``processing``, ``processed`` or ``failed``, as plain text."""
        prediction = await self._find(request, job_id)
        return PlainTextResponse(STATES[prediction.status])

    async def job_json(self, request: Request, job_id: str) -> Response:
        """The whole job as JSON."""
        prediction = await self._find(request, job_id)
        return JSONResponse(document(prediction))

    async def outputs(self, request: Request, job_id: str) -> Response:
        """The output files' names, as a JSON array (empty until the job is processed)."""
        prediction = await self._find(request, job_id)
        return JSONResponse(_output_names(prediction))

    async def output(self, request: Request, job_id: str, filename: str) -> Response:
        """One output file: ``labels.json``, or (v2) the original image byte for byte."""
        prediction = await self._find(request, job_id)
        names = _output_names(prediction)
        if filename not in names:
            if prediction.status != "succeeded":
                state = STATES[prediction.status]
                reason = (
                    f"it failed: {prediction.error}"
                    if prediction.status == "failed"
                    else f"it is still {state}; poll {ROUTE}/{job_id}/job.state.current until "
                    "it says processed"
                )
                raise ApiError(f"job {job_id} has no outputs: {reason}", status=404)
            raise ApiError(
                f"job {job_id} has no output named {filename[:200]!r}; its outputs are "
                f"{', '.join(names)} (GET {ROUTE}/{job_id}/output lists them)",
                status=404,
            )
        if filename == LABELS_FILE:
            assert prediction.labels is not None
            return Response(json_bytes(prediction.labels), media_type=JSON_TYPE)
        return await self._stored_image(request, job_id)

    async def _stored_image(self, request: Request, job_id: str) -> Response:
        """The job's upload, streamed a chunk at a time from the store: a client that reads
        slowly (or never) holds one chunk, and its read slot until the stream ends."""
        size = await self.store.predictions.input_size(job_id)
        first = await self.store.predictions.input_chunk(job_id, 0, STREAM_CHUNK_BYTES)
        if size is None or first is None:
            raise ApiError(f"job {job_id} expired while its output was read", status=404)
        slot = fairness.detach(request)
        predictions = self.store.predictions

        async def chunks() -> AsyncIterator[bytes]:
            try:
                sent = len(first)
                yield first
                while sent < size:
                    chunk = await predictions.input_chunk(job_id, sent, STREAM_CHUNK_BYTES)
                    if not chunk:  # expired mid-stream: the short body tells the client
                        return
                    sent += len(chunk)
                    yield chunk
            finally:
                if slot is not None:
                    slot.release()

        headers = {"X-Content-Type-Options": "nosniff", "Content-Length": str(size)}
        return StreamingResponse(chunks(), media_type=image_type(first), headers=headers)

    def _reading(
        self, endpoint: Callable[..., Awaitable[Response]]
    ) -> Callable[..., Awaitable[Response]]:
        """``endpoint`` (a GET route), giving the key's read slot back when it returns (a
        streamed answer's stream gives it back when it ends)."""

        @functools.wraps(endpoint)
        async def reading(request: Request, *args: Any, **kwargs: Any) -> Response:
            try:
                return await endpoint(request, *args, **kwargs)
            finally:
                fairness.release(request)

        return reading


STREAM_CHUNK_BYTES: Final = 256 * 1024
"""Bytes of a stored image read from the store, and sent, at a time."""


def image_type(data: bytes) -> str:
    """The media type a stored image (or video) is served as, by what its first bytes are,
    never the type its uploader claimed (a "text/html" upload served as such would run in the
    browser of whoever opens the link); it goes with ``nosniff``, so browsers do not guess
    either."""
    return media_type(data) or "application/octet-stream"


def hands_back_input(prediction: Prediction) -> bool:
    """Whether a prediction's result includes its uploaded image (Prodia v2 jobs), so the store
    keeps the upload until the result expires; the others' uploads are dropped once classified."""
    return prediction.protocol == "prodia" and prediction.job_type == IMG2LABEL_V2


def _output_names(prediction: Prediction) -> list[str]:
    if prediction.status != "succeeded":
        return []
    names = [LABELS_FILE]
    if prediction.job_type == IMG2LABEL_V2 and prediction.input_filename:
        names.append(prediction.input_filename)
    return names


_STATE: Final = openapi.answer(
    "processing, processed or failed",
    {openapi.TEXT: {"schema": {"type": "string", "enum": ["processing", "processed", "failed"]}}},
)
_JOB: Final = openapi.answer("The job", {openapi.JSON: {"schema": openapi.ref("ProdiaJob")}})
_OUTPUTS: Final = openapi.answer(
    "The output files' names",
    {openapi.JSON: {"schema": {"type": "array", "items": {"type": "string"}}}},
)
_OUTPUT: Final = openapi.answer(
    "labels.json, or the uploaded image byte for byte",
    {
        openapi.JSON: {"schema": openapi.ref("Labels")},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
)


def create_router(
    models: ClassifyEngine | ServedModels,
    settings: Settings,
    keys: KeyRing,
    store: Store,
    worker: Worker,
) -> APIRouter:
    """The Prodia async routes over ``store``, whose jobs ``worker`` runs, for the callers
    ``keys`` accept."""
    jobs = ProdiaAsyncJobs(models, settings, keys, store, worker)
    router = APIRouter(prefix=ROUTE, tags=["prodia"])
    router.add_api_route(
        "",
        jobs.submit,
        methods=["POST"],
        status_code=201,
        summary="Submit a job to run in the background (Prodia v2 async job API)",
        openapi_extra=OPENAPI_REQUEST | openapi.key("bearer"),
        responses=openapi.prodia_job_answers("The stored job, processing", "201"),
        response_class=Response,
    )
    get_routes: list[tuple[str, Callable[..., Awaitable[Response]], str, dict[str, Any]]] = [
        ("/{job_id}/job.state.current", jobs.state, "A job's state, as plain text", _STATE),
        ("/{job_id}/job.json", jobs.job_json, "A job, as JSON", _JOB),
        ("/{job_id}/output", jobs.outputs, "The names of a job's output files", _OUTPUTS),
        ("/{job_id}/output/{filename}", jobs.output, "One of a job's output files", _OUTPUT),
    ]
    for path, endpoint, summary, success in get_routes:
        router.add_api_route(
            path,
            jobs._reading(endpoint),
            methods=["GET"],
            summary=summary,
            openapi_extra=openapi.key("bearer"),
            responses=openapi.prodia_async_answers(success),
            response_class=Response,
        )
    return router
