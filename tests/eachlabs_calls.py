"""Eachlabs' prediction API as the tests call it: a server on loopback, creating and polling
predictions, and checking Eachlabs' error body.

The server fetches images and sends webhooks (each allowed separately) only to the loopback host
of ``hosts.py`` (``ALLOWED``, plain http) and signs webhooks with its ``SECRET``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from hosts import ALLOWED, SECRET
from nsfwd.api import create_app
from nsfwd.engine.batcher import Engine
from nsfwd.jobs import Store
from nsfwd.models.model import Model
from nsfwd.settings import Settings
from servers import serve_app
from waiting import wait_for

KEY, OTHER = "eachlabs-test-key", "eachlabs-other-key"
SERVED = "Freepik/nsfw_image_detector"
ROUTE = "/v1/prediction"
ERROR_KEYS = {"status", "message", "details"}


@contextmanager
def eachlabs_server(
    classifier: Model, data_dir: Path, **overrides: Any
) -> Iterator[tuple[str, str]]:
    """A server on loopback with a store in ``data_dir``; yields its URL and the store's URL."""
    options: dict[str, Any] = {
        "model": classifier.name,
        "served_model_name": SERVED,
        "api_keys": [KEY, OTHER],
        "data_dir": data_dir,
        "fetch_allow_networks": ALLOWED,
        "webhook_allow_networks": ALLOWED,
        "fetch_allow_http": True,
        "webhook_secret": SECRET,
        "webhook_retry_delays": [0.2, 0.2],
    }
    settings = Settings(**(options | overrides))
    engine = Engine(classifier, max_batch_size=4, limits=settings.image_limits)
    store = Store.from_settings(settings)
    with serve_app(create_app(engine, settings, store)) as url:
        yield url, store.url


def create(url: str, image: str, key: str | None = KEY, **fields: Any) -> requests.Response:
    """POST a prediction of ``image`` (plus any other body ``fields``) with ``key``, or none."""
    body = {"model": fields.pop("model", "nsfw-image-detection"), "input": {"image": image}}
    headers = {} if key is None else {"X-API-Key": key}
    return requests.post(f"{url}{ROUTE}/", json=body | fields, headers=headers, timeout=30)


def created_id(response: requests.Response) -> str:
    """The id of the prediction a successful create answered with (checked on the way)."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "success" and body["message"] == "Prediction created successfully"
    assert str(uuid.UUID(body["predictionID"])) == body["predictionID"]
    return str(body["predictionID"])


def poll(url: str, prediction_id: str, key: str = KEY, timeout: float = 30) -> dict[str, Any]:
    """GET the prediction until it is no longer processing."""

    def finished() -> dict[str, Any] | None:
        res = requests.get(f"{url}{ROUTE}/{prediction_id}", headers={"X-API-Key": key}, timeout=10)
        assert res.status_code == 200, res.text
        doc: dict[str, Any] = res.json()
        return None if doc["status"] == "processing" else doc

    done: dict[str, Any] = wait_for(finished, timeout, "the prediction to finish")
    return done


def assert_error(res: requests.Response, status: int, details: str, *words: str) -> str:
    """The answer is Eachlabs' error body with this status and details; returns the message."""
    assert res.status_code == status, res.text
    assert res.headers["content-type"] == "application/json"
    body = res.json()
    assert set(body) == ERROR_KEYS, body
    assert body["status"] == "error" and body["details"] == details, body
    message: str = body["message"]
    for word in words:
        assert word in message, message
    return message
