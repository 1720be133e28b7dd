"""A second handle on a running server's job store, opened the way another process would."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from nsfwd.jobs import Store

T = TypeVar("T")


def with_store(store_url: str, body: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``body`` on a second handle of the server's store (as another process would)."""

    async def main() -> T:
        async with Store(store_url) as store:
            return await body(store)

    return asyncio.run(main())


def make_key(store_url: str, name: str, **limits: int) -> str:
    """Create an API key called ``name`` with ``limits`` in the store; returns its secret."""

    async def body(store: Store) -> str:
        return (await store.create_key(name, **limits))[0]

    return with_store(store_url, body)
