"""OpenAI's moderation API for images: ``POST /v1/moderations``, as the official ``openai`` SDK
calls it (``client.moderations.create(model=..., input=[{"type": "image_url", "image_url":
{"url": ...}}])``).

Each image input (an https URL, fetched as Eachlabs' are, or a ``data:`` URI with base64) gets
one result, in input order. nsfwd judges one of OpenAI's categories, ``sexual``: its score is
the verdict policy's (moderate unless the server or the API key sets another), flagged above
the threshold (a detector's: by the region thresholds), and applied to ``["image"]``. Every
other category is present, as OpenAI's answers always are, with score 0, not flagged, and no
applied input types, as OpenAI does for a category its model does not judge on images. An image
that matches a bank of known images is flagged under the bank's category (``sexual`` unless the
bank names another, say ``sexual/minors``) with score 1, and the result carries the ``match``.
Text inputs are refused with a 400: nsfwd judges images only. Refusals are OpenAI's error body
(:mod:`nsfwd.api.openai.wire`).

What one request may cost is bounded as for the other routes: the key's slot is taken before
the body is read and weighs one per image once the body is parsed (:mod:`nsfwd.api.fairness`);
the key's rate is checked before the body is parsed; the JSON outside the ``data:`` URIs is at
most :data:`JSON_OVERHEAD_BYTES`; at most :data:`FETCHES_AT_ONCE` URLs of a request are fetched
(and held) at once; and the inputs run as one task group, so the first refusal cancels the
others. Each result carries the SHA-256 of the bytes judged (``sha256``): a URL's verdict holds
for those bytes, not for what the URL serves to others.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import math
import re
import uuid
from dataclasses import dataclass
from typing import Any, Final

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from nsfwd.api import fairness, openapi
from nsfwd.api.auth import Caller, KeyRing
from nsfwd.api.http import strict_json
from nsfwd.api.http.errors import ApiError, answer
from nsfwd.api.openai.wire import OpenAIError, error_response, identify
from nsfwd.api.ratelimit import CreateRateLimiter, RateLimitedError
from nsfwd.engine import ClassifyEngine, EngineClosedError, QueueFullError
from nsfwd.engine.served import ServedModels, UnknownModelError, quoted
from nsfwd.fetch import FetchError, FetchPolicy, fetch
from nsfwd.intake import ImageError
from nsfwd.models.names import not_loaded_hint
from nsfwd.settings import Settings
from nsfwd.verdict import CATEGORIES, JUDGED_CATEGORY, Judgement, Match, Policy

ROUTE: Final = "/v1/moderations"
MAX_INPUTS: Final = 32
"""Most inputs one request may carry; each is a model call."""
JSON_OVERHEAD_BYTES: Final = 64 * 1024
"""What a request body may carry beyond one image as base64: the JSON around it (checked
before the JSON is parsed)."""
FETCHES_AT_ONCE: Final = 4
"""URL inputs of one request fetched and held at once: its others wait, so one request holds
at most this many fetched images (of ``NSFWD_MAX_IMAGE_BYTES`` each)."""
JUDGED: Final = JUDGED_CATEGORY
OPENAI_MODELS: Final = frozenset(
    {"omni-moderation-latest", "omni-moderation-2024-09-26", "text-moderation-latest",
     "text-moderation-stable", "text-moderation-007"}
)  # fmt: skip
"""OpenAI's own moderation model names: code written for OpenAI sends them, and they pick the
default model here, as Eachlabs' slug does."""
_DATA_URI: Final = re.compile(r"data:([^,]*?)(;base64)?,", re.IGNORECASE)
_DATA_URI_STRINGS: Final = re.compile(rb'"data:[^"\\]*"', re.IGNORECASE)
"""A JSON string holding a data URI without escapes (base64 needs none): cheap to parse."""
_EXAMPLE: Final = (
    '{"model": "...", "input": [{"type": "image_url", "image_url": {"url": "https://..."}}]}'
)
_TEXT_REFUSAL: Final = (
    'nsfwd judges images, not text: send each input as {"type": "image_url", '
    '"image_url": {"url": "https://... or data:image/...;base64,..."}}'
)


