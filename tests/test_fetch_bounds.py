"""Fetching with bounded cost (issue 11, item 3) against a real ``nsfwd serve`` process: many
compression bombs at once leave its memory flat, and refusals do not reveal what an internal
name resolves to."""

from __future__ import annotations

import ipaddress
import socket
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from eachlabs_calls import ROUTE
from hosts import ALLOWED, Host
from serve_process import nsfwd_serve
from waiting import wait_for

KEY = "bomb-test-key-5e9a"
BOMBS = 8
INFLATED = 200 * 1024 * 1024  # each body inflates to 200 MiB
MIB = 1024 * 1024


def gzip_bomb(size: int = INFLATED) -> bytes:
    """A gzip stream of ``size`` zero bytes (about 200 KiB on the wire), built a MiB at a time."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(MIB)
    parts = [packer.compress(block) for _ in range(size // MIB)]
    return b"".join([*parts, packer.flush()])


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


class PeakMemory:
    """The peak resident memory of a process from now on: its VmHWM after resetting it
    (``/proc/PID/clear_refs``), or, where that is not allowed, VmRSS sampled every 5 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.sampled = 0
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            self.reset = True
        except OSError:
            self.reset = False
        self.start = memory_kib(pid, "VmHWM" if self.reset else "VmRSS")

    def sample(self) -> None:
        self.sampled = max(self.sampled, memory_kib(self.pid, "VmRSS"))

    def peak(self) -> int:
        return memory_kib(self.pid, "VmHWM") if self.reset else self.sampled


def predict(url: str, image: str) -> dict[str, Any]:
    """Create an Eachlabs prediction of ``image`` and wait for its end."""
    headers = {"X-API-Key": KEY}
    body = {"model": "nsfw-image-detection", "input": {"image": image}}
    created = requests.post(f"{url}{ROUTE}/", json=body, headers=headers, timeout=30)
    assert created.status_code == 200, created.text
    prediction = created.json()["predictionID"]

    def finished() -> dict[str, Any] | None:
        doc: dict[str, Any] = requests.get(
            f"{url}{ROUTE}/{prediction}", headers=headers, timeout=10
        ).json()
        return None if doc["status"] == "processing" else doc

    done: dict[str, Any] = wait_for(finished, 60, "the prediction to finish")
    return done


@pytest.fixture(scope="module")
def served(
    timm_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory, host: tuple[str, Host]
) -> Any:
    folder = tmp_path_factory.mktemp("bombs")
    env = {
        "NSFWD_API_KEYS": KEY,
        "NSFWD_FETCH_ALLOW_NETWORKS": ",".join(ALLOWED),
        "NSFWD_FETCH_ALLOW_HTTP": "true",
        "NSFWD_KEY_MAX_IN_FLIGHT": str(2 * BOMBS),
    }
    with nsfwd_serve(timm_checkpoint, folder / "data", folder / "serve.log", env=env) as server:
        yield server


def test_many_gzip_bombs_at_once_leave_memory_flat(served: Any, host: tuple[str, Host]) -> None:
    base, receiver = host
    bomb = base + receiver.serve("bomb.jpg", gzip_bomb(), {"content-encoding": "gzip"})
    photo = base + "/photo.jpg"
    assert predict(served.url, photo)["status"] == "success"  # warm: every code path has run
    peak = PeakMemory(served.process.pid)
    started = time.monotonic()
    with ThreadPoolExecutor(BOMBS) as clients:
        futures = [clients.submit(predict, served.url, bomb) for _ in range(BOMBS)]
        while not all(future.done() for future in futures):
            peak.sample()
            time.sleep(0.005)
        outcomes = [future.result() for future in futures]
    took = time.monotonic() - started
    for outcome in outcomes:
        assert outcome["status"] == "error", outcome
        assert "Content-Encoding gzip" in str(outcome), outcome
    grown_mib = (peak.peak() - peak.start) / 1024
    assert grown_mib < 50, f"{BOMBS} bombs raised the server's peak memory by {grown_mib:.0f} MiB"
    assert took < 30


def _internal_name() -> tuple[str, set[str]]:
    """A name this machine resolves to non-public addresses (its own host name, from
    /etc/hosts), and those addresses; skips where there is none."""
    name = socket.gethostname()
    try:
        infos = socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM)
    except OSError:
        pytest.skip(f"this machine's name {name!r} does not resolve")
    addresses = {str(info[4][0]) for info in infos}
    if any(ipaddress.ip_address(a).is_global for a in addresses):
        pytest.skip(f"{name!r} resolves to a public address here: {addresses}")
    return name, addresses


def test_a_refusal_does_not_reveal_what_an_internal_name_resolves_to(served: Any) -> None:
    """The server resolves the name with the system's resolver; its refusal names the host and
    the kind of address, never the address (which would map the intranet name by name)."""
    name, addresses = _internal_name()
    body = {"model": "nsfw-image-detection", "input": {"image": f"https://{name}/photo.jpg"}}
    res = requests.post(f"{served.url}{ROUTE}/", json=body, headers={"X-API-Key": KEY}, timeout=30)
    assert res.status_code == 400, res.text
    message = res.json()["message"]
    assert name in message and "address" in message, message
    for address in addresses:
        assert address not in message, message
