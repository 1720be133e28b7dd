"""nsfwd.client against a real server on loopback, and its retries against a flaky one."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from nsfwd.client import AsyncClient, Client, NsfwdError
from nsfwd.models.classifier import Classifier
from servers import serve_app

SEVERITY = ["neutral", "low", "medium", "high"]


def _jpeg(color: tuple[int, int, int] = (200, 40, 90)) -> bytes:
    image = Image.new("RGB", (256, 192), color)
    image.paste((20, 220, 40), (30, 30, 120, 150))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def test_classify_returns_typed_labels_matching_the_model(
    server_url: str, classifier: Classifier
) -> None:
    data = _jpeg()
    with Client(server_url, token="test-key-4f1c2a9e") as client:
        assert client.healthy()
        result = client.classify(data, filename="a.jpg")
    expected = classifier.classify([Image.open(io.BytesIO(data)).convert("RGB")])[0]
    assert list(result.labels) == SEVERITY
    for label in SEVERITY:
        assert result.labels[label] == pytest.approx(expected[label], abs=1e-5)
    assert result.job_id and result.request_id
    assert result.elapsed > 0
    assert result.flagged("lenient", 0.0) is True
    assert result.score("strict") == pytest.approx(result.labels["high"])


def test_v2_returns_the_image_byte_for_byte(server_url: str, tmp_path: object) -> None:
    data = _jpeg((10, 10, 250))
    with Client(server_url, token="test-key-4f1c2a9e") as client:
        result = client.classify_with_image(data, filename="blue.jpg")
    assert result.image == data
    assert sum(result.labels.values()) == pytest.approx(1.0, abs=1e-5)


def test_errors_carry_the_servers_message(server_url: str) -> None:
    with Client(server_url, token="wrong") as client:
        assert client.ping() is False
        with pytest.raises(NsfwdError) as refused:
            client.classify(_jpeg())
    assert refused.value.status == 401
    assert refused.value.message
    with Client(server_url, token="test-key-4f1c2a9e", model="no/such-model") as client:
        assert client.ping() is True
        with pytest.raises(NsfwdError) as unknown:
            client.classify(_jpeg())
    assert unknown.value.status == 400
    assert "no/such-model" in unknown.value.message
    with Client(server_url, token="test-key-4f1c2a9e") as client, pytest.raises(NsfwdError) as bad:
        client.classify(b"this is not an image")
    assert bad.value.status == 400
    assert "unsupported image format" in bad.value.message


def test_async_client_classifies_concurrently(server_url: str) -> None:
    async def main() -> list[dict[str, float]]:
        async with AsyncClient(server_url, token="test-key-4f1c2a9e") as client:
            assert await client.healthy()
            results = await asyncio.gather(
                *(client.classify(_jpeg((i * 30, 80, 60))) for i in range(6))
            )
            return [r.labels for r in results]

    labels = asyncio.run(main())
    assert len(labels) == 6
    assert all(list(item) == SEVERITY for item in labels)


def test_async_client_pings_as_the_sync_client_does(server_url: str) -> None:
    async def ping(token: str) -> bool:
        async with AsyncClient(server_url, token=token) as client:
            return await client.ping()

    assert asyncio.run(ping("test-key-4f1c2a9e")) is True
    assert asyncio.run(ping("wrong")) is False


def _flaky_server(failures: list[Response]) -> Starlette:
    """Answers with each of ``failures`` in turn, then with a completed v1 job."""
    calls: list[int] = []

    async def job(request: Request) -> Response:
        await request.body()
        calls.append(1)
        if len(calls) <= len(failures):
            return failures[len(calls) - 1]
        body = {
            "id": "j1",
            "state": {"current": "completed"},
            "config": {"model": "m", "labels": dict.fromkeys(SEVERITY, 0.25)},
            "metrics": {"elapsed": 0.01},
        }
        return JSONResponse(body, headers={"x-request-id": "r1"})

    app = Starlette(routes=[Route("/v2/job", job, methods=["POST"])])
    app.state.calls = calls
    return app


def test_429_and_5xx_are_retried_after_retry_after() -> None:
    failures: list[Response] = [
        PlainTextResponse("busy", status_code=429, headers={"Retry-After": "0"}),
        PlainTextResponse("busy", status_code=429, headers={"Retry-After": "0"}),
        JSONResponse({"message": "hiccup"}, status_code=503, headers={"Retry-After": "0"}),
    ]
    app = _flaky_server(failures)
    with serve_app(app) as url, Client(url, max_retries=3) as client:
        result = client.classify(_jpeg())
    assert result.labels == dict.fromkeys(SEVERITY, 0.25)
    assert len(app.state.calls) == 4


def test_retries_give_up_with_the_last_message() -> None:
    failures: list[Response] = [
        JSONResponse({"message": "still busy"}, status_code=429, headers={"Retry-After": "0"})
    ] * 3
    app = _flaky_server(failures)

    async def main() -> None:
        async with AsyncClient(url, max_retries=2) as client:
            await client.classify(_jpeg())

    with serve_app(app) as url, pytest.raises(NsfwdError) as gave_up:
        asyncio.run(main())
    assert gave_up.value.status == 429
    assert gave_up.value.message == "still busy"
    assert len(app.state.calls) == 3


def test_a_job_error_inside_a_multipart_answer_is_surfaced() -> None:
    boundary = "b0undary"
    job = json.dumps({"error": "image is 100x100; the minimum is 128 px per side"})
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="job"; filename="job.json"\r\n'
        f"Content-Type: application/json\r\n\r\n{job}\r\n--{boundary}--\r\n"
    ).encode()
    failures: list[Response] = [
        Response(body, status_code=400, media_type=f"multipart/form-data; boundary={boundary}")
    ]
    with (
        serve_app(_flaky_server(failures)) as url,
        Client(url) as client,
        pytest.raises(NsfwdError) as refused,
    ):
        client.classify(_jpeg())
    assert refused.value.message == "image is 100x100; the minimum is 128 px per side"
