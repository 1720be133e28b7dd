"""The job store on real databases: a SQLite file and a throwaway PostgreSQL server.

Each test runs on both (the ``database`` fixture), on a new database copied from one migrated
once a session; the migration test starts from an empty one (``empty_database``).
Time is a clock the test moves, so lease expiry and purging are exact, not slept for.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection

from nsfwd.jobs import (
    AmbiguousKeyError,
    CapacityError,
    Limits,
    Prediction,
    Store,
    Upload,
)
from nsfwd.jobs.database import DatabaseUrlError, create_engine, database_url, migrate
from nsfwd.jobs.keys import hash_key
from nsfwd.jobs.schema import api_keys, metadata
from store_handles import (
    count_created_since,
    count_in_flight,
    count_unfinished,
    delivery_for,
    get_delivery,
)

T = TypeVar("T")
IMAGE = Upload(data=b"\x89PNG fake image bytes", filename="cat.png", content_type="image/png")
LEASE_S = 30.0


class Clock:
    """A UTC clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def run_with_store(url: str, body: Callable[[Store, Clock], Awaitable[T]], **options: Any) -> T:
    """Open a store on ``url`` with a test clock, run ``body`` in a fresh event loop, close."""
    clock = Clock()

    async def main() -> T:
        async with Store(url, clock=clock, **options) as store:
            return await body(store, clock)

    return asyncio.run(main())


async def queue(store: Store, count: int = 1, **fields: Any) -> list[Prediction]:
    """Create ``count`` prodia predictions of an uploaded image (``fields`` override)."""
    created = []
    for _ in range(count):
        options: dict[str, Any] = {"upload": IMAGE} | fields
        created.append(
            await store.predictions.create(
                protocol="prodia", job_type="inference.vit.img2label.v1", model="m", **options
            )
        )
    return created


def test_create_then_get_returns_the_same_prediction_and_its_upload(database: str) -> None:
    async def body(store: Store, clock: Clock) -> None:
        (created,) = await queue(store, api_key="abc123", config={"model": "m", "extra": [1, 2]})
        assert created.status == "queued" and created.attempts == 0
        assert created.created_at == clock.now
        assert await store.predictions.get(created.id) == created
        assert await store.predictions.get_input(created.id) == IMAGE
        by_url = await store.predictions.create(
            protocol="eachlabs",
            job_type="nsfw-image-detection",
            model="m",
            input_url="https://example.com/a.jpg",
            webhook_url="https://example.com/hook",
        )
        fetched = await store.predictions.get(by_url.id)
        assert fetched is not None and fetched.input_url == "https://example.com/a.jpg"
        assert fetched.input_filename is None
        assert await store.predictions.get_input(by_url.id) is None
        assert await store.predictions.get("no-such-id") is None
        assert await count_unfinished(store) == 2
        assert await count_in_flight(store, "abc123") == 1

    run_with_store(database, body)


def test_a_prediction_needs_exactly_one_input(database: str) -> None:
    async def body(store: Store, clock: Clock) -> None:
        with pytest.raises(ValueError, match="exactly one"):
            await queue(store, upload=None)
        with pytest.raises(ValueError, match="exactly one"):
            await queue(store, input_url="https://example.com/a.jpg")

    run_with_store(database, body)


def test_concurrent_claimers_never_get_the_same_prediction(database: str) -> None:
    """Four replicas (each its own store, engine and connections) claim 60 predictions at once."""

    async def main() -> tuple[list[list[str]], set[str], list[Prediction]]:
        async with Store(database) as seed:
            ids = {p.id for p in await queue(seed, 60)}
        stores = [Store(database) for _ in range(4)]
        await asyncio.gather(*(store.open() for store in stores))
        try:

            async def claimer(store: Store, owner: str) -> list[str]:
                mine: list[str] = []
                while batch := await store.predictions.claim(owner, 7, LEASE_S):
                    mine += [p.id for p in batch]
                    await asyncio.sleep(0)
                return mine

            claims = await asyncio.gather(
                *(claimer(store, f"replica-{i}") for i, store in enumerate(stores))
            )
            final = [await stores[0].predictions.get(i) for i in ids]
        finally:
            await asyncio.gather(*(store.close() for store in stores))
        return claims, ids, [p for p in final if p is not None]

    claims, ids, final = asyncio.run(main())
    claimed = [prediction_id for mine in claims for prediction_id in mine]
    assert len(claimed) == len(set(claimed)), "a prediction was claimed twice"
    assert set(claimed) == ids
    owners = {p.id: p.lease_owner for p in final}
    for index, mine in enumerate(claims):
        assert all(owners[prediction_id] == f"replica-{index}" for prediction_id in mine)
    assert all(p.status == "processing" and p.attempts == 1 for p in final)


