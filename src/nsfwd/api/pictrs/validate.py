"""``POST /v1/validate``: pict-rs' external validation, and any platform's check of one upload.

pict-rs (0.4.3 and later) posts every upload, after its own ingest, to the URL in
``[media] external_validation``: the file as the raw body, its media type as ``Content-Type``,
no key of its own, within ``external_validation_timeout`` (30 s by default). A 2xx accepts the
upload; anything else refuses it. So this route answers:

* **200** ``{"valid": true, "checked": true, ...}`` when the image passes the policy;
* **422** ``{"valid": false, "reason": "flagged", ...}`` when it is flagged (by the model or
  by a bank of known images: then ``match`` says which);
* **415** ``reason: unsupported`` for a file of a type nsfwd does not judge, **400**
  ``invalid`` for one it cannot decode or that breaks the limits, **429** ``busy`` and **503**
  ``unavailable`` (with ``Retry-After``) when it cannot judge now, **401** ``unauthorized``.

The query picks the verdict: ``policy`` (``strict``, ``moderate``, ``lenient``), ``threshold``
and ``model`` (default: the key's own policy, else the server's, and the default model), and
``fail_open=true`` turns every "cannot judge" answer (unsupported, invalid, busy, unavailable)
into a 200 with ``"checked": false``, for platforms that would rather accept than lose uploads.

Who may call: a key, in the query (``?key=``, since pict-rs cannot send a header) or as
``Authorization: Bearer``; or, without a key, a caller whose address is in
``NSFWD_VALIDATE_ALLOW_NETWORKS`` (the direct peer: behind a reverse proxy, that is the proxy).
An open server (no keys at all) takes anyone, as its other routes do. As on every route, the
caller's slot (:mod:`nsfwd.api.fairness`) is taken before the body is read: its key's, or for a
keyless caller from an allowed network, its address's; past its share on a busy server it is
``busy`` (which ``fail_open`` accepts, as it does a full engine). The Synapse module
(:mod:`nsfwd.integrations.synapse`) calls this route too.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from typing import Any, Final

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from nsfwd.api import fairness, openapi
from nsfwd.api.auth import AuthenticationError, Caller, KeyRing, bearer_token
from nsfwd.api.http.errors import ApiError, TooBusyError, answer
from nsfwd.api.http.uploads import read_upload
from nsfwd.engine import ClassifyEngine, EngineClosedError, QueueFullError
from nsfwd.engine.served import ServedModels, UnknownModelError
from nsfwd.fetch import parse_networks
from nsfwd.intake import ImageError, UnsupportedFormatError
from nsfwd.settings import Settings
from nsfwd.verdict import POLICIES, Judgement, Policy

ROUTE: Final = "/v1/validate"
TRUE: Final = ("1", "true", "yes", "on")
FALSE: Final = ("0", "false", "no", "off", "")


class Refusal(ApiError):
    """An upload not accepted, with the ``reason`` a platform can act on."""

    def __init__(
        self, reason: str, message: str, status: int, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message, status=status, headers=headers)
        self.reason = reason

    def response(self) -> Response:
        """The refusal as JSON: ``valid`` false, ``reason`` and ``message``."""
        body = {"valid": False, "reason": self.reason, "message": self.message}
        return JSONResponse(body, self.status, headers=self.headers)


def _refuse(exc: ApiError) -> Response:
    if isinstance(exc, Refusal):
        return exc.response()
    reason = {401: "unauthorized", 429: "busy", 503: "unavailable"}.get(exc.status, "invalid")
    if exc.status >= 500 and exc.status != 503:
        reason = "error"
    return Refusal(reason, exc.message, exc.status, exc.headers).response()


class Validation:
    """``POST /v1/validate`` over a server's models."""

    def __init__(self, models: ServedModels, settings: Settings, keys: KeyRing) -> None:
        """Judge uploads on ``models`` for the callers ``keys`` accept, or the callers in
        ``settings.validate_allow_networks``."""
        self.models = models
        self.settings = settings
        self.keys = keys
        self.networks = parse_networks(settings.validate_allow_networks)

    async def validate(self, request: Request) -> Response:
        """Judge one upload; see the module docstring."""
        try:
            return await answer(
                request,
                ROUTE,
                self._validate(request),
                refuse=_refuse,
                metrics=self.models.default.metrics,
                internal="internal error; retry, and report request id {request_id} to the "
                "server's operator if it persists",
            )
        finally:
            fairness.release(request)  # the caller's slot, taken by _hold

    async def _validate(self, request: Request) -> Response:
        caller = await self._admit(request)
        query = request.query_params
        fail_open = _flag(query.get("fail_open"), "fail_open")
        policy = self._policy(query.get("policy"), query.get("threshold"), caller)
        name, engine = self._model(query.get("model"))
        try:
            self._hold(request, caller)
            data = await _upload(request, self.settings.max_image_bytes)
            judgement = await self._judge(engine, data, policy)
            flagged = judgement.flagged(policy)
        except Refusal as exc:
            if fail_open and exc.reason in ("unsupported", "invalid", "busy", "unavailable"):
                body = {"valid": True, "checked": False, "reason": exc.reason,
                        "message": exc.message}  # fmt: skip
                return JSONResponse(body)
            raise
        except ValueError as exc:  # a policy that cannot score this model's labels
            raise Refusal("invalid_query", f"model {name!r} cannot be judged: {exc}", 400) from None
        return JSONResponse(_verdict(name, policy, judgement, flagged), 422 if flagged else 200)

    async def _admit(self, request: Request) -> Caller | None:
        """The caller (None: no key needed), or a 401 saying how to get in."""
        key = request.query_params.get("key") or bearer_token(request.headers.get("authorization"))
        if not key and self._from_allowed_network(request):
            return None
        try:
            return await self.keys.identify(key, request)
        except AuthenticationError as exc:
            if exc.missing:
                message = (
                    "missing API key: put it in the URL's query (?key=...; pict-rs cannot send "
                    "a header) or send 'Authorization: Bearer <key>', or call from a network in "
                    f"NSFWD_VALIDATE_ALLOW_NETWORKS ({exc.sources})"
                )
            else:
                message = "invalid API key: it is not one this server accepts, or it was revoked"
            raise Refusal("unauthorized", message, 401) from None

    def _hold(self, request: Request, caller: Caller | None) -> None:
        """Take the caller's slot before the body is read (:mod:`nsfwd.api.fairness`): its
        key's, or, for a keyless caller from an allowed network, its address's; ``busy`` when
        it has no share left."""
        if caller is not None:
            holder: str | None = caller.ref
        elif request.client is not None and self._from_allowed_network(request):
            holder = f"network {request.client.host}"
        else:
            holder = None  # the open API: nothing to count
        try:
            self.keys.requests.hold(request, holder)
        except TooBusyError as exc:
            raise Refusal("busy", exc.message, exc.status, exc.headers) from None

    def _from_allowed_network(self, request: Request) -> bool:
        if not self.networks or request.client is None:
            return False
        try:
            address = ipaddress.ip_address(request.client.host)
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def _policy(self, name: str | None, threshold: str | None, caller: Caller | None) -> Policy:
        """The query's policy and threshold over the key's own, over the server's."""
        server = self.settings.verdict_policy
        policy = server if caller is None else server.overridden(caller.policy, caller.threshold)
        if name is not None and name not in POLICIES:
            raise Refusal(
                "invalid_query",
                f"unknown policy {json.dumps(name)[:80]}: use one of {', '.join(POLICIES)}",
                400,
            )
        try:
            value = None if threshold is None else float(threshold)
            return policy.overridden(name, value)
        except ValueError as exc:
            shown = (threshold or "")[:40]
            raise Refusal("invalid_query", f"bad threshold {shown!r}: {exc}", 400) from None

    def _model(self, requested: str | None) -> tuple[str, ClassifyEngine]:
        if requested is None:
            return self.models.default_name, self.models.default
        try:
            return self.models.resolve(requested)
        except UnknownModelError as exc:
            raise Refusal(
                "invalid_query", f"{exc.message}; set model= to one of them", 400
            ) from None

    async def _judge(self, engine: ClassifyEngine, data: bytes, policy: Policy) -> Judgement:
        if not engine.ready:
            raise Refusal(
                "unavailable",
                "the model is not ready; retry in a moment",
                503,
                {"Retry-After": "5"},
            )
        try:
            return await engine.judge(data, policy)
        except UnsupportedFormatError as exc:
            raise Refusal("unsupported", exc.message, 415) from None
        except ImageError as exc:
            raise Refusal("invalid", exc.message, 400) from None
        except QueueFullError as exc:
            headers = {"Retry-After": str(exc.retry_after)}
            raise Refusal("busy", str(exc), 429, headers) from None
        except EngineClosedError as exc:
            raise Refusal("unavailable", f"{exc}; retry in a few seconds", 503,
                          {"Retry-After": "5"}) from None  # fmt: skip


