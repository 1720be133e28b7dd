"""Shared fixtures: random-weight checkpoints in every on-disk style the loader accepts, a
server on them, job store databases, and the image host with its canary.

Whatever is costly to build (checkpoints, the PostgreSQL server, a migrated schema) is built
once a session and shared.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

import pytest

from checkpoints import write_timm_checkpoint, write_vit_checkpoint
from hosts import Canary, Host
from nsfwd.models.classifier import Classifier

if TYPE_CHECKING:
    from ray_backend import RayServer


def _has_ray_serve() -> bool:
    return (
        importlib.util.find_spec("ray") is not None
        and importlib.util.find_spec("ray.serve") is not None
    )


# The torch runtime, in the CPU's default precision for its flags, for every test and every
# server a test starts: without it each would measure the routes at its first start (and
# convert the model for OpenVINO). tests/test_runtimes.py unsets it to test that measurement.
os.environ.setdefault("NSFWD_RUNTIME", "torch")

TIERS: Final = {
    # real Ray clusters and Ray Serve: one at a time (two cores cannot host two), one xdist group
    "ray": ("test_ray_serve", "test_ray_serve_autoscaling", "test_ray_data"),
    # full-size models, compiling, the bench, a real Matrix Synapse (its own virtual
    # environment, made once under a cache folder), and real `nsfwd` processes beyond one smoke
    # test each (killed servers, process trees, a machine without the Hub)
    "heavy": (
        "test_parity",
        "test_compile",
        "test_crash",
        "test_supervisor",
        "test_bench",
        "test_video::test_the_bench_video_suite_measures_decoding_beside_judging",
        "test_synapse",
        "test_fetch_bounds",
        "test_several_models::test_http_workers_reach_every_model",
        "test_imports::test_serve_with_http_workers_loads_torch_only_for_inference",
        "test_server::test_serve_binds_publicly_with_only_keys_from_the_store",
        "test_open_nsfw::test_classify_cli_records",
        "test_open_nsfw::test_download_says_it_is_built_in",
        "test_open_nsfw::test_with_no_model_configured_and_no_hub_serve_falls_back",
        "test_open_nsfw::test_an_explicit_model_that_cannot_load_still_stops_the_server",
        "test_cli::test_an_unreachable_hub_says_how_to_supply_the_model",
        "test_cli::test_a_hub_id_loads_offline_from_the_cache",
        "test_keys::test_a_created_key_works_against_the_api_until_revoked",
    ),
    # headless Chromium
    "browser": (
        "test_demo",
        "test_video_demo",
        "test_calibrate::test_the_report_opens_in_headless_chromium",
        "test_browser_views",
    ),
    # the reliability campaign: property tests, schemathesis, faults with real parts, load
    "campaign": (
        "test_campaign_schema",
        "test_campaign_intake",
        "test_campaign_multipart",
        "test_campaign_faults",
        "test_campaign_load",
        "test_campaign_video",
        "test_campaign_costs",
    ),
    # builds and runs container images: make container-test alone (podman, container/ci.sh)
    "container": ("test_container",),
}
"""The tiers beyond the inner loop, by test module (or ``module::test`` prefix): ``make test``
runs them all but ``container`` (``make container-test`` runs it), ``make test-fast`` none of
them. A test that starts a cluster, a browser, a big model or a long run belongs here."""


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its tier (:data:`TIERS`; a test of an API suite run through Ray
    Serve is in the Ray tier, which ``make test`` runs in a pytest of its own)."""
    for item in items:
        where = f"{item.path.stem}::{item.name}"
        tiers = {tier for tier, places in TIERS.items() if any(_in(where, p) for p in places)}
        if _backend(item) == "ray":
            tiers.add("ray")
        for tier in sorted(tiers):
            item.add_marker(getattr(pytest.mark, tier))


@pytest.hookimpl(trylast=True, specname="pytest_collection_modifyitems")
def last_of_all(items: list[pytest.Item]) -> None:
    """Tests that stop the session's Ray Serve server (:data:`STOPS_THE_RAY_SERVER`) run last,
    after pytest has grouped the tests by their fixtures."""
    last = [item for item in items if item.nodeid.endswith(STOPS_THE_RAY_SERVER)]
    items[:] = [item for item in items if item not in last] + last


STOPS_THE_RAY_SERVER: Final = ("test_ray_serve.py::test_sigterm_drains_and_leaves_no_ray_process",)
"""The tests that stop the session's Ray Serve server: they run after every other test."""


