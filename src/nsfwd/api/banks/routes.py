"""``/v1/banks``: the banks of known images, for keys allowed to administer them.

* ``GET /v1/banks``: every bank, with its size; ``POST /v1/banks`` (JSON ``name``, optional
  ``category`` and ``distance``) creates one; ``GET``/``DELETE /v1/banks/{name}``.
* ``POST /v1/banks/{name}/images``: an image (the body, or a form's ``file`` part), every
  picture of it hashed (each judged frame, each backdrop of a transparent one: what the intake
  gives) and added; pictures too featureless for PDQ (quality under 50) are left out and said so.
* ``POST /v1/banks/{name}/signals``: hashes as ThreatExchange text (``pdq <hex>`` lines, or its
  CSV; :mod:`nsfwd.banks.signals`); ``GET`` exports them so; ``DELETE
  /v1/banks/{name}/signals/{hash}`` removes one.

Every route takes an admin key (``NSFWD_ADMIN_KEYS``, or ``nsfwd keys create --admin``) as
``Authorization: Bearer``: 401 without a key the server accepts, 403 with one that may not
administer. A change applies at once in this process and within ``NSFWD_BANK_REFRESH_S`` in
every other. Errors are ``{"error": message}``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Final

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, ValidationError

from nsfwd.api import openapi
from nsfwd.api.auth import AuthenticationError, Caller, KeyRing, bearer_token
from nsfwd.api.http import strict_json
from nsfwd.api.http.errors import ApiError, BadRequestError
from nsfwd.api.http.uploads import read_upload
from nsfwd.banks.matcher import BankMatcher
from nsfwd.banks.pdq import DEFAULT_DISTANCE, HashFormatError, PictureHash, hash_picture, parse_hash
from nsfwd.banks.signals import SignalFormatError, read_signals, signal_line
from nsfwd.engine import pools, run_intake
from nsfwd.intake import ImageError, load_views
from nsfwd.jobs import Store
from nsfwd.jobs.banks import BankError, UnknownBankError
from nsfwd.jobs.records import Bank
from nsfwd.settings import Settings

ROUTE: Final = "/v1/banks"
MAX_JSON_BYTES: Final = 16 * 1024


class BankRequest(BaseModel):
    """A bank to create."""

    name: str = Field(description="1 to 64 letters, digits, '.', '_' or '-'")
    category: str | None = Field(
        None, description="The OpenAI category a match stands for (default: sexual)"
    )
    distance: int = Field(DEFAULT_DISTANCE, description="Hamming distance of a match (0 to 64)")


def bank_json(bank: Bank) -> dict[str, Any]:
    """A bank as the routes and ``nsfwd banks list --json`` show it."""
    return {
        "name": bank.name,
        "category": bank.category,
        "distance": bank.distance,
        "size": bank.size,
        "created_at": bank.created_at.isoformat(timespec="seconds"),
    }


def hash_image(data: bytes, settings: Settings) -> list[PictureHash]:
    """The PDQ hash of every picture the intake gives of ``data`` (each judged frame, each
    backdrop), as the engine hashes what it judges; raises the intake's
    :class:`~nsfwd.intake.ImageError`."""
    views = load_views(data, settings.image_limits)
    return [
        PictureHash(picture.hash, picture.quality, view.frame)
        for view in views.views
        for picture in [hash_picture(view.image)]
    ]


class BankRoutes:
    """The ``/v1/banks`` routes over a store's banks."""

    def __init__(
        self, store: Store, matcher: BankMatcher, settings: Settings, keys: KeyRing
    ) -> None:
        self.banks = store.banks
        self.matcher = matcher
        self.settings = settings
        self.keys = keys

    async def list(self, request: Request) -> Response:
        """Every bank, with its size."""
        await self._admin(request)
        return JSONResponse({"banks": [bank_json(bank) for bank in await self.banks.all()]})

    async def create(self, request: Request) -> Response:
        """Create a bank from a JSON body."""
        await self._admin(request)
        body = await request.body()
        if len(body) > MAX_JSON_BYTES:
            raise BadRequestError(f"the bank's JSON is over {MAX_JSON_BYTES:,} bytes")
        try:
            wanted = BankRequest.model_validate(strict_json.loads(body or b"null"))
        except (ValueError, ValidationError) as exc:
            raise BadRequestError(
                f'send a JSON object such as {{"name": "removed", "category": "sexual", '
                f'"distance": 31}} ({str(exc).splitlines()[0]})'
            ) from None
        with _bank_errors():
            bank = await self.banks.create(
                wanted.name, category=wanted.category, distance=wanted.distance
            )
        self.matcher.invalidate()
        return JSONResponse(bank_json(bank), 201)

    async def show(self, request: Request, name: str) -> Response:
        """One bank."""
        await self._admin(request)
        with _bank_errors():
            return JSONResponse(bank_json(await self.banks.get(name)))

    async def delete(self, request: Request, name: str) -> Response:
        """Delete a bank and its hashes."""
        await self._admin(request)
        with _bank_errors():
            bank = await self.banks.delete(name)
        self.matcher.invalidate()
        return JSONResponse(bank_json(bank))

    async def add_image(self, request: Request, name: str) -> Response:
        """Hash every picture of an uploaded image into the bank."""
        await self._admin(request)
        with _bank_errors():
            await self.banks.get(name)
        data = await read_upload(request, self.settings.max_image_bytes)
        try:
            hashes = await run_intake(
                pools.named(pools.DECODE),
                lambda: hash_image(data, self.settings),
                self.settings.decode_timeout_s,
            )
        except ImageError as exc:
            raise BadRequestError(f"the image cannot be hashed: {exc.message}") from None
        usable = [each for each in hashes if each.usable]
        if not usable:
            raise BadRequestError(
                "every picture of this image is too featureless for PDQ (quality under 50: "
                "flat or nearly blank pictures all hash alike); nothing was added"
            )
        with _bank_errors():
            added = await self.banks.add(
                name, [(each.hash, each.quality) for each in usable], source="upload"
            )
        self.matcher.invalidate()
        return JSONResponse(
            {
                "bank": name,
                "added": added,
                "hashes": [
                    {"hash": each.hex, "quality": each.quality, "frame": each.frame}
                    for each in usable
                ],
                "too_featureless": len(hashes) - len(usable),
            },
            201,
        )

    async def add_signals(self, request: Request, name: str) -> Response:
        """Add the PDQ hashes of a ThreatExchange text body."""
        await self._admin(request)
        body = await request.body()
        try:
            signals = read_signals(body.decode("utf-8").splitlines())
        except UnicodeDecodeError:
            raise BadRequestError("the body is not UTF-8 text") from None
        except SignalFormatError as exc:
            raise BadRequestError(f"{exc}; nothing was added") from None
        with _bank_errors():
            added = await self.banks.add(name, [(h, None) for h in signals.hashes], source="import")
        self.matcher.invalidate()
        return JSONResponse(
            {
                "bank": name,
                "read": len(signals.hashes),
                "added": added,
                "other_signals": signals.skipped,
            },
            201,
        )

    async def export(self, request: Request, name: str) -> Response:
        """The bank's hashes as ThreatExchange text, streamed."""
        await self._admin(request)
        with _bank_errors():
            await self.banks.get(name)

        async def lines() -> AsyncIterator[bytes]:
            async for banked in self.banks.hashes(name):
                yield (signal_line(banked.hash) + "\n").encode()

        return StreamingResponse(lines(), media_type="text/plain; charset=utf-8")

    async def remove_signal(self, request: Request, name: str, value: str) -> Response:
        """Remove one hash from the bank."""
        await self._admin(request)
        try:
            hash_bytes = parse_hash(value)
        except HashFormatError as exc:
            raise BadRequestError(str(exc)) from None
        with _bank_errors():
            removed = await self.banks.remove(name, [hash_bytes])
        if not removed:
            raise ApiError(f"bank {name!r} does not hold {value.lower()}", status=404)
        self.matcher.invalidate()
        return JSONResponse({"bank": name, "removed": removed})

    async def _admin(self, request: Request) -> Caller:
        """The calling key, if it may administer banks; 401 or 403 else."""
        try:
            token = bearer_token(request.headers.get("authorization"))
            caller = await self.keys.identify(token, request)
        except AuthenticationError as exc:
            raise ApiError(
                "missing API key: send 'Authorization: Bearer <admin key>'"
                if exc.missing
                else "invalid API key: it is not one this server accepts, or it was revoked",
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="nsfwd"'},
            ) from None
        if caller is None or not caller.admin:
            raise ApiError(
                "this key may not administer banks: use a key from NSFWD_ADMIN_KEYS or one made "
                "with `nsfwd keys create --admin`, or `nsfwd banks` on the server",
                status=403,
            )
        return caller


