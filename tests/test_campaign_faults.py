"""The reliability campaign, part 4: faults with real parts.

* PostgreSQL stopped mid-flight, then started again: while it is down, the routes that need the
  store answer 503 with ``Retry-After`` (never 500) and the ones that do not keep answering;
  afterwards every job accepted before the outage ends.
* A webhook receiver down for a while (its port closed), then back: each delivery arrives once,
  under the same ``webhook-id`` it would have had.
* SQLite on a full disk (a small tmpfs when this process may mount one, else a file-size limit
  on the server process): uploads are refused with 507 (503 under the file-size limit), never
  500, and the store passes ``PRAGMA integrity_check`` afterwards.
* SIGKILL of the inference process under ``--http-workers``: the server exits for its
  supervisor, and a restart on the same store finishes every accepted job (tests/test_crash.py
  kills a whole single-process server; tests/test_supervisor.py checks that the processes go
  away together).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import requests

from hosts import ALLOWED, SECRET, Host, jpeg, verified
from nsfwd.api import create_app
from nsfwd.engine.batcher import Engine
from nsfwd.jobs import Store
from nsfwd.models.classifier import Classifier
from nsfwd.settings import Settings
from photos import astronaut_jpeg
from postgres import restartable_postgres
from prodia_jobs import MODEL, TOKEN, job_files
from serve_process import log_of, nsfwd_serve
from servers import free_port, serve_app
from test_supervisor import inference_pid
from waiting import wait_for

PRODIA = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
EACHLABS = {"X-API-Key": TOKEN}


def settings(**values: Any) -> Settings:
    return Settings(served_model_name=MODEL, api_keys=[TOKEN], **values)


@contextlib.contextmanager
def server(classifier: Classifier, config: Settings) -> Iterator[str]:
    """A server on loopback with its store, as ``nsfwd serve`` builds it."""
    engine = Engine(classifier, max_batch_size=4, limits=config.image_limits)
    app = create_app(engine, config.model_copy(update={"model": classifier.name}),
                     Store.from_settings(config))  # fmt: skip
    with serve_app(app) as url:
        yield url


def submit(url: str, size: tuple[int, int] = (256, 256)) -> requests.Response:
    return requests.post(
        f"{url}/v2/job/async", headers=PRODIA, files=job_files(image=astronaut_jpeg(size)),
        timeout=30,
    )  # fmt: skip


def submit_bytes(url: str, image: bytes) -> requests.Response:
    return requests.post(
        f"{url}/v2/job/async", headers=PRODIA, files=job_files(image=image), timeout=30
    )


def state(url: str, job_id: str) -> requests.Response:
    return requests.get(f"{url}/v2/job/async/{job_id}/job.state.current", headers=PRODIA,
                        timeout=30)  # fmt: skip


def all_ended(url: str, ids: list[str]) -> dict[str, str] | None:
    """Each job's state once none is processing (None until then, or while the store is down)."""
    states = {}
    for job_id in ids:
        answer = state(url, job_id)
        if answer.status_code != 200 or answer.text == "processing":
            return None
        states[job_id] = answer.text
    return states


# --- PostgreSQL stopped and restarted -------------------------------------------------------


def test_postgresql_down_is_503_and_every_accepted_job_ends(
    classifier: Classifier, tmp_path: Path
) -> None:
    with restartable_postgres() as database:
        config = settings(data_dir=tmp_path, database_url=database.url, lease_s=2)
        with server(classifier, config) as url:
            ids = []
            for index in range(12):
                answer = submit(url, (200 + 8 * index, 200))
                assert answer.status_code == 201, answer.text
                ids.append(answer.json()["id"])
            database.stop()  # mid-flight: the worker is running the first jobs
            down = {
                "submit": submit(url),
                "state": state(url, ids[0]),
                "job.json": requests.get(f"{url}/v2/job/async/{ids[0]}/job.json",
                                         headers=PRODIA, timeout=30),
                "eachlabs create": requests.post(
                    f"{url}/v1/prediction/", headers=EACHLABS, timeout=30,
                    json={"model": "nsfw-image-detection",
                          "input": {"image": "https://images.test/a.jpg"}},
                ),
                "eachlabs get": requests.get(f"{url}/v1/prediction/{ids[0]}",
                                             headers=EACHLABS, timeout=30),
            }  # fmt: skip
            for what, answer in down.items():
                assert answer.status_code == 503, f"{what}: {answer.status_code} {answer.text}"
                assert int(answer.headers["Retry-After"]) >= 1, what
                assert "store" in answer.text, answer.text
            sync = requests.post(f"{url}/v2/job", headers=PRODIA, timeout=30,
                                 files=job_files(image=astronaut_jpeg()))  # fmt: skip
            assert sync.status_code == 200, sync.text  # no store needed
            time.sleep(3)  # the worker's loops meet the outage (leases run out meanwhile)
            database.start()
            states = wait_for(
                lambda: all_ended(url, ids), 90, "every accepted job to end", interval=0.2,
                detail=lambda: str([(state(url, i).status_code, state(url, i).text) for i in ids]),
            )  # fmt: skip
    assert set(states.values()) <= {"processed", "failed"}
    assert set(states.values()) == {"processed"}, states  # an outage is no reason to fail a job
    print(f"after the outage: {sorted(states.values())}")


