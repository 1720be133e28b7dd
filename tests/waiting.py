"""Waiting until something has happened: poll a condition until it holds, or fail the test.

Tests wait on a condition, never for a fixed time: a fixed sleep is either too short on a busy
machine (a flaky failure) or longer than needed everywhere else. :func:`wait_for` polls from
plain code; :func:`until` polls from inside an event loop, yielding to it between polls so
that what the test waits on can progress, and takes coroutine conditions as well.
"""

from __future__ import annotations

import asyncio
import faulthandler
import inspect
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar, overload

T = TypeVar("T")

INTERVAL = 0.02
"""Seconds between two polls."""


def _timed_out(what: str, timeout: float, detail: Callable[[], str] | None) -> AssertionError:
    message = f"timed out after {timeout:g} s waiting for {what}"
    return AssertionError(f"{message}\n{detail()}" if detail is not None else message)


def wait_for(
    condition: Callable[[], T | None],
    timeout: float = 20.0,
    what: str = "the condition",
    *,
    interval: float = INTERVAL,
    detail: Callable[[], str] | None = None,
) -> T:
    """Call ``condition`` until it returns something truthy, and return that.

    Fails the test after ``timeout`` seconds, saying what it waited for and, when given,
    ``detail()`` (a server's log, say).
    """
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout, detail)
        time.sleep(interval)
    return value


@overload
async def until(
    condition: Callable[[], Awaitable[T | None]],
    timeout: float = ...,
    what: str = ...,
    *,
    interval: float = ...,
) -> T: ...


@overload
async def until(
    condition: Callable[[], T | None],
    timeout: float = ...,
    what: str = ...,
    *,
    interval: float = ...,
) -> T: ...


async def until(
    condition: Callable[[], Any],
    timeout: float = 20.0,
    what: str = "the condition",
    *,
    interval: float = INTERVAL,
) -> Any:
    """:func:`wait_for` inside an event loop: ``condition`` may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout, None)
        await asyncio.sleep(interval)


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise TimeoutError in the main thread once the block has run ``seconds``: a stuck
    cluster or deployment fails its test rather than hanging the suite."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"the test ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def watchdog(seconds: float, expire: Callable[[], None]) -> Iterator[None]:
    """Bound a block that waits on other processes (a server, a cluster): once it has run
    ``seconds``, write every thread's stack to stderr (where the test was stuck) and call
    ``expire`` on a timer thread, which must make the wait end (kill what it waits on); the
    block then fails, saying it ran too long.

    Unlike :func:`time_limit`'s alarm, nothing is raised inside whatever the main thread
    happened to be running (pytest's own code, a garbage collector callback)."""
    fired = threading.Event()

    def fire() -> None:
        fired.set()
        faulthandler.dump_traceback(all_threads=True)
        expire()

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    message = f"the test ran past {seconds:g} s; what it waited on was stopped"
    try:
        yield
    except BaseException as exc:
        if fired.is_set():
            raise AssertionError(message) from exc
        raise
    finally:
        timer.cancel()
    if fired.is_set():
        raise AssertionError(message)
