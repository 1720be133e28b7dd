"""Named, bounded thread pools (nsfwd.engine.pools): each kind of blocking work has its own, a late
or abandoned task holds no slot, and the number of threads stays bounded."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from functools import partial
from typing import Any

import pytest

from nsfwd.engine import pools
from nsfwd.engine.pools import BoundedPool, PoolDeadlineError
from nsfwd.fetch import system_resolver, webhook_resolver
from nsfwd.settings import Settings
from waiting import wait_for


def test_the_pools_are_named_and_bounded() -> None:
    assert set(pools.DEFAULT_SIZES) == {"decode", "dns", "webhooks", "banks"}
    for name, size in pools.DEFAULT_SIZES.items():
        assert pools.named(name).name == name
        assert 1 <= size <= 64
    with pytest.raises(KeyError, match="the pools are decode, dns, webhooks"):
        pools.named("default")
    before = pools.named(pools.DNS)
    try:
        pools.configure(dns=3)
        assert pools.named(pools.DNS).size == 3 and pools.named(pools.DNS) is not before
        pools.configure(dns=3)
        assert pools.named(pools.DNS).size == 3
    finally:
        pools.configure(dns=None)
    assert pools.named(pools.DNS).size == pools.DEFAULT_SIZES["dns"]
    with pytest.raises(ValueError, match="at least one thread"):
        BoundedPool("x", 0)


def test_the_sizes_come_from_settings() -> None:
    settings = Settings(decode_workers=3, dns_workers=5, webhook_workers=2)
    assert (settings.dns_workers, settings.webhook_workers, settings.decode_timeout_s) == (5, 2, 10)
    assert Settings().dns_workers == 8 and Settings().webhook_workers == 4


def test_at_most_size_tasks_run_at_once_on_named_threads() -> None:
    pool = BoundedPool("test", 2)
    lock = threading.Lock()
    running, most, names = 0, 0, set()

    def task(value: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            names.add(threading.current_thread().name)
        time.sleep(0.05)
        with lock:
            running -= 1
        return value * 2

    async def main() -> list[int]:
        return list(await asyncio.gather(*(pool.run(partial(task, v)) for v in range(8))))

    assert asyncio.run(main()) == [v * 2 for v in range(8)]
    assert most == 2 and names == {"nsfwd-test"}
    # a thread hands its slot back just after its caller has the result
    wait_for(lambda: (pool.running, pool.waiting, pool.written_off) == (0, 0, 0), 5, "idle")


def test_errors_reach_the_caller() -> None:
    def fail() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        asyncio.run(BoundedPool("test", 1).run(fail))


def test_a_late_task_is_written_off_and_its_slot_goes_to_the_next() -> None:
    pool = BoundedPool("test", 1)
    release = threading.Event()

    async def main() -> None:
        started = time.perf_counter()
        with pytest.raises(PoolDeadlineError, match=r"ran longer than 0\.2 s"):
            await pool.run(release.wait, deadline_s=0.2)
        assert time.perf_counter() - started < 2
        assert (pool.running, pool.written_off) == (0, 1)
        assert await pool.run(lambda: "next", deadline_s=5) == "next"  # not queued behind it
        release.set()
        for _ in range(100):
            if pool.written_off == 0:
                break
            await asyncio.sleep(0.02)
        assert (pool.running, pool.written_off) == (0, 0)

    asyncio.run(main())


def test_a_task_whose_caller_is_cancelled_holds_no_slot() -> None:
    pool = BoundedPool("test", 1)
    release = threading.Event()

    async def main() -> None:
        running = asyncio.create_task(pool.run(release.wait))
        waiting = asyncio.create_task(pool.run(lambda: "never"))
        await asyncio.sleep(0.1)
        assert (pool.running, pool.waiting) == (1, 1)
        waiting.cancel()
        running.cancel()  # its client went away
        await asyncio.gather(running, waiting, return_exceptions=True)
        assert (pool.running, pool.waiting, pool.written_off) == (0, 0, 1)
        assert await pool.run(lambda: "free") == "free"
        release.set()

    asyncio.run(main())


def test_written_off_tasks_are_capped_so_threads_stay_bounded() -> None:
    pool = BoundedPool("test", 1, max_written_off=1)
    release = threading.Event()

    async def main() -> None:
        for _ in range(2):
            with pytest.raises(PoolDeadlineError):
                await pool.run(release.wait, deadline_s=0.1)
        # the second late task could not be written off: it keeps its slot
        assert (pool.running, pool.written_off) == (1, 1)
        queued = asyncio.create_task(pool.run(lambda: "after"))
        await asyncio.sleep(0.1)
        assert not queued.done() and pool.waiting == 1
        release.set()
        assert await queued == "after"

    asyncio.run(main())
    assert threading.active_count() < 50


def _lookup_thread(monkeypatch: pytest.MonkeyPatch, resolver: Any) -> str:
    seen: list[str] = []

    def getaddrinfo(host: str, port: int, **kwargs: Any) -> list[Any]:
        seen.append(threading.current_thread().name)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    assert asyncio.run(resolver("example.com", 443)) == ["93.184.215.14"]
    return seen[0]


def test_image_and_webhook_lookups_run_on_their_own_pools(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _lookup_thread(monkeypatch, system_resolver) == "nsfwd-dns"
    assert _lookup_thread(monkeypatch, webhook_resolver) == "nsfwd-webhooks"
    assert Settings().webhook_policy.resolver is webhook_resolver
    assert Settings().fetch_policy.resolver is system_resolver


def test_slow_webhook_lookups_do_not_hold_up_image_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def getaddrinfo(host: str, port: int, **kwargs: Any) -> list[Any]:
        if host.endswith(".slow"):
            release.wait(10)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)

    async def main() -> float:
        size = pools.named(pools.WEBHOOKS).size
        flood = [asyncio.create_task(webhook_resolver(f"{i}.slow", 443)) for i in range(4 * size)]
        await asyncio.sleep(0.1)
        started = time.perf_counter()
        await system_resolver("images.example", 443)
        took = time.perf_counter() - started
        release.set()
        await asyncio.gather(*flood)
        return took

    assert asyncio.run(main()) < 2