def test_claims_take_the_oldest_first_and_respect_the_limit(database: str) -> None:
    async def body(store: Store, clock: Clock) -> None:
        created = []
        for _ in range(5):
            created += await queue(store)
            clock.advance(1)
        first = await store.predictions.claim("w", 2, LEASE_S)
        assert [p.id for p in first] == [p.id for p in created[:2]]
        assert all(p.status == "processing" and p.lease_owner == "w" for p in first)
        assert first[0].started_at == clock.now
        assert first[0].lease_expires_at == clock.now + timedelta(seconds=LEASE_S)
        assert await store.predictions.claim("w", 0, LEASE_S) == []
        rest = await store.predictions.claim("w", 10, LEASE_S)
        assert [p.id for p in rest] == [p.id for p in created[2:]]
        assert await store.predictions.claim("w", 10, LEASE_S) == []

    run_with_store(database, body)


def test_an_expired_lease_is_reclaimed_and_the_stale_owner_cannot_finish(database: str) -> None:
    async def body(store: Store, clock: Clock) -> None:
        (created,) = await queue(store)
        (mine,) = await store.predictions.claim("stalled", 1, LEASE_S)
        clock.advance(LEASE_S / 2)
        held = await store.predictions.renew_leases("stalled", [created.id], LEASE_S)
        assert held == {created.id}
        clock.advance(LEASE_S - 1)
        assert await store.predictions.claim("other", 1, LEASE_S) == []  # renewed: still held
        clock.advance(2)
        (taken,) = await store.predictions.claim("other", 1, LEASE_S)
        assert taken.id == created.id and taken.attempts == 2 and taken.lease_owner == "other"
        assert taken.started_at == mine.started_at  # first start is kept
        assert await store.predictions.renew_leases("stalled", [created.id], LEASE_S) == set()
        assert await store.predictions.finish(created.id, "stalled", labels={"a": 1.0}) is None
        assert await store.predictions.release("stalled", [created.id]) == 0
        done = await store.predictions.finish(
            created.id, "other", labels={"neutral": 0.9, "high": 0.1}, flagged=False,
            predict_time=0.25,
        )  # fmt: skip
        assert done is not None and done.status == "succeeded"
        assert done.labels == {"neutral": 0.9, "high": 0.1} and done.flagged is False
        assert done.finished_at == clock.now and done.predict_time == 0.25
        assert done.lease_owner is None and done.lease_expires_at is None
        assert await store.predictions.get(created.id) == done
        assert await store.predictions.finish(created.id, "other", error="twice") is None
        assert await count_unfinished(store) == 0

    run_with_store(database, body)


def test_times_never_run_backwards_when_replica_clocks_disagree(database: str) -> None:
    async def body(store: Store, clock: Clock) -> None:
        (created,) = await queue(store)
        clock.advance(-5)  # the claiming replica's clock is behind the creating one's
        (claimed,) = await store.predictions.claim("behind", 1, LEASE_S)
        assert claimed.started_at == created.created_at
        clock.advance(-5)
        done = await store.predictions.finish(created.id, "behind", error="x")
        assert done is not None and done.finished_at == created.created_at

    run_with_store(database, body)


