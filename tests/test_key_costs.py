"""What one key can cost everyone (issue 21), tried with real servers on loopback and real
concurrent clients: each test fails on the code before the fix.

- Eachlabs, OpenAI and pict-rs bodies take the key's slot before an upload slot;
- ``POST /v1/moderations``: the key's slot weighs its inputs, the rate is checked before the
  body, the JSON outside data URIs is bounded, fetches per request are capped, and the first
  refusal cancels the other inputs;
- GETs hold per-key slots, and stored images stream;
- one key's slow host names leave the lookup threads to others;
- static keys are long, wrong keys are slowed per address, the keyless API answers loopback
  names only;
- connections must send their headers in time, and their number is bounded.
"""

from __future__ import annotations

import base64
import hashlib
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import Any

import pydantic
import pytest
import requests
from PIL import Image

from eachlabs_calls import KEY, OTHER
from gates import GatedClassifier, shut
from hosts import ALLOWED, jpeg
from nsfwd.api import create_app
from nsfwd.engine.batcher import Engine
from nsfwd.jobs import Store
from nsfwd.models.classifier import Classifier
from nsfwd.serve.connections import uvicorn_options
from nsfwd.settings import Settings
from photos import astronaut_jpeg
from prodia_jobs import MODEL
from servers import half_sent, serve_app
from test_api_prodia_async import V2, session, submit, wait_for_state
from test_bad_input import read_response
from waiting import wait_for

MODERATIONS = "/v1/moderations"
PREDICTIONS = "/v1/prediction/"
VALIDATE = "/v1/validate"


@contextmanager
def server(
    classifier: Classifier, tmp_path: Path, *, gated: bool = False, **settings: Any
) -> Iterator[tuple[str, GatedClassifier]]:
    """A server with a store, for keys KEY and OTHER, fetching from the loopback test hosts,
    with uvicorn's limits as ``nsfwd serve`` sets them; its model behind a gate (open unless
    ``gated``)."""
    model = GatedClassifier(classifier.loaded, classifier.device, classifier.dtype, classifier.name)
    model.gate.set()
    options: dict[str, Any] = {
        "model": classifier.name,
        "served_model_name": MODEL,
        "api_keys": [KEY, OTHER],
        "data_dir": tmp_path,
        "fetch_allow_networks": ALLOWED,
        "fetch_allow_http": True,
    }
    config = Settings(**(options | settings))
    engine = Engine(model, max_batch_size=4, max_queue=config.max_queue, limits=config.image_limits)
    app = create_app(engine, config, Store.from_settings(config))
    with serve_app(app, **uvicorn_options(config)) as url, ExitStack() as stack:
        if gated:
            stack.enter_context(shut(model))
        yield url, model


