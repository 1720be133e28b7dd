"""A second handle on a running server's job store, opened the way another process would, and
direct reads of the facts tests check that the app itself never asks for."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from sqlalchemy import ColumnElement, and_, func, select

from nsfwd.jobs import Delivery, Store
from nsfwd.jobs.records import UNFINISHED
from nsfwd.jobs.schema import predictions, webhook_deliveries
from nsfwd.verdict import PolicyName

T = TypeVar("T")


def with_store(store_url: str, body: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``body`` on a second handle of the server's store (as another process would)."""

    async def main() -> T:
        async with Store(store_url) as store:
            return await body(store)

    return asyncio.run(main())


def make_key(
    store_url: str,
    name: str,
    *,
    policy: PolicyName | None = None,
    threshold: float | None = None,
    region_thresholds: str | None = None,
    creates_per_minute: int = 100,
    max_in_flight: int = 10,
) -> str:
    """Create an API key called ``name`` with these limits (and its own ``policy``,
    ``threshold`` and ``region_thresholds``, if given) in the store; returns its secret."""

    async def body(store: Store) -> str:
        created = await store.keys.create(
            name,
            policy=policy,
            threshold=threshold,
            region_thresholds=region_thresholds,
            creates_per_minute=creates_per_minute,
            max_in_flight=max_in_flight,
        )
        return created[0]

    return with_store(store_url, body)


async def delivery_for(store: Store, prediction_id: str) -> Delivery | None:
    """The webhook delivery of a prediction, or ``None`` (no webhook, or not finished)."""
    return await _one_delivery(store, webhook_deliveries.c.prediction_id == prediction_id)


async def get_delivery(store: Store, delivery_id: str) -> Delivery | None:
    """The delivery with this id (``msg_...``), or ``None``."""
    return await _one_delivery(store, webhook_deliveries.c.id == delivery_id)


async def _one_delivery(store: Store, condition: ColumnElement[bool]) -> Delivery | None:
    async with store.database.read() as connection:
        row = (await connection.execute(select(webhook_deliveries).where(condition))).first()
    return None if row is None else Delivery(**row._asdict())


async def count_unfinished(store: Store) -> int:
    """Queued and processing predictions in the whole store."""
    return await _count(store, predictions.c.status.in_(UNFINISHED))


async def count_in_flight(store: Store, api_key: str) -> int:
    """Queued and processing predictions of ``api_key``."""
    return await _count(
        store, and_(predictions.c.api_key == api_key, predictions.c.status.in_(UNFINISHED))
    )


async def count_created_since(store: Store, api_key: str, since: datetime) -> int:
    """Predictions ``api_key`` created after ``since``."""
    return await _count(
        store, and_(predictions.c.api_key == api_key, predictions.c.created_at > since)
    )


async def _count(store: Store, condition: ColumnElement[bool]) -> int:
    query = select(func.count()).select_from(predictions).where(condition)
    async with store.database.read() as connection:
        return int((await connection.execute(query)).scalar_one())