def test_a_released_prediction_is_queued_again_without_counting_an_attempt(database: str) -> None:
    async def body(store: Store, clock: Clock) -> None:
        (created,) = await queue(store)
        await store.predictions.claim("leaving", 1, LEASE_S)
        store.predictions.work_available.clear()
        assert await store.predictions.release("leaving", [created.id]) == 1
        assert store.predictions.work_available.is_set()
        again = await store.predictions.get(created.id)
        assert again is not None and again.status == "queued" and again.attempts == 0
        (claimed,) = await store.predictions.claim("next", 1, LEASE_S)
        assert claimed.attempts == 1

    run_with_store(database, body)


def test_a_prediction_abandoned_max_attempts_times_fails_with_a_message(database: str) -> None:
    async def body(store: Store, clock: Clock) -> None:
        (created,) = await queue(store, webhook_url="https://example.com/hook")
        for attempt in (1, 2, 3):
            (claimed,) = await store.predictions.claim(f"crashing-{attempt}", 1, LEASE_S)
            assert claimed.attempts == attempt
            clock.advance(LEASE_S + 1)  # the server dies; the lease runs out
        assert await store.predictions.claim("survivor", 1, LEASE_S) == []
        failed = await store.predictions.get(created.id)
        assert failed is not None and failed.status == "failed"
        assert failed.error == "the server stopped while running this prediction 3 times; giving up"
        assert failed.finished_at == clock.now and failed.lease_owner is None
        delivery = await delivery_for(store, created.id)
        assert delivery is not None
        assert json.loads(delivery.payload) == {
            "id": created.id, "status": "failed", "labels": None, "flagged": None,
            "error": failed.error,
        }  # fmt: skip
        assert await store.predictions.claim("late", 1, LEASE_S) == []
        assert await store.predictions.get(created.id) == failed  # failed once, then left alone

    run_with_store(database, body, max_attempts=3)


def test_a_claim_fails_what_was_abandoned_after_its_last_attempt(database: str) -> None:
    async def body(store: Store, clock: Clock) -> None:
        (created,) = await queue(store)
        await store.predictions.claim("gone", 1, LEASE_S)
        assert await store.predictions.claim("next", 1, LEASE_S) == []  # lease still running
        running = await store.predictions.get(created.id)
        assert running is not None and running.status == "processing"
        clock.advance(LEASE_S + 1)
        assert await store.predictions.claim("next", 1, LEASE_S) == []
        failed = await store.predictions.get(created.id)
        assert failed is not None and failed.id == created.id and failed.status == "failed"
        assert failed.error is not None and "1 times; giving up" in failed.error

    run_with_store(database, body, max_attempts=1)


def test_finishing_enqueues_exactly_one_webhook_delivery(database: str) -> None:
    async def body(store: Store, clock: Clock) -> None:
        hooked, plain = (
            await queue(store, webhook_url="https://example.com/hook"),
            await queue(store),
        )
        await store.predictions.claim("w", 2, LEASE_S)
        store.deliveries.work_available.clear()
        await store.predictions.finish(hooked[0].id, "w", labels={"a": 1.0}, flagged=True)
        assert store.deliveries.work_available.is_set()
        await store.predictions.finish(plain[0].id, "w", error="bad image")
        delivery = await delivery_for(store, hooked[0].id)
        assert delivery is not None and delivery.id.startswith("msg_")
        assert delivery.status == "pending" and delivery.attempts == 0
        assert delivery.url == "https://example.com/hook"
        assert delivery.next_attempt_at == clock.now
        assert json.loads(delivery.payload) == {
            "id": hooked[0].id, "status": "succeeded", "labels": {"a": 1.0}, "flagged": True,
            "error": None,
        }  # fmt: skip
        assert await delivery_for(store, plain[0].id) is None
        assert await get_delivery(store, delivery.id) == delivery
        # The unique constraint: a second delivery for one prediction cannot exist.
        engine = create_engine(database)
        try:
            async with engine.begin() as connection:
                with pytest.raises(Exception, match=r"(?i)unique"):
                    await connection.execute(
                        text(
                            "INSERT INTO webhook_deliveries (id, prediction_id, url, payload, "
                            "status, attempts, next_attempt_at, created_at) VALUES ('msg_x', "
                            ":p, 'u', '{}', 'pending', 0, :t, :t)"
                        ),
                        {"p": hooked[0].id, "t": clock.now.replace(tzinfo=None)},
                    )
        finally:
            await engine.dispose()

    run_with_store(database, body)


