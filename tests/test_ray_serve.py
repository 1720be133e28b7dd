"""``nsfwd serve --ray --replicas 2`` on a real local Ray instance, two models, a PostgreSQL
store: what only Serve has (its deployments in /healthz, Eachlabs' webhooks from ingress
replicas, a model replica killed under load, a clean stop on SIGTERM).

The server is the session's (:mod:`ray_backend`), which every API suite's shared-server test
also runs against (their ``backend`` parameter ``ray``); the stop runs after all of them.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import pytest
import requests

pytest.importorskip("ray.serve", reason="needs nsfwd[serve]")

from eachlabs_calls import OTHER, create, created_id, poll
from hosts import Host, verified
from photos import astronaut_jpeg
from prodia_jobs import post_job
from ray_backend import MODELS, RayServer
from ray_instance import ray_processes, replicas, wait_until_none_left
from serve_process import health
from waiting import wait_for


def classify(url: str) -> requests.Response:
    return post_job(url, astronaut_jpeg())


def test_healthz_reports_the_deployments(ray_server: RayServer) -> None:
    res = requests.get(f"{ray_server.url}/healthz", timeout=10)
    assert res.status_code == 200
    lines = res.text.splitlines()
    assert lines[0] == "ok"
    assert lines[1:3] == ["model: Freepik/nsfw_image_detector", "device: cpu"]
    deployments = [line for line in lines if line.startswith("deployments: ")]
    assert len(deployments) == 2, lines  # one for each model, as the other lines
    for line in deployments:
        assert "nsfwd-ingress HEALTHY (1 running)" in line
        assert all(f"{name} HEALTHY (2 running)" in line for name in MODELS), line


def test_eachlabs_with_webhooks_on_postgresql(
    ray_server: RayServer, host: tuple[str, Host]
) -> None:
    served = ray_server
    base, receiver = host
    ids = [
        created_id(create(served.url, f"{base}/photo.jpg", webhook_url=f"{base}/hook/serve{i}"))
        for i in range(3)
    ]
    refused = create(served.url, f"{base}/text", webhook_url=f"{base}/hook/servebad")
    bad = created_id(refused)
    for prediction_id in ids:
        done = poll(served.url, prediction_id, timeout=60)
        assert done["status"] == "success" and done["output"] in ("nsfw", "normal"), done
        assert list(done["labels"]) == ["neutral", "low", "medium", "high"]
    assert poll(served.url, bad, timeout=60)["status"] == "error"
    for i, prediction_id in enumerate(ids):
        hits = wait_for(partial(receiver.received, f"serve{i}"), 30, "the webhook")
        polled = poll(served.url, prediction_id)
        assert verified(hits[0]) == {
            "exec_id": prediction_id,
            "status": "succeeded",
            "output": polled["output"],
            "error": "",
            "sha256": polled["sha256"],  # of the bytes fetched: the verdict holds for them
        }
    failed = wait_for(lambda: receiver.received("servebad"), 30, "the failure's webhook")
    assert verified(failed[0])["status"] == "failed"


def test_a_model_replica_killed_under_load(ray_server: RayServer, host: tuple[str, Host]) -> None:
    served, ray_home = ray_server, ray_server.home
    base, _ = host
    running = replicas(ray_home, "nsfwd-model")
    assert len(running) == 2, ray_processes(ray_home)
    stop = threading.Event()
    answers: list[tuple[int, dict[str, str]]] = []

    def load() -> None:
        while not stop.is_set():
            res = classify(served.url)
            answers.append((res.status_code, dict(res.headers)))

    predictions = [created_id(create(served.url, f"{base}/photo.jpg", key=OTHER)) for _ in range(6)]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(load)
        wait_for(lambda: len(answers) >= 4, 60, "the load to run")
        os.kill(running[0], signal.SIGKILL)
        killed_at = len(answers)
        wait_for(lambda: len(answers) >= killed_at + 12, 90, "answers after the kill")
        stop.set()
    statuses = [status for status, _ in answers]
    assert set(statuses) <= {200, 429, 503}, statuses
    assert statuses.count(200) >= len(statuses) - 4, statuses  # only those on the dead one
    for status, headers in answers:
        if status != 200:
            assert int(headers["retry-after"]) >= 1
    for prediction_id in predictions:  # none lost
        assert poll(served.url, prediction_id, key=OTHER, timeout=90)["status"] == "success"
    wait_for(
        lambda: "nsfwd-model HEALTHY (2 running)" in health(served.url),
        90,
        "Serve to restart the replica",
    )
    assert running[0] not in replicas(ray_home, "nsfwd-model")
    assert classify(served.url).status_code == 200


def test_sigterm_drains_and_leaves_no_ray_process(ray_server: RayServer) -> None:
    """Runs after every other test on the session's server (conftest's STOPS_THE_RAY_SERVER)."""
    served, ray_home = ray_server.served, ray_server.home
    assert ray_processes(ray_home), "the Ray instance is not where the test looks for it"
    with ThreadPoolExecutor(4) as pool:
        in_flight = [pool.submit(classify, served.url) for _ in range(4)]
        time.sleep(0.2)
        served.process.send_signal(signal.SIGTERM)
        results: list[Any] = []
        for future in in_flight:
            try:
                results.append(future.result().status_code)
            except requests.ConnectionError as exc:  # sent after the proxy stopped listening
                results.append(type(exc).__name__)
    assert served.process.wait(timeout=90) == 0, served.log.read_text()[-3000:]
    assert all(result in (200, 503, "ConnectionError") for result in results), results
    wait_until_none_left(ray_home)
    log = served.log.read_text()
    assert "stopped the local Ray instance" in log
