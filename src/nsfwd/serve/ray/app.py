"""``nsfwd serve --ray``'s application: an ingress deployment running the HTTP app, and a model
deployment per served model whose replicas each run the engine of ``nsfwd serve``.

    HTTP proxy -> Ingress (create_app: every route, auth rule, error and metric of
                  `nsfwd serve`; the job worker and webhook sender; a ServeEngine)
               -> ModelServer replicas (an Engine: admission, bounded decoding, batching)

Only :class:`ModelServer`'s replicas import torch (inside their constructor); this module, the
ingress and the driver that deploys them do not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ray import serve

from nsfwd.api import create_app
from nsfwd.engine import QueueFullError
from nsfwd.engine.metrics import Metrics
from nsfwd.intake import ImageError
from nsfwd.jobs import Store
from nsfwd.models.names import ModelSpec, default_batch_size
from nsfwd.serve.ray.engine import ServeEngine
from nsfwd.serve.ray.options import Scale
from nsfwd.serve.ray.proxy import without_request_id_header
from nsfwd.settings import Settings
from nsfwd.timeline import VideoOptions
from nsfwd.verdict import Policy

if TYPE_CHECKING:
    from starlette.types import ASGIApp

APP_NAME = "nsfwd"
INGRESS = "nsfwd-ingress"
INGRESS_MAX_ONGOING = 1024
"""Requests one ingress replica holds at once; the app's own limits (429s) act well before."""
NODE_ID_LABEL = "ray.io/node-id"
"""The label Ray gives every node: its id."""
DRAIN_TIMEOUT_S = 30.0
"""How long a replica being stopped waits for the requests it holds to finish."""


@dataclass(frozen=True)
class ModelDeployment:
    """One served model's deployment: the model (``spec``), the settings its replicas load it
    with (``device``, ``dtype``, the limits and bounds...) and the deployment's name."""

    spec: ModelSpec
    settings: Settings
    deployment: str = "nsfwd-model"


class ModelServer:
    """A model deployment's replica: the very :class:`~nsfwd.engine.batcher.Engine` that
    ``nsfwd serve`` runs (admission, decoding on the bounded pool under its deadline, the
    batcher, failing closed), over one classifier; requests from every ingress replica are
    batched together on this replica's event loop.

    :meth:`judge` answers a dict: ``judgement``, or ``error`` (the :class:`ImageError`, for
    the ingress to raise); ``queue_seconds``; and ``batches``, the size and inference time of
    each batch this image's pictures started (for the ingress's metrics)."""

    async def __init__(self, model: ModelDeployment) -> None:  # type: ignore[misc]
        # Serve awaits an async constructor before the replica takes requests: the model is
        # loaded and warm by then.
        from nsfwd.engine.build import build_engine, load_spec  # torch: model replicas only

        settings = model.settings
        self.engine = build_engine(settings, load_spec(settings, model.spec))
        await self.engine.start()

    def info(self) -> dict[str, Any]:
        """The model's name, where and how it runs, and the batch size."""
        return {
            "name": self.engine.model_name,
            **self.engine.model_info,
            "labels": list(self.engine.labels),
            "max_batch_size": self.engine.max_batch_size,
        }

    async def judge(
        self, data: bytes, policy: Policy | None = None, video: VideoOptions | None = None
    ) -> dict[str, Any]:
        """One encoded image's (or video's) judgement
        (:meth:`~nsfwd.engine.batcher.Engine.judge`), or the reason it cannot have one."""
        from nsfwd.engine.batcher import Trace

        trace = Trace()
        try:
            judgement = await self.engine.judge(data, policy, trace, video)
        except ImageError as exc:
            return {"error": exc}
        except QueueFullError as exc:  # more than max_queue here: Serve's bound is a batch
            return {"busy": exc.retry_after}
        return {
            "judgement": judgement,
            "queue_seconds": trace.queue_seconds,
            "batches": trace.batches,
        }

    async def check(self, data: bytes, hashed: bool = False) -> dict[str, Any]:
        """Run the image intake on ``data`` (an async job's upload, or before a bank lookup):
        ``hashes`` (the pictures' PDQ hashes where ``hashed``, else empty), or ``error``. The
        pictures are kept for a :meth:`judge` of the same bytes on this replica."""
        try:
            return {"hashes": await self.engine.check(data, hashed=hashed)}
        except ImageError as exc:
            return {"error": exc}
        except QueueFullError as exc:  # more than max_queue here: Serve's bound is a batch
            return {"busy": exc.retry_after}


