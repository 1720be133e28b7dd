"""Webhook delivery (nsfwd.jobs.webhooks) on real stores, to a real receiver on loopback.

The receiver (and image host, for the API tests that import it) listens on 127.0.0.2, allowed
through ``allow_networks``; the canary (tests/hosts.py) listens on 127.0.0.1 at the same port and
must never be reached. Deliveries come from predictions finished through the store, exactly as
the worker finishes them, so the outbox is the real one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import stat
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from hosts import ALLOWED, SECRET, Canary, Hit, Host, verified
from nsfwd.api.eachlabs.routes import webhook_body
from nsfwd.fetch import FetchPolicy, FetchTimeouts
from nsfwd.jobs import Delivery, Prediction, Store
from nsfwd.jobs.database import database_url
from nsfwd.jobs.webhooks import (
    SECRET_FILE,
    WebhookSender,
    generate_secret,
    resolve_secret,
    webhooks_enabled,
)
from nsfwd.settings import Settings
from servers import free_port
from store_handles import delivery_for
from waiting import until

T = TypeVar("T")
# --- The receiver and image host on 127.0.0.2 ---------------------------------------------------


# --- Helpers ------------------------------------------------------------------------------------


def policy() -> FetchPolicy:
    return FetchPolicy(
        allow_networks=ALLOWED, allow_http=True, timeouts=FetchTimeouts(connect=2, read=5)
    )


def sender(store: Store, delays: list[float], **options: Any) -> WebhookSender:
    return WebhookSender(
        store, SECRET, policy(), retry_delays=delays, poll_s=options.pop("poll_s", 0.1), **options
    )


async def finished(
    store: Store,
    webhook_url: str,
    *,
    labels: dict[str, float] | None = None,
    error: str | None = None,
) -> Prediction:
    """A prediction with a webhook, finished as the worker finishes one (the outbox fills)."""
    created = await store.predictions.create(
        protocol="eachlabs",
        job_type="nsfw-image-detection",
        model="nsfw-image-detection",
        input_url="https://images.example/photo.jpg",
        webhook_url=webhook_url,
    )
    owner = f"test-worker-{created.id}"
    [claimed] = await store.predictions.claim(owner, 1, 30)
    assert claimed.id == created.id
    if error is None:
        labels = labels or {"neutral": 0.7, "low": 0.1, "medium": 0.1, "high": 0.1}
        flagged = labels["medium"] + labels["high"] > 0.5
        done = await store.predictions.finish(
            created.id, owner, labels=labels, flagged=flagged, predict_time=0.01
        )
    else:
        done = await store.predictions.finish(created.id, owner, error=error)
    assert done is not None
    return done


async def settled(store: Store, prediction_id: str, timeout: float = 15) -> Delivery:
    """The prediction's delivery once it is delivered or given up."""

    async def done() -> Delivery | None:
        delivery = await delivery_for(store, prediction_id)
        assert delivery is not None
        return None if delivery.status == "pending" else delivery

    return await until(done, timeout, "the delivery to be delivered or given up")


def run(coroutine: Awaitable[T]) -> T:
    async def main() -> T:
        return await coroutine

    return asyncio.run(main())


def with_sender(
    url: str, delays: list[float], body: Callable[[Store], Awaitable[T]], **options: Any
) -> T:
    async def main() -> T:
        async with Store(url, webhook_payload=webhook_body) as store:
            webhooks = sender(store, delays, **options)
            await webhooks.start()
            try:
                return await body(store)
            finally:
                await webhooks.stop()

    return asyncio.run(main())


# --- Delivery ----------------------------------------------------------------------------------


