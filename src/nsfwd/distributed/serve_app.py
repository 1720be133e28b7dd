"""``nsfwd serve --ray``'s application: an ingress deployment running the HTTP app, and a model
deployment per served model whose replicas hold the classifier and batch with ``@serve.batch``.

    HTTP proxy -> Ingress (create_app: every route, auth rule, error and metric of
                  `nsfwd serve`; the job worker and webhook sender; a ServeEngine)
               -> ModelServer replicas (decode and check the image, batch, classify)

Only :class:`ModelServer`'s replicas import torch (inside their constructor); this module, the
ingress and the driver that deploys them do not.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ray import serve

from nsfwd.api import create_app
from nsfwd.checked import CheckedImages
from nsfwd.distributed.ray_serve import Scale
from nsfwd.distributed.serve_engine import ServeEngine
from nsfwd.distributed.serve_proxy import without_request_id_header
from nsfwd.images import ImageError
from nsfwd.jobs import Store
from nsfwd.metrics import Metrics
from nsfwd.model_types import ModelSpec
from nsfwd.policies import Policy
from nsfwd.settings import Settings

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
    """One served model's deployment: the model (``spec``), whether it is served with others
    (``open-nsfw`` then ignores the torch options, as in :func:`nsfwd.inference.load_spec`),
    the settings its replicas load it with (``device``, ``dtype``...) and the deployment's
    name."""

    spec: ModelSpec
    settings: Settings
    deployment: str = "nsfwd-model"
    among_others: bool = False


class ModelServer:
    """A model deployment's replica: one classifier; each request's image decoded and checked
    on a thread pool, then batched with the others by ``@serve.batch`` (``max_batch_size`` and
    ``batch_wait_ms`` from the settings) onto one inference thread.

    :meth:`judge` answers a dict: ``judgement``, or ``error`` (the :class:`ImageError`, for
    the ingress to raise); ``queue_seconds``; and ``batches``, the size and inference time of
    each batch this image's pictures started (for the ingress's metrics)."""

    def __init__(self, model: ModelDeployment) -> None:
        from nsfwd.inference import load_spec  # torch: the model replicas only

        settings = model.settings
        self.classifier = load_spec(settings, model.spec, among_others=model.among_others)
        self.max_batch_size = settings.max_batch_size or self.classifier.batch_size
        self._checked = CheckedImages(self.classifier.prepare, settings.image_limits)
        self.classifier.warm_up(self.max_batch_size)
        workers = settings.decode_workers or len(os.sched_getaffinity(0))
        self._decode = ThreadPoolExecutor(workers, "nsfwd-decode")
        self._infer = ThreadPoolExecutor(1, "nsfwd-infer")
        self._batched.set_max_batch_size(self.max_batch_size)
        self._batched.set_batch_wait_timeout_s(settings.batch_wait_ms / 1000)

    def info(self) -> dict[str, Any]:
        """The model's name, where and how it runs, and the batch size."""
        classifier = self.classifier
        return {
            "name": classifier.name,
            "device": str(classifier.device),
            "dtype": str(classifier.dtype).removeprefix("torch."),
            "dtype_reason": classifier.dtype_reason,
            "max_batch_size": self.max_batch_size,
        }

    async def judge(self, data: bytes, policy: Policy | None = None) -> dict[str, Any]:
        """One encoded image's judgement: every picture a viewer may see of it (frames, over
        white and black) batched with other requests' pictures, the worst under ``policy``
        (default: moderate) answering; or the reason it cannot have one."""
        from nsfwd.viewer import worst

        loop = asyncio.get_running_loop()
        queued_at = time.perf_counter()
        try:
            views = await loop.run_in_executor(self._decode, self._checked.load, data)
        except ImageError as exc:
            return {"error": exc}
        answers = await asyncio.gather(*(self._batched(image) for image in views.images))
        if errors := [answer["error"] for answer in answers if "error" in answer]:
            return {"error": errors[0]}
        judgement = worst(
            views, [answer["labels"] for answer in answers], (policy or Policy()).score
        )
        return {
            "judgement": judgement,
            "queue_seconds": answers[0]["started"] - queued_at,
            "batches": [answer["batch"] for answer in answers if "batch" in answer],
        }

    async def check(self, data: bytes) -> dict[str, Any]:
        """Run the image intake on ``data`` (an async job's upload): ``{}``, or ``error``. The
        pictures are kept for a :meth:`judge` of the same bytes on this replica."""
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._decode, self._checked.check, data
            )
        except ImageError as exc:
            return {"error": exc}
        return {}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)  # type: ignore[untyped-decorator]
    async def _batched(self, pixels: list[Any]) -> list[dict[str, Any]]:
        from nsfwd.images import UnscorableImageError
        from nsfwd.policies import nonfinite_labels

        started = time.perf_counter()
        probs = await asyncio.get_running_loop().run_in_executor(self._infer, self._predict, pixels)
        elapsed = time.perf_counter() - started
        answers: list[dict[str, Any]] = []
        for labels in self.classifier.to_labels(probs):
            answer: dict[str, Any] = {"started": started}
            if bad := nonfinite_labels(labels):  # fail closed, as the engine does
                answer["error"] = UnscorableImageError.for_labels(bad)
            else:
                answer["labels"] = labels
            answers.append(answer)
        answers[0]["batch"] = (len(pixels), elapsed)
        return answers

    def _predict(self, pixels: list[Any]) -> Any:
        return self.classifier.predict(self.classifier.stack(pixels))


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
    batch = settings.max_batch_size or (32 if gpus else 2)
    deployments = [
        ModelDeployment(spec, settings, f"nsfwd-model-{index}" if index else "nsfwd-model",
                        among_others=len(specs) > 1)
        for index, spec in enumerate(specs)
    ]  # fmt: skip
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