def test_a_payload_builder_shapes_the_webhook_or_skips_it(database: str) -> None:
    def payload(prediction: Prediction) -> dict[str, Any] | None:
        if prediction.status == "failed":
            return None
        return {"id": prediction.id, "labels": prediction.labels}

    async def body(store: Store, clock: Clock) -> None:
        good, bad = await queue(store, 2, webhook_url="https://example.com/hook")
        await store.predictions.claim("w", 2, LEASE_S)
        await store.predictions.finish(good.id, "w", labels={"a": 0.5, "b": 0.5})
        await store.predictions.finish(bad.id, "w", error="nope")
        delivery = await delivery_for(store, good.id)
        assert delivery is not None
        assert json.loads(delivery.payload) == {"id": good.id, "labels": {"a": 0.5, "b": 0.5}}
        assert await delivery_for(store, bad.id) is None

    run_with_store(database, body, webhook_payload=payload)


def test_deliveries_are_leased_retried_and_settled(database: str) -> None:
    async def body(store: Store, clock: Clock) -> None:
        ids = []
        for _ in range(3):
            (created,) = await queue(store, webhook_url="https://example.com/hook")
            await store.predictions.claim("w", 1, LEASE_S)
            await store.predictions.finish(created.id, "w", labels={"a": 1.0})
            ids.append(created.id)
            clock.advance(1)
        claimed = await store.deliveries.claim("sender", 10, LEASE_S)
        assert [d.prediction_id for d in claimed] == ids  # most overdue first
        assert all(d.lease_owner == "sender" for d in claimed)
        assert await store.deliveries.claim("other", 10, LEASE_S) == []
        first, second, third = claimed

        retried = await store.deliveries.record_attempt(
            first.id, "sender", ok=False, status=500, error="answered 500",
            next_attempt_at=clock.now + timedelta(seconds=60),
        )  # fmt: skip
        assert retried is not None and retried.status == "pending" and retried.attempts == 1
        assert retried.last_status == 500 and retried.last_error == "answered 500"
        assert retried.lease_owner is None
        delivered = await store.deliveries.record_attempt(second.id, "sender", ok=True, status=204)
        assert delivered is not None and delivered.status == "delivered"
        assert delivered.delivered_at == clock.now and delivered.last_error is None
        gave_up = await store.deliveries.record_attempt(third.id, "sender", ok=False, error="x")
        assert gave_up is not None and gave_up.status == "failed"
        assert await store.deliveries.record_attempt(second.id, "sender", ok=True) is None

        assert await store.deliveries.claim("other", 10, LEASE_S) == []  # not due yet
        clock.advance(61)
        (again,) = await store.deliveries.claim("other", 10, LEASE_S)
        assert again.id == first.id and again.attempts == 1
        clock.advance(LEASE_S + 1)  # "other" died mid-send: its lease runs out
        assert await store.deliveries.record_attempt(first.id, "sender", ok=True) is None
        (taken,) = await store.deliveries.claim("third", 10, LEASE_S)
        assert taken.id == first.id
        done = await store.deliveries.record_attempt(first.id, "third", ok=True, status=200)
        assert done is not None and done.status == "delivered" and done.attempts == 2

    run_with_store(database, body)