def test_a_delivery_is_signed_the_standard_webhooks_way(
    database: str, host: tuple[str, Host], canary: Canary
) -> None:
    base, receiver = host
    name = f"signed-{time.monotonic_ns()}"

    async def body(store: Store) -> tuple[Prediction, Delivery]:
        prediction = await finished(store, f"{base}/hook/{name}")
        return prediction, await settled(store, prediction.id)

    prediction, delivery = with_sender(database, [0.1], body)
    [hit] = receiver.received(name)
    assert verified(hit) == {
        "exec_id": prediction.id,
        "status": "succeeded",
        "output": "normal",
        "error": "",
    }
    assert hit.body == delivery.payload.encode()
    assert hit.headers["webhook-id"] == delivery.id and delivery.id.startswith("msg_")
    assert hit.headers["content-type"] == "application/json"
    assert abs(int(hit.headers["webhook-timestamp"]) - time.time()) < 30
    assert hit.headers["webhook-signature"].startswith("v1,")
    assert delivery.status == "delivered" and delivery.attempts == 1
    assert delivery.last_status == 200 and delivery.delivered_at is not None
    with pytest.raises(WebhookVerificationError):
        verified(hit, generate_secret())
    tampered = Hit(hit.headers, hit.body.replace(b"normal", b"nsfw\x20\x20"), hit.at, 200)
    with pytest.raises(WebhookVerificationError):
        verified(tampered)


def test_a_failed_prediction_sends_failed_with_its_error(
    tmp_path: Path, host: tuple[str, Host]
) -> None:
    base, receiver = host
    name = f"failed-{time.monotonic_ns()}"

    async def body(store: Store) -> Prediction:
        prediction = await finished(store, f"{base}/hook/{name}", error="the image at x: 404")
        await settled(store, prediction.id)
        return prediction

    prediction = with_sender(database_url(tmp_path), [0.1], body)
    [hit] = receiver.received(name)
    assert verified(hit) == {
        "exec_id": prediction.id,
        "status": "failed",
        "output": "",
        "error": "the image at x: 404",
    }


def test_refused_attempts_follow_the_schedule_then_give_up(
    tmp_path: Path, host: tuple[str, Host]
) -> None:
    base, receiver = host
    name = f"always-503-{time.monotonic_ns()}"
    delays = [0.2, 0.4]

    async def body(store: Store) -> Delivery:
        prediction = await finished(store, f"{base}/hook/{name}?status=503")
        return await settled(store, prediction.id)

    delivery = with_sender(database_url(tmp_path), delays, body)
    hits = receiver.received(name)
    assert len(hits) == 3, "one attempt, then one per retry delay"
    assert {hit.headers["webhook-id"] for hit in hits} == {delivery.id}
    for hit in hits:
        verified(hit)
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(hits)]
    assert gaps[0] >= delays[0] - 0.02 and gaps[1] >= delays[1] - 0.02, gaps
    assert delivery.status == "failed" and delivery.attempts == 3
    assert delivery.last_status == 503
    assert delivery.last_error == "answered 503 Service Unavailable"
    time.sleep(0.5)
    assert len(receiver.received(name)) == 3, "a given-up delivery is never sent again"


def test_a_receiver_that_answers_late_is_retried(tmp_path: Path, host: tuple[str, Host]) -> None:
    base, receiver = host
    name = f"late-{time.monotonic_ns()}"

    async def body(store: Store) -> Delivery:
        prediction = await finished(store, f"{base}/hook/{name}?sleep=1.5")
        return await settled(store, prediction.id)

    delivery = with_sender(database_url(tmp_path), [0.1], body, timeout_s=0.5)
    assert delivery.status == "delivered" and delivery.attempts == 2
    assert [hit.headers["webhook-id"] for hit in receiver.received(name)] == [delivery.id] * 2


def test_an_unreachable_receiver_is_retried_then_given_up(tmp_path: Path) -> None:
    port = free_port("127.0.0.2")  # nothing listens there

    async def body(store: Store) -> Delivery:
        prediction = await finished(store, f"http://127.0.0.2:{port}/hook")
        return await settled(store, prediction.id)

    delivery = with_sender(database_url(tmp_path), [0.05], body)
    assert delivery.status == "failed" and delivery.attempts == 2
    assert delivery.last_status is None
    assert delivery.last_error is not None and "ConnectError" in delivery.last_error


