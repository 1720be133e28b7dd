"""A small Python client for nsfwd's Prodia-compatible job API (sync and async, httpx).

>>> from nsfwd.client import Client
>>> with Client("http://127.0.0.1:8000", token="...") as client:
...     result = client.classify("upload.jpg")
...     result.labels["high"], result.flagged("moderate")

Both clients retry 429 and 5xx answers (after ``Retry-After`` when the server sends it, else
with exponential backoff) and raise :class:`NsfwdError` carrying the server's message.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from nsfwd.verdict import DEFAULT_THRESHOLD, Policy, PolicyName

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_MODEL = "Freepik/nsfw_image_detector"
V1 = "inference.vit.img2label.v1"
V2 = "inference.vit.img2label.v2"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
PING_JOB = b'{"type": "inference.ping.v1", "config": {}}'
PING_FILES = [("job", ("job.json", PING_JOB, "application/json"))]

ImageInput = bytes | str | os.PathLike[str]


class NsfwdError(Exception):
    """The server refused or failed a request; ``message`` is what it said."""

    def __init__(self, status: int, message: str, request_id: str | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True)
class Classification:
    """The labels for one image, and the job they came from."""

    labels: dict[str, float]
    job_id: str
    elapsed: float
    request_id: str | None
    image: bytes | None = None
    """The original image, returned by the server for v2 jobs."""

    def score(self, policy: PolicyName = "moderate") -> float:
        """The policy's score (see :mod:`nsfwd.verdict`)."""
        return Policy(policy).score(self.labels)

    def flagged(
        self, policy: PolicyName = "moderate", threshold: float = DEFAULT_THRESHOLD
    ) -> bool:
        """Whether the policy flags this image at ``threshold``."""
        return Policy(policy, threshold).flagged(self.labels)


def _read_image(image: ImageInput, filename: str | None) -> tuple[bytes, str]:
    if isinstance(image, bytes):
        return image, filename or "image"
    path = Path(image)
    return path.read_bytes(), filename or path.name


def _request(
    job_type: str, model: str, image: ImageInput | None, filename: str | None
) -> dict[str, Any]:
    """Keyword arguments for ``httpx`` to post one job."""
    job = json.dumps({"type": job_type, "config": {"model": model}})
    files: list[tuple[str, tuple[str, bytes, str]]] = [
        ("job", ("job.json", job.encode(), "application/json"))
    ]
    if image is not None:
        data, name = _read_image(image, filename)
        files.append(("input", (name, data, "application/octet-stream")))
    accept = "multipart/form-data" if job_type == V2 else "application/json"
    return {"files": files, "headers": {"Accept": accept}}


def _error_message(response: httpx.Response) -> str:
    """The server's own words: a job's ``error``, a JSON ``message``/``detail``, or the text."""
    content_type = response.headers.get("content-type", "")
    try:
        if content_type.startswith("multipart/"):
            parts = _multipart(response)
            body: Any = json.loads(parts[0][1]) if parts else {}
        elif "json" in content_type:
            body = response.json()
        else:
            return response.text.strip() or response.reason_phrase
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict):
        for key in ("error", "message", "detail"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return response.text.strip() or response.reason_phrase


def _multipart(response: httpx.Response) -> list[tuple[str, bytes]]:
    """(name, payload) for each part of a multipart response."""
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + response.content)
    parts = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        name = part.get_param("name", header="content-disposition")
        parts.append((str(name or ""), payload if isinstance(payload, bytes) else b""))
    return parts


def _parse(response: httpx.Response) -> Classification:
    """A successful answer, JSON (v1) or multipart (v2), as a :class:`Classification`."""
    request_id = response.headers.get("x-request-id")
    image = None
    if response.headers.get("content-type", "").startswith("multipart/"):
        parts = _multipart(response)
        job = json.loads(next(data for name, data in parts if name == "job"))
        outputs = [data for name, data in parts if name == "output"]
        if outputs:
            labels = json.loads(outputs[0])
            image = outputs[1] if len(outputs) > 1 else None
        else:
            labels = job["config"]["labels"]
    else:
        job = response.json()
        labels = job["config"]["labels"]
    return Classification(
        labels={str(k): float(v) for k, v in labels.items()},
        job_id=str(job.get("id", "")),
        elapsed=float(job.get("metrics", {}).get("elapsed", 0.0)),
        request_id=request_id,
        image=image,
    )


