"""A server killed mid-prediction (SIGKILL) loses no job: restarted on the same store, it takes
over the expired leases and finishes every job, or fails it with a message.

A real ``python -m nsfwd serve`` on a full-size EVA-02-B/448 (about 1.2 s an image on a 2-core
CPU), with 2-second leases, on a SQLite store in a temporary data folder.
"""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import requests

from photos import photo
from prodia_jobs import MODEL, TOKEN, job_files
from servers import free_port

JOBS = 8
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def image(index: int) -> bytes:
    """A distinct small JPEG for each job."""
    name = ["astronaut", "chelsea", "coffee", "rocket"][index % 4]
    buffer = io.BytesIO()
    picture = photo(name).convert("RGB").resize((200 + 16 * index, 200))
    picture.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def wait(condition: Callable[[], Any], timeout: float, what: str, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; server log:\n{log.read_text()}")
        time.sleep(0.1)
    return result


@contextmanager
def server(
    checkpoint: Path, data_dir: Path, log: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``nsfwd serve`` in a subprocess; yields its URL once healthy; SIGTERM (if alive) after."""
    port = free_port()
    env = {
        **os.environ,
        "NSFWD_MODEL": str(checkpoint),
        "NSFWD_SERVED_MODEL_NAME": MODEL,
        "NSFWD_DEVICE": "cpu",
        "NSFWD_API_KEYS": TOKEN,
        "NSFWD_HOST": "127.0.0.1",
        "NSFWD_PORT": str(port),
        "NSFWD_DATA_DIR": str(data_dir),
        "NSFWD_LEASE_S": "2",
    }
    with log.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "nsfwd", "serve"], env=env, stdout=output, stderr=output
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.poll() is None, f"the server exited:\n{log.read_text()}"
        try:
            return requests.get(f"{url}/healthz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait(healthy, 120, "the server to start", log)
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def statuses(database: Path) -> dict[str, tuple[str, int, str | None]]:
    """id -> (status, attempts, error), read straight from the SQLite file."""
    with closing(sqlite3.connect(database, timeout=30)) as connection:
        rows = connection.execute("SELECT id, status, attempts, error FROM predictions")
        return {row[0]: (row[1], row[2], row[3]) for row in rows}


def test_a_killed_server_loses_no_job(eva02_b448_checkpoint: Path, tmp_path: Path) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "server.log"
    database = data_dir / "nsfwd.db"
    with server(eva02_b448_checkpoint, data_dir, log) as (url, process):
        ids = []
        for index in range(JOBS):
            res = requests.post(
                f"{url}/v2/job/async", headers=AUTH, files=job_files(image=image(index)), timeout=30
            )
            assert res.status_code == 201, res.text
            ids.append(res.json()["id"])
        wait(
            lambda: any(s == "processing" for s, _, _ in statuses(database).values()),
            30, "a job to be processing", log,
        )  # fmt: skip
        time.sleep(0.5)  # well inside a prediction (about 1.2 s each)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    at_kill = statuses(database)
    interrupted = [i for i in ids if at_kill[i][0] == "processing"]
    assert interrupted, "no job was in flight when the server died: the test proves nothing"
    assert any(at_kill[i][0] == "queued" for i in ids), "every job had started: add more jobs"

    with server(eva02_b448_checkpoint, data_dir, log) as (url, _):

        def settled() -> dict[str, str] | None:
            states = {
                i: requests.get(f"{url}/v2/job/async/{i}/job.state.current", headers=AUTH,
                                timeout=10).text
                for i in ids
            }  # fmt: skip
            return None if "processing" in states.values() else states

        states = wait(settled, 60, "every job to finish after the restart", log)
        jobs = {
            i: requests.get(f"{url}/v2/job/async/{i}/job.json", headers=AUTH, timeout=10).json()
            for i in ids
        }
    after = statuses(database)
    assert set(after) == set(ids), "a job was lost"
    for job_id in ids:
        status, _, error = after[job_id]
        assert states[job_id] in ("processed", "failed")
        if states[job_id] == "processed":
            assert status == "succeeded" and set(jobs[job_id]["config"]["labels"]) >= {"neutral"}
        else:
            assert status == "failed" and error and jobs[job_id]["error"] == error
    for job_id in interrupted:  # taken over after the lease ran out: a second attempt
        assert after[job_id][1] == 2 and states[job_id] == "processed"
    assert all(after[i][1] == 1 for i in ids if i not in interrupted)
    assert "attempt 2 (a previous run was interrupted)" in log.read_text()
