"""Per-key limits: the in-memory moving window (nsfwd.api.ratelimit), and the store's counts that
hold across replicas."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from limits import RateLimitItemPerMinute

from eachlabs_calls import assert_error, create, created_id, eachlabs_server, poll
from hosts import Canary, Host
from nsfwd.api.ratelimit import (
    CreateRateLimiter,
    KeyLimits,
    RateLimitedError,
    store_rate_retry_after,
)
from nsfwd.jobs import CapacityError
from nsfwd.models.classifier import Classifier
from store_handles import make_key


class FakeClock:
    """Wall-clock time (what the limits package reads) that only moves when told."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(time, "time", fake)
    return fake


async def hit(limiter: CreateRateLimiter, key: str, limits: KeyLimits) -> None:
    """A create as the API makes one: checked, and counted once it went through."""
    await limiter.check(key, limits)
    await limiter.count(key, limits)


async def remaining(limiter: CreateRateLimiter, key: str, limits: KeyLimits) -> int:
    """Creates ``key`` has left in its window, read from the limiter's moving window."""
    item = RateLimitItemPerMinute(limits.creates_per_minute)
    return (await limiter._limiter.get_window_stats(item, key)).remaining


def test_creates_per_minute_are_a_moving_window_per_key(clock: FakeClock) -> None:
    three = KeyLimits(creates_per_minute=3, max_in_flight=10)

    async def main() -> None:
        limiter = CreateRateLimiter()
        await hit(limiter, "a", three)
        await hit(limiter, "a", three)
        clock.now += 30
        await hit(limiter, "a", three)
        assert await remaining(limiter, "a", three) == 0
        with pytest.raises(RateLimitedError) as refused:
            await hit(limiter, "a", three)
        assert refused.value.limit == 3
        assert refused.value.retry_after == 30, "until the oldest create leaves the window"
        assert "3 predictions in the last minute" in str(refused.value)
        await hit(limiter, "b", three)  # another key has its own window

        clock.now += 31  # the first two left the window, the third has not
        assert await remaining(limiter, "a", three) == 2
        await hit(limiter, "a", three)
        await hit(limiter, "a", three)
        with pytest.raises(RateLimitedError) as refused:
            await hit(limiter, "a", three)
        assert refused.value.retry_after == 29
        clock.now += 30
        await hit(limiter, "a", three)

        assert await remaining(CreateRateLimiter(), "a", three) == 3  # a new limiter: empty

    asyncio.run(main())


def test_a_refused_create_is_not_counted(clock: FakeClock) -> None:
    one = KeyLimits(creates_per_minute=1, max_in_flight=1)

    async def main() -> None:
        limiter = CreateRateLimiter()
        await hit(limiter, "k", one)
        for _ in range(5):
            clock.now += 10
            with pytest.raises(RateLimitedError):
                await hit(limiter, "k", one)
        clock.now += 10.5  # 60.5 s after the one create: refusals did not extend the window
        await hit(limiter, "k", one)

    asyncio.run(main())


def test_only_counted_creates_use_up_the_window(clock: FakeClock) -> None:
    two = KeyLimits(creates_per_minute=2, max_in_flight=1)

    async def main() -> None:
        limiter = CreateRateLimiter()
        for _ in range(5):  # checked, then refused further on (a bad URL, a full queue)
            await limiter.check("k", two)
        assert await remaining(limiter, "k", two) == 2
        await hit(limiter, "k", two)
        await hit(limiter, "k", two)
        with pytest.raises(RateLimitedError):
            await limiter.check("k", two)

    asyncio.run(main())


def test_the_stores_rate_refusal_estimates_when_room_frees() -> None:
    assert store_rate_retry_after(CapacityError("rate", 100, 100)) == 1
    assert store_rate_retry_after(CapacityError("rate", 100, 150)) == 31
    assert store_rate_retry_after(CapacityError("rate", 3, 3)) == 20
    assert store_rate_retry_after(CapacityError("rate", 1, 50)) == 60


# --- Across replicas: two servers on one store ------------------------------------------------


def test_limits_hold_across_replicas_sharing_a_store(
    classifier: Classifier, tmp_path: Path, host: tuple[str, Host], canary: Canary
) -> None:
    base, receiver = host
    with (
        eachlabs_server(classifier, tmp_path) as (first, store_url),
        eachlabs_server(classifier, tmp_path) as (second, _),
    ):
        # Creates per minute: each replica's window saw 2, the store saw 4.
        key = make_key(store_url, "rate", creates_per_minute=4, max_in_flight=100)
        for url in (first, second, first, second):
            created_id(create(url, f"{base}/missing", key=key))
        res = create(url=first, image=f"{base}/missing", key=key)
        message = assert_error(res, 429, "rate_limited", "in the last minute; the limit is 4")
        assert "retry in" in message and int(res.headers["Retry-After"]) >= 1

        # In flight: one on each replica fills a limit of 2.
        key = make_key(store_url, "in-flight", max_in_flight=2)
        gate = f"replicas-{uuid.uuid4().hex}"
        try:
            held = [
                created_id(create(url, f"{base}/slow?gate={gate}", key=key))
                for url in (first, second)
            ]
            for url in (first, second):
                refused = create(url, f"{base}/slow?gate={gate}", key=key)
                assert_error(refused, 429, "too_many_in_flight", "the limit is 2")
                assert int(refused.headers["Retry-After"]) >= 1
        finally:
            receiver.open_gate(gate)
        for prediction_id in held:
            assert poll(first, prediction_id, key=key)["status"] == "success"
    assert canary.hits == []