def test_purge_removes_expired_results_with_inputs_and_settled_deliveries(database: str) -> None:
    async def body(store: Store, clock: Clock) -> None:
        old, hooked = await queue(store), await queue(store, webhook_url="https://e.com/h")
        waiting = await queue(store)
        await store.predictions.claim("w", 2, LEASE_S)
        await store.predictions.finish(old[0].id, "w", labels={"a": 1.0})
        await store.predictions.finish(hooked[0].id, "w", labels={"a": 1.0})
        finished = await store.predictions.get(old[0].id)
        assert finished is not None and finished.expires_at == clock.now + timedelta(hours=1)

        clock.advance(3599)
        assert await store.predictions.purge_expired() == 0
        clock.advance(2)
        assert await store.predictions.purge_expired() == 1  # the hooked one waits for its delivery
        assert await store.predictions.get(old[0].id) is None
        assert await store.predictions.get_input(old[0].id) is None
        assert await store.predictions.get(hooked[0].id) is not None
        assert await store.predictions.get(waiting[0].id) is not None  # unfinished: never purged

        (delivery,) = await store.deliveries.claim("sender", 1, LEASE_S)
        await store.deliveries.record_attempt(delivery.id, "sender", ok=True, status=200)
        assert await store.predictions.purge_expired() == 1
        assert await store.predictions.get(hooked[0].id) is None
        assert await get_delivery(store, delivery.id) is None
        assert await store.predictions.get_input(hooked[0].id) is None
        engine = create_engine(database)
        try:
            async with engine.connect() as connection:
                rows = await connection.execute(text("SELECT count(*) FROM inputs"))
                assert rows.scalar_one() == 1  # only the unfinished prediction's upload
        finally:
            await engine.dispose()

    run_with_store(database, body, result_ttl_s=3600)


def test_limits_refuse_creates_atomically(database: str) -> None:
    async def body(store: Store, clock: Clock) -> None:
        server = Limits(max_unfinished=3)
        results = await asyncio.gather(
            *(queue(store, limits=server) for _ in range(6)), return_exceptions=True
        )
        refused = [r for r in results if isinstance(r, CapacityError)]
        assert len(refused) == 3 and await count_unfinished(store) == 3
        assert refused[0].scope == "server" and refused[0].limit == 3
        assert "the limit is 3" in str(refused[0])

        per_key = Limits(max_in_flight=2)
        await queue(store, 2, api_key="k1", limits=per_key)
        with pytest.raises(CapacityError) as caught:
            await queue(store, api_key="k1", limits=per_key)
        assert caught.value.scope == "key" and caught.value.count == 2
        await queue(store, api_key="k2", limits=per_key)  # another key has its own budget

        rate = Limits(creates_per_minute=3)
        await queue(store, 2, api_key="k2", limits=rate)
        with pytest.raises(CapacityError) as caught:
            await queue(store, api_key="k2", limits=rate)
        assert caught.value.scope == "rate"
        assert await count_created_since(store, "k2", clock.now - timedelta(minutes=1)) == 3
        clock.advance(61)
        await queue(store, api_key="k2", limits=rate)

    run_with_store(database, body)


def test_api_keys_are_created_found_listed_and_revoked(database: str) -> None:
    async def body(store: Store, clock: Clock) -> None:
        assert not await store.keys.any_created()
        secret, key = await store.keys.create("ci", creates_per_minute=5, max_in_flight=2)
        assert await store.keys.any_created()
        assert secret.startswith("nsfwd_") and len(secret) > 40
        assert key.prefix == secret[:12] and secret not in key.key_hash
        assert (key.creates_per_minute, key.max_in_flight) == (5, 2)
        clock.advance(1)
        other_secret, other = await store.keys.create("default")
        assert (other.creates_per_minute, other.max_in_flight) == (100, 10)
        assert await store.keys.find(secret) == key
        assert await store.keys.find(secret + "x") is None
        assert await store.keys.find("") is None
        assert [k.name for k in await store.keys.all()] == ["ci", "default"]

        clock.advance(5)
        revoked = await store.keys.revoke(key.prefix)
        assert revoked is not None and revoked.revoked and revoked.revoked_at == clock.now
        assert await store.keys.find(secret) is None
        assert await store.keys.revoke(key.id) == revoked  # again: unchanged
        assert await store.keys.revoke("nsfwd_nope") is None
        by_secret = await store.keys.revoke(other_secret)
        assert by_secret is not None and by_secret.id == other.id
        assert all(k.revoked for k in await store.keys.all())
        assert await store.keys.any_created()  # revoked keys count: the API stays closed

    run_with_store(database, body)


