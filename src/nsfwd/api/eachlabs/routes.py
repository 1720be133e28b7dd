"""Eachlabs' prediction API: ``POST /v1/prediction/`` creates a prediction of an image URL
(``input.image``) or a video URL (``input.video``), ``GET /v1/prediction/{id}`` polls it, and a
``webhook_url`` gets its outcome; a video's flagged ``segments`` ride beside ``output``.

Refusals are ``{"status": "error", "message": <what is wrong and what to do>, "details": <a
stable code>}``. The request path, step by step, is in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, PlainValidator, ValidationError, field_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from nsfwd.api import fairness, openapi
from nsfwd.api.auth import AuthenticationError, Caller, KeyRing
from nsfwd.api.http import strict_json
from nsfwd.api.http.errors import (
    ApiError,
    BadRequestError,
    PayloadTooLargeError,
    TooBusyError,
    answer,
)
from nsfwd.api.ratelimit import CreateRateLimiter, RateLimitedError, store_rate_retry_after
from nsfwd.engine import ClassifyEngine
from nsfwd.engine.served import ServedModels, quoted
from nsfwd.fetch import FetchFailedError, FetchPolicy, UnsafeURLError, check_url, validate_url
from nsfwd.fetch.capped import OverCapError, read_capped
from nsfwd.intake.sniff import ACCEPTED
from nsfwd.jobs import CapacityError, Limits, Prediction, Store
from nsfwd.jobs.webhooks import webhooks_enabled
from nsfwd.jobs.worker import Worker
from nsfwd.models.names import not_loaded_hint
from nsfwd.settings import Settings
from nsfwd.timeline import OPTION_NAMES
from nsfwd.verdict import split_stored

log = logging.getLogger(__name__)

ROUTE: Final = "/v1/prediction"
MODEL_SLUG: Final = "nsfw-image-detection"
"""Eachlabs' name for the model; it names the first model this server runs."""
MAX_BODY_BYTES: Final = 64 * 1024
"""Largest accepted request body; a real one is a few hundred bytes (the URLs)."""
KEY_HEADER: Final = "x-api-key"
STATUSES: Final = {
    "queued": "processing",
    "processing": "processing",
    "succeeded": "success",
    "failed": "error",
}
"""Eachlabs' ``status`` for each prediction status."""

_DETAILS: Final = {
    400: "invalid_input",
    401: "invalid_api_key",
    403: "forbidden",
    404: "not_found",
    408: "request_timeout",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
    507: "insufficient_storage",
}


class EachlabsError(ApiError):
    """A refusal with Eachlabs' ``details`` code (see the module docstring)."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        details: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Create the error answered with ``status`` and the ``details`` code."""
        super().__init__(message, status=status, headers=headers)
        self.details = details


def error_response(exc: ApiError) -> Response:
    """Eachlabs' error body for any :class:`ApiError` (also those raised by the middleware)."""
    details = getattr(exc, "details", None) or _DETAILS.get(exc.status, "error")
    body = {"status": "error", "message": exc.message, "details": details}
    return JSONResponse(body, exc.status, headers=exc.headers)


def output(prediction: Prediction) -> str | None:
    """Eachlabs' verdict text: ``"nsfw"`` when the prediction's policy flagged it, else
    ``"normal"``; ``None`` until it succeeds, or for a model the policy cannot score."""
    if prediction.status != "succeeded" or prediction.flagged is None:
        return None
    return "nsfw" if prediction.flagged else "normal"


def webhook_body(prediction: Prediction) -> dict[str, Any]:
    """Eachlabs' webhook body for a finished prediction: ``exec_id``, ``status``
    (``succeeded``/``failed``), ``output``, ``error``; a video's ``segments``; and ``sha256``,
    the digest of the bytes fetched (a URL's verdict holds for those bytes only)."""
    body: dict[str, Any] = {
        "exec_id": prediction.id,
        "status": "succeeded" if prediction.status == "succeeded" else "failed",
        "output": output(prediction) or "",
        "error": prediction.error or "",
    }
    if prediction.segments is not None:
        body["segments"] = prediction.segments
    if prediction.input_sha256 is not None:
        body["sha256"] = prediction.input_sha256  # the bytes the verdict holds for
    return body


