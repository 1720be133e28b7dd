"""`nsfwd serve`: load the model, build the app, run uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import socket

import uvicorn

from nsfwd.api import create_app
from nsfwd.engine import Engine
from nsfwd.jobs import Store
from nsfwd.jobs.database import DatabaseUrlError
from nsfwd.models import Classifier
from nsfwd.settings import Settings

log = logging.getLogger("nsfwd.server")


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


def build_engine(settings: Settings) -> Engine:
    """Load the classifier the settings name and wrap it in an engine."""
    classifier = Classifier.load(
        settings.model, revision=settings.revision, device=settings.device, dtype=settings.dtype
    )
    log.info(
        "loaded %s (%s) on %s in %s; labels %s",
        classifier.name,
        classifier.loaded.style,
        classifier.device,
        classifier.dtype,
        ", ".join(classifier.labels),
    )
    return Engine(
        classifier,
        max_batch_size=settings.max_batch_size or classifier.batch_size,
        batch_wait_ms=settings.batch_wait_ms,
        max_queue=settings.max_queue,
        decode_workers=settings.decode_workers,
        limits=settings.image_limits,
    )


def run(settings: Settings, *, insecure_no_auth: bool = False) -> int:
    """Serve until interrupted; returns the exit status."""
    if not settings.api_keys:
        if not is_loopback(settings.host) and not insecure_no_auth:
            log.error(
                "refusing to bind %s without API keys: set NSFWD_API_KEYS, bind 127.0.0.1, "
                "or pass --insecure-no-auth to let anyone call the API",
                settings.host,
            )
            return 2
        log.warning("no NSFWD_API_KEYS set: the API accepts requests without a token")
    try:
        store = Store.from_settings(settings)
    except DatabaseUrlError as exc:
        log.error("%s", exc)
        return 2
    app = create_app(build_engine(settings), settings, store)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
    return 0
