"""The app factory: hand it an engine, settings and (for background jobs) a store; get an app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from nsfwd import __version__, demo
from nsfwd.api import openapi
from nsfwd.api.auth import KeyRing
from nsfwd.api.banks import routes as bank_routes
from nsfwd.api.eachlabs import routes as eachlabs
from nsfwd.api.http.errors import install_error_handlers
from nsfwd.api.http.middleware import BodyLimitMiddleware, BodyLimits, RequestIdMiddleware
from nsfwd.api.openai import models as openai_models
from nsfwd.api.openai import moderations as openai_moderation
from nsfwd.api.openapi import install_openapi
from nsfwd.api.pictrs import validate as pictrs
from nsfwd.api.prodia import async_jobs as prodia_async
from nsfwd.api.prodia import sync as prodia
from nsfwd.banks.matcher import BankMatcher
from nsfwd.engine import ClassifyEngine, pools
from nsfwd.engine.screened import ScreenedEngine
from nsfwd.engine.served import ServedModels
from nsfwd.engine.verdict_cache import VerdictCache
from nsfwd.jobs import Store
from nsfwd.jobs.webhooks import WebhookSender
from nsfwd.jobs.worker import PURGE_EVERY_S, Worker
from nsfwd.settings import Settings


def body_limits(settings: Settings) -> BodyLimits:
    """The largest request body of each route: an image of ``max_image_bytes`` and its form
    (on OpenAI's route, its base64 and JSON; on Prodia's async route, a video of
    ``max_video_bytes``); in all, what the HTTP processes read at once (``max_uploads`` bodies
    each, any of them as large as the largest route allows), for a host that reads ahead of
    them (Serve's proxy)."""
    largest = max(settings.max_image_bytes, settings.max_video_bytes)
    return BodyLimits(
        default=settings.max_image_bytes + prodia.FORM_OVERHEAD_BYTES,
        paths={
            openai_moderation.ROUTE: openai_moderation.max_body_bytes(settings.max_image_bytes),
            prodia_async.ROUTE: largest + prodia.FORM_OVERHEAD_BYTES,
        },
        hint=f"send an image of at most {settings.max_image_bytes:,} bytes (a video of at "
        f"most {settings.max_video_bytes:,} to {prodia_async.ROUTE})",
        total=settings.max_uploads * settings.http_workers * (largest + prodia.FORM_OVERHEAD_BYTES),
    )


def default_workers(engine: ClassifyEngine) -> int:
    """Background jobs to run at once: enough to fill two batches, but never more than half the
    engine's queue, which live requests share."""
    return max(1, min(2 * engine.max_batch_size, engine.max_queue // 2))


def _model_lines(info: dict[str, str]) -> str:
    """``device: cpu``, ``dtype: float32 (why)`` and ``runtime: openvino``, as far as ``info``
    (an engine's ``model_info``) knows them."""
    lines = []
    if "device" in info:
        lines.append(f"device: {info['device']}\n")
    if "dtype" in info:
        reason = f" ({info['dtype_reason']})" if info.get("dtype_reason") else ""
        lines.append(f"dtype: {info['dtype']}{reason}\n")
    if "runtime" in info:
        lines.append(f"runtime: {info['runtime']}\n")
    if "deployments" in info:  # on Ray Serve: each deployment's state and running replicas
        lines.append(f"deployments: {info['deployments']}\n")
    return "".join(lines)


def screened(models: ServedModels, settings: Settings, matcher: BankMatcher | None) -> ServedModels:
    """Each served engine behind the verdict cache (one for all) and the banks
    (:mod:`nsfwd.engine.screened`): the door every surface judges through."""
    cache = VerdictCache(settings.verdict_cache_entries)
    return ServedModels(
        {
            name: ScreenedEngine(engine, name, matcher=matcher, cache=cache)
            for name, engine in models.items()
        }
    )


def create_app(
    engines: ClassifyEngine | Mapping[str, ClassifyEngine],
    settings: Settings,
    store: Store | None = None,
) -> FastAPI:
    """Build the HTTP app around (not yet started) engines; its lifespan starts and stops them.

    ``engines`` is one engine, served as ``settings.served_model_name`` (default: the name its
    model loaded as), or several by served name, the default first (as
    :func:`nsfwd.engine.build.build_engines` returns them); requests pick one by name.

    With a (not yet open) ``store``, the app also serves Prodia's async job API, and its lifespan
    opens the store (migrating its schema), then runs a :class:`~nsfwd.jobs.worker.Worker` on
    the engines; without one, only the synchronous routes exist. The store also backs Eachlabs'
    prediction API, whose webhooks a :class:`~nsfwd.jobs.webhooks.WebhookSender` delivers, and
    holds the keys made with ``nsfwd keys create``: one :class:`~nsfwd.api.auth.KeyRing` accepts
    them, with the static ``NSFWD_API_KEYS``, on every route.
    """
    pools.configure(
        decode=settings.decode_workers, dns=settings.dns_workers, webhooks=settings.webhook_workers
    )
    pools.configure_shares(dns=settings.dns_key_limit)
    matcher = None if store is None else BankMatcher(store.banks, refresh_s=settings.bank_refresh_s)
    models = screened(ServedModels.of(engines, settings.served_model_name), settings, matcher)
    engine = models.default  # sizes the background work; its metrics count the requests
    worker = None
    if store is not None:
        store.deliveries.webhook_payload = eachlabs.webhook_body  # only Eachlabs' take webhooks
        worker = Worker(
            store,
            models,
            concurrency=settings.workers or default_workers(engine),
            lease_s=settings.lease_s,
            fetch_policy=settings.fetch_policy,
            video_fetch_policy=settings.video_fetch_policy,
            policy=settings.verdict_policy,
            video=settings.video_options,
            purge_every_s=min(PURGE_EVERY_S, settings.result_ttl_s / 2),
            keeps_input=prodia_async.hands_back_input,
        )
    webhooks = None if store is None else WebhookSender.from_settings(store, settings)
    keys = KeyRing(settings, store)  # one rule for who may call, on every route

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if store is not None:  # first: a bad database fails before the model loads
                await store.open()
                stack.push_async_callback(store.close)
            if matcher is not None:  # the banks in memory before the first upload waits for them
                await matcher.snapshot()
            await models.start()
            stack.push_async_callback(models.stop)
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
        description="Self-hosted NSFW image moderation, wire-compatible with Prodia's job API, "
        "Eachlabs' prediction API and OpenAI's moderation API (images).",
        lifespan=lifespan,
    )
    app.add_middleware(
        BodyLimitMiddleware,
        limits=body_limits(settings),
        body_timeout_s=settings.body_timeout_s,
        max_uploads=settings.max_uploads,
    )
    app.add_middleware(RequestIdMiddleware)  # outermost: its id is on every answer, 431 too
    install_error_handlers(app)
    app.include_router(prodia.create_router(models, settings, keys))
    app.include_router(openai_moderation.create_router(models, settings, keys))
    app.include_router(openai_models.create_router(models, keys))
    app.include_router(pictrs.create_router(models, settings, keys))
    if store is not None and worker is not None:
        app.include_router(prodia_async.create_router(models, settings, keys, store, worker))
        app.include_router(eachlabs.create_router(models, settings, keys, store, worker))
    if store is not None and matcher is not None:
        app.include_router(bank_routes.create_router(store, matcher, settings, keys))

    @app.get(
        "/healthz",
        response_class=PlainTextResponse,
        tags=["ops"],
        responses={
            "200": openapi.text("ok, then the model's device and dtype"),
            "431": openapi.HEADERS_TOO_LARGE,
            "503": openapi.text("loading, or stopping"),
        },
    )
    async def healthz(request: Request) -> Response:
        """200 while the model is loaded and warm, 503 when it is not (loading, or stopping).
        The 200's body is ``ok``, then the model's device and dtype (and why that dtype), a
        line each; with several models, each model's name on a line before its own."""
        if not models.ready:
            return PlainTextResponse("loading\n", status_code=503)
        if len(models) == 1:
            return PlainTextResponse("ok\n" + _model_lines(engine.model_info))
        lines = (f"model: {name}\n{_model_lines(each.model_info)}" for name, each in models.items())
        return PlainTextResponse("ok\n" + "".join(lines))

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        tags=["ops"],
        responses={
            "200": openapi.text("Prometheus metrics in the text exposition format"),
            "431": openapi.HEADERS_TOO_LARGE,
        },
    )
    async def metrics() -> Response:
        """Prometheus metrics: queue size, batch sizes, inference and request latency."""
        return Response(engine.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    demo.install(app, settings, keys, models.default_name)
    install_openapi(app)
    return app
