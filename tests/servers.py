"""Real HTTP servers on loopback for tests (uvicorn in a background thread), and their metrics."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
import uvicorn


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serve_app(
    app: Any, host: str = "127.0.0.1", port: int | None = None, **config: Any
) -> Iterator[str]:
    """Run ``app`` on ``port`` (else a free one) of ``host`` (loopback) until the block ends;
    yields its URL."""
    port = port or free_port(host)
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", **config)
    )
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def half_sent(url: str, path: str, headers: str, length: int, sent: bytes) -> socket.socket:
    """A POST to ``path`` declaring a body of ``length`` bytes, whose head (``headers``: lines
    ending in CRLF) and first bytes, ``sent``, go out; the rest never does."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{headers}"
        f"Content-Length: {length}\r\n\r\n".encode()
        + sent
    )
    return sock


def metric(base_url: str, name: str, **labels: str) -> float:
    """The value of one sample on the server's /metrics page (0 when absent)."""
    text = requests.get(f"{base_url}/metrics", timeout=10).text
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == (f"{name}{{{wanted}}}" if labels else name):
            return float(value)
    return 0.0
