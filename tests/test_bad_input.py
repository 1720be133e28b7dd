"""Bad requests to POST /v2/job: each a clear 4xx that says what was wrong, never a 5xx, and the
server goes on serving. Bodies that are too big or too slow are refused while they stream in."""

from __future__ import annotations

import io
import json
import pathlib
import random
import select
import socket
import struct
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
import torch
from PIL import Image
from requests.adapters import HTTPAdapter, Retry

from nsfwd.api import create_app
from nsfwd.api.http.middleware import BodyLimitMiddleware, BodyLimits
from nsfwd.engine.batcher import Engine
from nsfwd.models.classifier import Classifier
from nsfwd.settings import Settings
from photos import ASTRONAUT, astronaut_jpeg
from prodia_jobs import MODEL, TOKEN, encoded_job, parts_of, raw_request
from servers import serve_app

V1 = "inference.vit.img2label.v1"
LIMIT = 10 * 1024 * 1024
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GOOD_JOB = json.dumps({"type": V1, "config": {"model": MODEL}}).encode()


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose (valid, CRC-checked) header claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real JPEG with its frame header rewritten to claim ``width`` x ``height`` pixels."""
    data = bytearray(astronaut_jpeg((160, 160)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def form(*parts: tuple[str, str | None, bytes], boundary: str = "b0undary") -> bytes:
    """A hand-built multipart/form-data body of (name, filename, data) parts."""
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += (
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
        )
    return out + f"--{boundary}--\r\n".encode()


def job_part(job: object) -> tuple[str, tuple[str, bytes, str]]:
    raw = job if isinstance(job, bytes) else json.dumps(job).encode()
    return ("job", ("job.json", raw, "application/json"))


def input_part(data: bytes, filename: str = "photo.jpg") -> tuple[str, tuple[str, bytes, str]]:
    return ("input", (filename, data, "image/jpeg"))


def multipart_request(*parts: tuple[str, tuple[str, bytes, str]]) -> dict[str, Any]:
    return {"files": list(parts)}


def raw_body(body: bytes, content_type: str | None) -> dict[str, Any]:
    return {"data": body, "headers": {} if content_type is None else {"Content-Type": content_type}}


def many_headers_part(count: int, size: int) -> bytes:
    extra = "".join(f"X-Extra-{i}: {'v' * size}\r\n" for i in range(count))
    return (
        f'--b0undary\r\nContent-Disposition: form-data; name="job"\r\n{extra}\r\n'.encode()
        + GOOD_JOB
        + b"\r\n--b0undary--\r\n"
    )


def _good() -> bytes:
    return astronaut_jpeg((160, 160))


def _photo(size: tuple[int, int]) -> bytes:
    return encode(Image.open(ASTRONAUT).convert("RGB").resize(size), "JPEG")


FORM = "multipart/form-data; boundary=b0undary"
CASES: dict[str, tuple[Callable[[], dict[str, Any]], int, str]] = {
    # the job part
    "no job part": (lambda: multipart_request(input_part(_good())), 400, "one part named 'job'"),
    "two job parts": (
        lambda: multipart_request(job_part(GOOD_JOB), job_part(GOOD_JOB), input_part(_good())),
        400, "got 2",
    ),
    "job not JSON": (
        lambda: multipart_request(job_part(b"{type: v1}"), input_part(_good())),
        400, "not valid JSON",
    ),
    "job not UTF-8": (
        lambda: multipart_request(job_part(b'{"type": "\xff\xfe"}'), input_part(_good())),
        400, "not valid JSON",
    ),
    "job with NaN": (
        lambda: multipart_request(job_part(b'{"type": "x", "config": NaN}'), input_part(_good())),
        400, "NaN is not a JSON number",
    ),
    "job nested 50,000 deep": (
        lambda: multipart_request(job_part(b"[" * 50_000), input_part(_good())),
        400, "nested too deeply",
    ),
    "job with a 5,000-digit number": (
        lambda: multipart_request(job_part(b'{"n": ' + b"9" * 5000 + b"}"), input_part(_good())),
        400, "not valid JSON",
    ),
    "job a list": (lambda: multipart_request(job_part([V1])), 400, "JSON object, got list"),
    "job a string": (lambda: multipart_request(job_part(V1)), 400, "JSON object, got str"),
    "job part over 64 KiB": (
        lambda: multipart_request(job_part({"type": V1, "pad": "x" * 70_000})),
        400, "part 'job'",
    ),
    "no type": (
        lambda: multipart_request(job_part({"config": {"model": MODEL}}), input_part(_good())),
        400, "unknown job type missing: this server runs inference.vit.img2label.v1",
    ),
    "unknown type": (
        lambda: multipart_request(job_part({"type": "inference.flux.txt2img.v1"})),
        400, 'unknown job type "inference.flux.txt2img.v1"',
    ),
    "type not a string": (lambda: multipart_request(job_part({"type": 7})), 400, "job type 7"),
    "config not an object": (
        lambda: multipart_request(job_part({"type": V1, "config": [MODEL]}), input_part(_good())),
        400, "job.config must be a JSON object",
    ),
    "no config": (
        lambda: multipart_request(job_part({"type": V1}), input_part(_good())),
        400, 'job.config.model is missing; set it to "Freepik/nsfw_image_detector"',
    ),
    "model not a string": (
        lambda: multipart_request(job_part({"type": V1, "config": {"model": ["x"]}})),
        400, "unknown model",
    ),
    "unknown model": (
        lambda: multipart_request(
            job_part({"type": V1, "config": {"model": "Falconsai/nsfw_image_detection"}}),
            input_part(_good()),
        ),
        400, 'unknown model "Falconsai/nsfw_image_detection": this server runs "Freepik/',
    ),
    # the input part
    "no input": (lambda: multipart_request(job_part(GOOD_JOB)), 400, "no input image"),
    "input under another name": (
        lambda: multipart_request(job_part(GOOD_JOB), ("image", ("a.jpg", _good(), "image/jpeg"))),
        400, "parts received: 'job', 'image'",
    ),
    "two different inputs": (
        lambda: multipart_request(
            job_part(GOOD_JOB), input_part(_good()), input_part(astronaut_jpeg())
        ),
        400, "one input image, got 2 different ones",
    ),
    "empty input part": (
        lambda: multipart_request(job_part(GOOD_JOB), input_part(b"")),
        400, "input 'photo.jpg': ",
    ),
    "text file as image": (
        lambda: multipart_request(job_part(GOOD_JOB), input_part(b"hello\n" * 100, "a.jpg")),
        400, "input 'a.jpg': unsupported image format",
    ),
    "PDF": (
        lambda: multipart_request(job_part(GOOD_JOB), input_part(b"%PDF-1.7\n" + bytes(300))),
        400, "unsupported image format: PDF; accepted formats are JPEG, PNG, WebP, GIF",
    ),
    "truncated JPEG": (
        lambda: multipart_request(job_part(GOOD_JOB), input_part(astronaut_jpeg()[:20_000])),
        400, "truncated",
    ),
    "image too small": (
        lambda: multipart_request(job_part(GOOD_JOB), input_part(_photo((64, 300)))),
        400, "64 px is below the minimum",
    ),
    "image too large in pixels": (
        lambda: multipart_request(job_part(GOOD_JOB), input_part(_photo((3000, 200)))),
        400, "3000 px is above the maximum",
    ),
    "PNG bomb header": (
        lambda: multipart_request(job_part(GOOD_JOB), input_part(png_claiming(100_000, 100_000))),
        400, "100000x100000",
    ),
    "JPEG bomb header": (
        lambda: multipart_request(job_part(GOOD_JOB), input_part(jpeg_claiming(65_000, 65_000))),
        400, "65000x65000",
    ),
    # the body
    "JSON body": (
        lambda: raw_body(GOOD_JOB, "application/json"),
        400, "expected Content-Type multipart/form-data",
    ),
    "no content type": (lambda: raw_body(_good(), None), 400, "got 'none'"),
    "urlencoded form": (
        lambda: {"data": {"job": GOOD_JOB.decode()}},
        400, "got 'application/x-www-form-urlencoded'",
    ),
    "multipart without boundary": (
        lambda: raw_body(form(("job", None, GOOD_JOB)), "multipart/form-data"),
        400, "no boundary parameter",
    ),
    "garbage boundary": (
        lambda: raw_body(form(("job", None, GOOD_JOB)), "multipart/form-data; boundary=zzz"),
        400, "malformed multipart body",
    ),
    "boundary of 300 characters": (
        lambda: raw_body(form(("job", None, GOOD_JOB), boundary="q" * 300),
                         "multipart/form-data; boundary=" + "q" * 300),
        400, "malformed multipart body (Boundary length 300",
    ),
    "multipart cut off": (
        lambda: raw_body(form(("job", None, GOOD_JOB), ("input", "a.jpg", _good()))[:-30], FORM),
        400, "ended before its closing boundary",
    ),
    "empty multipart body": (lambda: raw_body(b"", FORM), 400, "ended before its closing"),
    "part without a name": (
        lambda: raw_body(b"--b0undary\r\nContent-Type: text/plain\r\n\r\nx\r\n--b0undary--\r\n",
                         FORM),
        400, "part 1 has no 'Content-Disposition: form-data; name=",
    ),
    "40 parts": (
        lambda: raw_body(form(*[("note", None, b"x")] * 40), FORM), 400, "more than 16 parts",
    ),
    "a 6 KB part header": (
        lambda: raw_body(many_headers_part(1, 6000), FORM),
        400, "Maximum header size exceeded",
    ),
    "20 part headers": (
        lambda: raw_body(many_headers_part(20, 10), FORM),
        400, "Maximum header count exceeded",
    ),
}  # fmt: skip


def good_request_succeeds(server_url: str) -> None:
    res = requests.post(
        f"{server_url}/v2/job",
        headers=AUTH,
        files=[job_part(GOOD_JOB), input_part(_good())],
        timeout=30,
    )
    assert res.status_code == 200, res.text


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("accept", ["application/json", "multipart/form-data"])
def test_bad_requests_get_a_clear_4xx(server_url: str, case: str, accept: str) -> None:
    build, status, message = CASES[case]
    request = build()
    headers = {**AUTH, "Accept": accept, **request.pop("headers", {})}
    res = requests.post(f"{server_url}/v2/job", headers=headers, timeout=30, **request)
    assert res.status_code == status, res.text
    assert res.headers["x-request-id"]
    if accept == "application/json":
        assert res.headers["content-type"] == "application/json"
        job = res.json()
    else:  # where the npm client looks for the message it throws
        name, _, _, data = parts_of(res)[0]
        assert name == "job"
        job = json.loads(data)
    assert job["state"] == {"current": "failed"}
    assert message in job["error"]
    good_request_succeeds(server_url)


def test_an_11_mb_image_is_refused_with_400_quickly(server_url: str) -> None:
    image = b"\xff\xd8\xff\xe0" + random.Random(11).randbytes(11 * 1024 * 1024)
    started = time.perf_counter()
    res = requests.post(
        f"{server_url}/v2/job",
        headers={**AUTH, "Accept": "application/json"},
        files=[job_part(GOOD_JOB), input_part(image, "huge.jpg")],
        timeout=30,
    )
    assert time.perf_counter() - started < 5
    assert res.status_code == 400
    assert "send an image of at most 10,485,760 bytes" in res.json()["error"]
    good_request_succeeds(server_url)


def retrying_session() -> requests.Session:
    """A session like the guide's: urllib3 retries every status in RETRY_AFTER_STATUS_CODES
    (413, 429, 503), so a refusal it should read must not be one of them."""
    session = requests.Session()
    retries = Retry(total=3, status_forcelist=Retry.RETRY_AFTER_STATUS_CODES, allowed_methods=None)
    session.mount("http://", HTTPAdapter(max_retries=retries))
    session.headers.update(AUTH)
    return session


@pytest.mark.parametrize("accept", ["application/json", "multipart/form-data"])
def test_the_guides_retrying_session_reads_the_size_refusal(server_url: str, accept: str) -> None:
    image = b"\xff\xd8\xff\xe0" + random.Random(12).randbytes(11 * 1024 * 1024)
    with retrying_session() as session:
        res = session.post(
            f"{server_url}/v2/job",
            headers={"Accept": accept},
            files=[job_part(GOOD_JOB), input_part(image, "huge.jpg")],
            timeout=30,
        )
    assert res.status_code == 400, res.text[:300]
    if accept == "application/json":
        job = res.json()
    else:
        name, _, _, data = parts_of(res)[0]
        assert name == "job"
        job = json.loads(data)
    assert job["state"] == {"current": "failed"}
    assert "10,485,760 bytes" in job["error"], job["error"]


def test_the_image_limit_is_exact(server_url: str) -> None:
    """10 MiB passes the size checks (and then fails to decode); one byte more is a 400."""
    at_limit = b"\xff\xd8\xff\xe0" + bytes(LIMIT - 4)
    for data, status, message in (
        (at_limit, 400, "truncated or corrupt"),
        (at_limit + b"!", 400, "part 'input' ('big.jpg') is over 10,485,760 bytes"),
    ):
        res = requests.post(
            f"{server_url}/v2/job",
            headers=AUTH,
            files=[job_part(GOOD_JOB), input_part(data, "big.jpg")],
            timeout=30,
        )
        assert res.status_code == status, res.text
        assert message in res.json()["error"]


def read_response(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Whatever the server answers on ``sock`` within ``timeout`` seconds (until it pauses)."""
    sock.settimeout(timeout)
    data = sock.recv(65536)
    sock.settimeout(0.2)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pass
    return data