def test_private_receivers_and_redirects_to_them_are_refused(
    tmp_path: Path, host: tuple[str, Host], canary: Canary
) -> None:
    base, receiver = host
    stolen = f"http://127.0.0.1:{canary.port}/stolen"
    name = f"redirected-{time.monotonic_ns()}"
    redirect = f"{base}/redirect?to={quote(stolen, safe='')}"

    async def body(store: Store) -> list[Delivery]:
        # Enqueued straight through the store, past the API's check at creation: the sender
        # still refuses, at connection time.
        direct = await finished(store, stolen)
        via_localhost = await finished(store, f"http://localhost:{canary.port}/stolen")
        redirected = await finished(store, redirect)
        public_redirect = await finished(store, f"{base}/redirect?to=/hook/{name}")
        return [
            await settled(store, p.id) for p in (direct, via_localhost, redirected, public_redirect)
        ]

    direct, via_localhost, redirected, public_redirect = with_sender(
        database_url(tmp_path), [0.05], body
    )
    for delivery in (direct, via_localhost, redirected):
        assert delivery.status == "failed" and delivery.attempts == 2
        assert delivery.last_error is not None and "refused" in delivery.last_error
    assert "loopback" in (direct.last_error or "")
    assert "redirects to" in (redirected.last_error or "")
    # A redirect to an allowed address is still not followed: 302 is not a 2xx.
    assert public_redirect.status == "failed" and public_redirect.last_status == 302
    assert receiver.received(name) == []


# --- Durability and replicas --------------------------------------------------------------------


def test_a_scheduled_retry_survives_a_restart(tmp_path: Path, host: tuple[str, Host]) -> None:
    base, receiver = host
    name = f"restart-{time.monotonic_ns()}"
    url = database_url(tmp_path)

    async def first_life() -> tuple[Prediction, Delivery]:
        async with Store(url, webhook_payload=webhook_body) as store:
            webhooks = sender(store, [1.0])
            await webhooks.start()
            prediction = await finished(store, f"{base}/hook/{name}?fail=1")

            async def attempted() -> Delivery | None:
                delivery = await delivery_for(store, prediction.id)
                assert delivery is not None, "the outbox holds a delivery for every prediction"
                return delivery if delivery.attempts > 0 else None

            delivery = await until(attempted, 10, "the first attempt")
            await webhooks.stop()
            return prediction, delivery

    prediction, pending = run(first_life())
    assert pending.status == "pending" and pending.attempts == 1 and pending.last_status == 500
    assert pending.next_attempt_at > datetime.now(UTC), "the retry is due later"
    assert len(receiver.received(name)) == 1

    async def second_life(store: Store) -> Delivery:
        return await settled(store, prediction.id)

    delivered = with_sender(url, [1.0], second_life)
    assert delivered.status == "delivered" and delivered.attempts == 2
    first, second = receiver.received(name)
    assert first.answered == 500 and second.answered == 200
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == pending.id
    assert second.at - first.at >= 0.95, "the retry waited for its time"
    assert verified(second)["exec_id"] == prediction.id


def test_two_replicas_share_the_outbox_and_send_each_once(
    database: str, host: tuple[str, Host]
) -> None:
    base, receiver = host
    prefix = f"replicas-{time.monotonic_ns()}"
    count = 12

    async def main() -> list[Delivery]:
        async with (
            Store(database, webhook_payload=webhook_body) as first,
            Store(database, webhook_payload=webhook_body) as second,
        ):
            senders = [
                sender(first, [0.1], name="a", concurrency=3),
                sender(second, [0.1], name="b", concurrency=3),
            ]
            ids = [
                (await finished(first, f"{base}/hook/{prefix}-{index}")).id
                for index in range(count)
            ]
            for webhooks in senders:
                await webhooks.start()
            try:
                return [await settled(first, prediction_id) for prediction_id in ids]
            finally:
                for webhooks in senders:
                    await webhooks.stop()

    deliveries = run(main())
    assert all(d.status == "delivered" and d.attempts == 1 for d in deliveries)
    for index in range(count):
        assert len(receiver.received(f"{prefix}-{index}")) == 1


# --- The secret -------------------------------------------------------------------------------


