"""`nsfwd serve`: load the models, build the app, run uvicorn.

With ``--http-workers`` above 1 this process only supervises (:mod:`nsfwd.serve.supervisor`) and
never loads the model, so it imports the inference side (torch) only when it serves alone.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import socket
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

import uvicorn
from sqlalchemy.exc import SQLAlchemyError

from nsfwd.api import create_app
from nsfwd.api.auth import KeyRing
from nsfwd.jobs import Store
from nsfwd.jobs.database import DatabaseUrlError, redacted
from nsfwd.serve.connections import uvicorn_options
from nsfwd.settings import Settings

if TYPE_CHECKING:
    from nsfwd.serve.ray.options import RayServeOptions

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) binds only to loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(
                ipaddress.ip_address(info[4][0]).is_loopback
                for info in socket.getaddrinfo(host, None)
            )
        except OSError:
            return False


async def _keys_required(settings: Settings, url: str) -> bool:
    """:meth:`KeyRing.required` on a short-lived handle of the store at ``url``."""
    async with Store(url) as store:
        return await KeyRing(settings, store).required()


def run(
    settings: Settings, *, insecure_no_auth: bool = False, ray: RayServeOptions | None = None
) -> int:
    """Serve until interrupted; returns the exit status. With ``ray``, on Ray Serve
    (:mod:`nsfwd.serve.ray.driver`)."""
    if ray is None and settings.http_workers <= 1:
        exit_on_sigterm()  # the other modes handle signals their own way
    try:
        store = Store.from_settings(settings)
    except DatabaseUrlError as exc:
        log.error("%s", exc)
        return 2
    # Static keys settle it; otherwise the store says whether any key was ever created.
    try:
        keyed = bool(settings.api_keys) or asyncio.run(_keys_required(settings, store.url))
    except (OSError, SQLAlchemyError) as exc:
        log.error("cannot open the job store %s: %s", redacted(store.url), exc)
        return 2
    if not keyed:
        if not is_loopback(settings.host) and not insecure_no_auth:
            log.error(
                "refusing to bind %s without API keys: set NSFWD_API_KEYS or create one with "
                "`nsfwd keys create`, bind 127.0.0.1, or pass --insecure-no-auth to let anyone "
                "call the API",
                settings.host,
            )
            return 2
        log.warning(
            "no NSFWD_API_KEYS set and no key created with `nsfwd keys create`: the API accepts "
            "requests without a token until a key is created"
        )
    if ray is not None:
        from nsfwd.jobs.webhooks import resolve_secret
        from nsfwd.serve.ray.driver import run_on_ray

        resolve_secret(settings)  # generated here, once, for every ingress replica
        return run_on_ray(settings, ray)
    if settings.http_workers > 1:
        from nsfwd.jobs.webhooks import resolve_secret
        from nsfwd.serve.supervisor import run_workers

        resolve_secret(settings)  # generated here, once, not raced for by every worker
        return run_workers(settings)
    from nsfwd.engine.build import build_engines  # torch: only this process's models need it

    app = create_app(build_engines(settings), settings, store)
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level="info", **uvicorn_options(settings)
    )
    return 0


def _exit(signum: int, frame: FrameType | None) -> NoReturn:
    raise SystemExit(0)


def exit_on_sigterm() -> None:
    """SIGTERM ends the process (status 0: stopped as asked) until uvicorn takes the signal
    over, which then answers what is in progress first, hands the handler back and raises the
    signal again, ending here. Without it, as a container's PID 1 (which ignores a signal it
    has no handler for), `docker stop` while the models load would wait for its SIGKILL:
    minutes on a first download."""
    signal.signal(signal.SIGTERM, _exit)