@pytest.mark.parametrize("expect", [False, True])
def test_an_oversized_content_length_is_refused_before_the_body(
    server_url: str, expect: bool
) -> None:
    host_port = server_url.removeprefix("http://")
    host, port = host_port.split(":")
    head = (
        f"POST /v2/job HTTP/1.1\r\nHost: {host_port}\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: {FORM}\r\nContent-Length: {11 * 1024 * 1024}\r\n"
        + ("Expect: 100-continue\r\n" if expect else "")
        + "\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        started = time.perf_counter()
        sock.sendall(head.encode())  # the headers alone: the 400 must not wait for a body
        answer = read_response(sock)
        assert time.perf_counter() - started < 3
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b"100 Continue" not in answer
    assert b"11,534,336 bytes (Content-Length)" in answer
    good_request_succeeds(server_url)


REFUSED_WITHIN = 64 * 1024 * 1024
"""How much of an endless chunked body a client may send before the refusal reaches it."""


@pytest.mark.parametrize(
    ("part", "message"),
    [
        ("padding", b"and still coming"),  # an ignored part: the ASGI byte count stops it
        # the per-part limit, or the body count when uvicorn hands over several chunks at once
        ("input", b"10,485,760 bytes"),
    ],
)
def test_a_chunked_body_is_refused_while_it_streams(
    server_url: str, part: str, message: bytes
) -> None:
    host_port = server_url.removeprefix("http://")
    host, port = host_port.split(":")
    prefix = (
        form(("job", "job.json", GOOD_JOB))[: -len("--b0undary--\r\n")]
        + (
            f'--b0undary\r\nContent-Disposition: form-data; name="{part}"; filename="endless.jpg"'
            "\r\nContent-Type: image/jpeg\r\n\r\n"
        ).encode()
    )
    chunk = random.Random(3).randbytes(256 * 1024).replace(b"-", b"+")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST /v2/job HTTP/1.1\r\nHost: {host_port}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: {FORM}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + f"{len(prefix):x}\r\n".encode()
            + prefix
            + b"\r\n"
        )
        answered = False
        while sent < 200 * 1024 * 1024:
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sent += len(chunk)
            if select.select([sock], [], [], 0)[0]:
                answered = True
                break
        assert answered, "no answer while the body kept coming"
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert message in answer
    assert sent < REFUSED_WITHIN  # refused long before the client was done
    good_request_succeeds(server_url)


