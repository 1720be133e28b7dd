"""``nsfwd serve --http-workers N``: several HTTP processes feed one inference process, answer
as one server (metrics included), stop in order, and never outlive each other."""

from __future__ import annotations

import asyncio
import io
import json
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import requests
import uvicorn
from PIL import Image

from nsfwd.models.classifier import Classifier
from nsfwd.serve import supervisor
from nsfwd.serve.supervisor import tcp_listener
from nsfwd.settings import Settings
from photos import astronaut_jpeg
from prodia_jobs import MODEL, TOKEN, job_files
from serve_process import Served, log_of, nsfwd_serve
from servers import free_port, metric
from waiting import wait_for

AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENV = {"NSFWD_API_KEYS": TOKEN, "NSFWD_SERVED_MODEL_NAME": MODEL}
WORKERS = 2


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child, *descendants(child)]
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def all_exit(pids: list[int], served: Served) -> None:
    """Wait (a little) until none of ``pids`` runs; multiprocessing's resource tracker, for
    one, leaves only once every process holding its pipe has."""
    wait_for(
        lambda: not [pid for pid in pids if alive(pid)], 30, "every process to exit",
        detail=log_of(served.log),
    )  # fmt: skip


def spawned(pid: int) -> list[int]:
    """The Python processes ``pid`` started with multiprocessing's spawn: inference + workers."""
    return [
        child
        for child in descendants(pid)
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


def inference_pid(served: Served) -> int:
    found = re.search(r"inference process (\d+) serving", served.log.read_text())
    assert found, served.log.read_text()
    return int(found.group(1))


def serve(timm_checkpoint: Path, tmp_path: Path) -> AbstractContextManager[Served]:
    """The server with :data:`WORKERS` HTTP workers."""
    return nsfwd_serve(
        timm_checkpoint,
        tmp_path / "data",
        tmp_path / "server.log",
        "--http-workers",
        str(WORKERS),
        env=ENV,
    )


def test_workers_answer_like_one_server(
    timm_checkpoint: Path, classifier: Classifier, tmp_path: Path
) -> None:
    images = [astronaut_jpeg((300 + 20 * i, 240)) for i in range(16)]
    expected = [classifier.classify([Image.open(io.BytesIO(d)).convert("RGB")])[0] for d in images]

    def post(data: bytes) -> requests.Response:
        return requests.post(
            f"{served.url}/v2/job", headers=AUTH, files=job_files(image=data), timeout=60
        )

    with serve(timm_checkpoint, tmp_path) as served:
        assert len(spawned(served.process.pid)) == WORKERS + 1
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, images))
        for answer, want in zip(answers, expected, strict=True):
            assert answer.status_code == 200, answer.text
            got = answer.json()["config"]["labels"]
            for label, prob in want.items():
                assert got[label] == pytest.approx(prob, abs=1e-4)

        # A background job runs on a worker's share of the queue, through the same model (an
        # image not judged before: the verdict cache would answer a repeat without the model).
        unseen = astronaut_jpeg((640, 240))
        job = requests.post(
            f"{served.url}/v2/job/async", headers=AUTH, files=job_files(image=unseen), timeout=30
        )
        assert job.status_code == 201, job.text
        state = f"{served.url}/v2/job/async/{job.json()['id']}/job.state.current"
        wait_for(
            lambda: requests.get(state, headers=AUTH, timeout=10).text == "processed",
            60,
            "the background job",
            interval=0.1,
            detail=log_of(served.log),
        )

        # Whichever worker answers /metrics, it counts every process: the sync requests from
        # the workers, the images batched by the inference process (16 + the background one).
        for _ in range(4):
            ok = metric(served.url, "nsfwd_requests_total", route="/v2/job", status="200")
            assert ok == 16
            assert metric(served.url, "nsfwd_batch_size_sum") == 17
            # The model's device and dtype (fp32, as nsfwd_serve asks) come from the inference
            # process (no torch here); test_cpu_default.py checks the CPU's own default.
            info = {"device": "cpu", "dtype": "float32", "runtime": "torch"}
            assert metric(served.url, "nsfwd_model_info", **info) == 1
            health = requests.get(f"{served.url}/healthz", timeout=10).text.splitlines()
            assert health[:3] == ["ok", "device: cpu", "dtype: float32 (as asked)"]
        processes = [served.process.pid, *descendants(served.process.pid)]
    assert served.process.returncode == 0, served.log.read_text()
    all_exit(processes, served)