def data_uri(data: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(data).decode()


def moderate(url: str, key: str, urls: list[str], timeout: float = 30) -> requests.Response:
    inputs = [{"type": "image_url", "image_url": {"url": each}} for each in urls]
    return requests.post(
        f"{url}{MODERATIONS}",
        json={"input": inputs},
        headers={"Authorization": f"Bearer {key}"},
        timeout=timeout,
    )


def trickle(url: str, path: str, headers: str, length: int) -> socket.socket:
    """A JSON POST whose head and first byte are sent; the rest of its ``length`` never is."""
    return half_sent(url, path, headers + "Content-Type: application/json\r\n", length, b"{")


# --- request bodies take the key's slot first ------------------------------------------------


@pytest.mark.parametrize(
    ("path", "auth"), [(PREDICTIONS, f"X-API-Key: {KEY}\r\n"),
                       (MODERATIONS, f"Authorization: Bearer {KEY}\r\n"),
                       (f"{VALIDATE}?key={KEY}", "")],  # pict-rs sends the key in the query
)  # fmt: skip
def test_one_key_trickling_bodies_does_not_take_every_upload_slot(
    classifier: Classifier, tmp_path: Path, path: str, auth: str
) -> None:
    """Key A opens three bodies that never finish; past its share (the third), it is refused
    429 before it takes an upload slot, so key B's upload gets the one left. Before, these
    routes took no key slot: A held all three upload slots and B got 503."""
    with server(classifier, tmp_path, max_queue=4, max_uploads=3) as (url, _), ExitStack() as held:
        socks = [held.enter_context(trickle(url, path, auth, 1000)) for _ in range(2)]
        time.sleep(0.3)  # both bodies are being read: two upload slots taken
        third = held.enter_context(trickle(url, path, auth, 1000))
        answer = read_response(third)
        assert answer.startswith(b"HTTP/1.1 429 "), answer[:300]
        assert b"past its share" in answer
        other = moderate(url, OTHER, [data_uri(astronaut_jpeg((160, 160)))])
        assert other.status_code == 200, other.text
        assert all(sock.fileno() >= 0 for sock in socks)


# --- POST /v1/moderations ----------------------------------------------------------------------


def test_a_moderation_request_weighs_its_inputs(classifier: Classifier, tmp_path: Path) -> None:
    """Key A's six-image request is at the model: it holds six slots, so its next request is
    refused (its share is 1, the server busy at 4) while key B's gets through. Before, a
    moderation request took no slot at all."""
    images = [data_uri(astronaut_jpeg((160 + i, 160))) for i in range(6)]
    with (
        server(classifier, tmp_path, gated=True, max_queue=8) as (url, model),
        ThreadPoolExecutor(2) as pool,
    ):
        big = pool.submit(moderate, url, KEY, images)
        assert model.entered.wait(20)
        refused = moderate(url, KEY, images[:1], timeout=10)
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"] == "1"
        assert "6 requests in progress" in refused.json()["error"]["message"]
        other = pool.submit(moderate, url, OTHER, images[:1])
        time.sleep(0.3)
        model.gate.set()
        assert other.result().status_code == 200
        assert big.result().status_code == 200
        assert len(big.result().json()["results"]) == 6


def test_the_rate_is_checked_before_the_body_is_parsed(
    classifier: Classifier, tmp_path: Path
) -> None:
    with server(classifier, tmp_path, key_creates_per_minute=1) as (url, _):
        assert moderate(url, KEY, [data_uri(astronaut_jpeg((160, 160)))]).status_code == 200
        malformed = requests.post(
            f"{url}{MODERATIONS}",
            data=b"[" * 100_000,  # parsing this would be the only work, and a 400
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
            timeout=10,
        )
        assert malformed.status_code == 429, malformed.text
        assert malformed.json()["error"]["code"] == "rate_limit_exceeded"


def test_json_outside_the_data_uris_is_bounded(classifier: Classifier, tmp_path: Path) -> None:
    """A valid request padded with 200 KB of JSON numbers (far under the body limit, which
    makes room for one image as base64): refused before parsing. Before, it was parsed on the
    event loop and answered."""
    with server(classifier, tmp_path) as (url, _):
        body = (
            '{"input": [{"type": "image_url", "image_url": {"url": "'
            + data_uri(astronaut_jpeg((160, 160)))
            + '"}}], "padding": ['
            + ",".join(["0"] * 100_000)
            + "]}"
        )
        res = requests.post(
            f"{url}{MODERATIONS}",
            data=body,
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
            timeout=10,
        )
        assert res.status_code == 400, res.text
        assert "bytes of JSON besides its data: URIs" in res.json()["error"]["message"]


@contextmanager
def counting_host(hold_s: float) -> Iterator[tuple[str, dict[str, int]]]:
    """An image host on 127.0.0.2 that holds each answer ``hold_s`` (``/slow``) or none
    (``/photo.jpg``; ``/broken`` is not an image); yields its URL and its counts: the most
    requests in progress at once (``most``; ``most_in_one_request`` for paths ``?R-I``), and
    the held ones whose client hung up (``abandoned``)."""
    photo, lock = jpeg((160, 160)), threading.Lock()
    state = {"now": 0, "most": 0, "abandoned": 0, "most_in_one_request": 0}
    now_by_request: dict[str, int] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            # `?R-I` names image I of request R: the most at once within one request is
            # counted too, free of the up to 50 ms a hung-up fetch stays counted (hold()).
            request = self.path.partition("?")[2].partition("-")[0]
            with lock:
                state["now"] += 1
                state["most"] = max(state["most"], state["now"])
                now_by_request[request] = now_by_request.get(request, 0) + 1
                state["most_in_one_request"] = max(
                    state["most_in_one_request"], now_by_request[request]
                )
            try:
                if self.path.startswith("/slow") and self.hold():
                    return
                body = b"not an image" if self.path == "/broken" else photo
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            finally:
                with lock:
                    state["now"] -= 1
                    now_by_request[request] -= 1

        def hold(self) -> bool:
            """Wait ``hold_s``; True (and counted) if the client hangs up meanwhile."""
            deadline = time.monotonic() + hold_s
            while time.monotonic() < deadline:
                readable = select.select([self.connection], [], [], 0.05)[0]
                if readable and not self.connection.recv(1, socket.MSG_PEEK):
                    with lock:
                        state["abandoned"] += 1
                    return True
            return False

        def log_message(self, *args: Any) -> None:
            pass

    host = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.2:{host.server_address[1]}", state
    finally:
        host.shutdown()
        host.server_close()


def test_a_request_fetches_a_few_urls_at_a_time(classifier: Classifier, tmp_path: Path) -> None:
    """Twelve URLs in one request: at most 4 are fetched (and held) at once. Before, all
    twelve at once, each up to 10 MB."""
    with server(classifier, tmp_path) as (url, _), counting_host(0.3) as (images, counts):
        res = moderate(url, KEY, [f"{images}/slow?{i}" for i in range(12)])
        assert res.status_code == 200, res.text
        assert len(res.json()["results"]) == 12
        assert counts["most"] == 4


def test_the_first_refusal_cancels_the_other_inputs(classifier: Classifier, tmp_path: Path) -> None:
    """One input is not an image; the others take 10 s to fetch. The 400 comes at once, and
    the other fetches are given up (their connections closed). Before, they ran on to the end
    after the answer, fetching what nobody would judge."""
    with server(classifier, tmp_path) as (url, _), counting_host(10) as (images, counts):
        started = time.monotonic()
        res = moderate(url, KEY, [f"{images}/slow?a", f"{images}/broken", f"{images}/slow?b"])
        assert res.status_code == 400, res.text
        assert "input[1]" in res.json()["error"]["message"]
        wait_for(lambda: counts["abandoned"] == 2, 3, "the two slow fetches to be given up")
        assert time.monotonic() - started < 5


def test_each_result_carries_the_digest_of_the_bytes_judged(
    classifier: Classifier, tmp_path: Path
) -> None:
    with server(classifier, tmp_path) as (url, _), counting_host(0) as (images, _counts):
        res = moderate(url, KEY, [f"{images}/photo.jpg", data_uri(jpeg())])
        assert res.status_code == 200, res.text
        first, second = res.json()["results"]
        assert first["sha256"] == hashlib.sha256(jpeg((160, 160))).hexdigest()
        assert second["sha256"] == hashlib.sha256(jpeg()).hexdigest()


# --- GETs: per-key slots, and stored images that stream --------------------------------------


def slow_reader(url: str, path: str, key: str) -> socket.socket:
    """A connection that GETs ``path`` with ``key`` and never reads the answer; its receive
    buffer is set small before the handshake (after it, the window already agreed lets Linux
    take megabytes of the answer into the kernel, and the server's stream ends early)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((host, int(port)))
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
    )
    return sock


def rss_bytes() -> int:
    with Path(f"/proc/{os.getpid()}/status").open() as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def test_slow_readers_of_stored_images_hold_little_and_one_key_holds_few(
    classifier: Classifier, tmp_path: Path
) -> None:
    """Key A opens 16 GETs of a 6 MB stored image and never reads them: the server holds a
    chunk for each (not the image), and A's 17th GET is refused 429 while key B is served.
    Before, each GET built the whole image into its answer (about 100 MB for the 16) and a key
    could open as many as it liked."""
    noise = Image.frombytes("RGB", (2048, 1024), os.urandom(2048 * 1024 * 3))
    buffer = BytesIO()
    noise.save(buffer, "JPEG", quality=100)
    image = buffer.getvalue()
    assert len(image) > 4_000_000
    with server(classifier, tmp_path) as (url, _), ExitStack() as held:
        job = submit(url, V2, image, token=KEY)
        assert job.status_code == 201, job.text
        job_id = job.json()["id"]
        assert wait_for_state(url, job_id, token=KEY) == "processed"
        names = session(KEY).get(f"{url}/v2/job/async/{job_id}/output", timeout=10).json()
        path = f"/v2/job/async/{job_id}/output/{names[1]}"
        before = rss_bytes()
        for _ in range(16):
            held.enter_context(slow_reader(url, path, KEY))
        time.sleep(1.5)  # every answer has filled what the sockets take
        grown = rss_bytes() - before
        refused = session(KEY).get(f"{url}{path}", timeout=10)
        assert refused.status_code == 429, refused.text[:300]
        assert session(OTHER).get(f"{url}/v2/job/async/{job_id}/job.json").status_code == 404
        assert grown < 40 * 1024 * 1024, f"the server grew by {grown / 2**20:.0f} MiB"


# --- host-name lookups: each key's share -------------------------------------------------------


def test_one_keys_slow_names_leave_lookups_to_other_keys(
    classifier: Classifier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Key A asks for 8 images on names that take 3 s to resolve; key B's name resolves at
    once. With 4 lookup threads and A's share of 2, B's answer comes within a second. Before,
    A's lookups took every thread and B waited behind them."""
    real = socket.getaddrinfo

    def lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.startswith("slow-"):
            time.sleep(3)
            raise socket.gaierror(socket.EAI_NONAME, "no such name")
        if isinstance(host, str) and host.endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "no such name")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    with (
        server(classifier, tmp_path, dns_workers=4, dns_key_share=2) as (url, _),
        ThreadPoolExecutor(3) as pool,
    ):
        slow = [f"https://slow-{i}.example/x.jpg" for i in range(4)]
        floods = [pool.submit(moderate, url, KEY, slow) for _ in range(2)]
        time.sleep(0.5)  # A's lookups are running
        started = time.monotonic()
        other = moderate(url, OTHER, ["https://fast.invalid/x.jpg"], timeout=20)
        waited = time.monotonic() - started
        assert other.status_code == 400 and "could not resolve" in other.text
        assert waited < 1.5, f"key B waited {waited:.1f} s for its lookup"
        assert all(flood.result().status_code == 400 for flood in floods)


