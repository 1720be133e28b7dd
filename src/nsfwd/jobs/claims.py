"""The claim loop the worker and the webhook sender share: leased work, run in a few slots.

A :class:`ClaimLoop` keeps up to ``slots`` items of a queue (``store.predictions``,
``store.deliveries``) running. It claims as many as there are free slots, under a lease of
``lease_s`` in its owner's name, starts a task for each, and when the queue had fewer to give
sleeps until the queue's ``work_available`` event is set (this replica queued work) or
``poll_s`` passes (work queued by other replicas). With a ``renew`` function, a second loop
extends the leases of everything running every third of ``lease_s`` and cancels a run whose
lease was lost (this replica stalled and another claimer took the item over). A store error
pauses a loop for :data:`DB_RETRY_S` rather than ending it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Collection, Coroutine, Sequence
from typing import Any, Final, Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

DB_RETRY_S: Final = 2.0
"""Pause after a store error in a loop (database restarting, locked, unreachable)."""


class Leased(Protocol):
    """What a claim hands out: a record with an id."""

    @property
    def id(self) -> str:
        """The id its lease is held on."""
        ...


T = TypeVar("T", bound=Leased)
T_co = TypeVar("T_co", bound=Leased, covariant=True)


class Queue(Protocol[T_co]):
    """A part of the store that leases work out (``store.predictions``, ``store.deliveries``)."""

    @property
    def work_available(self) -> asyncio.Event:
        """Set when this replica queues work."""
        ...

    async def claim(self, owner: str, limit: int, lease_s: float) -> Sequence[T_co]:
        """Lease up to ``limit`` items to ``owner`` for ``lease_s`` seconds."""
        ...


Renew = Callable[[str, Collection[str], float], Awaitable[set[str]]]
"""``(owner, ids, lease_s)`` -> the ids whose leases ``owner`` still held and extended."""


def worker_name() -> str:
    """A name unique to this worker among replicas: host, process id and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class ClaimLoop(Generic[T]):
    """Claims items from ``queue`` and runs each with ``run``, ``slots`` at a time; see the
    module docstring."""

    def __init__(
        self,
        queue: Queue[T],
        run: Callable[[T], Coroutine[Any, Any, None]],
        *,
        owner: str,
        slots: int,
        lease_s: float,
        poll_s: float,
        name: str,
        renew: Renew | None = None,
    ) -> None:
        """Claim for ``owner``; ``name`` says what an item is, in logs and task names
        (``prediction``: ``nsfwd-prediction-<id>``)."""
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self.queue = queue
        self.run = run
        self.owner = owner
        self.slots = slots
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.name = name
        self.renew = renew
        self._running: dict[str, asyncio.Task[None]] = {}
        self._slot_freed = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []

    @property
    def running(self) -> int:
        """Items being run now."""
        return len(self._running)

    @property
    def claiming(self) -> bool:
        """Whether the loops run."""
        return any(not loop.done() for loop in self._loops)

    def start(self) -> None:
        """Start claiming (in the running event loop)."""
        self._loops = [asyncio.create_task(self._claim_loop(), name=f"nsfwd-{self.name}-claims")]
        if self.renew is not None:
            self._loops.append(
                asyncio.create_task(self._renew_loop(), name=f"nsfwd-{self.name}-renewals")
            )

    async def stop(self, grace_s: float = 0.0) -> list[str]:
        """Stop claiming; give the runs under way ``grace_s`` seconds to end, then cancel them.

        Returns the ids of the items whose runs were cancelled (their leases are still held).
        """
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops = []
        running = dict(self._running)
        if running and grace_s > 0:
            await asyncio.wait(running.values(), timeout=grace_s)
        cancelled = {item: task for item, task in running.items() if not task.done()}
        for task in cancelled.values():
            task.cancel()
        await asyncio.gather(*cancelled.values(), return_exceptions=True)
        return list(cancelled)

    async def _claim_loop(self) -> None:
        work_available = self.queue.work_available
        while True:
            free = self.slots - len(self._running)
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            work_available.clear()  # before claiming: work queued after this wakes us
            try:
                claimed = await self.queue.claim(self.owner, free, self.lease_s)
            except Exception:
                log.exception("claiming %ss failed; retrying in %g s", self.name, DB_RETRY_S)
                await asyncio.sleep(DB_RETRY_S)
                continue
            for item in claimed:
                self._start(item)
            if len(claimed) < free:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(work_available.wait(), self.poll_s)

    def _start(self, item: T) -> None:
        task = asyncio.create_task(self.run(item), name=f"nsfwd-{self.name}-{item.id}")
        self._running[item.id] = task

        def done(_: asyncio.Task[None]) -> None:
            self._running.pop(item.id, None)
            self._slot_freed.set()

        task.add_done_callback(done)

    async def _renew_loop(self) -> None:
        assert self.renew is not None
        while True:
            await asyncio.sleep(self.lease_s / 3)
            running = dict(self._running)
            if not running:
                continue
            try:
                held = await self.renew(self.owner, list(running), self.lease_s)
            except Exception:
                log.exception("renewing leases failed; retrying")
                continue
            for item_id, task in running.items():
                if item_id not in held and not task.done():
                    log.warning("%s %s: lease lost (another worker took it over); "
                                "dropping this run", self.name, item_id)  # fmt: skip
                    task.cancel()


__all__ = ["DB_RETRY_S", "ClaimLoop", "Leased", "Queue", "Renew", "worker_name"]
