"""A real Matrix Synapse homeserver for tests: its own virtual environment (matrix-synapse pins
packages, cryptography among them, that nsfwd's environment has at other versions), made once
under a cache folder and reused; a homeserver on loopback with SQLite, our module configured,
started and stopped by the test.

The environment is ``$NSFWD_TEST_CACHE`` (default ``~/.cache/nsfwd-tests``)
``/synapse-<version>``; nsfwd's module reaches it through ``PYTHONPATH`` (this checkout's
``src``), since it imports only the standard library and Synapse's own packages.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import requests

from servers import free_port
from waiting import wait_for

SYNAPSE_VERSION: Final = "1.163.2"
SRC: Final = Path(__file__).resolve().parent.parent / "src"
MODULE: Final = "nsfwd.integrations.synapse.MediaModerator"


def cache_dir() -> Path:
    """Where test tools that take long to install are kept between runs."""
    return Path(os.environ.get("NSFWD_TEST_CACHE") or Path.home() / ".cache" / "nsfwd-tests")


def synapse_python() -> Path:
    """The Python of a virtual environment with matrix-synapse, made on first use (a few
    minutes, from PyPI) and reused; one process makes it while others wait."""
    venv = cache_dir() / f"synapse-{SYNAPSE_VERSION}"
    python = venv / "bin" / "python"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with (venv.parent / f"{venv.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ready = venv / ".installed"
        if not ready.exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True,
                           timeout=300)  # fmt: skip
            subprocess.run(
                [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                 f"matrix-synapse=={SYNAPSE_VERSION}"],
                check=True, timeout=1200,
            )  # fmt: skip
            ready.touch()
    return python


@dataclass
class Homeserver:
    """A running Synapse: its URL and log."""

    url: str
    log: Path
    process: subprocess.Popen[bytes]

    def register(self, user: str) -> str:
        """Register ``user`` (no verification) and return an access token."""
        body: dict[str, Any] = {"username": user, "password": secrets.token_urlsafe(12)}
        first = requests.post(f"{self.url}/_matrix/client/v3/register", json=body, timeout=30)
        session = first.json().get("session")
        body["auth"] = {"type": "m.login.dummy", "session": session}
        done = requests.post(f"{self.url}/_matrix/client/v3/register", json=body, timeout=30)
        assert done.status_code == 200, done.text
        token: str = done.json()["access_token"]
        return token

    def upload(self, token: str, data: bytes, content_type: str, name: str) -> requests.Response:
        """Upload through the client-server media API."""
        return requests.post(
            f"{self.url}/_matrix/media/v3/upload",
            params={"filename": name},
            data=data,
            headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
            timeout=120,
        )

    def download(self, token: str, content_uri: str) -> requests.Response:
        """Download what an upload stored (authenticated media)."""
        server, media_id = content_uri.removeprefix("mxc://").split("/")
        return requests.get(
            f"{self.url}/_matrix/client/v1/media/download/{server}/{media_id}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )

    def alive(self) -> bool:
        """Whether it answers the client API."""
        try:
            return requests.get(f"{self.url}/_matrix/client/versions", timeout=5).ok
        except requests.RequestException:
            return False


def _config(folder: Path, port: int, module: dict[str, Any]) -> dict[str, Any]:
    return {
        "server_name": "localhost",
        "pid_file": str(folder / "homeserver.pid"),
        "listeners": [{"port": port, "bind_addresses": ["127.0.0.1"], "type": "http",
                       "tls": False, "x_forwarded": False,
                       "resources": [{"names": ["client"], "compress": False}]}],
        "database": {"name": "sqlite3", "args": {"database": str(folder / "homeserver.db")}},
        "media_store_path": str(folder / "media"),
        "signing_key_path": str(folder / "signing.key"),
        "report_stats": False,
        "enable_registration": True,
        "enable_registration_without_verification": True,
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "macaroon_secret_key": secrets.token_hex(16),
        "form_secret": secrets.token_hex(16),
        "rc_registration": {"per_second": 100, "burst_count": 100},
        "rc_media_create": {"per_second": 100, "burst_count": 100},
        "modules": [{"module": MODULE, "config": module}],
    }  # fmt: skip


@contextmanager
def homeserver(folder: Path, module: dict[str, Any]) -> Iterator[Homeserver]:
    """A Synapse in ``folder`` with our module configured with ``module``, until the block
    ends (then SIGTERM, and SIGKILL after 30 s)."""
    python = synapse_python()
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = folder / "homeserver.yaml"
    config.write_text(json.dumps(_config(folder, port, module)))  # JSON is YAML
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    app = [str(python), "-m", "synapse.app.homeserver", "--config-path", str(config)]
    subprocess.run([*app, "--generate-keys"], env=env, check=True, timeout=300,
                   capture_output=True)  # fmt: skip
    log = folder / "synapse.log"
    with log.open("ab") as output:
        process = subprocess.Popen(app, env=env, stdout=output, stderr=output)
    server = Homeserver(f"http://127.0.0.1:{port}", log, process)
    try:

        def started() -> bool:
            assert process.poll() is None, f"synapse exited:\n{log.read_text()[-4000:]}"
            return server.alive()

        wait_for(started, 180, "synapse to start", interval=0.25,
                 detail=lambda: log.read_text()[-4000:])  # fmt: skip
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
