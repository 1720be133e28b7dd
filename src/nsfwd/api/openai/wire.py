"""What nsfwd's OpenAI-shaped routes share: OpenAI's error body and its Bearer auth.

Every refusal is ``{"error": {"message", "type", "param", "code"}}``, the body the official
``openai`` SDK reads into its ``APIStatusError`` (``BadRequestError`` for 400, and so on). The
SDK retries 408, 409, 429 and 5xx on its own and never 400, 401 or 404, so a request it cannot
fix by waiting (an unknown model, text input) is a 4xx of the latter kind.
"""

from __future__ import annotations

from typing import Final

from fastapi import Request, Response
from fastapi.responses import JSONResponse

from nsfwd.api.auth import AuthenticationError, Caller, KeyRing
from nsfwd.api.http.errors import ApiError

_TYPES: Final = {400: "invalid_request_error", 401: "invalid_request_error",
                 404: "invalid_request_error", 408: "invalid_request_error",
                 429: "requests"}  # fmt: skip
"""OpenAI's error ``type`` by status; 5xx are ``server_error``."""
_CODES: Final = {401: "invalid_api_key", 403: "forbidden", 404: "not_found", 408: "request_timeout",
                 429: "rate_limit_exceeded", 503: "server_unavailable"}  # fmt: skip


class OpenAIError(ApiError):
    """A refusal with OpenAI's ``param`` (the request field at fault) and ``code``."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Create the error answered with ``status``."""
        super().__init__(message, status=status, headers=headers)
        self.param = param
        self.code = code


def error_response(exc: ApiError) -> Response:
    """OpenAI's error body for any :class:`ApiError` (also those the middleware raises, such
    as a body over its limit)."""
    kind = _TYPES.get(exc.status, "server_error" if exc.status >= 500 else "invalid_request_error")
    error = {
        "message": exc.message,
        "type": kind,
        "param": getattr(exc, "param", None),
        "code": getattr(exc, "code", None)
        or getattr(exc, "details", None)
        or _CODES.get(exc.status),
    }
    return JSONResponse({"error": error}, exc.status, headers=exc.headers)


async def identify(request: Request, keys: KeyRing) -> Caller | None:
    """The caller the ``Authorization: Bearer`` token names (``None`` when the API is open),
    or a 401 in OpenAI's shape that says what is wrong."""
    header = request.headers.get("authorization")
    scheme, _, token = (header or "").strip().partition(" ")
    is_bearer = scheme.lower() == "bearer"
    try:
        return await keys.identify(token.strip() if is_bearer else None, request)
    except AuthenticationError as exc:
        if header is not None and not is_bearer:
            message = "the Authorization header must be 'Bearer <token>'"
        elif exc.missing:
            message = (
                "missing API key: send 'Authorization: Bearer <token>' (the SDK's api_key) with "
                f"a token this server accepts ({exc.sources})"
            )
        else:
            message = (
                "invalid API key: the Bearer token is not one this server accepts, or it was "
                "revoked; check the api_key you were given"
            )
        raise OpenAIError(
            message,
            status=401,
            code="invalid_api_key",
            headers={"WWW-Authenticate": 'Bearer realm="nsfwd"'},
        ) from None
