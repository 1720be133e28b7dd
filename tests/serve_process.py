"""A real ``python -m nsfwd serve`` in a subprocess, for tests that kill, signal or restart it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from servers import free_port
from waiting import wait_for


def log_of(log: Path) -> Callable[[], str]:
    """The ``detail`` of a :func:`waiting.wait_for` on a server: its log, read on failure."""
    return lambda: f"server log:\n{log.read_text()}"


def health(url: str) -> str:
    """The text of the server's ``/healthz``; empty while it does not answer."""
    try:
        return requests.get(f"{url}/healthz", timeout=5).text
    except (requests.ConnectionError, requests.Timeout):
        return ""


@dataclass
class Served:
    """A running server: its URL, its process and its log file."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path


@contextmanager
def nsfwd_serve(
    checkpoint: Path,
    data_dir: Path,
    log: Path,
    *args: str,
    env: dict[str, str] | None = None,
    start_timeout: float = 120,
) -> Iterator[Served]:
    """``nsfwd serve`` on ``checkpoint`` (CPU in fp32, loopback, a free port, its store in
    ``data_dir``, output appended to ``log``); yields once ``/healthz`` is 200. On leaving,
    a server still running gets SIGTERM, then SIGKILL after 30 s."""
    port = free_port()
    environment = {
        **os.environ,
        "NSFWD_MODEL": str(checkpoint),
        "NSFWD_DEVICE": "cpu",
        "NSFWD_DTYPE": "float32",  # the suite's precision, whatever this CPU's default
        "NSFWD_HOST": "127.0.0.1",
        "NSFWD_PORT": str(port),
        "NSFWD_DATA_DIR": str(data_dir),
        **(env or {}),
    }
    with log.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "nsfwd", "serve", *args],
            env=environment,
            stdout=output,
            stderr=output,
            start_new_session=True,  # its own process group, for tests that signal the group
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.poll() is None, f"the server exited:\n{log.read_text()}"
        try:
            return requests.get(f"{url}/healthz", timeout=2).status_code == 200
        except (requests.ConnectionError, requests.Timeout):  # not listening, or not routing yet
            return False

    try:
        wait_for(healthy, start_timeout, "the server to start", interval=0.1, detail=log_of(log))
        yield Served(url, process, log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
