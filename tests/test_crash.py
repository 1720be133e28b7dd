"""A server killed mid-prediction (SIGKILL) loses no job: restarted on the same store, it takes
over the expired leases and finishes every job, or fails it with a message.

A real ``python -m nsfwd serve`` on the tiny EVA-02, each batch made to take 1.2 s longer (as
long as a full-size EVA-02-B/448 takes an image on a 2-core CPU), with 2-second leases, on a
SQLite store in a temporary data folder.
"""

from __future__ import annotations

import io
import signal
import sqlite3
import time
from contextlib import AbstractContextManager, closing
from pathlib import Path

import requests

from photos import photo
from prodia_jobs import MODEL, TOKEN, job_files
from serve_process import Served, log_of, nsfwd_serve
from slowed import slowed_predictions
from waiting import wait_for

JOBS = 8
PREDICT_S = 1.2
"""How long each batch takes: long enough to be caught in the middle of one."""
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def image(index: int) -> bytes:
    """A distinct small JPEG for each job."""
    name = ["astronaut", "chelsea", "coffee", "rocket"][index % 4]
    buffer = io.BytesIO()
    picture = photo(name).convert("RGB").resize((200 + 16 * index, 200))
    picture.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def server(checkpoint: Path, data_dir: Path, log: Path) -> AbstractContextManager[Served]:
    """``nsfwd serve`` with the test's key, 2-second leases and 1.2 s batches."""
    env = {
        "NSFWD_SERVED_MODEL_NAME": MODEL,
        "NSFWD_API_KEYS": TOKEN,
        "NSFWD_LEASE_S": "2",
        **slowed_predictions(data_dir.parent / "slowed", PREDICT_S),
    }
    return nsfwd_serve(checkpoint, data_dir, log, env=env)


def statuses(database: Path) -> dict[str, tuple[str, int, str | None]]:
    """id -> (status, attempts, error), read straight from the SQLite file."""
    with closing(sqlite3.connect(database, timeout=30)) as connection:
        rows = connection.execute("SELECT id, status, attempts, error FROM predictions")
        return {row[0]: (row[1], row[2], row[3]) for row in rows}


def test_a_killed_server_loses_no_job(timm_checkpoint: Path, tmp_path: Path) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "server.log"
    database = data_dir / "nsfwd.db"
    with server(timm_checkpoint, data_dir, log) as served:
        url, process = served.url, served.process
        ids = []
        for index in range(JOBS):
            res = requests.post(
                f"{url}/v2/job/async", headers=AUTH, files=job_files(image=image(index)), timeout=30
            )
            assert res.status_code == 201, res.text
            ids.append(res.json()["id"])
        wait_for(
            lambda: any(s == "processing" for s, _, _ in statuses(database).values()),
            30, "a job to be processing", detail=log_of(log),
        )  # fmt: skip
        time.sleep(PREDICT_S / 2)  # well inside a prediction
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    at_kill = statuses(database)
    interrupted = [i for i in ids if at_kill[i][0] == "processing"]
    assert interrupted, "no job was in flight when the server died: the test proves nothing"
    assert any(at_kill[i][0] == "queued" for i in ids), "every job had started: add more jobs"

    with server(timm_checkpoint, data_dir, log) as served:
        url = served.url

        def settled() -> dict[str, str] | None:
            states = {
                i: requests.get(f"{url}/v2/job/async/{i}/job.state.current", headers=AUTH,
                                timeout=10).text
                for i in ids
            }  # fmt: skip
            return None if "processing" in states.values() else states

        states = wait_for(
            settled, 60, "every job to finish after the restart", interval=0.1, detail=log_of(log)
        )
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