@contextlib.contextmanager
def _bank_errors() -> Any:
    """A bank that does not exist is a 404; any other bank error a 400."""
    try:
        yield
    except UnknownBankError as exc:
        raise ApiError(str(exc), status=404) from None
    except BankError as exc:
        raise BadRequestError(str(exc)) from None


_ERROR: Final = {openapi.JSON: {"schema": openapi.ref("Error")}}
_BANK: Final = {openapi.JSON: {"schema": openapi.ref("Bank")}}


def _answers(success: str, status: str = "200", content: Any = None) -> dict[int | str, Any]:
    answers: dict[int | str, Any] = {
        status: openapi.answer(success, content or {openapi.JSON: {"schema": {"type": "object"}}}),
        "400": openapi.answer("A bad request: what was wrong", _ERROR),
        "401": openapi.answer("A missing or wrong key", _ERROR),
        "403": openapi.answer("A key that may not administer banks", _ERROR),
        "404": openapi.answer("No such bank (or hash in it)", _ERROR),
        "429": openapi.answer(
            "Too many wrong keys from this address lately", _ERROR, retry_after=True
        ),
        "431": openapi.HEADERS_TOO_LARGE,
        "503": openapi.answer("The store is unavailable", _ERROR, retry_after=True),
    }
    return answers