def _in(where: str, place: str) -> bool:
    """Whether the test ``where`` (``module::name[params]``) is at ``place`` (a module, or a
    ``module::name`` whatever its parameters)."""
    return where == place or where.startswith(place + ("[" if "::" in place else "::"))


def _backend(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return None if callspec is None else callspec.params.get("backend")


# --- the API suites' shared servers: here (local) and on Ray Serve (ray) ----------------------


@pytest.fixture(
    scope="session",
    params=[
        "local",
        pytest.param(
            "ray", marks=pytest.mark.skipif(not _has_ray_serve(), reason="needs nsfwd[serve]")
        ),
    ],
)
def backend(request: pytest.FixtureRequest) -> str:
    """Where the API suites' shared servers run: ``local``, in this process; ``ray``, the
    session's ``nsfwd serve --ray`` (:mod:`ray_backend`). Every test that uses ``server_url``
    (or a suite's ``url``, ``server``, ``client``) runs on both."""
    return str(request.param)


@pytest.fixture(scope="session")
def ray_server(
    timm_checkpoint: Path,
    vit_checkpoint: Path,
    postgres_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RayServer]:
    """The session's ``nsfwd serve --ray`` (:func:`ray_backend.ray_server`), on a PostgreSQL
    database of its own; started by the first test that needs it. ``make test`` runs the Ray
    tier without xdist; should two xdist workers need one all the same, the second waits until
    the first one's is gone (a lock beside the workers' temporary folders): two cores cannot
    host two clusters."""
    from postgres import fresh_database
    from ray_backend import ray_server as start

    lock = tmp_path_factory.getbasetemp().parent / "ray-server.lock"
    with (
        lock.open("w") as held,
        _locked(held),
        fresh_database(postgres_url) as database,
        start(
            timm_checkpoint, vit_checkpoint, database, tmp_path_factory.mktemp("ray-serve")
        ) as server,
    ):
        yield server


@contextmanager
def _locked(file: IO[str]) -> Iterator[None]:
    """Hold an exclusive lock on ``file`` for the block (waiting for it)."""
    fcntl.flock(file, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(file, fcntl.LOCK_UN)


@pytest.fixture(autouse=True)
def bounded_on_ray(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test on the session's Ray Serve server runs under its time bound
    (:meth:`ray_backend.RayServer.bounded`)."""
    if _backend(request.node) != "ray" and "ray_server" not in request.fixturenames:
        yield
        return
    server: RayServer = request.getfixturevalue("ray_server")
    with server.bounded(request.node.name):
        yield


@pytest.fixture(scope="session")
def timm_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny EVA-02 in the style timm's save_for_hf / push_to_hub writes."""
    return write_timm_checkpoint(tmp_path_factory.mktemp("timm-style"))


@pytest.fixture(scope="session")
def wrapper_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny EVA-02 in transformers' TimmWrapper style, bf16 weights as Freepik ships."""
    import torch

    folder = tmp_path_factory.mktemp("wrapper-style")
    return write_timm_checkpoint(folder, style="timm_wrapper", dtype=torch.bfloat16)


@pytest.fixture(scope="session")
def vit_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny transformers ViT with labels normal/nsfw."""
    return write_vit_checkpoint(tmp_path_factory.mktemp("vit"))


@pytest.fixture(scope="session")
def classifier(timm_checkpoint: Path) -> Classifier:
    """The tiny EVA-02 loaded on the CPU in fp32, the exact mode, whatever this CPU's default
    (tests/test_cpu_default.py checks the default): the suite's tolerances are set for fp32."""
    return Classifier.load(str(timm_checkpoint), dtype="float32")


@pytest.fixture(scope="session")
def vit_classifier(vit_checkpoint: Path) -> Classifier:
    """The tiny ViT (Hub format) on the CPU in fp32: a second model for servers that run two."""
    return Classifier.load(str(vit_checkpoint), dtype="float32")


@pytest.fixture(scope="session")
def server_url(backend: str, request: pytest.FixtureRequest) -> str:
    """The shared server of the API suites (``test-key-4f1c2a9e``, the tiny EVA-02 served as
    Freepik's model): :func:`sync_server_url` here, or Serve's proxy on Ray (``backend``)."""
    if backend == "ray":
        return request.getfixturevalue("ray_server").url  # type: ignore[no-any-return]
    return request.getfixturevalue("sync_server_url")  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def sync_server_url(classifier: Classifier) -> Iterator[str]:
    """A real nsfwd server on loopback (tiny EVA-02, API key ``test-key-4f1c2a9e``) without a
    job store: the synchronous routes alone."""
    from nsfwd.api import create_app
    from nsfwd.engine.batcher import Engine
    from nsfwd.settings import Settings
    from servers import serve_app

    settings = Settings(
        model=str(classifier.name),
        served_model_name="Freepik/nsfw_image_detector",
        api_keys=["test-key-4f1c2a9e"],
        auth_failures_per_minute=1_000_000,  # the suites' wrong keys would slow the rest
    )
    engine = Engine(classifier, max_batch_size=8, max_queue=64, limits=settings.image_limits)
    with serve_app(create_app(engine, settings)) as url:
        yield url


# --- the job store: a throwaway PostgreSQL server, and fresh databases on both engines ----------


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server for the session (see tests/postgres.py); the URL of its admin db."""
    from postgres import postgres_server

    try:
        with postgres_server() as url:
            yield url
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def postgres_template(postgres_url: str) -> Iterator[str]:
    """The name of a database on the session's server holding the newest schema, migrated once
    for :func:`database` to copy."""
    from postgres import migrated_template

    with migrated_template(postgres_url) as name:
        yield name


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite job store file holding the newest schema, migrated once for :func:`database`
    to copy."""
    import asyncio

    from nsfwd.jobs import Store
    from nsfwd.jobs.database import DATABASE_FILE, database_url

    folder = tmp_path_factory.mktemp("sqlite-template")

    async def migrate() -> None:
        async with Store(database_url(folder)):
            pass

    asyncio.run(migrate())
    return folder / DATABASE_FILE


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a new job store database holding the newest schema (a copy of a template
    migrated once a session): a SQLite file, then a PostgreSQL database."""
    from nsfwd.jobs.database import DATABASE_FILE, database_url

    if request.param == "sqlite":
        shutil.copyfile(request.getfixturevalue("sqlite_template"), tmp_path / DATABASE_FILE)
        yield database_url(tmp_path)
        return
    from postgres import fresh_database

    template = request.getfixturevalue("postgres_template")
    with fresh_database(request.getfixturevalue("postgres_url"), template) as url:
        yield database_url(tmp_path, url)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a new, empty job store database, for tests of migrating from nothing: a
    SQLite file, then a PostgreSQL database."""
    from nsfwd.jobs.database import database_url

    if request.param == "sqlite":
        yield database_url(tmp_path)
        return
    from postgres import fresh_database

    with fresh_database(request.getfixturevalue("postgres_url")) as url:
        yield database_url(tmp_path, url)


@pytest.fixture(scope="session")
def eva02_b448_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full-size EVA-02-B/448 (random weights) in the style Freepik ships: transformers'
    TimmWrapper, bf16 weights. Written once for the session: the parity test compares it with
    Freepik's package, and at about 1.2 s an image on 2 cores it is slow enough to catch a
    server mid-prediction."""
    import torch

    return write_timm_checkpoint(
        tmp_path_factory.mktemp("eva02-b448"),
        arch="eva02_base_patch14_448",
        style="timm_wrapper",
        dtype=torch.bfloat16,
    )


@pytest.fixture(scope="module")
def host() -> Iterator[tuple[str, Host]]:
    """An image host and webhook receiver on 127.0.0.2: its base URL and its records."""
    from servers import serve_app

    receiver = Host()
    with serve_app(receiver.app, host="127.0.0.2", timeout_graceful_shutdown=1) as url:
        yield url, receiver


@pytest.fixture(scope="module")
def canary_port(host: tuple[str, Host]) -> int:
    """The canary's port: the image host's (a module with a host of its own overrides this)."""
    import httpx

    return httpx.URL(host[0]).port or 0


@pytest.fixture(scope="module")
def canary(canary_port: int) -> Iterator[Canary]:
    """A listener on 127.0.0.1 at the host's port; nothing may ever reach it."""
    canary = Canary(canary_port)
    yield canary
    canary.close()


@pytest.fixture(autouse=True)
def nothing_reaches_the_canary(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test that uses the canary, it has received no connection."""
    if "canary" not in request.fixturenames:
        yield
        return
    canary: Canary = request.getfixturevalue("canary")
    yield
    canary.settle()
    assert canary.hits == [], f"the canary on 127.0.0.1 was reached: {canary.hits}"
