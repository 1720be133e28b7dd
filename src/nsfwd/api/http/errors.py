"""Refusals the API answers with: an HTTP status and a message saying what was wrong and what to do.

Each wire protocol renders an :class:`ApiError` its own way (the Prodia routes put it in a failed
job); :func:`install_error_handlers` gives every other route a plain JSON rendering, so an error
raised below a route (say, by the body-size limit while it reads) never turns into a 500.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.requests import ClientDisconnect

from nsfwd.engine.metrics import Metrics
from nsfwd.jobs.database import StoreUnavailableError

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A request the API refuses, with the status to answer and a message for the caller."""

    status: int = 400
    plain_text: bool = False
    """Answer with the bare message as text/plain (as Prodia does for 401), not a JSON body."""

    def __init__(
        self, message: str, *, status: int | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        """Create the error; ``status`` overrides the class default."""
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.headers: dict[str, str] = dict(headers or {})


class BadRequestError(ApiError):
    """A malformed request, job or image (400)."""

    status = 400


class UnauthorizedError(ApiError):
    """A missing or wrong API token (401, plain text, with ``WWW-Authenticate``)."""

    status = 401
    plain_text = True

    def __init__(self, message: str) -> None:
        """Create the error with a ``WWW-Authenticate: Bearer`` challenge."""
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="nsfwd"'})


class PayloadTooLargeError(ApiError):
    """The request body or one of its parts is over its limit: a 400 whose message names it.

    Not 413: clients that retry every status in urllib3's ``Retry.RETRY_AFTER_STATUS_CODES``
    (413, 429, 503), as Prodia's Python guide sets them up, would send the same body again and
    end in ``RetryError`` without ever reading the message. Like any other input requirement,
    the size limit is a 400; 429 and 503 stay for what is worth retrying.
    """

    status = 400
    details = "payload_too_large"
    """Eachlabs' ``details`` code, which tells this 400 from other invalid input."""


class RequestTimeoutError(ApiError):
    """The client stopped sending its body (408); the connection is closed."""

    status = 408

    def __init__(self, message: str) -> None:
        """Create the error; the answer closes the connection, so a stalled client is let go."""
        super().__init__(message, headers={"Connection": "close"})


class TooBusyError(ApiError):
    """The server is at capacity (429 with ``Retry-After``)."""

    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        """Create the error asking the client to come back in ``retry_after`` seconds."""
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class UnavailableError(ApiError):
    """The model is not loaded, or the server is shutting down (503 with ``Retry-After``)."""

    status = 503

    def __init__(self, message: str, retry_after: int = 5) -> None:
        """Create the error asking the client to come back in ``retry_after`` seconds."""
        super().__init__(message, headers={"Retry-After": str(retry_after)})


def store_refusal(exc: StoreUnavailableError) -> ApiError:
    """The job store out of reach (503) or full (507), as a refusal with ``Retry-After``."""
    return ApiError(exc.message, status=exc.status, headers={"Retry-After": str(exc.retry_after)})


class ClientGoneError(Exception):
    """The client disconnected before its answer was ready; nothing can be sent."""


CLIENT_CLOSED_REQUEST = 499
"""Status recorded in metrics for requests whose client went away (nginx's convention)."""


def error_response(exc: ApiError) -> Response:
    """The generic rendering: text for :attr:`ApiError.plain_text`, else ``{"error": message}``."""
    if exc.plain_text:
        return PlainTextResponse(exc.message + "\n", exc.status, headers=exc.headers)
    return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)


async def answer(
    request: Request,
    route: str,
    work: Awaitable[Response],
    *,
    refuse: Callable[[ApiError], Response],
    metrics: Metrics,
    internal: str,
    what: str = "",
) -> Response:
    """Await a route's ``work`` and count the answer in ``metrics``.

    Refusals are rendered by the protocol's ``refuse``; a client gone away is recorded as 499;
    the job store out of reach is a 503 (full: 507); anything unexpected is logged and refused
    as a 500 whose message is ``internal`` with the request id filled in (``{request_id}``), so
    no route ever answers a bare server error.
    """
    started = time.perf_counter()
    try:
        response = await work
    except ApiError as exc:
        response = refuse(exc)
    except StoreUnavailableError as exc:
        log.warning("%s %s: %s", request.method, route, exc)
        response = refuse(store_refusal(exc))
    except (ClientGoneError, ClientDisconnect):
        response = Response(status_code=CLIENT_CLOSED_REQUEST)
    except Exception:
        request_id = getattr(request.state, "request_id", "?")
        log.exception("%s %s %s(request %s) failed", request.method, route, what, request_id)
        response = refuse(ApiError(internal.format(request_id=request_id), status=500))
    metrics.requests.labels(route=route, status=str(response.status_code)).inc()
    metrics.request_seconds.labels(route=route).observe(time.perf_counter() - started)
    return response


def install_error_handlers(app: FastAPI) -> None:
    """Render :class:`ApiError` raised in any route with :func:`error_response`, and the job
    store out of reach as the matching refusal (:func:`store_refusal`)."""

    async def handle(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def handle_store(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StoreUnavailableError)
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return error_response(store_refusal(exc))

    app.add_exception_handler(ApiError, handle)
    app.add_exception_handler(StoreUnavailableError, handle_store)