def test_a_key_and_its_predictions_carry_its_own_policy(database: str) -> None:
    async def body(store: Store, clock: Clock) -> None:
        secret, key = await store.keys.create("strict", policy="strict", threshold=0.25)
        clock.advance(1)
        _, plain = await store.keys.create("plain")
        assert (key.policy, key.threshold) == ("strict", 0.25)
        assert (plain.policy, plain.threshold) == (None, None)
        assert await store.keys.find(secret) == key
        assert [(k.policy, k.threshold) for k in await store.keys.all()] == [
            ("strict", 0.25),
            (None, None),
        ]
        for bad in ({"policy": "loose"}, {"threshold": 1.5}, {"threshold": -0.1}):
            with pytest.raises(ValueError, match=r"^(policy|threshold) must be"):
                await store.keys.create("bad", **bad)
        assert len(await store.keys.all()) == 2

        [own] = await queue(store, api_key=key.id, policy="lenient", threshold=0.0)
        [server] = await queue(store)
        assert (own.policy, own.threshold) == ("lenient", 0.0)
        assert await store.predictions.get(own.id) == own
        claimed = {p.id: p for p in await store.predictions.claim("w", limit=2, lease_s=LEASE_S)}
        assert (claimed[own.id].policy, claimed[own.id].threshold) == ("lenient", 0.0)
        assert (claimed[server.id].policy, claimed[server.id].threshold) == (None, None)

    run_with_store(database, body)


def test_upgrading_a_database_made_by_the_first_revision_keeps_its_keys(database: str) -> None:
    async def main() -> None:
        engine = create_engine(database)
        try:
            await migrate(engine, "0001")
            async with engine.begin() as connection:  # only the columns 0001 made
                await connection.execute(
                    api_keys.insert().values(
                        id="k1",
                        name="old",
                        prefix="nsfwd_old",
                        key_hash=hash_key("nsfwd_old-secret"),
                        created_at=datetime(2025, 1, 1, tzinfo=UTC),
                    )
                )
        finally:
            await engine.dispose()
        async with Store(database) as store:  # migrates to the newest revision
            old = await store.keys.find("nsfwd_old-secret")
            assert old is not None and (old.id, old.name) == ("k1", "old")
            assert (old.creates_per_minute, old.max_in_flight) == (100, 10)
            assert (old.policy, old.threshold) == (None, None)  # follows the server's
            _, new = await store.keys.create("new", policy="moderate", threshold=0.37)
            assert await store.keys.all() == [old, new]

    asyncio.run(main())


def test_upgrading_keeps_each_predictions_verdict_and_model(empty_database: str) -> None:
    """Revision 0004: the verdict text becomes ``flagged``, and Eachlabs' name for the default
    model becomes no model named (the default), so a queued prediction runs on."""
    ID = {n: str(uuid.UUID(int=n)) for n in range(1, 5)}
    common = {"job_type": "nsfw-image-detection", "created_at": datetime(2025, 1, 1, tzinfo=UTC)}
    slug = "nsfw-image-detection"
    rows = [
        {"id": ID[1], "protocol": "eachlabs", "model": slug, "status": "succeeded",
         "output": "nsfw", **common},
        {"id": ID[2], "protocol": "eachlabs", "model": "vit", "status": "succeeded",
         "output": "normal", **common},
        {"id": ID[3], "protocol": "prodia", "model": slug, "status": "queued", **common},
        {"id": ID[4], "protocol": "eachlabs", "model": slug, "status": "queued", **common},
    ]  # fmt: skip

    async def main() -> None:
        engine = create_engine(empty_database)
        try:
            await migrate(engine, "0003")
            async with engine.begin() as connection:
                for row in rows:
                    columns = ", ".join(row)
                    values = ", ".join(f":{name}" for name in row)
                    await connection.execute(
                        text(f"INSERT INTO predictions ({columns}) VALUES ({values})"), row
                    )
        finally:
            await engine.dispose()
        async with Store(empty_database) as store:  # migrates to the newest revision
            found = {row["id"]: await store.predictions.get(str(row["id"])) for row in rows}
        assert {key: (p.flagged, p.model) for key, p in found.items() if p is not None} == {
            ID[1]: (True, None),
            ID[2]: (False, "vit"),
            ID[3]: (None, slug),  # a Prodia job that named it: as it was
            ID[4]: (None, None),
        }

    asyncio.run(main())