# --- keys -----------------------------------------------------------------------------------------


def test_static_keys_must_be_long() -> None:
    with pytest.raises(pydantic.ValidationError, match="shorter than 16 characters"):
        Settings(api_keys=["secret"])
    assert Settings(api_keys=["s" * 16]).api_keys == ["s" * 16]


def test_wrong_keys_are_slowed_per_address(classifier: Classifier, tmp_path: Path) -> None:
    """Ten wrong keys from one address in a minute; then even the right key gets 429 from
    there (so guessing stops). Before, every guess got its 401 at once."""
    with server(classifier, tmp_path) as (url, _):
        for guess in range(10):
            wrong = session(f"guess-{guess:012d}").get(f"{url}/v2/job/async/x/job.json")
            assert wrong.status_code == 401
        blocked = session(KEY).get(f"{url}/v2/job/async/x/job.json", timeout=10)
        assert blocked.status_code == 429, blocked.text
        assert 1 <= int(blocked.headers["retry-after"]) <= 61
        eachlabs = requests.get(f"{url}{PREDICTIONS}x", headers={"X-API-Key": KEY}, timeout=10)
        assert eachlabs.status_code == 429
        pictrs = requests.post(f"{url}{VALIDATE}?key={KEY}", data=b"x", timeout=10)
        assert pictrs.status_code == 429, pictrs.text
        banks = requests.get(f"{url}/v1/banks", headers={"Authorization": f"Bearer {KEY}"})
        assert banks.status_code == 429, banks.text