def test_a_slow_body_does_not_hold_up_others(server_url: str) -> None:
    body, content_type = encoded_job(_good())
    host_port = server_url.removeprefix("http://")
    host, port = host_port.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST /v2/job HTTP/1.1\r\nHost: {host_port}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        for offset in range(0, 2000, 100):  # a trickle: 100 bytes every 50 ms
            sock.sendall(body[offset : offset + 100])
            started = time.perf_counter()
            good_request_succeeds(server_url)
            assert time.perf_counter() - started < 2
            time.sleep(0.05)
        sock.sendall(body[2000:])
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]


def test_a_stalled_body_is_let_go_with_408(classifier: Classifier) -> None:
    settings = Settings(model=classifier.name, served_model_name=MODEL, api_keys=[TOKEN])
    app = create_app(Engine(classifier, limits=settings.image_limits), settings)
    app.add_middleware(BodyLimitMiddleware, limits=BodyLimits(LIMIT * 2), idle_timeout_s=0.5)
    body, content_type = encoded_job(_good())
    with serve_app(app) as url:
        sock = raw_request(url, b"", content_type, **{"Content-Length": str(len(body))})
        with sock:
            sock.sendall(body[:1000])
            started = time.perf_counter()
            answer = read_response(sock)
            assert 0.4 < time.perf_counter() - started < 3
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
            assert b"no request body data for 0.5 s after 1,000 bytes" in answer
            assert sock.recv(1) == b""  # and the connection is closed
        good_request_succeeds(url)