@serve.ingress()
class Ingress:
    """The ingress deployment: ``create_app`` (the very app ``nsfwd serve`` runs) over a
    :class:`ServeEngine` per model deployment handle, with its job store; the app's lifespan
    opens the store and runs the background job worker and webhook sender in each replica,
    which share the work through the store as separate servers do."""

    def __init__(
        self, models: list[Any], deployments: list[ModelDeployment], settings: Settings
    ) -> None:
        self.models = models
        self.deployments = deployments
        self.settings = settings

    async def __serve_build_asgi_app__(self) -> ASGIApp:
        settings = self.settings
        metrics = Metrics()  # one for the whole app, as build_engines shares one
        engines: dict[str, ServeEngine] = {}
        for handle, model in zip(self.models, self.deployments, strict=True):
            engine = await ServeEngine.connect(
                handle,
                app_name=APP_NAME,
                deployment=model.deployment,
                limits=settings.image_limits,
                max_queue=settings.max_queue,
                metrics=metrics,
            )
            engines[model.spec.name or engine.model_name] = engine
        app = create_app(engines, settings, Store.from_settings(settings))
        return without_request_id_header(app)  # Serve's proxy sets it


def build_application(
    specs: Sequence[ModelSpec],
    settings: Settings,
    scale: Scale,
    *,
    gpus: bool,
    ingress_replicas: int = 1,
    ingress_node: str | None = None,
) -> Any:
    """The bound application: an ingress over one model deployment per spec.

    ``gpus``: whether the cluster has GPUs (then each model replica takes one; else a CPU).
    ``ingress_node``: the Ray node id every ingress replica must run on (where a SQLite job
    store lives), or None for anywhere.
    Each model replica holds at most ``max_queue`` requests, and each ingress replica queues at
    most ``max_queue`` more for the deployment; beyond that the handle refuses at once and the
    client gets 429 with Retry-After, as from a single server.
    """
    if not specs:
        raise ValueError("no model to serve")
    batch = settings.max_batch_size or default_batch_size("cuda" if gpus else "cpu")
    deployments = [
        ModelDeployment(spec, settings, f"nsfwd-model-{index}" if index else "nsfwd-model")
        for index, spec in enumerate(specs)
    ]
    held, target = replica_queue(settings.max_queue, batch)
    models = []
    for model in deployments:
        deployment = serve.deployment(ModelServer).options(
            name=model.deployment,
            max_ongoing_requests=held,
            max_queued_requests=settings.max_queue,
            ray_actor_options={"num_cpus": 1, "num_gpus": 1} if gpus else {"num_cpus": 1},
            graceful_shutdown_timeout_s=DRAIN_TIMEOUT_S,
            health_check_period_s=2.0,
            **scale.options(target_ongoing=target),
        )
        models.append(deployment.bind(model))
    ingress = serve.deployment(Ingress).options(
        name=INGRESS,
        num_replicas=ingress_replicas,
        max_ongoing_requests=INGRESS_MAX_ONGOING,
        ray_actor_options=_ingress_actor_options(ingress_node),
        graceful_shutdown_timeout_s=DRAIN_TIMEOUT_S,
    )
    return ingress.bind(models, deployments, settings)


def _ingress_actor_options(node: str | None) -> dict[str, Any]:
    """An ingress replica's actor options: one CPU (HTTP parsing: one interpreter, one core),
    on ``node`` when given."""
    options: dict[str, Any] = {"num_cpus": 1}
    if node is not None:
        options["label_selector"] = {NODE_ID_LABEL: node}
    return options


def replica_queue(max_queue: int, batch: int) -> tuple[int, int]:
    """The requests a model replica may hold (``max_queue``, at least a batch) and the number
    autoscaling keeps on each: two batches, at most half of what it may hold, since Serve only
    adds a replica when the replicas hold more than their target."""
    held = max(max_queue, batch)
    return held, max(1, min(2 * batch, held // 2))