def test_the_keyless_api_answers_only_names_of_loopback(
    classifier: Classifier, tmp_path: Path
) -> None:
    """DNS rebinding: a page at evil.example whose name now resolves to 127.0.0.1 sends
    ``Host: evil.example``. Before, the keyless API answered it."""
    with server(classifier, tmp_path, api_keys=[]) as (url, _):
        image = data_uri(astronaut_jpeg((160, 160)))
        body = {"input": [{"type": "image_url", "image_url": {"url": image}}]}
        port = url.rsplit(":", 1)[1]
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
            res = requests.post(f"{url}{MODERATIONS}", json=body, headers={"Host": host})
            assert res.status_code == 200, (host, res.text)
        rebound = requests.post(
            f"{url}{MODERATIONS}", json=body, headers={"Host": f"evil.example:{port}"}
        )
        assert rebound.status_code == 403, rebound.text
        assert "only requests to localhost" in rebound.json()["error"]["message"]


# --- connections ------------------------------------------------------------------------------


def test_headers_must_arrive_in_time(classifier: Classifier, tmp_path: Path) -> None:
    """A client that sends half a request line and stops: its connection is closed after
    NSFWD_HEADER_TIMEOUT_S. Before, uvicorn kept it open for ever."""
    with server(classifier, tmp_path, header_timeout_s=1.0) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")
            started = time.monotonic()
            sock.settimeout(5)
            assert sock.recv(1024) == b""  # closed
            assert 0.8 < time.monotonic() - started < 3
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            assert read_response(sock).startswith(b"HTTP/1.1 200 ")
            sock.sendall(b"GET /healthz HT")  # the next request on the same connection
            started = time.monotonic()
            sock.settimeout(5)
            assert sock.recv(1024) == b""
            assert time.monotonic() - started < 3


def test_connections_are_bounded(classifier: Classifier, tmp_path: Path) -> None:
    with server(classifier, tmp_path, max_connections=4) as (url, _), ExitStack() as held:
        host, port = url.removeprefix("http://").split(":")
        for _ in range(4):
            held.enter_context(socket.create_connection((host, int(port)), timeout=10))
        wait_for(
            lambda: requests.get(f"{url}/healthz", timeout=5).status_code == 503,
            10,
            "a request past the connection limit to get 503",
        )