_URL_SCHEMA: Final = {
    "type": "object",
    "required": ["url"],
    "properties": {"url": {"type": "string", "description": "https URL or data: URI (base64)"}},
}
OPENAPI_REQUEST: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["input"],
                    "properties": {
                        "model": {"type": "string", "description": "a served model (default: "
                                  "the first; GET /v1/models lists them)"},
                        "input": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": MAX_INPUTS,
                            "items": {
                                "type": "object",
                                "required": ["type", "image_url"],
                                "properties": {
                                    "type": {"type": "string", "enum": ["image_url"]},
                                    "image_url": _URL_SCHEMA,
                                },
                            },
                        },
                    },
                }
            }
        },
    }
}  # fmt: skip
"""The route's OpenAPI request body: image inputs, one model."""


def max_body_bytes(max_image_bytes: int) -> int:
    """The largest request body: one image of ``max_image_bytes`` as base64, and its JSON."""
    return 4 * math.ceil(max_image_bytes / 3) + JSON_OVERHEAD_BYTES


@dataclass(frozen=True)
class ImageInput:
    """One image input: its position and URL (https or ``data:``)."""

    index: int
    url: str

    @property
    def shown(self) -> str:
        """The input as messages name it."""
        return f"input[{self.index}]"


def parse_request(body: bytes) -> tuple[object, list[ImageInput]]:
    """The requested model (absent: ``None``) and the image inputs of a moderation request,
    or a 400 that names what is wrong. The JSON around the ``data:`` URIs is measured before
    it is parsed: at most :data:`JSON_OVERHEAD_BYTES`."""
    around = len(body) - sum(len(m.group()) for m in _DATA_URI_STRINGS.finditer(body))
    if around > JSON_OVERHEAD_BYTES:
        raise _invalid(
            f"the body holds {around:,} bytes of JSON besides its data: URIs; at most "
            f"{JSON_OVERHEAD_BYTES:,} are accepted: send images by URL or as data: URIs, e.g. "
            f"{_EXAMPLE}"
        )
    try:
        doc = strict_json.loads(body)
    except RecursionError:
        raise _invalid("the body is nested too deeply; send e.g. " + _EXAMPLE) from None
    except ValueError as exc:
        raise _invalid(f"the body is not valid JSON ({exc}); send e.g. {_EXAMPLE}") from None
    if not isinstance(doc, dict):
        raise _invalid(f"the body must be a JSON object; send e.g. {_EXAMPLE}")
    if "input" not in doc:
        raise _invalid(f"input is missing; send e.g. {_EXAMPLE}", code="missing_required_param")
    items = doc["input"]
    if isinstance(items, str):
        raise _invalid(_TEXT_REFUSAL, code="text_not_supported")
    if not isinstance(items, list) or not items:
        raise _invalid(f"input must be a non-empty array of image inputs, e.g. {_EXAMPLE}")
    if len(items) > MAX_INPUTS:
        raise _invalid(f"input has {len(items)} items; send at most {MAX_INPUTS} per request")
    return doc.get("model"), [_image_input(index, item) for index, item in enumerate(items)]


def _image_input(index: int, item: object) -> ImageInput:
    shown = f"input[{index}]"
    if isinstance(item, str) or (isinstance(item, dict) and item.get("type") == "text"):
        raise _invalid(f"{shown} is text. {_TEXT_REFUSAL}", code="text_not_supported")
    if not isinstance(item, dict) or item.get("type") != "image_url":
        raise _invalid(f'{shown} must be an object with type "image_url"; send e.g. {_EXAMPLE}')
    image_url = item.get("image_url")
    url = image_url.get("url") if isinstance(image_url, dict) else None
    if not isinstance(url, str) or not url.strip():
        raise _invalid(f"{shown}.image_url.url must be the image's URL or data: URI")
    return ImageInput(index, url.strip())


def decode_data_uri(url: str, max_bytes: int) -> bytes:
    """The bytes of a base64 ``data:`` URI, refused (400) when it is malformed, not base64, or
    would decode to more than ``max_bytes``."""
    match = _DATA_URI.match(url)
    if match is None:
        raise ValueError("it is not a data URI: write data:image/png;base64,<base64 data>")
    media, is_base64 = match.group(1).strip().lower(), match.group(2)
    if media and not media.startswith("image/"):
        raise ValueError(f"its media type is {media[:100]!r}, not an image")
    if not is_base64:
        raise ValueError("it is not base64: write data:image/...;base64,<base64 data>")
    encoded = url[match.end() :].strip()
    if len(encoded) > 4 * math.ceil(max_bytes / 3) + 4:
        raise ValueError(f"it holds more than {max_bytes:,} bytes, this server's image limit")
    try:
        data = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError("its data is not valid base64") from None
    if not data:
        raise ValueError("it holds no data")
    return data