def document(prediction: Prediction) -> dict[str, Any]:
    """A prediction as ``GET /v1/prediction/{id}`` renders it."""
    status = STATUSES[prediction.status]
    doc: dict[str, Any] = {
        "status": status,
        "predictionID": prediction.id,
        "output": output(prediction),
        "metrics": {"predict_time": prediction.predict_time},
        "labels": prediction.labels,
    }
    judged, regions = split_stored(prediction.judged)
    if judged is not None:
        doc["judged"] = judged  # which frame and backdrop (a video: time) the labels are of
    if regions is not None:
        doc["regions"] = regions  # a detector's
    if prediction.match is not None:
        doc["match"] = prediction.match  # the banked image it matched: flagged whatever the labels
    if prediction.segments is not None:
        doc["segments"] = prediction.segments
    if prediction.input_sha256 is not None:
        doc["sha256"] = prediction.input_sha256  # the bytes fetched: the verdict holds for them
    if status == "error":
        doc["message"] = prediction.error or "the prediction failed"
        doc["details"] = "prediction_failed"
    return doc


def _text(value: object) -> str:
    """Any string, as the JSON parser gave it; anything else is refused.

    Not pydantic's own ``str``: it refuses strings with lone surrogates, which Python's JSON
    parser produces, and those go on to the same checks as any other string (a 404 for an
    unknown model, say).
    """
    if isinstance(value, str):
        return value
    raise PydanticCustomError("string_type", "Input should be a valid string")


_Text = Annotated[str, PlainValidator(_text, json_schema_input_type=str)]


class PredictionInput(BaseModel):
    """What to classify: an image or a video, by URL; for a video, how it is sampled."""

    image: _Text | None = Field(None, description=f"a public https URL of an image: {ACCEPTED}")
    video: _Text | None = Field(
        None, description="a public https URL of an MP4, MOV, WebM or MKV video (instead of image)"
    )
    interval: float | None = Field(
        None, strict=True, description="video: seconds between judged frames (default 1)"
    )
    max_frames: int | None = Field(
        None, strict=True, description="video: most frames judged, spread evenly (default 300)"
    )
    min_frames: int | None = Field(
        None, strict=True, description="video: flagged frames in a row a segment needs (default 2)"
    )
    stop_on_flag: bool | None = Field(
        None, strict=True, description="video: stop decoding at the first flagged segment"
    )

    @field_validator("image", "video")
    @classmethod
    def _not_blank(cls, url: str | None) -> str | None:
        if url is not None and not url.strip():
            raise ValueError("blank")
        return None if url is None else url.strip()

    @property
    def video_options(self) -> dict[str, Any]:
        """The video options it sets."""
        return {name: value for name in OPTION_NAMES if (value := getattr(self, name)) is not None}


class CreateRequest(BaseModel):
    """A prediction of the image at a URL; other keys are ignored."""

    # The docstrings and descriptions here are the route's OpenAPI request body (see
    # _openapi_request); parse_create_request turns a ValidationError into the client's message.

    model: _Text = Field(examples=[MODEL_SLUG])
    input: PredictionInput
    webhook_url: _Text | None = Field(
        None, description="where to POST the outcome (Standard Webhooks)"
    )

    @field_validator("model")
    @classmethod
    def _not_empty(cls, model: str) -> str:
        if not model:
            raise ValueError("empty")
        return model

    @field_validator("webhook_url")
    @classmethod
    def _blank_is_none(cls, webhook_url: str | None) -> str | None:
        return (webhook_url or "").strip() or None


_EXAMPLE: Final = (
    f'{{"model": "{MODEL_SLUG}", "input": {{"image": "https://example.com/photo.jpg"}}}}'
)
_VIDEO_EXAMPLE: Final = (
    f'{{"model": "{MODEL_SLUG}", "input": {{"video": "https://example.com/clip.mp4"}}}}'
)
_REFUSALS: Final[dict[tuple[int | str, ...], Callable[[str], str]]] = {
    ("model",): lambda shown: (
        f"model is {shown}; set it to {json.dumps(MODEL_SLUG)}, e.g. {_EXAMPLE}"
    ),
    ("input",): lambda shown: (
        f"input is {shown}; it must be an object with the image URL, e.g. {_EXAMPLE}"
    ),
    ("input", "image"): lambda shown: (
        f"input.image is {shown}; it must be the https URL of the image, e.g. {_EXAMPLE}"
    ),
    ("input", "video"): lambda shown: (
        f"input.video is {shown}; it must be the https URL of the video, e.g. {_VIDEO_EXAMPLE}"
    ),
    ("input", "interval"): lambda shown: (
        f"input.interval is {shown}; it must be a number of seconds between judged frames"
    ),
    ("input", "max_frames"): lambda shown: (
        f"input.max_frames is {shown}; it must be a whole number of frames"
    ),
    ("input", "min_frames"): lambda shown: (
        f"input.min_frames is {shown}; it must be a whole number of frames"
    ),
    ("input", "stop_on_flag"): lambda shown: (
        f"input.stop_on_flag is {shown}; it must be true or false"
    ),
    ("webhook_url",): lambda shown: f"webhook_url is {shown}; it must be an https URL, or left out",
}
"""What a client is told when a field of :class:`CreateRequest` is wrong, given the value."""


