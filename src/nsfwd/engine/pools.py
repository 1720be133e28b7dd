"""Named, bounded pools of threads for the blocking work the server does off its event loop.

Each kind of work has its own pool, so that one kind cannot starve another: ``decode`` (the
image intake: checks, decoding, preprocessing), ``dns`` (resolving image URLs' host names) and
``webhooks`` (resolving webhook receivers' host names, reading the signing secret) and
``banks`` (loading the banks of known images and matching pictures against them). asyncio's
default thread pool is shared by everything that calls ``to_thread`` or ``getaddrinfo``; a flood
of slow lookups or hostile images there holds up all the rest.

A :class:`BoundedPool` runs at most ``size`` tasks at once; the others wait in order. A task
may be given a deadline, counted from when it starts. A thread cannot be stopped, so a task
that outlives its deadline, or whose caller is cancelled (its client went away), is written
off: its caller gets :class:`PoolDeadlineError` (or the cancellation) at once, the task runs on
to its end on a thread the pool no longer counts, and its slot goes to the next task. At most
``max_written_off`` tasks are written off at a time; beyond that a late task keeps its slot
until it ends, so a pool never runs more than ``size + max_written_off`` threads.

A pool that work of many API keys shares is also shared out by key (:class:`KeyShares`,
:func:`key_shares`): a key runs at most its share of tasks at once, and its others wait in a
line of its own, not in the pool's, so one key's slow tasks (32 slow-resolving host names)
leave threads for everyone else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, Generic, TypeVar

__all__ = [
    "BANKS",
    "DECODE",
    "DEFAULT_SIZES",
    "DNS",
    "WEBHOOKS",
    "BoundedPool",
    "KeyShares",
    "PoolDeadlineError",
    "configure",
    "configure_shares",
    "key_shares",
    "named",
]

T = TypeVar("T")

DECODE: Final = "decode"
DNS: Final = "dns"
WEBHOOKS: Final = "webhooks"
BANKS: Final = "banks"
_CORES: Final = len(os.sched_getaffinity(0))
DEFAULT_SIZES: Final = {DECODE: _CORES, DNS: 8, WEBHOOKS: 4, BANKS: _CORES}
"""Threads per pool unless settings say otherwise (``NSFWD_DECODE_WORKERS``,
``NSFWD_DNS_WORKERS``, ``NSFWD_WEBHOOK_WORKERS``): decoding and matching are CPU work, one
thread a core; lookups mostly wait on the network."""


class PoolDeadlineError(TimeoutError):
    """A task ran longer than its deadline; it was written off (see the module docstring)."""

    def __init__(self, pool: str, deadline_s: float) -> None:
        super().__init__(f"a {pool} task ran longer than {deadline_s:g} s")
        self.pool = pool
        self.deadline_s = deadline_s


class _Task(Generic[T]):
    """One call: the function, and the caller's loop and futures that hear of it."""

    def __init__(self, fn: Callable[[], T], loop: asyncio.AbstractEventLoop) -> None:
        self.fn = fn
        self.loop = loop
        self.started: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[T] = loop.create_future()
        self.state = "waiting"  # -> running -> finished; guarded by the pool's lock
        self.written_off = False

    def tell(self, future: asyncio.Future[Any], value: Any = None, error: Any = None) -> None:
        """Settle ``future`` on the caller's loop, from any thread; a closed loop hears nothing."""

        def settle() -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
                future.exception()  # nobody may be waiting any more: not an unretrieved error
            else:
                future.set_result(value)

        with contextlib.suppress(RuntimeError):  # the loop closed while the task ran
            self.loop.call_soon_threadsafe(settle)