def moderation(
    score: float, flagged: bool, sha256: str, match: Match | None = None
) -> dict[str, Any]:
    """One result: ``sexual`` judged on the image, every other category not judged; a bank's
    ``match`` flags its own category (``sexual`` by default) with score 1; ``sha256`` of the
    bytes judged."""
    judged = {JUDGED: (score, flagged)}
    if match is not None:
        judged[match.category or JUDGED] = (1.0, True)
    result: dict[str, Any] = {
        "flagged": flagged or match is not None,
        "sha256": sha256,
        "categories": {name: judged.get(name, (0.0, False))[1] for name in CATEGORIES},
        "category_scores": {name: judged.get(name, (0.0, False))[0] for name in CATEGORIES},
        "category_applied_input_types": {
            name: ["image"] if name in judged else [] for name in CATEGORIES
        },
    }
    if match is not None:
        result["match"] = match.details()
    return result


class Moderations:
    """``POST /v1/moderations`` over a server's models."""

    def __init__(self, models: ServedModels, settings: Settings, keys: KeyRing) -> None:
        """Judge images on ``models`` for the callers ``keys`` accept; ``settings`` give the
        policy, limits and where URLs may be fetched from."""
        self.models = models
        self.settings = settings
        self.keys = keys
        self.fetch_policy: FetchPolicy = settings.fetch_policy
        self.rate_limiter = CreateRateLimiter()

    async def create(self, request: Request) -> Response:
        """Judge the request's images; see the module docstring."""
        try:
            return await answer(
                request,
                ROUTE,
                self._create(request),
                refuse=error_response,
                metrics=self.models.default.metrics,
                internal="internal error; retry, and report request id {request_id} to the "
                "server's operator if it persists",
            )
        finally:
            fairness.release(request)

    async def _create(self, request: Request) -> Response:
        caller = await identify(request, self.keys)
        self.keys.requests.hold(request, None if caller is None else caller.ref)
        if caller is not None:
            await self._check_rate(caller)
        requested, inputs = parse_request(await request.body())
        fairness.grow(request, len(inputs))  # one slot per image
        name, engine = self._model(requested)
        policy = self._policy(caller)
        if caller is not None:
            await self.rate_limiter.count(caller.ref, caller.limits)
        fetches = asyncio.Semaphore(FETCHES_AT_ONCE)
        key = None if caller is None else caller.ref
        try:
            async with asyncio.TaskGroup() as group:  # the first refusal cancels the others
                tasks = [
                    group.create_task(self._judge(engine, each, policy, fetches, key))
                    for each in inputs
                ]
        except BaseExceptionGroup as failed:
            raise _first_refusal(failed) from None
        judgements = [task.result() for task in tasks]
        try:  # a detector's labels flag by the region thresholds, not by one score
            judged = [(policy.score(each.labels), each.flagged(policy)) for each, _ in judgements]
        except ValueError as exc:  # labels no policy scores, or scores that are NaN
            raise _invalid(f"model {name!r} cannot be judged: {exc}", param="model") from None
        results = [
            moderation(score, flagged, digest, each.match)
            for (score, flagged), (each, digest) in zip(judged, judgements, strict=True)
        ]
        return JSONResponse({"id": f"modr-{uuid.uuid4().hex}", "model": name, "results": results})

    async def _check_rate(self, caller: Caller) -> None:
        """429 when the key has made its requests of the minute (before the body is read)."""
        try:
            await self.rate_limiter.check(caller.ref, caller.limits)
        except RateLimitedError as exc:
            raise OpenAIError(
                f"this API key has made {exc.limit} requests in the last minute, its limit; "
                f"retry in {exc.retry_after} s",
                status=429,
                code="rate_limit_exceeded",
                headers={"Retry-After": str(exc.retry_after)},
            ) from None

    def _model(self, requested: object) -> tuple[str, ClassifyEngine]:
        if requested is None or (isinstance(requested, str) and requested in OPENAI_MODELS):
            return self.models.default_name, self.models.default
        try:
            return self.models.resolve(requested)
        except UnknownModelError as exc:
            raise _invalid(
                f"{exc.message}; set model to one of them (GET /v1/models lists them)."
                f"{not_loaded_hint(requested)}",
                param="model",
                code="model_not_found",
            ) from None

    def _policy(self, caller: Caller | None) -> Policy:
        """The API key's own policy, threshold and region thresholds where it has them; else
        the server's."""
        server = self.settings.verdict_policy
        if caller is None:
            return server
        return server.overridden(caller.policy, caller.threshold, caller.region_thresholds)

    async def _judge(
        self,
        engine: ClassifyEngine,
        image: ImageInput,
        policy: Policy,
        fetches: asyncio.Semaphore,
        key: str | None,
    ) -> tuple[Judgement, str]:
        """The judgement of the worst picture of ``image`` under ``policy`` (every frame of an
        animation, a transparent image over each page), or a bank's match, and the SHA-256 of
        its bytes; a URL is fetched, and its bytes held, under one of the request's
        ``fetches``."""
        if image.url[:5].lower() == "data:":
            data = self._data(image)
            return await self._judgement(engine, image, data, policy), _sha256(data)
        async with fetches:
            data = await self._fetch(image, key)
            return await self._judgement(engine, image, data, policy), _sha256(data)

    async def _judgement(
        self, engine: ClassifyEngine, image: ImageInput, data: bytes, policy: Policy
    ) -> Judgement:
        if not engine.ready:
            raise OpenAIError(
                "the model is not ready (loading, or the server is stopping); retry in a moment",
                status=503,
                headers={"Retry-After": "5"},
            )
        try:
            return await engine.judge(data, policy)
        except ImageError as exc:
            raise _invalid(f"{image.shown}: {exc.message}", code="invalid_image") from None
        except QueueFullError as exc:
            raise OpenAIError(
                str(exc), status=429, code="server_busy",
                headers={"Retry-After": str(exc.retry_after)},
            ) from None  # fmt: skip
        except EngineClosedError as exc:
            raise OpenAIError(
                f"{exc}; retry in a few seconds", status=503, headers={"Retry-After": "5"}
            ) from None

    def _data(self, image: ImageInput) -> bytes:
        try:
            return decode_data_uri(image.url, self.settings.max_image_bytes)
        except ValueError as exc:
            raise _invalid(
                f"{image.shown}.image_url.url is a data URI, but {exc}",
                code="invalid_image_url",
            ) from None

    async def _fetch(self, image: ImageInput, key: str | None) -> bytes:
        try:
            return await fetch(image.url, self.fetch_policy.for_key(key))
        except FetchError as exc:
            raise _invalid(
                f"{image.shown}.image_url.url {json.dumps(image.url[:200])}: {exc.message}",
                code="invalid_image_url",
            ) from None