def test_the_secret_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    secret = resolve_secret(settings)
    assert secret is not None and secret.startswith("whsec_")
    Webhook(secret)  # usable
    path = tmp_path / "data" / SECRET_FILE
    assert path.read_text().strip() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert resolve_secret(settings) == secret, "the same secret on every start"
    assert webhooks_enabled(settings)

    configured = Settings(data_dir=tmp_path / "other", webhook_secret=SECRET)
    assert resolve_secret(configured) == SECRET
    assert not (tmp_path / "other").exists()

    replicas = Settings(data_dir=tmp_path / "pg", database_url="postgresql://db/nsfwd")
    assert resolve_secret(replicas) is None and not webhooks_enabled(replicas)
    assert webhooks_enabled(
        replicas.model_copy(update={"webhook_secret": configured.webhook_secret})
    )


def test_webhook_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NSFWD_WEBHOOK_RETRY_DELAYS", "0.5, 2,60")
    monkeypatch.setenv("NSFWD_WEBHOOK_SECRET", SECRET)
    settings = Settings()
    assert settings.webhook_retry_delays == [0.5, 2.0, 60.0]
    assert settings.webhook_secret is not None and SECRET not in repr(settings)
    monkeypatch.setenv("NSFWD_WEBHOOK_RETRY_DELAYS", "")
    assert Settings().webhook_retry_delays == []
    monkeypatch.setenv("NSFWD_WEBHOOK_RETRY_DELAYS", "5,-1")
    with pytest.raises(ValueError, match="webhook retry delays"):
        Settings()
    monkeypatch.delenv("NSFWD_WEBHOOK_RETRY_DELAYS")
    for bad in ("whsec_short", "whsec_not base64 at all!!", "whsec_"):
        monkeypatch.setenv("NSFWD_WEBHOOK_SECRET", bad)
        with pytest.raises(ValueError, match="webhook secret"):
            Settings()
    monkeypatch.delenv("NSFWD_WEBHOOK_SECRET")
    defaults = Settings.model_fields["webhook_retry_delays"].get_default(call_default_factory=True)
    assert sum(defaults) > 3600, "retries reach hours by default"


def test_payload_json_is_exactly_what_is_signed(tmp_path: Path, host: tuple[str, Host]) -> None:
    """Non-ASCII error text goes out byte for byte as signed (UTF-8), and verifies."""
    base, receiver = host
    name = f"utf8-{time.monotonic_ns()}"

    async def body(store: Store) -> Prediction:
        prediction = await finished(store, f"{base}/hook/{name}", error="l'image «x» a échoué")
        await settled(store, prediction.id)
        return prediction

    with_sender(database_url(tmp_path), [0.1], body)
    [hit] = receiver.received(name)
    assert json.loads(hit.body)["error"] == "l'image «x» a échoué"
    assert verified(hit)["error"] == "l'image «x» a échoué"


def test_webhooks_reach_only_their_own_allowed_networks(
    tmp_path: Path, host: tuple[str, Host], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A network opened for image fetching (NSFWD_FETCH_ALLOW_NETWORKS) is not open to
    webhooks: a delivery there that slipped past the API is refused, naming the webhook setting;
    NSFWD_WEBHOOK_ALLOW_NETWORKS opens it."""
    base, receiver = host
    name = f"image-only-{time.monotonic_ns()}"
    monkeypatch.setenv("NSFWD_FETCH_ALLOW_NETWORKS", ",".join(ALLOWED))
    monkeypatch.setenv("NSFWD_FETCH_ALLOW_HTTP", "1")
    monkeypatch.setenv("NSFWD_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("NSFWD_WEBHOOK_RETRY_DELAYS", "")

    async def main(settings: Settings) -> Delivery:
        async with Store(database_url(tmp_path), webhook_payload=webhook_body) as store:
            webhooks = WebhookSender.from_settings(store, settings)
            await webhooks.start()
            try:
                return await settled(store, (await finished(store, f"{base}/hook/{name}")).id)
            finally:
                await webhooks.stop()

    refused = asyncio.run(main(Settings()))
    assert refused.status == "failed" and refused.last_status is None
    assert refused.last_error is not None and "NSFWD_WEBHOOK_ALLOW_NETWORKS" in refused.last_error
    assert receiver.received(name) == []
    monkeypatch.setenv("NSFWD_WEBHOOK_ALLOW_NETWORKS", ",".join(ALLOWED))
    delivered = asyncio.run(main(Settings()))
    assert delivered.status == "delivered"
    assert len(receiver.received(name)) == 1