def create_router(
    store: Store, matcher: BankMatcher, settings: Settings, keys: KeyRing
) -> APIRouter:
    """The ``/v1/banks`` routes."""
    routes = BankRoutes(store, matcher, settings, keys)
    router = APIRouter(tags=["banks"])
    extra = openapi.key("bearer")
    text = {"text/plain": {"schema": {"type": "string"}}}
    router.add_api_route(ROUTE, routes.list, methods=["GET"], summary="List the banks",
                         responses=_answers("Every bank"), openapi_extra=extra,
                         response_class=Response)  # fmt: skip
    router.add_api_route(
        ROUTE, routes.create, methods=["POST"], summary="Create a bank",
        responses=_answers("The new bank", "201", _BANK), response_class=Response,
        openapi_extra=extra | {"requestBody": {"required": True, "content": {openapi.JSON: {
            "schema": BankRequest.model_json_schema()}}}},
    )  # fmt: skip
    router.add_api_route(f"{ROUTE}/{{name}}", routes.show, methods=["GET"], summary="One bank",
                         responses=_answers("The bank", content=_BANK), openapi_extra=extra,
                         response_class=Response)  # fmt: skip
    router.add_api_route(f"{ROUTE}/{{name}}", routes.delete, methods=["DELETE"],
                         summary="Delete a bank and its hashes", openapi_extra=extra,
                         responses=_answers("The bank deleted", content=_BANK),
                         response_class=Response)  # fmt: skip
    router.add_api_route(
        f"{ROUTE}/{{name}}/images", routes.add_image, methods=["POST"],
        summary="Hash an image's pictures into a bank", response_class=Response,
        responses=_answers("The hashes added", "201"),
        openapi_extra=extra | {"requestBody": {"required": True, "content": {
            "*/*": {"schema": {"type": "string", "format": "binary"}}}}},
    )  # fmt: skip
    router.add_api_route(
        f"{ROUTE}/{{name}}/signals", routes.add_signals, methods=["POST"],
        summary="Import PDQ hashes (ThreatExchange text)", response_class=Response,
        responses=_answers("How many were added", "201"),
        openapi_extra=extra | {"requestBody": {"required": True, "content": text}},
    )  # fmt: skip
    router.add_api_route(f"{ROUTE}/{{name}}/signals", routes.export, methods=["GET"],
                         summary="Export a bank (ThreatExchange text)", openapi_extra=extra,
                         responses=_answers("pdq <hex> lines", content=text),
                         response_class=Response)  # fmt: skip
    router.add_api_route(f"{ROUTE}/{{name}}/signals/{{value}}", routes.remove_signal,
                         methods=["DELETE"], summary="Remove a hash from a bank",
                         responses=_answers("How many were removed"), openapi_extra=extra,
                         response_class=Response)  # fmt: skip
    return router