def _first_refusal(failed: BaseExceptionGroup[BaseException]) -> BaseException:
    """What a request whose inputs failed answers: the first refusal among them (an input's
    400, the engine's 429), else the first failure."""
    leaves = list(_leaves(failed))
    return next((exc for exc in leaves if isinstance(exc, ApiError)), leaves[0])


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _invalid(message: str, *, param: str = "input", code: str = "invalid_input") -> OpenAIError:
    return OpenAIError(message, status=400, param=param, code=code)


def create_router(models: ServedModels, settings: Settings, keys: KeyRing) -> APIRouter:
    """The moderation route over ``models``, for the callers ``keys`` accept."""
    moderations = Moderations(models, settings, keys)
    router = APIRouter(tags=["openai"])
    router.add_api_route(
        ROUTE,
        moderations.create,
        methods=["POST"],
        summary=f"Judge images (OpenAI's moderation API; lists every category, scores "
        f"{JUDGED}; the models are {quoted(models.names)})",
        openapi_extra=OPENAPI_REQUEST | openapi.key("bearer"),
        responses=openapi.openai_answers(
            openapi.answer(
                "One result per image", {openapi.JSON: {"schema": openapi.ref("Moderation")}}
            ),
            ("400", "401", "403", "408", "429", "500", "503"),
        ),
        response_class=Response,
    )
    return router