class NaNClassifier(Classifier):
    """The real classifier, except that every score comes out NaN (a model gone wrong)."""

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.full((batch.shape[0], len(self.labels)), float("nan"))


def test_scores_that_come_out_nan_fail_closed(classifier: Classifier) -> None:
    """NaN is not above any threshold, so it would pass as unflagged: an error instead."""
    broken = NaNClassifier(classifier.loaded, classifier.device, classifier.dtype, classifier.name)
    settings = Settings(model=classifier.name, served_model_name=MODEL, api_keys=[TOKEN])
    engine = Engine(broken, limits=settings.image_limits)
    with serve_app(create_app(engine, settings)) as url:
        for version in ("v1", "v2"):
            job = json.dumps({"type": f"inference.vit.img2label.{version}",
                              "config": {"model": MODEL}}).encode()  # fmt: skip
            res = requests.post(
                f"{url}/v2/job",
                headers={**AUTH, "Accept": "application/json"},
                files=[job_part(job), input_part(_good())],
                timeout=30,
            )
            assert res.status_code == 400, res.text
            answer = res.json()
            assert answer["state"] == {"current": "failed"} and "labels" not in answer["config"]
            assert "not finite" in answer["error"], answer["error"]


def test_nsfwd_classify_records_nan_scores_as_errors(
    classifier: Classifier, tmp_path: pathlib.Path
) -> None:
    from nsfwd.batch.pipeline import classify_files

    broken = NaNClassifier(classifier.loaded, classifier.device, classifier.dtype, classifier.name)
    (tmp_path / "photo.jpg").write_bytes(_good())
    [result] = classify_files(broken, [tmp_path / "photo.jpg"], batch_size=1, decode="pil")
    assert result.labels is None
    assert result.error is not None and "not finite" in result.error


