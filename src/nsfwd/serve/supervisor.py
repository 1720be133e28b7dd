"""``nsfwd serve --http-workers N``: N HTTP worker processes feeding one inference process.

The supervisor starts the inference process, then uvicorn's multi-process server, and makes
sure none of them outlives the others (docs/ARCHITECTURE.md, "Server with --http-workers N").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI
from uvicorn.supervisors import Multiprocess

from nsfwd.api import create_app
from nsfwd.api.app import default_workers
from nsfwd.engine.metrics import Metrics
from nsfwd.engine.remote import InferenceServer, RemoteEngine
from nsfwd.jobs import Store
from nsfwd.logs import configure_logging
from nsfwd.serve.connections import uvicorn_options
from nsfwd.settings import Settings

if TYPE_CHECKING:
    from nsfwd.engine.batcher import Engine  # torch: only the inference process holds one

log = logging.getLogger(__name__)

RUNTIME_ENV = "_NSFWD_RUNTIME_DIR"
"""Names the runtime folder (socket, settings, model facts, metrics) for worker processes."""
SUPERVISOR_ENV = "_NSFWD_SUPERVISOR_PID"
"""The supervisor's pid: a worker whose parent is another process has been orphaned."""
SOCKET = "inference.sock"
"""The first model's socket; the others' are ``inference-1.sock``, ``inference-2.sock``..."""
SETTINGS = "settings.pickle"
MODEL_INFO = "model.json"
METRICS = "metrics"


def run_workers(settings: Settings) -> int:
    """Serve with ``settings.http_workers`` HTTP processes and one inference process until
    interrupted; returns the exit status."""
    with tempfile.TemporaryDirectory(prefix="nsfwd-") as tmp:  # mode 0700: ours alone
        runtime = Path(tmp)
        (runtime / METRICS).mkdir()
        (runtime / SETTINGS).write_bytes(pickle.dumps(settings))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(runtime / METRICS)
        os.environ[RUNTIME_ENV] = str(runtime)
        os.environ[SUPERVISOR_ENV] = str(os.getpid())
        context = multiprocessing.get_context("spawn")
        lifeline, keep_alive = context.Pipe(duplex=False)
        inference = context.Process(
            target=inference_main, args=(runtime, lifeline), name="nsfwd-inference"
        )
        inference.start()
        lifeline.close()  # the child's end; ours closing (or dying) tells it to stop
        stopping = threading.Event()
        try:
            if not _wait_until_listening(inference, runtime):
                log.error(
                    "the inference process exited during start-up (status %s)", inference.exitcode
                )
                return 1
            threading.Thread(target=_stop_if_dies, args=(inference, stopping), daemon=True).start()
            _run_http_workers(settings)
        finally:
            stopping.set()
            keep_alive.close()
            _stop(inference)
        if inference.exitcode != 0:
            log.error("the inference process died (status %s)", inference.exitcode)
            return 1
        return 0


def _run_http_workers(settings: Settings) -> None:
    """uvicorn's multi-process server over :func:`worker_app`, as ``uvicorn.run`` runs it, but
    on a listening socket that says it is TCP (see :func:`tcp_listener`)."""
    config = uvicorn.Config(
        "nsfwd.serve.supervisor:worker_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.http_workers,
        log_level="info",
        **uvicorn_options(settings),
    )
    listener = tcp_listener(config.bind_socket())
    try:
        with contextlib.suppress(KeyboardInterrupt):
            Multiprocess(config, sockets=[listener]).run()
    finally:
        listener.close()


def tcp_listener(bound: socket.socket) -> socket.socket:
    """``bound`` re-wrapped with ``proto`` IPPROTO_TCP.

    uvicorn binds the shared socket with ``proto`` 0; connections accepted from it inherit that,
    and asyncio then skips TCP_NODELAY, so on Linux every keep-alive answer waits for the
    client's delayed ACK (uvicorn issue #3149; BENCHMARKS.md has the figures).
    """
    if bound.family not in (socket.AF_INET, socket.AF_INET6):
        return bound
    return socket.socket(bound.family, bound.type, socket.IPPROTO_TCP, fileno=bound.detach())


def _wait_until_listening(inference: BaseProcess, runtime: Path) -> bool:
    """Whether the inference process came up (it writes the model facts once it listens)."""
    while not (runtime / MODEL_INFO).exists():
        if not inference.is_alive():
            return False
        time.sleep(0.1)
    return True


def _stop_if_dies(inference: BaseProcess, stopping: threading.Event) -> None:
    # Waits on the sentinel rather than join(): only the main thread may reap the process.
    wait_for([inference.sentinel])
    if not stopping.is_set():
        log.error("the inference process died; stopping the HTTP workers")
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's supervisor stops its workers


def _stop(inference: BaseProcess, timeout_s: float = 30.0) -> None:
    """Wait for the inference process to stop (its lifeline is closed), killing it if it
    does not within ``timeout_s``."""
    inference.join(timeout_s)
    if inference.is_alive():
        log.error("the inference process did not stop in %.0f s; killing it", timeout_s)
        inference.kill()
        inference.join()


ORPHAN_GRACE_S = 10.0
"""How long an orphaned worker may take to stop on SIGTERM before it exits regardless."""

