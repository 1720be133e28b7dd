"""A real ``python -m nsfwd serve`` in a subprocess, for tests that kill, signal or restart it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from servers import free_port


def wait(condition: Callable[[], Any], timeout: float, what: str, log: Path) -> Any:
    """Poll ``condition`` until it is truthy (and return it); fail with the server's log."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; server log:\n{log.read_text()}")
        time.sleep(0.1)
    return result


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
    """``nsfwd serve`` on ``checkpoint`` (CPU, loopback, a free port, its store in
    ``data_dir``, output appended to ``log``); yields once ``/healthz`` is 200. On leaving,
    a server still running gets SIGTERM, then SIGKILL after 30 s."""
    port = free_port()
    environment = {
        **os.environ,
        "NSFWD_MODEL": str(checkpoint),
        "NSFWD_DEVICE": "cpu",
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
        except requests.ConnectionError:
            return False

    try:
        wait(healthy, start_timeout, "the server to start", log)
        yield Served(url, process, log)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
