"""The app factory: hand it an engine, settings and (for background jobs) a store; get an app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from nsfwd import __version__
from nsfwd.api import eachlabs, prodia, prodia_async
from nsfwd.api.auth import KeyRing
from nsfwd.api.errors import install_error_handlers
from nsfwd.api.middleware import BodyLimitMiddleware, RequestIdMiddleware
from nsfwd.api.openapi import install_openapi
from nsfwd.engine_protocol import ClassifyEngine
from nsfwd.jobs import Store
from nsfwd.jobs.webhooks import WebhookSender
from nsfwd.jobs.worker import PURGE_EVERY_S, Worker
from nsfwd.settings import Settings


def default_workers(engine: ClassifyEngine) -> int:
    """Background jobs to run at once: enough to fill two batches, but never more than half the
    engine's queue, which live requests share."""
    return max(1, min(2 * engine.max_batch_size, engine.max_queue // 2))


def _model_lines(info: dict[str, str]) -> str:
    """``device: cpu`` and ``dtype: float32 (this CPU has no native bf16 (AVX2))``, as far as
    ``info`` (an engine's ``model_info``) knows them."""
    lines = []
    if "device" in info:
        lines.append(f"device: {info['device']}\n")
    if "dtype" in info:
        reason = f" ({info['dtype_reason']})" if info.get("dtype_reason") else ""
        lines.append(f"dtype: {info['dtype']}{reason}\n")
    return "".join(lines)


def create_app(engine: ClassifyEngine, settings: Settings, store: Store | None = None) -> FastAPI:
    """Build the HTTP app around a (not yet started) engine; its lifespan starts and stops it.

    With a (not yet open) ``store``, the app also serves Prodia's async job API, and its lifespan
    opens the store (migrating its schema), then runs a :class:`~nsfwd.jobs.worker.Worker` on
    the engine; without one, only the synchronous routes exist. The store also backs Eachlabs'
    prediction API, whose webhooks a :class:`~nsfwd.jobs.webhooks.WebhookSender` delivers, and
    holds the keys made with ``nsfwd keys create``: one :class:`~nsfwd.api.auth.KeyRing` accepts
    them, with the static ``NSFWD_API_KEYS``, on every route.
    """
    worker = None
    if store is not None:
        worker = Worker(
            store,
            engine,
            concurrency=settings.workers or default_workers(engine),
            lease_s=settings.lease_s,
            fetch_policy=settings.fetch_policy,
            policy=settings.verdict_policy,
            purge_every_s=min(PURGE_EVERY_S, settings.result_ttl_s / 2),
        )
    webhooks = None if store is None else WebhookSender.from_settings(store, settings)
    keys = KeyRing(settings, store)  # one rule for who may call, on every route

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if store is not None:  # first: a bad database fails before the model loads
                await store.open()
                stack.push_async_callback(store.close)
            await engine.start()
            stack.push_async_callback(engine.stop)
            if worker is not None:
                await worker.start()
                stack.push_async_callback(worker.stop)
            if webhooks is not None:
                await webhooks.start()
                stack.push_async_callback(webhooks.stop)
            yield

    app = FastAPI(
        title="nsfwd",
        version=__version__,
        description="Self-hosted NSFW image moderation, wire-compatible with Prodia's job API "
        "and Eachlabs' prediction API.",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.settings = settings
    app.state.store = store
    app.state.worker = worker
    app.state.webhooks = webhooks
    app.state.keys = keys
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.max_image_bytes + prodia.FORM_OVERHEAD_BYTES,
        hint=f"send an image of at most {settings.max_image_bytes:,} bytes",
    )
    app.add_middleware(RequestIdMiddleware)  # outermost: its id is on every answer, 431 too
    install_error_handlers(app)
    app.include_router(prodia.create_router(engine, settings, keys))
    if store is not None and worker is not None:
        app.include_router(prodia_async.create_router(engine, settings, keys, store, worker))
        app.include_router(eachlabs.create_router(engine, settings, keys, store, worker))

    @app.get("/healthz", response_class=PlainTextResponse, tags=["ops"])
    async def healthz(request: Request) -> Response:
        """200 while the model is loaded and warm, 503 when it is not (loading, or stopping).
        The 200's body is ``ok``, then the model's device and dtype (and why that dtype), a
        line each."""
        if engine.ready:
            return PlainTextResponse("ok\n" + _model_lines(engine.model_info))
        return PlainTextResponse("loading\n", status_code=503)

    @app.get("/metrics", tags=["ops"])
    async def metrics() -> Response:
        """Prometheus metrics: queue size, batch sizes, inference and request latency."""
        return Response(engine.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    install_openapi(app)
    return app