class BoundedPool:
    """At most ``size`` threads running ``name`` tasks; see the module docstring."""

    def __init__(self, name: str, size: int, *, max_written_off: int | None = None) -> None:
        """A pool of ``size`` threads that writes off at most ``max_written_off`` late tasks at
        once (default: ``size``)."""
        if size < 1:
            raise ValueError(f"pool {name!r} needs at least one thread, got {size}")
        self.name = name
        self.size = size
        self.max_written_off = size if max_written_off is None else max_written_off
        self._lock = threading.Lock()
        self._running = 0
        self._written_off = 0
        self._waiting: deque[_Task[Any]] = deque()

    def __repr__(self) -> str:
        return f"BoundedPool({self.name!r}, size={self.size})"

    @property
    def running(self) -> int:
        """Tasks holding a slot now."""
        return self._running

    @property
    def written_off(self) -> int:
        """Late tasks still running on threads the pool no longer counts."""
        return self._written_off

    @property
    def waiting(self) -> int:
        """Tasks waiting for a slot."""
        return len(self._waiting)

    async def run(self, fn: Callable[[], T], *, deadline_s: float | None = None) -> T:
        """Run ``fn()`` on one of the pool's threads and return what it returns (or raise what
        it raises). With ``deadline_s``, raise :class:`PoolDeadlineError` when it has run that
        long. A late or cancelled task is written off, as the module docstring says."""
        task = _Task(fn, asyncio.get_running_loop())
        self._submit(task)
        try:
            await asyncio.shield(task.started)
            if deadline_s is None:
                return await asyncio.shield(task.done)
            try:
                return await asyncio.wait_for(asyncio.shield(task.done), deadline_s)
            except TimeoutError:
                if task.done.done():  # it ended just as the deadline passed
                    return task.done.result()
                raise PoolDeadlineError(self.name, deadline_s) from None
        finally:
            if not task.done.done():
                self._give_up(task)

    # --- slots (under the lock) ----------------------------------------------------------------

    def _submit(self, task: _Task[Any]) -> None:
        with self._lock:
            if self._running < self.size:
                self._running += 1
                self._start(task)
            else:
                self._waiting.append(task)

    def _start(self, task: _Task[Any]) -> None:
        """Run ``task`` on a new thread; the caller holds the lock and a slot for it."""
        task.state = "running"
        thread = threading.Thread(
            target=self._work, args=(task,), name=f"nsfwd-{self.name}", daemon=True
        )
        thread.start()

    def _give_up(self, task: _Task[Any]) -> None:
        """The caller no longer waits for ``task``: forget it, or write it off if it runs."""
        with self._lock:
            if task.state == "waiting":
                self._waiting.remove(task)
                task.state = "finished"
            elif task.state == "running" and self._written_off < self.max_written_off:
                task.written_off = True
                self._written_off += 1
                self._running -= 1
                if self._waiting:
                    self._running += 1
                    self._start(self._waiting.popleft())

    def _finish(self, task: _Task[Any]) -> _Task[Any] | None:
        """``task`` ended; the next task for this thread, or ``None`` when the thread ends."""
        with self._lock:
            task.state = "finished"
            if task.written_off:
                self._written_off -= 1
                return None
            if self._waiting:
                following = self._waiting.popleft()
                following.state = "running"
                return following
            self._running -= 1
            return None

    # --- the threads -----------------------------------------------------------------------------

    def _work(self, task: _Task[Any] | None) -> None:
        while task is not None:
            task.tell(task.started)
            try:
                result = task.fn()
            except BaseException as exc:  # handed to the caller, like an executor does
                task.tell(task.done, error=exc)
            else:
                task.tell(task.done, result)
            task = self._finish(task)


_pools: dict[str, BoundedPool] = {}
_pools_lock = threading.Lock()


def named(name: str) -> BoundedPool:
    """This process's pool for ``name`` (:data:`DECODE`, :data:`DNS`, :data:`WEBHOOKS` or
    :data:`BANKS`),
    made with its :func:`configure`\\ d or default size on first use."""
    with _pools_lock:
        pool = _pools.get(name)
        if pool is None:
            if name not in DEFAULT_SIZES:
                raise KeyError(f"no pool named {name!r}; the pools are {', '.join(DEFAULT_SIZES)}")
            pool = _pools[name] = BoundedPool(name, DEFAULT_SIZES[name])
        return pool


def configure(**sizes: int | None) -> None:
    """Size this process's pools, by name (``decode=4, dns=8``); ``None`` keeps the default.

    A pool whose size changes is replaced; tasks already in the old one finish there.
    """
    with _pools_lock:
        for name, size in sizes.items():
            if name not in DEFAULT_SIZES:
                raise KeyError(f"no pool named {name!r}; the pools are {', '.join(DEFAULT_SIZES)}")
            wanted = DEFAULT_SIZES[name] if size is None else size
            current = _pools.get(name)
            if current is None or current.size != wanted:
                _pools[name] = BoundedPool(name, wanted)


class KeyShares:
    """At most ``limit`` tasks of one key at once (see the module docstring); a key's others
    wait their turn, in order, without taking a pool's thread."""

    def __init__(self, limit: int) -> None:
        """Give each key ``limit`` at once."""
        if limit < 1:
            raise ValueError(f"a key's share must be at least 1, got {limit}")
        self.limit = limit
        self._lines: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def turn(self, key: str | None) -> AsyncIterator[None]:
        """Wait for one of ``key``'s turns (``None``: no key, no wait), and hold it."""
        if key is None:
            yield
            return
        semaphore, users = self._lines.setdefault(key, (asyncio.Semaphore(self.limit), [0]))
        users[0] += 1
        try:
            async with semaphore:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._lines[key]


_shares: dict[str, KeyShares] = {}


def key_shares(name: str) -> KeyShares:
    """This process's shares of pool ``name`` by key (:func:`configure`\\ d, else a quarter of
    the pool's default size)."""
    with _pools_lock:
        shares = _shares.get(name)
        if shares is None:
            shares = _shares[name] = KeyShares(max(1, DEFAULT_SIZES[name] // 4))
        return shares


def configure_shares(**limits: int) -> None:
    """Set each key's share of the pools named (``dns=2``)."""
    with _pools_lock:
        for name, limit in limits.items():
            if name not in DEFAULT_SIZES:
                raise KeyError(f"no pool named {name!r}; the pools are {', '.join(DEFAULT_SIZES)}")
            current = _shares.get(name)
            if current is None or current.limit != limit:
                _shares[name] = KeyShares(limit)