# --- A webhook receiver down for a while, then back ---------------------------------------------


def deliveries(database: Path) -> dict[str, tuple[str, str, int]]:
    """prediction id -> (delivery id, status, attempts), read straight from the SQLite file."""
    with closing(sqlite3.connect(database, timeout=30)) as connection:
        rows = connection.execute(
            "SELECT prediction_id, id, status, attempts FROM webhook_deliveries"
        )
        return {row[0]: (row[1], row[2], row[3]) for row in rows}


def test_a_webhook_receiver_down_for_a_while_gets_each_delivery_once(
    classifier: Classifier, tmp_path: Path
) -> None:
    images, receiver = Host(), Host()
    hook_port = free_port("127.0.0.2")  # nothing listens there yet
    config = settings(
        data_dir=tmp_path, webhook_secret=SECRET, webhook_allow_networks=ALLOWED,
        fetch_allow_networks=ALLOWED, fetch_allow_http=True, webhook_retry_delays=[0.5] * 30,
    )  # fmt: skip
    database = tmp_path / "nsfwd.db"
    with (
        serve_app(images.app, host="127.0.0.2", timeout_graceful_shutdown=1) as image_host,
        server(classifier, config) as url,
    ):
        ids = []
        for index in range(4):
            body = {"model": "nsfw-image-detection", "input": {"image": f"{image_host}/photo.jpg"},
                    "webhook_url": f"http://127.0.0.2:{hook_port}/hook/{index}"}  # fmt: skip
            answer = requests.post(f"{url}/v1/prediction/", headers=EACHLABS, json=body,
                                   timeout=30)  # fmt: skip
            assert answer.status_code == 200, answer.text
            ids.append(answer.json()["predictionID"])
        wait_for(
            lambda: len(found := deliveries(database)) == len(ids)
            and all(attempts >= 3 for _, _, attempts in found.values()),
            60, "every delivery to have failed a few times",
        )  # fmt: skip
        with serve_app(receiver.app, host="127.0.0.2", port=hook_port, timeout_graceful_shutdown=1):
            wait_for(
                lambda: all(row[1] == "delivered" for row in deliveries(database).values()),
                60, "every delivery to arrive once the receiver is back",
            )  # fmt: skip
            time.sleep(1.5)  # three retry delays: a duplicate would have arrived by now
        final = deliveries(database)
    for index, prediction_id in enumerate(ids):
        hits = receiver.received(str(index))
        assert len(hits) == 1, f"hook {index} got {len(hits)} deliveries"
        delivery_id, _, attempts = final[prediction_id]
        assert attempts >= 4
        assert hits[0].headers["webhook-id"] == delivery_id
        assert verified(hits[0])["exec_id"] == prediction_id


# --- SQLite on a full disk ---------------------------------------------------------------------

DISK_BYTES = 4 * 1024 * 1024