WORKER_CONNECT_TIMEOUT_S = 5.0
"""How long a worker tries to reach the inference process. It listened before any worker was
started, so failing to connect means it is gone; a worker should then give up soon, not wait
out the default 30 s, while uvicorn (which ignores SIGTERM until start-up ends) holds it."""


def _exit_when_orphaned(supervisor: int, grace_s: float = ORPHAN_GRACE_S) -> None:
    """Send this process SIGTERM once its parent is no longer ``supervisor`` (say, it was
    killed with -9, perhaps before this process even started), and exit outright if that has
    not stopped it within ``grace_s``: uvicorn acts on SIGTERM only once start-up has ended."""

    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        log.error("orphaned worker %d did not stop on SIGTERM; exiting", os.getpid())
        os._exit(1)

    threading.Thread(target=watch, name="nsfwd-orphan-watch", daemon=True).start()


def inference_main(runtime: Path, lifeline: Connection) -> None:
    """The inference process: load the model and serve the engine on the runtime folder's
    socket until ``lifeline`` closes.

    It ignores SIGINT and SIGTERM, which a terminal or a service manager sends to the whole
    process group at once: the HTTP workers must first finish the requests they hold, so only
    the supervisor, closing the lifeline after they stopped (or dying), ends this process.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging()
    settings: Settings = pickle.loads((runtime / SETTINGS).read_bytes())
    asyncio.run(_serve_inference(settings, runtime, lifeline))


def _when_closed(
    lifeline: Connection, loop: asyncio.AbstractEventLoop, stop: asyncio.Event
) -> None:
    """Set ``stop`` (on ``loop``) once the other end of ``lifeline`` is closed."""

    def wait() -> None:
        with contextlib.suppress(EOFError, OSError):
            while True:
                lifeline.recv()
        with contextlib.suppress(RuntimeError):  # the loop has already ended
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait, name="nsfwd-lifeline", daemon=True).start()


def socket_name(index: int) -> str:
    """The socket file of the ``index``-th model (from 0) in the runtime folder."""
    return SOCKET if index == 0 else f"inference-{index}.sock"


def _engine_facts(engine: Engine) -> dict[str, Any]:
    """What a worker's :class:`RemoteEngine` needs to know of ``engine``."""
    return {
        "model_name": engine.model_name,
        "model_info": engine.model_info,
        "labels": list(engine.labels),
        "max_batch_size": engine.max_batch_size,
        "max_queue": engine.max_queue,
    }


async def _serve_inference(settings: Settings, runtime: Path, lifeline: Connection) -> None:
    from nsfwd.engine.build import build_engines  # torch: this process alone loads it

    engines = build_engines(settings)
    stop = asyncio.Event()
    _when_closed(lifeline, asyncio.get_running_loop(), stop)
    servers: list[InferenceServer] = []
    try:
        for index, engine in enumerate(engines.values()):
            await engine.start()
            server = InferenceServer(engine, runtime / socket_name(index))
            servers.append(server)
            await server.start()
        # The first model's facts at the top, as a server of one model has always written
        # them; every model's, with its served name and socket, under "models".
        info = _engine_facts(next(iter(engines.values())))
        info["models"] = [
            {"name": name, "socket": socket_name(index), **_engine_facts(engine)}
            for index, (name, engine) in enumerate(engines.items())
        ]
        partial = runtime / f"{MODEL_INFO}.partial"
        partial.write_text(json.dumps(info))
        partial.rename(runtime / MODEL_INFO)  # atomically: the supervisor waits for this name
        log.info("inference process %d serving %s", os.getpid(), ", ".join(engines))
        await stop.wait()
    finally:
        for server in servers:
            await server.stop()
        for engine in engines.values():
            await engine.stop()


def worker_app() -> FastAPI:
    """The app of one HTTP worker process (a uvicorn factory): the usual routes, store and
    background jobs around a :class:`RemoteEngine` on the inference process."""
    configure_logging()
    _exit_when_orphaned(int(os.environ[SUPERVISOR_ENV]))
    runtime = Path(os.environ[RUNTIME_ENV])
    settings: Settings = pickle.loads((runtime / SETTINGS).read_bytes())
    uvicorn_options(settings)  # the header deadline, in this process's protocol class
    info: dict[str, Any] = json.loads((runtime / MODEL_INFO).read_text())
    metrics = Metrics()  # one for all the models, as in the inference process
    served = info.get("models") or [{"socket": SOCKET, **info}]
    engines = {
        each.get("name") or settings.served_model_name or each["model_name"]: RemoteEngine(
            runtime / each["socket"],
            model_name=each["model_name"],
            model_info=each.get("model_info"),
            labels=tuple(each.get("labels", ())),
            max_batch_size=each["max_batch_size"],
            max_queue=each["max_queue"],
            limits=settings.image_limits,
            metrics=metrics,
            connect_timeout_s=WORKER_CONNECT_TIMEOUT_S,
        )
        for each in served
    }
    first = next(iter(engines.values()))
    if settings.workers is None:  # the replica's share of background jobs, split over workers
        share = max(1, default_workers(first) // settings.http_workers)
        settings = settings.model_copy(update={"workers": share})
    return create_app(engines, settings, Store.from_settings(settings))
