"""nsfwd's Synapse module in a real Matrix Synapse (matrix-synapse from PyPI, SQLite), started
by the test (tests/synapse_home.py), uploads sent through the client-server media API.

Synapse's nsfwd is a real server on loopback that flags nothing by its model (threshold 1), so
what it refuses is what its bank holds.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nsfwd.api import create_app
from nsfwd.engine.batcher import Engine
from nsfwd.jobs import Store
from nsfwd.models.classifier import Classifier
from nsfwd.settings import Settings
from photos import photo
from servers import free_port, serve_app
from synapse_home import Homeserver, homeserver
from test_banks import reencoded
from test_platforms import ADMIN, bank_image, jpeg, new_bank

KEY = "synapse-key-5b7d1e"


@pytest.fixture(scope="module")
def nsfwd_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def nsfwd(
    classifier: Classifier, tmp_path_factory: pytest.TempPathFactory, nsfwd_port: int
) -> Iterator[str]:
    settings = Settings(model=classifier.name, api_keys=[KEY], admin_keys=[ADMIN], threshold=1.0,
                        data_dir=tmp_path_factory.mktemp("synapse-nsfwd"))  # fmt: skip
    engine = Engine(classifier, max_batch_size=4, limits=settings.image_limits)
    with serve_app(create_app(engine, settings, Store.from_settings(settings)),
                   port=nsfwd_port) as url:  # fmt: skip
        bank = new_bank(url)
        bank_image(url, bank, jpeg(photo("chelsea")))
        yield url


class Relay:
    """A TCP relay on loopback to ``target``'s port that the test can cut: then it hangs up on
    every connection, as a server that went away would."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.cut = threading.Event()
        self.open: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()

    def hang_up(self) -> None:
        """Cut the relay: close the connections it holds (clients keep them alive) and
        refuse new ones until :attr:`cut` is cleared."""
        self.cut.set()
        for end in self.open:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
        self.open.clear()

    def close(self) -> None:
        self.listener.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            end.close()


@pytest.fixture(scope="module")
def relay(nsfwd: str, nsfwd_port: int) -> Iterator[Relay]:
    relay = Relay(nsfwd_port)
    yield relay
    relay.close()


@pytest.fixture(scope="module")
def synapse(relay: Relay, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Homeserver]:
    module = {"url": f"http://127.0.0.1:{relay.port}", "token": KEY, "timeout_s": 20}
    with homeserver(tmp_path_factory.mktemp("synapse"), module) as server:
        yield server


def test_a_flagged_upload_is_refused_and_a_safe_one_stored(synapse: Homeserver) -> None:
    token = synapse.register("alice")
    known = jpeg(reencoded(photo("chelsea"), 0.9, 70), quality=70)
    refused = synapse.upload(token, known, "image/jpeg", "cat.jpg")
    assert refused.status_code == 400, refused.text
    assert "Bad content" in refused.text
    safe = jpeg(photo("coffee"))
    stored = synapse.upload(token, safe, "image/jpeg", "coffee.jpg")
    assert stored.status_code == 200, stored.text
    got = synapse.download(token, stored.json()["content_uri"])
    assert got.status_code == 200 and got.content == safe
    text = synapse.upload(token, b"minutes of the meeting\n" * 20, "text/plain", "notes.txt")
    assert text.status_code == 200, "a file nsfwd does not judge is not refused"
    assert "refused: matched bank" in synapse.log.read_text()


def test_nsfwd_down_refuses_uploads_and_synapse_keeps_serving(
    synapse: Homeserver, relay: Relay
) -> None:
    token = synapse.register("bob")
    log_before = len(synapse.log.read_text())
    relay.hang_up()
    try:
        refused = synapse.upload(token, jpeg(photo("rocket")), "image/jpeg", "rocket.jpg")
    finally:
        relay.cut.clear()
    assert refused.status_code == 400, refused.text
    assert "refusing it (fail_open)" in synapse.log.read_text()[log_before:]
    assert synapse.alive()
    again = synapse.upload(token, jpeg(photo("rocket")), "image/jpeg", "rocket.jpg")
    assert again.status_code == 200, "back to normal once nsfwd answers"


def test_fail_open_stores_when_nsfwd_is_too_slow(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # accepts connections, never answers
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.extend(iter(lambda: listener.accept()[0], None)),
                     daemon=True).start()  # fmt: skip
    port = listener.getsockname()[1]
    module = {"url": f"http://127.0.0.1:{port}", "timeout_s": 1, "fail_open": True}
    try:
        with homeserver(tmp_path / "synapse", module) as server:
            token = server.register("carol")
            started = time.monotonic()
            stored = server.upload(token, jpeg(photo("rocket")), "image/jpeg", "rocket.jpg")
            assert stored.status_code == 200, stored.text
            assert time.monotonic() - started < 15, "the module gave up after timeout_s"
            assert "nsfwd did not answer" in server.log.read_text()
    finally:
        listener.close()
        for connection in held:
            connection.close()