def _ping_refused(error: NsfwdError) -> bool:
    """False for a refused token; any other error is raised again."""
    if error.status in (401, 403):
        return False
    raise error


def _retry_delay(response: httpx.Response, attempt: int) -> float:
    """Seconds to wait before retrying: Retry-After when given, else 0.5 s doubling, max 30."""
    retry_after = response.headers.get("retry-after", "")
    try:
        return min(max(float(retry_after), 0.0), 60.0)
    except ValueError:
        return float(min(0.5 * 2**attempt, 30.0))


def _check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise NsfwdError(
            response.status_code, _error_message(response), response.headers.get("x-request-id")
        )
    return response


class _Base:
    def __init__(
        self,
        base_url: str,
        token: str | None,
        model: str,
        max_retries: int,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.max_retries = max_retries
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}


class Client(_Base):
    """Blocking client."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        model: str = DEFAULT_MODEL,
        timeout: float = 60.0,
        max_retries: int = 5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, token, model, max_retries)
        self._http = httpx.Client(
            base_url=self.base_url, headers=self.headers, timeout=timeout, transport=transport
        )

    def _post(self, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            response = self._http.post("/v2/job", **kwargs)
            if response.status_code not in RETRY_STATUSES or attempt == self.max_retries:
                return _check(response)
            time.sleep(_retry_delay(response, attempt))
        raise AssertionError("unreachable")

    def classify(self, image: ImageInput, *, filename: str | None = None) -> Classification:
        """Labels for one image (bytes or a path)."""
        return _parse(self._post(**_request(V1, self.model, image, filename)))

    def classify_with_image(
        self, image: ImageInput, *, filename: str | None = None
    ) -> Classification:
        """Labels plus the image as the server returns it (a v2 job)."""
        return _parse(self._post(**_request(V2, self.model, image, filename)))

    def ping(self) -> bool:
        """Check the token: True when the server accepts it (raises on other errors)."""
        try:
            self._post(files=PING_FILES)
        except NsfwdError as exc:
            return _ping_refused(exc)
        return True

    def healthy(self) -> bool:
        """Whether the server answers /healthz with 200 (model loaded)."""
        return self._http.get("/healthz").status_code == 200

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient(_Base):
    """asyncio client; the same calls as :class:`Client`, awaited."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        model: str = DEFAULT_MODEL,
        timeout: float = 60.0,
        max_retries: int = 5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(base_url, token, model, max_retries)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, timeout=timeout, transport=transport
        )

    async def _post(self, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            response = await self._http.post("/v2/job", **kwargs)
            if response.status_code not in RETRY_STATUSES or attempt == self.max_retries:
                return _check(response)
            await asyncio.sleep(_retry_delay(response, attempt))
        raise AssertionError("unreachable")

    async def classify(self, image: ImageInput, *, filename: str | None = None) -> Classification:
        """Labels for one image (bytes or a path)."""
        return _parse(await self._post(**_request(V1, self.model, image, filename)))

    async def classify_with_image(
        self, image: ImageInput, *, filename: str | None = None
    ) -> Classification:
        """Labels plus the image as the server returns it (a v2 job)."""
        return _parse(await self._post(**_request(V2, self.model, image, filename)))

    async def ping(self) -> bool:
        """Check the token: True when the server accepts it (raises on other errors)."""
        try:
            await self._post(files=PING_FILES)
        except NsfwdError as exc:
            return _ping_refused(exc)
        return True

    async def healthy(self) -> bool:
        """Whether the server answers /healthz with 200 (model loaded)."""
        return (await self._http.get("/healthz")).status_code == 200

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
