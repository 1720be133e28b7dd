"""Loopback peers the tests share: an image host and webhook receiver, a canary, and a
resolver that gives test host names (``images.test``, ``canary.test``, ...) their addresses.

The host listens on 127.0.0.2, which tests let nsfwd reach through ``allow_networks``; the
canary listens on 127.0.0.1 at the same port, so a fetch that resolved twice, or checked only
one of several addresses, would land on it, and its record of hits would tell.
"""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from PIL import Image
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the Standard Webhooks documentation's example
ALLOWED = ["127.0.0.2/32"]


@dataclass(frozen=True)
class Hit:
    """One request the receiver got, and what it answered."""

    headers: dict[str, str]
    body: bytes
    at: float
    answered: int


class Host:
    """Webhook receiver and image host in one app.

    ``POST /hook/{name}``: records the request; ``?fail=N`` answers 500 to the first N,
    ``?status=S`` always answers S, ``?sleep=T`` sleeps T seconds before answering the first.
    ``GET /photo.jpg`` a JPEG, ``/text`` not an image, ``/missing`` 404, ``/slow?gate=G`` holds
    the answer until :meth:`open_gate` (G), ``/redirect?to=URL`` a 302, ``/files/{name}``
    what :meth:`serve` put there, byte for byte, with its headers.
    """

    def __init__(self) -> None:
        self.hits: dict[str, list[Hit]] = defaultdict(list)
        self.gates: dict[str, threading.Event] = defaultdict(threading.Event)
        self.lock = threading.Lock()
        self.photo = jpeg()
        self.files: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.app = Starlette(
            routes=[
                Route("/hook/{name}", self.hook, methods=["POST"]),
                Route("/photo.jpg", self.image),
                Route("/text", self.text),
                Route("/slow", self.slow),
                Route("/redirect", self.redirect, methods=["GET", "POST"]),
                Route("/files/{name}", self.file),
            ]
        )

    async def hook(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = await request.body()
        params = request.query_params
        with self.lock:  # recorded on arrival, so a request still sleeping counts
            earlier = len(self.hits[name])
            status = 500 if earlier < int(params.get("fail", 0)) else int(params.get("status", 200))
            self.hits[name].append(Hit(dict(request.headers), body, time.monotonic(), status))
        if earlier == 0 and "sleep" in params:
            await asyncio.sleep(float(params["sleep"]))
        return Response(b"thanks" if status < 300 else b"no", status_code=status)

    async def image(self, request: Request) -> Response:
        return Response(self.photo, media_type="image/jpeg")

    async def text(self, request: Request) -> Response:
        return Response(b"this is not an image, it is text\n" * 20, media_type="image/jpeg")

    async def slow(self, request: Request) -> Response:
        gate = self.gates[request.query_params["gate"]]
        deadline = time.monotonic() + 8  # under the fetch's 10 s read timeout
        while not gate.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return Response(self.photo, media_type="image/jpeg")

    async def redirect(self, request: Request) -> Response:
        return Response(status_code=302, headers={"location": request.query_params["to"]})

    async def file(self, request: Request) -> Response:
        data, headers = self.files[request.path_params["name"]]
        return Response(data, headers=headers)

    def serve(self, name: str, data: bytes, headers: dict[str, str] | None = None) -> str:
        """Serve ``data`` at ``/files/{name}`` with ``headers`` (as given: a Content-Encoding
        is not applied); returns the path."""
        self.files[name] = (data, {"content-type": "image/jpeg"} | (headers or {}))
        return f"/files/{name}"

    def open_gate(self, name: str) -> None:
        self.gates[name].set()

    def received(self, name: str) -> list[Hit]:
        with self.lock:
            return list(self.hits[name])


def jpeg(size: tuple[int, int] = (256, 256), seed: int = 0) -> bytes:
    """A small noisy JPEG (enough detail that the tiny model has something to look at)."""
    import random

    rng = random.Random(seed)
    image = Image.frombytes(
        "RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3))
    )
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


NAMES: dict[str, list[str]] = {
    "images.test": ["127.0.0.2"],
    "other.test": ["127.0.0.2"],
    "canary.test": ["127.0.0.1"],
    "mixed.test": ["127.0.0.2", "127.0.0.1"],
    "mixed-first.test": ["127.0.0.1", "127.0.0.2"],
    "metadata.test": ["169.254.169.254"],
    "public.test": ["93.184.216.34", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
    "empty.test": [],
}


async def names(host: str, port: int) -> list[str]:
    """The test resolver (a ``FetchPolicy`` resolver): NAMES, and 'Name or service not known'
    for the rest."""
    try:
        return list(NAMES[host.removesuffix(".")])
    except KeyError:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None


def verified(hit: Hit, secret: str = SECRET) -> Any:
    """The body, parsed, after checking its signature the way receivers do."""
    return Webhook(secret).verify(hit.body, hit.headers)


class Canary:
    """A TCP listener on 127.0.0.1 that records every connection; nothing may ever reach it.

    It answers like a web server, so that a fetch that wrongly reached it would succeed and the
    recorded hit, not an error, would tell.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.hits: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", port))
        self._listener.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="canary", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            with conn:
                self.hits.append(b"<connected>")
                conn.settimeout(1)
                try:
                    self.hits[-1] = conn.recv(65536) or b"<connected>"
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ncanary")
                except OSError:
                    pass

    def settle(self) -> None:
        """Return once every connection made so far is in :attr:`hits`.

        The canary serves connections one at a time, in the order they arrived, and records
        each before answering it: once a marker connection of its own is answered, every
        earlier one is recorded. The marker is then taken out of the record.
        """
        marker = f"MARKER {uuid.uuid4().hex}".encode()
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as conn:
            conn.sendall(marker)
            conn.recv(1024)
        self.hits.remove(marker)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()
