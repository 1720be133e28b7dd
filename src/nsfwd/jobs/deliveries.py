"""The webhook outbox: one delivery row per finished prediction that has a ``webhook_url``.

:meth:`Deliveries.enqueue` runs inside the transaction that finishes the prediction (the outbox
pattern): the outcome and the notification are committed together or not at all, and a unique
constraint keeps it to one delivery per prediction. Senders then lease due deliveries
(:meth:`Deliveries.claim`, ``FOR UPDATE SKIP LOCKED`` on PostgreSQL) and record each attempt
(:meth:`Deliveries.record_attempt`) only while they still hold the lease.

Claims are shared fairly between API keys: the due deliveries of the key with the fewest in
progress (leased, across replicas) come first, then the next key's, round and round, each key's
oldest first; and with ``key_concurrency`` a key never has more than that many in progress. So
one key's thousands of deliveries to a slow receiver do not hold up another key's.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Insert, Row, Select, Subquery, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from nsfwd.jobs.database import Database
from nsfwd.jobs.records import Delivery, Prediction
from nsfwd.jobs.schema import predictions, webhook_deliveries
from nsfwd.jobs.turns import turns

PayloadBuilder = Callable[[Prediction], Mapping[str, Any] | None]
"""Builds a finished prediction's webhook body; ``None`` sends no webhook."""


def default_webhook_payload(prediction: Prediction) -> dict[str, Any]:
    """A finished prediction's webhook body when the surface that took it names no other:
    ``id``, ``status`` (``succeeded``/``failed``), ``labels``, ``flagged`` and ``error``."""
    return {
        "id": prediction.id,
        "status": prediction.status,
        "labels": prediction.labels,
        "flagged": prediction.flagged,
        "error": prediction.error,
    }


def _delivery(row: Row[Any]) -> Delivery:
    return Delivery(**row._asdict())