def test_an_ambiguous_key_name_is_refused(database: str) -> None:
    async def body(store: Store, clock: Clock) -> None:
        _, first = await store.keys.create("a")
        _, second = await store.keys.create("b")
        engine = create_engine(database)
        try:
            async with engine.begin() as connection:  # force the same display prefix
                await connection.execute(
                    text("UPDATE api_keys SET prefix = :p"), {"p": first.prefix}
                )
        finally:
            await engine.dispose()
        with pytest.raises(AmbiguousKeyError, match="matches 2 keys"):
            await store.keys.revoke(first.prefix)
        revoked = await store.keys.revoke(second.id)
        assert revoked is not None and revoked.name == "b"

    run_with_store(database, body)


def test_the_migrated_schema_matches_the_tables_and_replicas_can_start_at_once(
    empty_database: str,
) -> None:
    database = empty_database

    async def main() -> list[Any]:
        stores = [Store(database) for _ in range(3)]
        await asyncio.gather(*(store.open() for store in stores))  # all migrate at once
        await asyncio.gather(*(store.close() for store in stores))
        engine = create_engine(database)
        try:
            async with engine.connect() as connection:

                def diff(sync: Connection) -> list[Any]:
                    context = MigrationContext.configure(
                        sync, opts={"compare_type": True, "version_table": "nsfwd_alembic_version"}
                    )
                    return list(compare_metadata(context, metadata))

                return await connection.run_sync(diff)
        finally:
            await engine.dispose()

    assert asyncio.run(main()) == []


def test_sqlite_connections_use_wal_and_foreign_keys(tmp_path: Path) -> None:
    async def main() -> tuple[str, int, int]:
        async with Store(database_url(tmp_path)):
            pass
        engine = create_engine(database_url(tmp_path))
        try:
            async with engine.connect() as connection:
                mode = (await connection.execute(text("PRAGMA journal_mode"))).scalar_one()
                keys = (await connection.execute(text("PRAGMA foreign_keys"))).scalar_one()
                busy = (await connection.execute(text("PRAGMA busy_timeout"))).scalar_one()
        finally:
            await engine.dispose()
        return mode, keys, busy

    assert asyncio.run(main()) == ("wal", 1, 30_000)
    assert (tmp_path / "nsfwd.db").is_file()


def test_database_urls_are_normalised(tmp_path: Path) -> None:
    assert database_url(tmp_path) == f"sqlite+aiosqlite:///{tmp_path.resolve()}/nsfwd.db"
    assert database_url(tmp_path / "new" / "dir").endswith("/new/dir/nsfwd.db")
    assert (
        database_url(tmp_path, "postgresql://u:p@db:5432/nsfwd")
        == "postgresql+asyncpg://u:p@db:5432/nsfwd"
    )
    assert database_url(tmp_path, "postgres://db/x") == "postgresql+asyncpg://db/x"
    assert database_url(tmp_path, "postgresql+asyncpg://db/x") == "postgresql+asyncpg://db/x"
    assert database_url(tmp_path, "sqlite:////tmp/x.db") == "sqlite+aiosqlite:////tmp/x.db"
    for bad in ("mysql://db/x", "postgresql+psycopg2://db/x", "not a url"):
        with pytest.raises(DatabaseUrlError, match="NSFWD_DATABASE_URL"):
            database_url(tmp_path, bad)


def test_a_store_must_be_opened_first(tmp_path: Path) -> None:
    store = Store(database_url(tmp_path))
    with pytest.raises(RuntimeError, match="not open"):
        asyncio.run(store.predictions.get("x"))
