"""``nsfwd serve --ray [ADDRESS]``: deploy nsfwd on Ray Serve and keep it up until SIGTERM.

Start-up: connect to Ray (no ADDRESS: a local instance of its own; ``auto`` or
``ray://HOST:PORT``: an existing cluster) -> refuse a SQLite job store on a cluster of several
nodes -> start Serve's HTTP proxy on ``--host``/``--port`` -> deploy the application of
:mod:`nsfwd.serve.ray.app` and wait until its replicas run. On SIGTERM or SIGINT:
delete the application (its replicas finish the requests they hold first), then, when this
process started the Ray instance, stop Serve and that instance, so no Ray process outlives it.
On a cluster it joined, it deletes only its own application.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from nsfwd.engine.served import served_specs
from nsfwd.jobs import Store
from nsfwd.serve.ray.options import RayServeOptions
from nsfwd.settings import Settings

log = logging.getLogger(__name__)

TEARDOWN_TIMEOUT_S = 120
"""The longest the application's deletion may take (its replicas drain for up to 30 s)."""
INSTALL_HINT = "install it with `pip install 'nsfwd[serve]'`"


class _Stopped(Exception):
    """SIGTERM or SIGINT arrived."""


def run_on_ray(settings: Settings, options: RayServeOptions) -> int:
    """Deploy and serve until SIGTERM/SIGINT; returns the exit status."""
    try:
        import ray
        from ray import serve

        from nsfwd.serve.ray.app import APP_NAME, build_application
    except ImportError as exc:
        log.error("--ray needs Ray Serve, which is not installed (%s): %s", exc.name, INSTALL_HINT)
        return 2
    settings = settings.portable()  # the replicas run in other folders
    stop = threading.Event()
    handler = _raiser(stop)
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    owns_ray = False
    ray_processes: frozenset[int] = frozenset()
    deployed = False
    try:
        specs = served_specs(settings)
        owns_ray = _connect(ray, options, settings, len(specs))
        ray_processes = child_processes() if owns_ray else frozenset()
        signal.signal(signal.SIGTERM, handler)  # ray.init put its own in place
        refusal = _store_refusal(settings, alive_nodes(ray))
        if refusal:
            log.error("%s", refusal)
            return 2
        gpus = ray.cluster_resources().get("GPU", 0) > 0
        serve.start(http_options={"host": settings.host, "port": settings.port})
        application = build_application(
            specs,
            settings,
            options.scale,
            gpus=gpus,
            ingress_replicas=settings.http_workers,
            ingress_node=_store_node(ray, settings),
        )
        deployed = True
        serve.run(application, name=APP_NAME, route_prefix="/")
        log.info(
            "nsfwd is serving on Ray Serve at http://%s:%d (model replicas on %s); SIGTERM or "
            "Ctrl-C stops it",
            settings.host,
            settings.port,
            "GPUs" if gpus else "CPUs",
        )
        stop.wait()
        return 0
    except _Stopped:
        return 0
    except ConnectionError as exc:
        log.error("cannot reach the Ray cluster at %s: %s", options.address, exc)
        return 2
    except RuntimeError as exc:  # serve.run: the application failed to deploy
        log.error("the deployment failed: %s", exc)
        return 1
    finally:
        for sig in previous:  # a second signal must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        _tear_down(
            ray,
            serve,
            APP_NAME,
            deployed=deployed,
            owns_ray=owns_ray,
            ray_processes=ray_processes,
        )
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def alive_nodes(ray: Any) -> int:
    """How many nodes of the cluster are alive."""
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def _on_one_machine(settings: Settings) -> bool:
    """Whether the job store is a SQLite file, which lives on this machine alone."""
    return Store.from_settings(settings).url.startswith("sqlite")


def _store_refusal(settings: Settings, nodes: int) -> str | None:
    """Why the job store cannot serve this cluster, or None when it can."""
    if nodes > 1 and _on_one_machine(settings):
        return (
            f"this Ray cluster has {nodes} nodes, and the job store is a SQLite file, which "
            "lives on one machine: ingress replicas on the other nodes could not see its jobs. "
            "Set NSFWD_DATABASE_URL=postgresql://user:password@host/db (a PostgreSQL server "
            "every node reaches) and start again."
        )
    return None


