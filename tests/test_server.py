"""`nsfwd serve` as a real process: start-up, health, metrics; and the no-keys guard (static
keys or keys in the store), in-process where it refuses."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from nsfwd.cli import main
from nsfwd.jobs import Store
from nsfwd.jobs.database import database_url
from servers import free_port
from waiting import wait_for


def _env(**extra: str) -> dict[str, str]:
    """This environment without its NSFWD_ settings but the torch runtime (which spares the
    start-up measurement: tests/test_runtimes.py tests it), and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NSFWD_")}
    return {**env, "NSFWD_RUNTIME": "torch", **extra}


def _wait_healthy(port: int, server: subprocess.Popen[str]) -> None:
    def healthy() -> bool:
        assert server.poll() is None, "the server exited before it became healthy"
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(healthy, 60, "the server to become healthy", interval=0.1)


def test_serve_answers_healthz_and_metrics_once_loaded(
    timm_checkpoint: Path, tmp_path: Path
) -> None:
    port = free_port()
    command = [sys.executable, "-m", "nsfwd", "serve", "--model", str(timm_checkpoint),
               "--port", str(port)]  # fmt: skip
    env = _env(NSFWD_DATA_DIR=str(tmp_path / "data"))
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as server:
        try:
            _wait_healthy(port, server)
            health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).text.splitlines()
            assert health[0] == "ok" and health[1].startswith("device: ")
            dtype = health[2].removeprefix("dtype: ").split()[0]
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
            assert metrics.status_code == 200
            assert "nsfwd_queue_size" in metrics.text
            assert (
                f'nsfwd_model_info{{device="cpu",dtype="{dtype}",runtime="torch"}} 1.0'
                in metrics.text
            )
            docs = httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=5).json()
            assert "/v2/job" in docs["paths"]
        finally:
            server.terminate()
            _, stderr = server.communicate(timeout=30)
    assert "no NSFWD_API_KEYS set" in stderr


def test_serve_refuses_a_public_bind_without_keys(
    timm_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name in [name for name in os.environ if name.startswith("NSFWD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("NSFWD_DATA_DIR", str(tmp_path / "data"))  # the guard looks there too
    argv = ["serve", "--model", str(timm_checkpoint), "--host", "0.0.0.0", "--port", "0"]
    with caplog.at_level(logging.ERROR):
        assert main(argv) == 2
    assert "refusing to bind 0.0.0.0 without API keys" in caplog.text
    assert "--insecure-no-auth" in caplog.text and "nsfwd keys create" in caplog.text


def test_serve_binds_publicly_with_only_keys_from_the_store(
    timm_checkpoint: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"

    async def make_key() -> str:
        async with Store(database_url(data_dir)) as store:
            return (await store.keys.create("only-one"))[0]

    key = asyncio.run(make_key())
    port = free_port("0.0.0.0")
    command = [sys.executable, "-m", "nsfwd", "serve", "--model", str(timm_checkpoint),
               "--host", "0.0.0.0", "--port", str(port)]  # fmt: skip
    env = _env(NSFWD_DATA_DIR=str(data_dir))
    with subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) as server:
        try:
            _wait_healthy(port, server)
            job = {"type": "inference.ping.v1"}
            files = {"job": ("job.json", json.dumps(job), "application/json")}
            url = f"http://127.0.0.1:{port}/v2/job"
            assert httpx.post(url, files=files, timeout=10).status_code == 401
            headers = {"Authorization": f"Bearer {key}"}
            assert httpx.post(url, files=files, headers=headers, timeout=10).status_code == 200
        finally:
            server.terminate()
            _, stderr = server.communicate(timeout=30)
    assert "refusing" not in stderr and "without a token" not in stderr
