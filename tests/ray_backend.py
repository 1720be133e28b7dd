"""The API suites' second backend: one ``nsfwd serve --ray --replicas 2`` for the whole session.

Every test of the API suites that runs against a shared server (the ``server_url``, ``url``,
``server`` and ``client`` fixtures) runs twice, its ``backend`` parameter ``local`` (the app
in this process) and ``ray`` (this server: Serve's HTTP proxy in front of an ingress replica
and two model deployments), so a new API test runs through Serve without being listed
anywhere. The server is configured for every suite at once: their keys and models, a
PostgreSQL job store, the image host's network and the webhook secret. Its Ray instance is
private to it (:mod:`ray_instance`); a test that runs past :data:`TEST_SECONDS` kills it, so
that what the test waits on ends, and the Ray tests after it fail at once, naming it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from checkpoints import VIT
from eachlabs_calls import KEY, OTHER, SERVED
from hosts import ALLOWED, SECRET
from prodia_jobs import OTHER_TOKEN, TOKEN
from ray_instance import environment, kill_all, private_folder, ray_processes
from serve_process import Served, health, nsfwd_serve
from waiting import wait_for, watchdog

MODELS = ("nsfwd-model", "nsfwd-model-1")
"""The model deployments, one for each model."""
TEST_SECONDS = 180
"""No test on this server may run longer: a stuck deployment fails the test, not the suite."""
START_SECONDS = 240
"""Ray, Serve, five replicas: on two busy cores this takes a while."""


@dataclass
class RayServer:
    """The session's Serve instance: where it answers, its process and log, its job store
    and its Ray instance's folder."""

    served: Served
    database: str
    home: Path
    stopped_after: list[str]
    """The test that ran past :data:`TEST_SECONDS`, after which the server was killed."""

    @property
    def url(self) -> str:
        """Serve's HTTP proxy."""
        return self.served.url

    @contextmanager
    def bounded(self, test: str) -> Iterator[None]:
        """Run one test: kill the server's Ray instance if it runs past :data:`TEST_SECONDS`."""
        if self.stopped_after:
            raise AssertionError(
                f"the server was stopped after {self.stopped_after[0]} ran too long"
            )

        def expire() -> None:
            self.stopped_after.append(test)
            kill_all(list(ray_processes(self.home)))

        with watchdog(TEST_SECONDS, expire):
            yield


@contextmanager
def ray_server(
    timm_checkpoint: Path, vit_checkpoint: Path, database: str, folder: Path
) -> Iterator[RayServer]:
    """``nsfwd serve --ray --replicas 2`` serving the tiny EVA-02 as Freepik's model and the
    tiny ViT as :data:`VIT` on the PostgreSQL ``database``, every replica running; killed
    (with its Ray instance) on leaving if a test has not stopped it."""
    with private_folder("nsfwd-serve-") as home:
        env = {
            **environment(home),
            "NSFWD_DATABASE_URL": database,
            "NSFWD_API_KEYS": ",".join([TOKEN, OTHER_TOKEN, KEY, OTHER]),
            "NSFWD_SERVED_MODEL_NAME": SERVED,
            "NSFWD_MODELS": f"{VIT}={vit_checkpoint}",
            "NSFWD_DTYPE": "float32",
            "NSFWD_MAX_BATCH_SIZE": "4",
            "NSFWD_FETCH_ALLOW_NETWORKS": ",".join(ALLOWED),
            "NSFWD_WEBHOOK_ALLOW_NETWORKS": ",".join(ALLOWED),
            "NSFWD_FETCH_ALLOW_HTTP": "1",
            "NSFWD_WEBHOOK_SECRET": SECRET,
            "NSFWD_WEBHOOK_RETRY_DELAYS": "0.2,0.2",
            # The API suites send wrong keys on purpose, all from loopback, to this one server
            # for the session: their slowing (tests/test_key_costs.py) would refuse the rest.
            "NSFWD_AUTH_FAILURES_PER_MINUTE": "1000000",
        }
        args = ("--ray", "--replicas", "2")
        log = folder / "serve.log"
        with nsfwd_serve(
            timm_checkpoint, folder, log, *args, env=env, start_timeout=START_SECONDS
        ) as served:
            wait_for(
                lambda: all(f"{name} HEALTHY (2 running)" in health(served.url) for name in MODELS),
                60,
                "both replicas of both models",
                detail=lambda: health(served.url),
            )
            yield RayServer(served, database, home, [])