class Deliveries:
    """The webhook deliveries in a :class:`~nsfwd.jobs.database.Database`; see the module."""

    def __init__(
        self,
        database: Database,
        *,
        clock: Callable[[], datetime],
        webhook_payload: PayloadBuilder = default_webhook_payload,
        key_concurrency: int | None = None,
    ) -> None:
        """Deliveries in ``database``; ``webhook_payload`` renders each prediction's body,
        ``clock`` tells the current UTC time; ``key_concurrency`` caps one key's deliveries in
        progress (``None``: no cap, but still least busy key first)."""
        if key_concurrency is not None and key_concurrency < 1:
            raise ValueError(f"key_concurrency must be at least 1, got {key_concurrency}")
        self.database = database
        self.clock = clock
        self.webhook_payload = webhook_payload
        self.key_concurrency = key_concurrency
        self.work_available = asyncio.Event()
        """Set whenever this store enqueues a delivery (or one falls due); senders wait on it."""

    async def enqueue(
        self, connection: AsyncConnection, prediction: Prediction, now: datetime
    ) -> None:
        """Add the delivery of a just finished ``prediction``, in the transaction of
        ``connection`` that finished it; nothing without a ``webhook_url`` or a payload, and
        nothing when the prediction has one already. Call :meth:`notify` after the commit."""
        if prediction.webhook_url is None:
            return
        payload = self.webhook_payload(prediction)
        if payload is None:
            return
        values = {
            "id": f"msg_{uuid.uuid4().hex}",
            "prediction_id": prediction.id,
            "url": prediction.webhook_url,
            "payload": json.dumps(payload, ensure_ascii=False, separators=(",", ":")),
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        insert: Insert
        if connection.dialect.name == "postgresql":
            insert = postgresql.insert(webhook_deliveries).on_conflict_do_nothing(
                index_elements=["prediction_id"]
            )
        else:
            insert = sqlite.insert(webhook_deliveries).on_conflict_do_nothing(
                index_elements=["prediction_id"]
            )
        await connection.execute(insert.values(values))

    def notify(self, finished: Collection[Prediction]) -> None:
        """Wake this replica's sender when any of the committed ``finished`` has a webhook."""
        if any(prediction.webhook_url for prediction in finished):
            self.work_available.set()

    @staticmethod
    def pending_predictions() -> Select[tuple[str]]:
        """The ids of predictions whose delivery is still pending (purging keeps them)."""
        return select(webhook_deliveries.c.prediction_id).where(
            webhook_deliveries.c.status == "pending"
        )

    async def claim(self, owner: str, limit: int, lease_s: float) -> list[Delivery]:
        """Lease up to ``limit`` deliveries that are due to ``owner`` for ``lease_s`` seconds
        (also those whose previous sender's lease expired), shared fairly between keys (see
        the module docstring)."""
        if limit < 1:
            return []
        now = self.clock()
        due = (
            webhook_deliveries.c.status == "pending",
            webhook_deliveries.c.next_attempt_at <= now,
            or_(
                webhook_deliveries.c.lease_expires_at.is_(None),
                webhook_deliveries.c.lease_expires_at < now,
            ),
        )
        turns = _turns(due, now)
        fair = select(turns.c.id).order_by(turns.c.turn, turns.c.next_attempt_at)
        if self.key_concurrency is not None:
            fair = fair.where(turns.c.turn <= self.key_concurrency)
        candidates = (
            select(webhook_deliveries.c.id)
            .where(webhook_deliveries.c.id.in_(fair.limit(limit)), *due)
            .with_for_update(skip_locked=True)
        )
        claim = (
            update(webhook_deliveries)
            .where(webhook_deliveries.c.id.in_(candidates))
            .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_s))
            .returning(*webhook_deliveries.c)
        )
        async with self.database.write() as connection:
            rows = (await connection.execute(claim)).all()
        return sorted(map(_delivery, rows), key=lambda d: (d.next_attempt_at, d.id))

    async def record_attempt(
        self,
        delivery_id: str,
        owner: str,
        *,
        ok: bool,
        status: int | None = None,
        error: str | None = None,
        next_attempt_at: datetime | None = None,
    ) -> Delivery | None:
        """Record one attempt by ``owner``, who must hold the lease.

        ``ok``: delivered. Otherwise it is retried at ``next_attempt_at``, or, when that is
        ``None``, given up (``failed``). ``status`` is the receiver's HTTP status, ``error``
        what went wrong. Returns the delivery, or ``None`` when the lease was lost.
        """
        now = self.clock()
        values: dict[str, Any] = {
            "attempts": webhook_deliveries.c.attempts + 1,
            "last_status": status,
            "last_error": None if ok else error,
            "lease_owner": None,
            "lease_expires_at": None,
        }
        if ok:
            values |= {"status": "delivered", "delivered_at": now}
        elif next_attempt_at is None:
            values |= {"status": "failed"}
        else:
            values |= {"next_attempt_at": next_attempt_at}
        record = (
            update(webhook_deliveries)
            .where(
                webhook_deliveries.c.id == delivery_id,
                webhook_deliveries.c.lease_owner == owner,
                webhook_deliveries.c.status == "pending",
            )
            .values(values)
            .returning(*webhook_deliveries.c)
        )
        async with self.database.write() as connection:
            row = (await connection.execute(record)).first()
        return None if row is None else _delivery(row)


def _turns(due: tuple[ColumnElement[bool], ...], now: datetime) -> Subquery:
    """The due deliveries (``id``, ``next_attempt_at``) with their ``turn``
    (:func:`nsfwd.jobs.turns.turns`): a key's deliveries in progress count against it."""
    return turns(
        webhook_deliveries.join(
            predictions, predictions.c.id == webhook_deliveries.c.prediction_id
        ),
        key=func.coalesce(predictions.c.api_key, ""),
        row_id=webhook_deliveries.c.id,
        order=webhook_deliveries.c.next_attempt_at,
        busy=(
            webhook_deliveries.c.status == "pending",
            webhook_deliveries.c.lease_expires_at >= now,
        ),
        eligible=due,
    )


__all__ = ["Deliveries", "PayloadBuilder", "default_webhook_payload"]