def parse_create_request(body: bytes) -> CreateRequest:
    """``body`` as a :class:`CreateRequest`, or a 400 that names the first field that is wrong
    and shows its value."""
    try:
        doc = strict_json.loads(body)
    except RecursionError:
        raise BadRequestError(f"the body is nested too deeply; send e.g. {_EXAMPLE}") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN, huge integers
        raise BadRequestError(f"the body is not valid JSON ({exc}); send e.g. {_EXAMPLE}") from None
    if not isinstance(doc, dict):
        raise BadRequestError(
            f"the body must be a JSON object, got {type(doc).__name__}; send e.g. {_EXAMPLE}"
        )
    try:
        spec = CreateRequest.model_validate(doc)
    except ValidationError as exc:
        raise BadRequestError(_refusal(exc.errors()[0])) from None
    if spec.input.image is None and spec.input.video is None:
        raise BadRequestError(
            f"input.image is missing (or input.video, for a video); send e.g. {_EXAMPLE} or "
            f"{_VIDEO_EXAMPLE}"
        )
    if spec.input.image is not None and spec.input.video is not None:
        raise BadRequestError(
            "input takes one URL, input.image or input.video, and got both; send one per prediction"
        )
    return spec


def _refusal(error: ErrorDetails) -> str:
    shown = "missing" if error["type"] == "missing" else _shown(error["input"])
    return _REFUSALS[tuple(error["loc"])](shown)


