"""Prodia job requests as the tests send them to POST /v2/job, and checks on the answers.

:func:`guide_session` and :func:`job_files` call the API exactly the way Prodia's Python guide
does; :func:`encoded_job` and :func:`raw_request` build the same request by hand, for tests that
need to hold the socket.
"""

from __future__ import annotations

import io
import json
import re
import socket
from typing import Any

import pytest
import requests
from requests.adapters import HTTPAdapter, Retry
from requests_toolbelt.multipart import decoder

MODEL = "Freepik/nsfw_image_detector"
TOKEN = "test-key-4f1c2a9e"
OTHER_TOKEN = "other-key-7d3b5e1f"
"""A second Prodia key, for the tests of what one key may see of another's."""
LABELS = ["neutral", "low", "medium", "high"]


def guide_session(token: str = TOKEN) -> requests.Session:
    """A session set up exactly as Prodia's Python guide sets it up."""
    session = requests.Session()
    retries = Retry(allowed_methods=None, status_forcelist=Retry.RETRY_AFTER_STATUS_CODES)
    session.mount("http://", HTTPAdapter(max_retries=retries))
    session.mount("https://", HTTPAdapter(max_retries=retries))
    session.headers.update({"Authorization": f"Bearer {token}"})
    return session


def job_files(
    job_type: str = "inference.vit.img2label.v1",
    image: bytes | None = None,
    filename: str = "sunny-day.jpg",
    content_type: str = "image/jpeg",
    model: str = MODEL,
) -> list[tuple[str, tuple[str, Any, str]]]:
    """The guide's ``files`` list: the job part first, then the input image."""
    job = {"type": job_type, "config": {"model": model}}
    files: list[tuple[str, tuple[str, Any, str]]] = [
        ("job", ("job.json", io.BytesIO(json.dumps(job).encode("utf-8")), "application/json"))
    ]
    if image is not None:
        files.append(("input", (filename, image, content_type)))
    return files


def post_job(url: str, image: bytes, **options: Any) -> requests.Response:
    """POST a v1 job of ``image`` to ``url`` (with :data:`TOKEN`), asking for JSON;
    ``options`` go to :func:`job_files` (the file's name and type, say)."""
    return requests.post(
        f"{url}/v2/job",
        headers={"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"},
        files=job_files(image=image, **options),
        timeout=60,
    )


def encoded_job(image: bytes) -> tuple[bytes, str]:
    """A v1 job with ``image`` encoded as requests would send it: (body, content type)."""
    prepared = requests.Request("POST", "http://x/", files=job_files(image=image)).prepare()
    assert isinstance(prepared.body, bytes)
    return prepared.body, prepared.headers["Content-Type"]


def raw_request(url: str, body: bytes, content_type: str, **headers: str) -> socket.socket:
    """Send a POST /v2/job with ``body`` on a fresh socket and return the socket, unread."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = {
        "Host": f"{host}:{port}",
        "Authorization": f"Bearer {TOKEN}",
        "Content-Type": content_type,
        "Content-Length": str(len(body)),
        **headers,
    }
    lines = "".join(f"{name}: {value}\r\n" for name, value in head.items())
    sock.sendall(f"POST /v2/job HTTP/1.1\r\n{lines}\r\n".encode() + body)
    return sock


def parts_of(response: requests.Response) -> list[tuple[str, str | None, str, bytes]]:
    """(name, filename, content type, data) of each part of a multipart answer."""
    found = []
    for part in decoder.MultipartDecoder.from_response(response).parts:
        disposition = part.headers[b"Content-Disposition"].decode()
        name = re.search(r'name="([^"]*)"', disposition)
        filename = re.search(r'filename="([^"]*)"', disposition)
        assert name is not None, disposition
        found.append(
            (
                name.group(1),
                filename.group(1) if filename else None,
                part.headers[b"Content-Type"].decode(),
                part.content,
            )
        )
    return found


def assert_labels(labels: dict[str, Any]) -> None:
    """Four labels in the model's order, probabilities summing to 1."""
    assert list(labels) == LABELS
    assert all(isinstance(value, float) and 0 <= value <= 1 for value in labels.values())
    assert sum(labels.values()) == pytest.approx(1.0, abs=1e-5)
