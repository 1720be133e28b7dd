"""ServeEngine without a cluster: what Serve's handle raises becomes what the routes and the job
worker already handle (the real thing runs in test_ray_serve.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from judging import labels_of

pytest.importorskip("ray.serve", reason="needs nsfwd[serve]")

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError

from nsfwd.engine import EngineClosedError, QueueFullError
from nsfwd.intake import ImageLimits, ImageTooLargeError
from nsfwd.serve.ray.engine import RETRIES, ServeEngine
from nsfwd.serve.ray.options import Scale
from nsfwd.settings import Settings
from nsfwd.verdict import Judgement

INFO = {
    "name": "tiny",
    "device": "cpu",
    "dtype": "float32",
    "dtype_reason": "exact",
    "max_batch_size": 4,
}
LABELS = {"neutral": 0.7, "low": 0.1, "medium": 0.1, "high": 0.1}


class Method:
    """A handle method: ``remote()`` gives an awaitable of what ``answer`` returns or raises."""

    def __init__(self, answer: Callable[[], Any]) -> None:
        self.answer = answer
        self.calls = 0

    def remote(self, *args: Any) -> Any:
        self.calls += 1

        async def call() -> Any:
            return self.answer()

        return call()


class Handle:
    def __init__(self, judge: Callable[[], Any]) -> None:
        self.info = Method(lambda: INFO)
        self.judge = Method(judge)


def engine_over(handle: Handle) -> ServeEngine:
    async def connect() -> ServeEngine:
        engine = await ServeEngine.connect(
            handle,
            app_name="nsfwd",
            deployment="nsfwd-model",
            limits=ImageLimits(),
            max_queue=8,
        )
        engine.ready = True  # start() would also watch Serve's status, which needs a cluster
        return engine

    return asyncio.run(connect())


def test_the_model_is_described_before_the_routes_need_it() -> None:
    engine = engine_over(Handle(lambda: {"judgement": Judgement(LABELS)}))
    assert (engine.model_name, engine.max_batch_size) == ("tiny", 4)
    assert engine.model_info["device"] == "cpu" and engine.model_info["dtype"] == "float32"


def test_labels_and_batch_metrics_arrive() -> None:
    judged = Judgement(LABELS, frame=2, frames=3, frames_judged=3)
    answer = {"judgement": judged, "queue_seconds": 0.01, "batches": [(3, 0.2)]}
    engine = engine_over(Handle(lambda: answer))
    assert asyncio.run(engine.judge(b"webp")) == judged
    assert asyncio.run(labels_of(engine, b"webp")) == LABELS
    text = engine.metrics.render().decode()
    assert "nsfwd_batch_size_sum 6.0" in text and "nsfwd_queue_seconds_count 2.0" in text


def test_an_image_error_is_raised_as_itself() -> None:
    engine = engine_over(Handle(lambda: {"error": ImageTooLargeError("too big")}))
    with pytest.raises(ImageTooLargeError, match="too big"):
        asyncio.run(labels_of(engine, b"jpeg"))


def test_full_replicas_are_a_queue_full_error() -> None:
    def refuse() -> Any:
        raise BackPressureError(num_queued_requests=8, max_queued_requests=8)

    engine = engine_over(Handle(refuse))
    with pytest.raises(QueueFullError) as caught:
        asyncio.run(labels_of(engine, b"jpeg"))
    assert caught.value.retry_after >= 1
    assert "nsfwd_rejected_total 1.0" in engine.metrics.render().decode()


def test_a_dead_replica_is_retried_then_reported_closed() -> None:
    deaths = iter(range(RETRIES))

    def die_then_answer() -> Any:
        if next(deaths, None) is not None:
            raise RayActorError()
        return {"judgement": Judgement(LABELS)}

    handle = Handle(die_then_answer)
    assert asyncio.run(labels_of(engine_over(handle), b"jpeg")) == LABELS
    assert handle.judge.calls == RETRIES + 1

    def always_dead() -> Any:
        raise RayActorError()

    with pytest.raises(EngineClosedError, match="restarting"):
        asyncio.run(labels_of(engine_over(Handle(always_dead)), b"jpeg"))


def test_autoscaling_targets_less_than_a_replica_holds() -> None:
    from nsfwd.serve.ray.app import replica_queue

    assert replica_queue(64, 32) == (64, 32)  # a GPU replica: one batch queued behind one
    assert replica_queue(64, 2) == (64, 4)  # a CPU replica: two batches
    assert replica_queue(2, 1) == (2, 1)
    assert replica_queue(1, 1) == (1, 1)


def test_scale_options() -> None:
    assert Scale(2).options(8) == {"num_replicas": 2}
    autoscaled = Scale(None, 1, 4).options(8)["autoscaling_config"]
    assert (autoscaled["min_replicas"], autoscaled["max_replicas"]) == (1, 4)
    assert autoscaled["target_ongoing_requests"] == 8
    assert Scale(None, 1, 4).most == 4
    assert autoscaled["downscale_delay_s"] == 60
    assert Scale(None, 1, 4, 5).options(8)["autoscaling_config"]["downscale_delay_s"] == 5
    with pytest.raises(ValueError, match="at most --max-replicas"):
        Scale(None, 3, 2)


def test_sqlite_is_refused_on_a_cluster_of_several_nodes(tmp_path: Path) -> None:
    from nsfwd.serve.ray.driver import _store_refusal

    on_sqlite = Settings(data_dir=tmp_path)
    assert _store_refusal(on_sqlite, 1) is None
    refusal = _store_refusal(on_sqlite, 3)
    assert refusal is not None and "3 nodes" in refusal and "NSFWD_DATABASE_URL" in refusal
    on_postgres = Settings(database_url="postgresql://u:p@db.example/nsfwd")
    assert _store_refusal(on_postgres, 3) is None


class Runtime:
    def get_node_id(self) -> str:
        return "node-1"


class Ray:
    """What ``_store_node`` asks of ``ray``: the node this driver runs on."""

    def get_runtime_context(self) -> Runtime:
        return Runtime()


def test_ingress_replicas_stay_on_the_node_of_a_sqlite_store(tmp_path: Path) -> None:
    from nsfwd.serve.ray.app import _ingress_actor_options
    from nsfwd.serve.ray.driver import _store_node

    assert _store_node(Ray(), Settings(data_dir=tmp_path)) == "node-1"
    assert _store_node(Ray(), Settings(database_url="postgresql://u:p@db/nsfwd")) is None
    assert _ingress_actor_options("node-1") == {
        "num_cpus": 1,
        "label_selector": {"ray.io/node-id": "node-1"},
    }
    assert _ingress_actor_options(None) == {"num_cpus": 1}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--replicas", "2"], "need --ray"),
        (["--ray", "--replicas", "2", "--min-replicas", "1", "--max-replicas", "3"], "not both"),
        (["--ray", "--min-replicas", "2"], "both --min-replicas and --max-replicas"),
        (["--ray", "--replicas", "2", "--downscale-delay", "5"], "--downscale-delay needs"),
    ],
)
def test_replica_options_are_checked(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from nsfwd.cli import main

    assert main(["serve", *argv]) == 2
    assert message in capsys.readouterr().err


def test_the_driver_chooses_the_models_without_torch(tmp_path: Path) -> None:
    """``nsfwd serve --ray`` looks for the default model without importing torch: only the
    model replicas need it."""
    script = (
        "import sys\n"
        "from nsfwd.settings import Settings\n"
        "from nsfwd.engine.served import served_specs\n"
        "print([spec.source for spec in served_specs(Settings())])\n"
        "print('torch' in sys.modules)\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    env.pop("NSFWD_MODEL", None)
    env.pop("NSFWD_MODELS", None)
    done = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["['open-nsfw']", "False"], done.stdout
    assert "Serving the built-in open-nsfw" in done.stderr


def test_the_proxy_gets_the_apps_body_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    from nsfwd.api.app import body_limits
    from nsfwd.api.http.middleware import BodyLimits
    from nsfwd.serve.ray import proxy as serve_proxy

    def limits() -> BodyLimits:
        last = serve_proxy.proxy_middlewares()[-1]
        assert getattr(last.cls, "__name__", None) == "ReadAheadLimitMiddleware"
        found = last.kwargs["limits"]
        assert isinstance(found, BodyLimits)
        return found

    monkeypatch.delenv(serve_proxy.LIMITS_VARIABLE, raising=False)
    assert limits() == body_limits(Settings())  # a cluster started without the driver
    monkeypatch.setenv(serve_proxy.LIMITS_VARIABLE, "")
    serve_proxy.limits_to_environment(BodyLimits(5000, {"/v1/moderations": 7000}))
    assert (limits().of("/v2/job"), limits().of("/v1/moderations")) == (5000, 7000)


def test_a_model_replica_bounds_decoding_as_nsfwd_serve_does(timm_checkpoint: Path) -> None:
    """A model replica of ``serve --ray`` (here built as Serve builds it, without a cluster)
    runs the engine of ``nsfwd serve``: an image that decodes past ``NSFWD_DECODE_TIMEOUT_S``
    is refused as too costly, and an ordinary one is judged after it. (4096x4096 px, so that
    the decode outlasts the event loop's worst delay on a loaded machine.)"""
    from hostile_jpegs import repeated_scans
    from nsfwd.intake import ImageComplexityError
    from nsfwd.models.names import ModelSpec
    from nsfwd.serve.ray.app import ModelDeployment, ModelServer
    from photos import astronaut_jpeg

    settings = Settings(
        dtype="float32", decode_workers=1, decode_timeout_s=0.02, max_image_side=4096
    )
    deployment = ModelDeployment(ModelSpec(str(timm_checkpoint)), settings)

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        replica = ModelServer.__new__(ModelServer)
        await replica.__init__(deployment)  # type: ignore[misc]
        try:
            slow = await replica.judge(repeated_scans(90, (4096, 4096)))
            replica.engine.decode_timeout_s = 10
            return slow, await replica.judge(astronaut_jpeg())
        finally:
            await replica.engine.stop()

    slow, ordinary = asyncio.run(main())
    assert isinstance(slow["error"], ImageComplexityError), slow
    assert "decoding it took longer than 0.02 s" in str(slow["error"])
    assert set(ordinary["judgement"].labels) == {"neutral", "low", "medium", "high"}
    assert ordinary["batches"] and ordinary["queue_seconds"] >= 0