class EachlabsPredictions:
    """The Eachlabs routes over a store, whose predictions ``worker`` runs."""

    def __init__(
        self,
        models: ClassifyEngine | ServedModels,
        settings: Settings,
        keys: KeyRing,
        store: Store,
        worker: Worker,
    ) -> None:
        """Serve predictions stored in ``store`` to the callers ``keys`` accept; ``settings``
        give limits and policy. ``models`` (one engine, or several by name) are what ``model``
        may name, besides :data:`MODEL_SLUG` for the first."""
        self.models = ServedModels.of(models, settings.served_model_name)
        self.engine = self.models.default
        self.settings = settings
        self.keys = keys
        self.store = store
        self.worker = worker
        self.policy: FetchPolicy = settings.fetch_policy
        self.video_policy: FetchPolicy = settings.video_fetch_policy
        self.webhook_policy: FetchPolicy = settings.webhook_policy
        self.public_model = self.models.default_name
        self.rate_limiter = CreateRateLimiter()
        self.webhooks = webhooks_enabled(settings)

    # --- the edges: errors and metrics ----------------------------------------------------

    async def _answer(self, request: Request, route: str, work: Awaitable[Response]) -> Response:
        """Await ``work`` (a route's response); refusals become Eachlabs' error body, and the
        key's slot the route took is given back."""
        try:
            return await answer(
                request,
                route,
                work,
                refuse=error_response,
                metrics=self.engine.metrics,
                internal="internal error; retry with backoff, and report request id "
                "{request_id} to the server's operator if it persists",
            )
        finally:
            fairness.release(request)

    # --- auth ------------------------------------------------------------------------------

    async def _caller(self, request: Request) -> Caller | None:
        """The key ``X-API-Key`` names; ``None`` when the API is open (no keys anywhere); else
        401."""
        try:
            return await self.keys.identify(request.headers.get(KEY_HEADER), request)
        except AuthenticationError as exc:
            if exc.missing:
                message = (
                    "missing API key: send the header 'X-API-Key: <key>' with a key this server "
                    f"accepts ({exc.sources})"
                )
            else:
                message = (
                    "invalid API key: the X-API-Key is not one this server accepts, or it was "
                    "revoked; check the key you were given"
                )
            raise EachlabsError(message, status=401, details="invalid_api_key") from None

    # --- POST /v1/prediction/ --------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        """Store a prediction for the workers; see the module docstring."""
        return await self._answer(request, ROUTE, self._create(request))

    async def _create(self, request: Request) -> Response:
        caller = await self._caller(request)
        self.keys.requests.hold(request, None if caller is None else caller.ref)  # before the body
        body = await _read_body(request)
        spec = parse_create_request(body)
        self._check_model(spec.model)
        field, url = (
            ("input.video", spec.input.video)
            if spec.input.video
            else ("input.image", spec.input.image)
        )
        assert url is not None  # parse_create_request checked there is one
        policy = self.video_policy if spec.input.video else self.policy
        image = _checked_url(field, url, policy)
        video = self._video_options(caller, spec.input)
        webhook_url = None
        if spec.webhook_url is not None:
            if not self.webhooks:
                raise BadRequestError(
                    "webhook_url: this server cannot sign webhooks (its operator has not set "
                    "NSFWD_WEBHOOK_SECRET, which several replicas need); poll "
                    f"GET {ROUTE}/{{predictionID}} instead"
                )
            webhook_url = _checked_url("webhook_url", spec.webhook_url, self.webhook_policy)
        if caller is not None:
            try:
                await self.rate_limiter.check(caller.ref, caller.limits)
            except RateLimitedError as exc:
                raise TooBusyError(str(exc), exc.retry_after) from None
        await _resolve(field, image, policy.for_key(None if caller is None else caller.ref))
        if webhook_url is not None:
            await _resolve("webhook_url", webhook_url, self.webhook_policy)
        prediction = await self._store(caller, spec.model, image, webhook_url, video)
        if caller is not None:
            await self.rate_limiter.count(caller.ref, caller.limits)
        return JSONResponse(
            {
                "status": "success",
                "message": "Prediction created successfully",
                "predictionID": prediction.id,
            }
        )

    def _video_options(self, caller: Caller | None, spec: PredictionInput) -> dict[str, Any] | None:
        """The video options the key and the request set (checked over the server's), for a
        video or a request that sets some; ``None`` for an image."""
        asked = spec.video_options
        if spec.video is None and not asked:
            return None
        own = {} if caller is None else dict(caller.video)
        try:
            self.settings.video_options.overridden(own).overridden(asked)
        except ValueError as exc:
            raise BadRequestError(f"input: {exc}") from None
        return own | asked

    def _check_model(self, model: str) -> None:
        if model != MODEL_SLUG and self.models.name_of(model) is None:
            also = (
                "" if self.public_model == MODEL_SLUG else f" (or {json.dumps(self.public_model)})"
            )
            others = [name for name in self.models.names[1:] if name != MODEL_SLUG]
            more = f", {quoted(others)}" if others else ""
            which = "one of them" if others else "that"
            raise EachlabsError(
                f"unknown model {json.dumps(model)[:200]}: this server runs "
                f"{json.dumps(MODEL_SLUG)}{also}{more}; set model to {which}."
                f"{not_loaded_hint(model)}",
                status=404,
                details="model_not_found",
            )

    async def _store(
        self,
        caller: Caller | None,
        model: str,
        image: str,
        webhook_url: str | None,
        video: dict[str, Any] | None,
    ) -> Prediction:
        limits = Limits(max_unfinished=self.settings.max_async_queued)
        if caller is not None:
            limits = replace(
                limits,
                max_in_flight=caller.limits.max_in_flight,
                creates_per_minute=caller.limits.creates_per_minute,
            )
        try:
            return await self.store.predictions.create(
                protocol="eachlabs",
                job_type=MODEL_SLUG,
                model=None if model == MODEL_SLUG else model,  # None: the default model
                api_key=None if caller is None else caller.ref,
                input_url=image,
                webhook_url=webhook_url,
                limits=limits,
                policy=None if caller is None else caller.policy,
                threshold=None if caller is None else caller.threshold,
                region_thresholds=None if caller is None else caller.region_thresholds,
                video=video,
            )
        except CapacityError as exc:
            raise _capacity_error(exc, self.worker) from None

    # --- GET /v1/prediction/{id} -------------------------------------------------------------

    async def get(self, request: Request, prediction_id: str) -> Response:
        """The prediction: processing, success (with output) or error (with message)."""
        return await self._answer(request, f"{ROUTE}/{{id}}", self._get(request, prediction_id))

    async def _get(self, request: Request, prediction_id: str) -> Response:
        caller = await self._caller(request)
        self.keys.reads.hold(request, None if caller is None else caller.ref)
        prediction = await self.store.predictions.get(prediction_id)
        if (
            prediction is None
            or prediction.protocol != "eachlabs"
            or (caller is not None and prediction.api_key != caller.ref)
            or _expired(prediction, self.store.clock())
        ):
            hours = self.settings.result_ttl_s / 3600
            raise EachlabsError(
                f"no prediction {prediction_id[:64]!r}: the id is unknown, belongs to another "
                f"API key, or its result expired (results are kept {hours:g} h); check the "
                f"predictionID returned by POST {ROUTE}/",
                status=404,
                details="prediction_not_found",
            )
        return JSONResponse(document(prediction))