async def _upload(request: Request, max_bytes: int) -> bytes:
    """The upload; a body over the limit is ``invalid`` and no upload slot ``unavailable``,
    which ``fail_open`` may accept (a stalled body stays the client's 408)."""
    try:
        return await read_upload(request, max_bytes)
    except ApiError as exc:
        reason = {400: "invalid", 503: "unavailable"}.get(exc.status)
        if reason is None:
            raise
        raise Refusal(reason, exc.message, exc.status, exc.headers) from None


def _flag(value: str | None, name: str) -> bool:
    text = (value or "").strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise Refusal("invalid_query", f"{name} must be true or false, not {text[:20]!r}", 400)


def _verdict(name: str, policy: Policy, judgement: Judgement, flagged: bool) -> dict[str, Any]:
    """The JSON of a judged upload."""
    body: dict[str, Any] = {
        "valid": not flagged,
        "checked": True,
        "model": name,
        "policy": policy.name,
        "threshold": policy.threshold,
        "score": 1.0 if judgement.match is not None else policy.score(judgement.labels),
        "labels": judgement.labels,
    }
    if flagged:
        body["reason"] = "flagged"
        body["message"] = (
            f"matched bank {judgement.match.bank!r}" if judgement.match is not None
            else f"flagged by the {policy.name} policy at {policy.threshold:g}"
        )  # fmt: skip
    if judgement.chosen:
        body["judged"] = judgement.details()
    if judgement.match is not None:
        body["match"] = judgement.match.details()
    return body


