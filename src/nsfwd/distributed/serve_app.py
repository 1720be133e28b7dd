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
from nsfwd.distributed.ray_serve import Scale
from nsfwd.distributed.serve_engine import ServeEngine
from nsfwd.distributed.serve_proxy import without_request_id_header
from nsfwd.images import ImageError, load_image
from nsfwd.jobs import Store
from nsfwd.settings import Settings

if TYPE_CHECKING:
    from starlette.types import ASGIApp

APP_NAME = "nsfwd"
INGRESS = "nsfwd-ingress"
INGRESS_MAX_ONGOING = 1024
"""Requests one ingress replica holds at once; the app's own limits (429s) act well before."""
DRAIN_TIMEOUT_S = 30.0
"""How long a replica being stopped waits for the requests it holds to finish."""


@dataclass(frozen=True)
class ModelSpec:
    """One served model: the settings its replicas load it with (``model``, ``device``,
    ``dtype``...) and the deployment's name."""

    settings: Settings
    deployment: str = "nsfwd-model"


class ModelServer:
    """A model deployment's replica: one classifier; each request's image decoded and checked
    on a thread pool, then batched with the others by ``@serve.batch`` (``max_batch_size`` and
    ``batch_wait_ms`` from the settings) onto one inference thread.

    :meth:`classify` answers a dict: ``labels``, or ``error`` (the :class:`ImageError`, for
    the ingress to raise); ``queue_seconds``; and, on one request of each batch, the batch's
    ``batch_size`` and ``inference_seconds`` (for the ingress's metrics)."""

    def __init__(self, settings: Settings) -> None:
        from nsfwd.inference import load_served_classifier  # torch: the model replicas only

        self.classifier = load_served_classifier(settings)
        self.max_batch_size = settings.max_batch_size or self.classifier.batch_size
        self.limits = settings.image_limits
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

    async def classify(self, data: bytes) -> dict[str, Any]:
        """One encoded image's labels (or the reason it cannot have any)."""
        loop = asyncio.get_running_loop()
        try:
            pixels = await loop.run_in_executor(self._decode, self._prepare, data)
        except ImageError as exc:
            return {"error": exc}
        answer: dict[str, Any] = await self._batched((pixels, time.perf_counter()))
        return answer

    def _prepare(self, data: bytes) -> Any:
        return self.classifier.prepare(load_image(data, self.limits))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)  # type: ignore[untyped-decorator]
    async def _batched(self, items: list[tuple[Any, float]]) -> list[dict[str, Any]]:
        from nsfwd.images import UnscorableImageError
        from nsfwd.policies import nonfinite_labels

        started = time.perf_counter()
        pixels = [item[0] for item in items]
        probs = await asyncio.get_running_loop().run_in_executor(self._infer, self._predict, pixels)
        elapsed = time.perf_counter() - started
        answers: list[dict[str, Any]] = []
        for (_, queued_at), labels in zip(items, self.classifier.to_labels(probs), strict=True):
            answer: dict[str, Any] = {"queue_seconds": started - queued_at}
            if bad := nonfinite_labels(labels):  # fail closed, as the engine does
                answer["error"] = UnscorableImageError.for_labels(bad)
            else:
                answer["labels"] = labels
            answers.append(answer)
        answers[0].update(batch_size=len(items), inference_seconds=elapsed)
        return answers

    def _predict(self, pixels: list[Any]) -> Any:
        return self.classifier.predict(self.classifier.stack(pixels))


@serve.ingress()
class Ingress:
    """The ingress deployment: ``create_app`` (the very app ``nsfwd serve`` runs) over a
    :class:`ServeEngine` per model deployment handle, with its job store; the app's lifespan
    opens the store and runs the background job worker and webhook sender in each replica,
    which share the work through the store as separate servers do."""

    def __init__(self, models: list[Any], deployments: list[str], settings: Settings) -> None:
        self.models = models
        self.deployments = deployments
        self.settings = settings

    async def __serve_build_asgi_app__(self) -> ASGIApp:
        settings = self.settings
        engine = await ServeEngine.connect(
            self.models[0],  # one model today; the list carries one handle per served model
            app_name=APP_NAME,
            deployment=self.deployments[0],
            limits=settings.image_limits,
            max_queue=settings.max_queue,
        )
        app = create_app(engine, settings, Store.from_settings(settings))
        return without_request_id_header(app)  # Serve's proxy sets it


def build_application(
    specs: Sequence[ModelSpec],
    settings: Settings,
    scale: Scale,
    *,
    gpus: bool,
    ingress_replicas: int = 1,
) -> Any:
    """The bound application: an ingress over one model deployment per spec.

    ``gpus``: whether the cluster has GPUs (then each model replica takes one; else a CPU).
    Each model replica holds at most ``max_queue`` requests, and each ingress replica queues at
    most ``max_queue`` more for the deployment; beyond that the handle refuses at once and the
    client gets 429 with Retry-After, as from a single server.
    """
    if not specs:
        raise ValueError("no model to serve")
    batch = settings.max_batch_size or (32 if gpus else 2)
    models = []
    for spec in specs:
        deployment = serve.deployment(ModelServer).options(
            name=spec.deployment,
            max_ongoing_requests=max(settings.max_queue, batch),
            max_queued_requests=settings.max_queue,
            ray_actor_options={"num_cpus": 1, "num_gpus": 1} if gpus else {"num_cpus": 1},
            graceful_shutdown_timeout_s=DRAIN_TIMEOUT_S,
            health_check_period_s=2.0,
            **scale.options(target_ongoing=2 * batch),
        )
        models.append(deployment.bind(spec.settings))
    ingress = serve.deployment(Ingress).options(
        name=INGRESS,
        num_replicas=ingress_replicas,
        max_ongoing_requests=INGRESS_MAX_ONGOING,
        ray_actor_options={"num_cpus": 1},  # HTTP parsing: one interpreter, one core
        graceful_shutdown_timeout_s=DRAIN_TIMEOUT_S,
    )
    return ingress.bind(models, [spec.deployment for spec in specs], settings)