def _store_node(ray: Any, settings: Settings) -> str | None:
    """The node the ingress replicas must run on: this one when the job store is a SQLite file
    (it lives here; a node that joins later must not get an ingress replica that would open
    another file), else None (anywhere)."""
    if _on_one_machine(settings):
        node: str = ray.get_runtime_context().get_node_id()
        return node
    return None


def _raiser(stop: threading.Event) -> Any:
    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()
        raise _Stopped

    return handler


def _connect(ray: Any, options: RayServeOptions, settings: Settings, models: int) -> bool:
    """Connect to Ray; True when this started the instance (and must stop it), with a CPU for
    each replica of the ``models`` model deployments and of the ingress."""
    address = options.address
    if address is None or address == "local":
        from nsfwd.api.app import body_limits
        from nsfwd.serve.ray.proxy import CALLBACK, limits_to_environment

        os.environ.setdefault("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", CALLBACK)
        limits_to_environment(body_limits(settings))
        # Every replica placed, even on a machine with fewer cores: one CPU each, ingress too.
        cpus = max(os.cpu_count() or 1, models * options.scale.most + settings.http_workers)
        ray.init(address="local", num_cpus=cpus, include_dashboard=False)
        return True
    ray.init(address=address)
    return False


def _tear_down(
    ray: Any,
    serve: Any,
    app_name: str,
    *,
    deployed: bool,
    owns_ray: bool,
    ray_processes: frozenset[int],
) -> None:
    """Delete the application (draining its replicas), then stop what this process started.

    Serve is asked on a thread of its own, given up on when one of the local Ray instance's
    processes (``ray_processes``) has ended, or after :data:`TEARDOWN_TIMEOUT_S`: a SIGTERM
    sent to the whole process group (as systemd's stop and ``timeout`` send it) reaches Ray's
    own processes too, and Serve's calls then never return. Stopping Ray still ends what is left."""
    if not ray.is_initialized():
        return

    def stop_serve() -> None:
        if deployed:
            log.info("deleting the application (replicas finish their requests first)")
            serve.delete(app_name)
        if owns_ray:
            serve.shutdown()

    try:
        if not _unless_ray_fails(stop_serve, watch=ray_processes):
            log.warning(
                "Serve could not be stopped in order (the local Ray instance lost a process, "
                "or %d s passed); stopping Ray",
                TEARDOWN_TIMEOUT_S,
            )
    finally:
        ray.shutdown()
        if owns_ray:
            log.info("stopped the local Ray instance")


def _unless_ray_fails(work: Any, *, watch: frozenset[int]) -> bool:
    """Run ``work`` on a thread; True once it has returned (its errors logged), False when one
    of the local Ray instance's processes (``watch``) ended first, or time ran out."""
    done = threading.Event()

    def run() -> None:
        try:
            work()
        except Exception:
            log.exception("clean-up of the Serve application failed")
        finally:
            done.set()

    threading.Thread(target=run, name="nsfwd-serve-teardown", daemon=True).start()
    deadline = time.monotonic() + TEARDOWN_TIMEOUT_S
    while not done.wait(0.2):
        if _lost_a_process(watch) or time.monotonic() > deadline:
            return False
    return True


def child_processes() -> frozenset[int]:
    """This process's children (Linux's ``/proc``; none elsewhere): right after ``ray.init``
    starts a local instance, its processes (GCS, raylet...), which Ray names nowhere public."""
    pids: set[int] = set()
    for path in Path("/proc/self/task").glob("*/children"):
        with contextlib.suppress(OSError, ValueError):
            pids.update(int(pid) for pid in path.read_text().split())
    return frozenset(pids)


def _lost_a_process(pids: frozenset[int]) -> bool:
    """Whether any of ``pids`` has ended (gone, or a zombie not yet reaped)."""
    return not all(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]