@contextlib.contextmanager
def small_disk(folder: Path) -> Iterator[bool]:
    """A tmpfs of :data:`DISK_BYTES` mounted on ``folder`` (yields True), or, where this process
    may not mount one, just the folder (yields False: the caller limits file sizes instead)."""
    folder.mkdir()
    if os.environ.get("NSFWD_CAMPAIGN_NO_TMPFS"):  # to try the substitute where mounting works
        yield False
        return
    mount = ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(folder)]
    try:
        mounted = subprocess.run(mount, capture_output=True, check=False).returncode == 0
    except OSError:  # no mount program
        mounted = False
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def test_sqlite_on_a_full_disk_refuses_clearly_and_stays_intact(
    timm_checkpoint: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "disk"
    env = {"NSFWD_SERVED_MODEL_NAME": MODEL, "NSFWD_API_KEYS": TOKEN}
    with (
        small_disk(data_dir) as tmpfs,
        nsfwd_serve(timm_checkpoint, data_dir, tmp_path / "server.log", env=env) as served,
    ):
        if not tmpfs:  # the honest substitute: SQLite's files may not grow past the limit
            resource.prlimit(served.process.pid, resource.RLIMIT_FSIZE, (DISK_BYTES,) * 2)
        accepted, refused = [], None
        for index in range(60):
            answer = submit_bytes(served.url, jpeg((512, 512), seed=index))
            if answer.status_code != 201:
                refused = answer
                break
            accepted.append(answer.json()["id"])
        assert refused is not None, "the disk never filled"
        print(f"{len(accepted)} accepted, then {refused.status_code}: {refused.text[:300]}")
        assert refused.status_code == (507 if tmpfs else 503), refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        assert "disk is full" in refused.text if tmpfs else "store" in refused.text
        assert accepted, "nothing was stored before the disk filled"
        for job_id in accepted:  # what was stored can still be read
            assert state(served.url, job_id).status_code == 200
        health = requests.get(f"{served.url}/healthz", timeout=10)
        assert health.status_code == 200
        served.process.send_signal(signal.SIGTERM)
        served.process.wait(timeout=60)
        log = served.log.read_text()
        with closing(sqlite3.connect(data_dir / "nsfwd.db", timeout=30)) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)], log
            stored = {row[0] for row in connection.execute("SELECT id FROM predictions")}
    assert set(accepted) <= stored, "an accepted job was lost"


# --- SIGKILL of the inference process under --http-workers --------------------------------------


def statuses(database: Path) -> dict[str, str]:
    """id -> status, read straight from the SQLite file."""
    with closing(sqlite3.connect(database, timeout=30)) as connection:
        return dict(connection.execute("SELECT id, status FROM predictions").fetchall())


def kill_with_jobs_waiting(url: str, pid: int, database: Path) -> list[str]:
    """Submit jobs from eight threads until the store holds at least three unfinished, then
    SIGKILL the inference process: some accepted work is in flight on any machine, however fast.
    The ids of the jobs accepted (201) are returned."""
    accepted: list[str] = []
    killed = False

    def submit_until_killed(seed: int) -> None:
        for index in range(seed, 400, 8):
            try:
                answer = submit_bytes(url, jpeg((384, 384), seed=index))
            except requests.RequestException:
                return
            if answer.status_code != 201:
                assert killed, answer.text
                return
            accepted.append(answer.json()["id"])

    with ThreadPoolExecutor(8) as pool:
        submitting = [pool.submit(submit_until_killed, seed) for seed in range(8)]
        wait_for(lambda: sum(s != "succeeded" for s in statuses(database).values()) >= 3, 60,
                 "three unfinished jobs in the store", interval=0.01)  # fmt: skip
        os.kill(pid, signal.SIGKILL)
        killed = True
        for future in submitting:
            future.result()
    return accepted


def test_a_killed_inference_process_stops_the_server_and_loses_no_job(
    timm_checkpoint: Path, tmp_path: Path
) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "server.log"
    env = {"NSFWD_SERVED_MODEL_NAME": MODEL, "NSFWD_API_KEYS": TOKEN, "NSFWD_LEASE_S": "2"}
    workers = ("--http-workers", "2")
    with nsfwd_serve(timm_checkpoint, data_dir, log, *workers, env=env) as served:
        ids = kill_with_jobs_waiting(served.url, inference_pid(served), data_dir / "nsfwd.db")
        assert served.process.wait(timeout=60) == 1, log.read_text()  # for its supervisor
    assert "the inference process died" in log.read_text()
    unfinished = [i for i, s in statuses(data_dir / "nsfwd.db").items() if s != "succeeded"]
    assert unfinished, "every job had finished before the kill: the test proves nothing"
    print(f"{len(ids)} jobs accepted, {len(unfinished)} unfinished at the kill")

    with nsfwd_serve(timm_checkpoint, data_dir, log, env=env) as served:  # one process will do
        states = wait_for(lambda: all_ended(served.url, ids), 90, "every job to end after the "
                          "restart", interval=0.2, detail=log_of(log))  # fmt: skip
    assert set(states.values()) == {"processed"}, states