_ANSWER: Final = {openapi.JSON: {"schema": openapi.ref("Validation")}}


def create_router(models: ServedModels, settings: Settings, keys: KeyRing) -> APIRouter:
    """The validation route over ``models``."""
    validation = Validation(models, settings, keys)
    router = APIRouter(tags=["platforms"])
    router.add_api_route(
        ROUTE,
        validation.validate,
        methods=["POST"],
        summary="Validate one upload (pict-rs' external validation)",
        response_class=Response,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
            },
            "parameters": [
                {"name": name, "in": "query", "required": False, "schema": {"type": kind}}
                for name, kind in (
                    ("key", "string"),
                    ("policy", "string"),
                    ("threshold", "number"),
                    ("model", "string"),
                    ("fail_open", "boolean"),
                )
            ],
        },
        responses={
            "200": openapi.answer("Accepted: the upload passes (or fail_open let it)", _ANSWER),
            "400": openapi.answer("A bad query, or an image nsfwd cannot decode", _ANSWER),
            "401": openapi.answer("A missing or wrong key", _ANSWER),
            "408": openapi.answer("The body stopped arriving", _ANSWER),
            "415": openapi.answer("A file of a type nsfwd does not judge", _ANSWER),
            "422": openapi.answer("Refused: the upload is flagged", _ANSWER),
            "429": openapi.answer(
                "The server is full, or too many wrong keys came from this address lately",
                _ANSWER,
                retry_after=True,
            ),
            "431": openapi.HEADERS_TOO_LARGE,
            "500": openapi.answer("An internal error", _ANSWER),
            "503": openapi.answer("The model is unavailable", _ANSWER, retry_after=True),
        },
    )
    return router