async def _read_body(request: Request) -> bytes:
    """The whole body, refused (400 ``payload_too_large``) once it is over
    :data:`MAX_BODY_BYTES`."""
    declared = request.headers.get("content-length")
    try:
        return await read_capped(request.stream(), MAX_BODY_BYTES, content_length=declared)
    except OverCapError as exc:
        raise _too_large(
            f"{exc.size:,} bytes" if exc.declared else f"over {exc.size:,} bytes"
        ) from None


def _too_large(size: str) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the request body is {size}; this endpoint accepts at most {MAX_BODY_BYTES:,} bytes of "
        "JSON. Send the image by URL (input.image), not inline"
    )


def _checked_url(field: str, url: str, policy: FetchPolicy) -> str:
    """``url`` if the checks that need no network pass (scheme, host spelling, literal
    addresses); otherwise 400."""
    try:
        validate_url(url, policy)
    except UnsafeURLError as exc:
        raise BadRequestError(f"{field}: {exc.message}") from None
    return url


async def _resolve(field: str, url: str, policy: FetchPolicy) -> None:
    """400 when ``url``'s host resolves to a refused address. A name that does not resolve
    (yet) passes: fetching it fails later with a message, and is checked again then."""
    try:
        await check_url(url, policy)
    except UnsafeURLError as exc:
        raise BadRequestError(f"{field}: {exc.message}") from None
    except FetchFailedError as exc:
        log.info("%s %s not checked at creation: %s", field, url[:200], exc.message)


def _capacity_error(exc: CapacityError, worker: Worker) -> EachlabsError:
    excess = exc.count - exc.limit + 1
    if exc.scope == "rate":
        retry_after = store_rate_retry_after(exc)
        details, advice = "rate_limited", "creates per minute"
    elif exc.scope == "key":
        retry_after = worker.retry_after(excess)
        details, advice = "too_many_in_flight", "predictions in flight"
    else:
        retry_after = worker.retry_after(excess)
        details, advice = "server_busy", "queued predictions"
    return EachlabsError(
        f"too many {advice}: {exc}; retry in {retry_after} s, after some have finished",
        status=429,
        details=details,
        headers={"Retry-After": str(retry_after)},
    )


def _expired(prediction: Prediction, now: datetime) -> bool:
    return prediction.expires_at is not None and prediction.expires_at <= now


def _shown(value: object) -> str:
    return "missing" if value is None else json.dumps(value)[:200]


def _openapi_request() -> dict[str, Any]:
    """The route's OpenAPI request body: :class:`CreateRequest`'s JSON schema, its nested
    models written in place (an operation's schema cannot point into the model's ``$defs``)."""
    schema = CreateRequest.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline(schema)}},
        }
    }


_OPENAPI_REQUEST: Final = _openapi_request()


def create_router(
    models: ClassifyEngine | ServedModels,
    settings: Settings,
    keys: KeyRing,
    store: Store,
    worker: Worker,
) -> APIRouter:
    """The Eachlabs routes over ``store``, whose predictions ``worker`` runs, for the callers
    ``keys`` accept."""
    predictions = EachlabsPredictions(models, settings, keys, store, worker)
    router = APIRouter(prefix=ROUTE, tags=["eachlabs"])
    for path, shown in (("/", True), ("", False)):
        router.add_api_route(
            path,
            predictions.create,
            methods=["POST"],
            summary="Create a prediction of an image or video URL (Eachlabs prediction API)",
            openapi_extra=_OPENAPI_REQUEST | openapi.key("apiKey"),
            responses=openapi.eachlabs_answers(
                openapi.answer(
                    "The prediction was created",
                    {openapi.JSON: {"schema": openapi.ref("EachlabsCreated")}},
                ),
                ("400", "401", "403", "404", "408", "429", "500", "503"),
            ),
            response_class=Response,
            include_in_schema=shown,
        )
    for path, shown in (("/{prediction_id}", True), ("/{prediction_id}/", False)):
        router.add_api_route(
            path,
            predictions.get,
            methods=["GET"],
            summary="A prediction's status and output",
            openapi_extra=openapi.key("apiKey"),
            responses=openapi.eachlabs_answers(
                openapi.answer(
                    "The prediction", {openapi.JSON: {"schema": openapi.ref("EachlabsPrediction")}}
                ),
                ("401", "403", "404", "429", "500", "503"),
            ),
            response_class=Response,
            include_in_schema=shown,
        )
    return router