def test_huge_headers_are_refused(server_url: str) -> None:
    body, content_type = encoded_job(_good())
    big = requests.post(
        f"{server_url}/v2/job",
        data=body,
        headers={**AUTH, "Content-Type": content_type, "X-Padding": "p" * 12_000},
        timeout=30,
    )
    assert big.status_code == 431
    assert "request headers are 12," in big.text and "at most 8,192" in big.text
    huge = requests.post(
        f"{server_url}/v2/job",
        data=body,
        headers={**AUTH, "Content-Type": content_type, "X-Padding": "p" * 100_000},
        timeout=30,
    )
    # h11 refuses a header block over 16 KiB only while it is incomplete; one that arrives whole
    # reaches the app, which refuses it too
    assert huge.status_code in (400, 431)
    good_request_succeeds(server_url)


def test_mangled_bodies_never_get_a_5xx(server_url: str) -> None:
    body, content_type = encoded_job(_good())

    def mangle(seed: int) -> int:
        rng = random.Random(seed)
        data = bytearray(body)
        for _ in range(rng.randint(1, 20)):
            position = rng.randrange(len(data))
            action = rng.choice(["flip", "cut", "dup"])
            if action == "flip":
                data[position] = rng.randrange(256)
            elif action == "cut":
                del data[position : position + rng.randint(1, 300)]
            else:
                data[position:position] = data[position : position + rng.randint(1, 300)]
        res = requests.post(
            f"{server_url}/v2/job",
            data=bytes(data),
            headers={**AUTH, "Content-Type": content_type},
            timeout=30,
        )
        return res.status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(mangle, range(60)))
    assert all(status < 500 for status in statuses), statuses
    assert any(status == 400 for status in statuses)
    good_request_succeeds(server_url)