def test_sigterm_to_the_whole_group_stops_workers_before_the_model(
    timm_checkpoint: Path, tmp_path: Path
) -> None:
    with serve(timm_checkpoint, tmp_path) as served:
        processes = [served.process.pid, *descendants(served.process.pid)]
        os.killpg(served.process.pid, signal.SIGTERM)  # as systemd and terminals do
        assert served.process.wait(timeout=60) == 0, served.log.read_text()
    log = served.log.read_text()
    assert "lost the inference process" not in log, log
    all_exit(processes, served)


def test_a_dead_inference_process_stops_the_server_with_an_error(
    timm_checkpoint: Path, tmp_path: Path
) -> None:
    with serve(timm_checkpoint, tmp_path) as served:
        processes = [served.process.pid, *descendants(served.process.pid)]
        os.kill(inference_pid(served), signal.SIGKILL)
        assert served.process.wait(timeout=60) == 1
    assert "the inference process died" in served.log.read_text()
    all_exit(processes, served)


def test_a_killed_supervisor_leaves_no_process_behind(
    timm_checkpoint: Path, tmp_path: Path
) -> None:
    with serve(timm_checkpoint, tmp_path) as served:
        port = int(served.url.rsplit(":", 1)[1])
        children = descendants(served.process.pid)
        served.process.kill()
        served.process.wait(timeout=10)
        all_exit(children, served)
    with socket.socket() as probe:  # nothing holds the port any more
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_a_worker_whose_inference_process_is_gone_exits(
    timm_checkpoint: Path, tmp_path: Path
) -> None:
    """A worker that starts after the inference process went away (the supervisor was killed
    while uvicorn was still starting its workers) must give up, not wait out a long connect
    timeout while uvicorn ignores the SIGTERM its orphan watch sends during start-up."""
    runtime = tmp_path / "runtime"
    (runtime / supervisor.METRICS).mkdir(parents=True)
    settings = Settings(model=str(timm_checkpoint), data_dir=tmp_path / "data")
    (runtime / supervisor.SETTINGS).write_bytes(pickle.dumps(settings))
    info = {"model_name": "tiny", "max_batch_size": 2, "max_queue": 8}
    (runtime / supervisor.MODEL_INFO).write_text(json.dumps(info))  # but no socket
    env = {
        **os.environ,
        supervisor.RUNTIME_ENV: str(runtime),
        supervisor.SUPERVISOR_ENV: str(os.getpid()),
        "PROMETHEUS_MULTIPROC_DIR": str(runtime / supervisor.METRICS),
    }
    command = [sys.executable, "-m", "uvicorn", "nsfwd.serve.supervisor:worker_app", "--factory"]
    command += ["--port", str(free_port())]
    log = tmp_path / "worker.log"
    with log.open("wb") as output:
        worker = subprocess.Popen(command, env=env, stdout=output, stderr=output)
    try:
        status = worker.wait(timeout=supervisor.WORKER_CONNECT_TIMEOUT_S + 15)
    finally:
        worker.kill()
        worker.wait()
    assert status != 0, log.read_text()
    assert "cannot reach the inference process" in log.read_text()


def test_connections_accepted_by_the_workers_get_tcp_nodelay() -> None:
    """uvicorn binds the shared socket with proto 0, and asyncio sets TCP_NODELAY only on
    sockets that say they are TCP; without it each keep-alive answer waits for a delayed ACK."""
    config = uvicorn.Config("nsfwd.serve.supervisor:worker_app", host="127.0.0.1", port=free_port())
    bound = config.bind_socket()
    listener = tcp_listener(bound)  # without it, TCP_NODELAY is 0 (uvicorn 0.54)

    async def accepted_nodelay() -> int:
        got: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            got.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=listener)
        _, writer = await asyncio.open_connection(*listener.getsockname()[:2])
        try:
            return await asyncio.wait_for(got, 10)
        finally:
            writer.close()
            server.close()

    with listener:
        assert asyncio.run(accepted_nodelay()) != 0
