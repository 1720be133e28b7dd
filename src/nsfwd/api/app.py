"""The app factory: hand it an engine and settings, get an ASGI app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from nsfwd import __version__
from nsfwd.api import prodia
from nsfwd.api.errors import install_error_handlers
from nsfwd.api.middleware import BodyLimitMiddleware, RequestIdMiddleware
from nsfwd.engine import Engine
from nsfwd.settings import Settings


def create_app(engine: Engine, settings: Settings) -> FastAPI:
    """Build the HTTP app around a (not yet started) engine; its lifespan starts and stops it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(
        title="nsfwd",
        version=__version__,
        description="Self-hosted NSFW image moderation, wire-compatible with Prodia's job API.",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.settings = settings
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.max_image_bytes + prodia.FORM_OVERHEAD_BYTES,
        hint=f"send an image of at most {settings.max_image_bytes:,} bytes",
    )
    app.add_middleware(RequestIdMiddleware)  # outermost: its id is on every answer, 431 too
    install_error_handlers(app)
    app.include_router(prodia.create_router(engine, settings))

    @app.get("/healthz", response_class=PlainTextResponse, tags=["ops"])
    async def healthz(request: Request) -> Response:
        """200 once the model is loaded and warm, 503 before."""
        if engine.ready:
            return PlainTextResponse("ok\n")
        return PlainTextResponse("loading\n", status_code=503)

    @app.get("/metrics", tags=["ops"])
    async def metrics() -> Response:
        """Prometheus metrics: queue size, batch sizes, inference and request latency."""
        return Response(engine.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
