"""The durable store of predictions, webhook deliveries and API keys (SQLAlchemy 2, async).

Every method is one short transaction and returns frozen records (:mod:`nsfwd.jobs.records`).
Work is handed out by leases, so several workers, in one process or in several replicas on one
PostgreSQL, share it without running anything twice:

* :meth:`Store.claim_predictions` atomically moves up to ``limit`` queued predictions (and
  processing ones whose lease expired: their worker died) to ``processing`` under the caller's
  name, for ``lease_s`` seconds. On PostgreSQL the candidates are locked with
  ``FOR UPDATE SKIP LOCKED`` (concurrent claimers take different rows without waiting); SQLite
  has one writer at a time, so ``UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING`` is
  atomic as it stands.
* The worker renews its leases while it works (:meth:`Store.renew_leases`) and finishes with
  :meth:`Store.finish_prediction`, which only succeeds while it still holds the lease: a worker
  that stalled past its lease, and whose prediction another worker took over, cannot overwrite
  the result.
* A prediction claimed ``max_attempts`` times whose lease ran out again (the server keeps dying
  on it) is failed with a message instead of being claimed forever
  (:meth:`Store.fail_abandoned`, also run by every claim).

Finishing a prediction that has a ``webhook_url`` enqueues its webhook delivery in the same
transaction (the outbox pattern): the outcome and the notification are committed together or not
at all, and a unique constraint keeps it to one delivery per prediction.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Self

from sqlalchemy import (
    ColumnElement,
    Insert,
    Row,
    String,
    Update,
    and_,
    case,
    cast,
    delete,
    func,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from nsfwd.jobs import database, keys
from nsfwd.jobs.records import (
    UNFINISHED,
    ApiKey,
    Delivery,
    Prediction,
    Protocol,
    Upload,
)
from nsfwd.jobs.schema import UtcDateTime, api_keys, inputs, predictions, webhook_deliveries

if TYPE_CHECKING:
    from nsfwd.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_RESULT_TTL_S: Final = 24 * 3600.0
DEFAULT_MAX_ATTEMPTS: Final = 3
CREATE_LOCK_ID: Final = 0x6E73_6677_6401
"""PostgreSQL advisory lock taken by creates that check limits, so that checks do not race."""

PayloadBuilder = Callable[[Prediction], Mapping[str, Any] | None]
"""Builds a finished prediction's webhook body; ``None`` sends no webhook."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def default_webhook_payload(prediction: Prediction) -> dict[str, Any]:
    """Eachlabs' webhook body: ``exec_id``, ``status`` (``succeeded``/``failed``), ``output``,
    ``error``."""
    return {
        "exec_id": prediction.id,
        "status": "succeeded" if prediction.status == "succeeded" else "failed",
        "output": prediction.output or "",
        "error": prediction.error or "",
    }


@dataclass(frozen=True)
class Limits:
    """Bounds a new prediction must fit in; :meth:`Store.create_prediction` checks them in its
    transaction (so concurrent creates cannot all slip under one)."""

    max_unfinished: int | None = None
    """Most queued and processing predictions in the whole store."""
    max_in_flight: int | None = None
    """Most queued and processing predictions of the creating key."""
    creates_per_minute: int | None = None
    """Most predictions the creating key may create in 60 seconds."""


class CapacityError(Exception):
    """A limit in :class:`Limits` is reached; nothing was created."""

    def __init__(self, scope: Literal["server", "key", "rate"], limit: int, count: int) -> None:
        """``scope`` names the limit (``server``: max_unfinished, ``key``: max_in_flight,
        ``rate``: creates_per_minute); ``count`` is what was found."""
        what = {
            "server": "predictions waiting or running on this server",
            "key": "predictions waiting or running for this API key",
            "rate": "predictions created by this API key in the last minute",
        }[scope]
        super().__init__(f"{count} {what}; the limit is {limit}")
        self.scope = scope
        self.limit = limit
        self.count = count


class AmbiguousKeyError(LookupError):
    """A key prefix matches more than one key."""


def _prediction(row: Row[Any]) -> Prediction:
    return Prediction(**row._asdict())


def _delivery(row: Row[Any]) -> Delivery:
    return Delivery(**row._asdict())


def _api_key(row: Row[Any]) -> ApiKey:
    return ApiKey(**row._asdict())


class Store:
    """Predictions, webhook deliveries and API keys in SQLite or PostgreSQL.

    ``await store.open()`` (or ``async with store``) connects and migrates the schema; then
    every method may be called from any task of the event loop that opened it.
    """

    def __init__(
        self,
        url: str,
        *,
        result_ttl_s: float = DEFAULT_RESULT_TTL_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        webhook_payload: PayloadBuilder = default_webhook_payload,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        """A store on ``url`` (see :func:`nsfwd.jobs.database.database_url`), not yet open.

        ``result_ttl_s``: how long finished predictions are kept; ``max_attempts``: claims before
        an abandoned prediction is failed; ``webhook_payload``: the body of each prediction's
        webhook; ``clock``: the current UTC time (tests move it).
        """
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.url = url
        self.result_ttl = timedelta(seconds=result_ttl_s)
        self.max_attempts = max_attempts
        self.webhook_payload = webhook_payload
        self.clock = clock
        self._engine: AsyncEngine | None = None
        self._writer: AsyncEngine | None = None
        self.work_available = asyncio.Event()
        """Set whenever this store queues work (a create, a release); workers wait on it."""
        self.deliveries_available = asyncio.Event()
        """Set whenever this store enqueues a webhook delivery."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        """The store :class:`nsfwd.settings.Settings` describe (``data_dir``, ``database_url``)."""
        return cls(
            database.database_url(settings.data_dir, settings.database_url),
            result_ttl_s=settings.result_ttl_s,
            max_attempts=settings.max_attempts,
        )

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._engine_or_raise().dialect.name

    async def open(self) -> None:
        """Connect and migrate the schema to the newest revision."""
        engine = database.create_engine(self.url)
        try:
            await database.migrate(engine)
        except BaseException:
            await engine.dispose()
            raise
        self._engine, self._writer = engine, database.writer(engine)
        log.info("job store: %s", database.redacted(self.url))

    async def close(self) -> None:
        """Close every connection; the store can be opened again."""
        if self._engine is not None:
            await self._engine.dispose()
        self._engine = self._writer = None

    async def __aenter__(self) -> Self:
        """Open the store."""
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the store."""
        await self.close()

    # --- predictions ---------------------------------------------------------------------

    async def create_prediction(
        self,
        *,
        protocol: Protocol,
        job_type: str,
        model: str,
        api_key: str | None = None,
        config: Mapping[str, Any] | None = None,
        input_url: str | None = None,
        upload: Upload | None = None,
        webhook_url: str | None = None,
        limits: Limits | None = None,
    ) -> Prediction:
        """Queue a prediction of an uploaded image or of an image URL.

        Raises :class:`CapacityError` when ``limits`` are reached.
        """
        if (input_url is None) == (upload is None):
            raise ValueError("a prediction needs exactly one of input_url and upload")
        async with self._write() as connection:  # the time is taken holding the write lock
            now = self.clock()
            prediction = await self._insert_prediction(
                connection,
                Prediction(
                    id=str(uuid.uuid4()),
                    protocol=protocol,
                    job_type=job_type,
                    model=model,
                    status="queued",
                    created_at=now,
                    api_key=api_key,
                    config=dict(config) if config is not None else None,
                    input_url=input_url,
                    input_filename=upload.filename if upload else None,
                    input_content_type=upload.content_type if upload else None,
                    webhook_url=webhook_url,
                ),
                upload,
                limits,
            )
        self.work_available.set()
        return prediction

    async def _insert_prediction(
        self,
        connection: AsyncConnection,
        prediction: Prediction,
        upload: Upload | None,
        limits: Limits | None,
    ) -> Prediction:
        if limits is not None:
            await self._check_limits(connection, prediction.api_key, limits, prediction.created_at)
        await connection.execute(
            predictions.insert().values(_columns(prediction, predictions.c.keys()))
        )
        if upload is not None:
            await connection.execute(
                inputs.insert().values(prediction_id=prediction.id, data=upload.data)
            )
        return prediction

    async def _check_limits(
        self, connection: AsyncConnection, api_key: str | None, limits: Limits, now: datetime
    ) -> None:
        if connection.dialect.name == "postgresql":
            await connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": CREATE_LOCK_ID}
            )
        unfinished = predictions.c.status.in_(UNFINISHED)
        checks: list[tuple[Literal["server", "key", "rate"], int | None, ColumnElement[bool]]] = [
            ("server", limits.max_unfinished, unfinished)
        ]
        if api_key is not None:
            mine = predictions.c.api_key == api_key
            checks += [
                ("key", limits.max_in_flight, and_(mine, unfinished)),
                ("rate", limits.creates_per_minute,
                 and_(mine, predictions.c.created_at > now - timedelta(minutes=1))),
            ]  # fmt: skip
        for scope, limit, condition in checks:
            if limit is None:
                continue
            count = await _count(connection, condition)
            if count >= limit:
                raise CapacityError(scope, limit, count)

    async def get_prediction(self, prediction_id: str) -> Prediction | None:
        """The prediction with this id, or ``None`` (unknown, or purged)."""
        async with self._read() as connection:
            row = (
                await connection.execute(
                    select(predictions).where(predictions.c.id == prediction_id)
                )
            ).first()
        return None if row is None else _prediction(row)

    async def get_input(self, prediction_id: str) -> Upload | None:
        """The uploaded image of a prediction, or ``None`` when it has none (or is purged)."""
        query = (
            select(
                inputs.c.data,
                predictions.c.input_filename.label("filename"),
                predictions.c.input_content_type.label("content_type"),
            )
            .join(predictions, predictions.c.id == inputs.c.prediction_id)
            .where(inputs.c.prediction_id == prediction_id)
        )
        async with self._read() as connection:
            row = (await connection.execute(query)).first()
        if row is None:
            return None
        return Upload(
            data=bytes(row.data),
            filename=row.filename or "input",
            content_type=row.content_type or "application/octet-stream",
        )

    async def claim_predictions(self, owner: str, limit: int, lease_s: float) -> list[Prediction]:
        """Lease up to ``limit`` predictions to ``owner`` for ``lease_s`` seconds, oldest first.

        Takes queued predictions and reclaims processing ones whose lease expired; each claim
        counts an attempt. Abandoned predictions are failed first (:meth:`fail_abandoned`).
        """
        if limit < 1:
            return []
        async with self._write() as connection:  # the time is taken holding the write lock
            now = self.clock()
            failed = await self._fail_abandoned(connection, now)
            rows = (await connection.execute(self._claim(owner, limit, lease_s, now))).all()
        self._notify_deliveries(failed)
        return sorted(map(_prediction, rows), key=lambda p: (p.created_at, p.id))

    def _claim(self, owner: str, limit: int, lease_s: float, now: datetime) -> Update:
        candidates = (
            select(predictions.c.id)
            .where(
                or_(
                    predictions.c.status == "queued",
                    and_(
                        predictions.c.status == "processing",
                        predictions.c.lease_expires_at < now,
                    ),
                )
            )
            .order_by(predictions.c.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True)  # PostgreSQL; SQLite has one writer anyway
        )
        claim = (
            update(predictions)
            .where(predictions.c.id.in_(candidates))
            .values(
                status="processing",
                lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_s),
                attempts=predictions.c.attempts + 1,
                # Never before its creation, even if this replica's clock is behind.
                started_at=func.coalesce(
                    predictions.c.started_at, _not_before(predictions.c.created_at, now)
                ),
            )
            .returning(*predictions.c)
        )
        return claim

    async def renew_leases(self, owner: str, ids: Collection[str], lease_s: float) -> set[str]:
        """Extend ``owner``'s leases on ``ids`` to ``lease_s`` from now; returns the ids it still
        holds (a missing one was taken over, or finished, and must be dropped)."""
        if not ids:
            return set()
        renew = (
            update(predictions)
            .where(
                predictions.c.id.in_(list(ids)),
                predictions.c.lease_owner == owner,
                predictions.c.status == "processing",
            )
            .values(lease_expires_at=self.clock() + timedelta(seconds=lease_s))
            .returning(predictions.c.id)
        )
        async with self._write() as connection:
            return set((await connection.execute(renew)).scalars())

    async def release_predictions(self, owner: str, ids: Collection[str]) -> int:
        """Give ``owner``'s unfinished ``ids`` back to the queue, as if never claimed (a worker
        shutting down cleanly); returns how many were released."""
        if not ids:
            return 0
        release = (
            update(predictions)
            .where(
                predictions.c.id.in_(list(ids)),
                predictions.c.lease_owner == owner,
                predictions.c.status == "processing",
            )
            .values(
                status="queued",
                lease_owner=None,
                lease_expires_at=None,
                attempts=predictions.c.attempts - 1,
            )
            .returning(predictions.c.id)
        )
        async with self._write() as connection:
            released = len((await connection.execute(release)).all())
        if released:
            self.work_available.set()
        return released

    async def finish_prediction(
        self,
        prediction_id: str,
        owner: str,
        *,
        labels: Mapping[str, float] | None = None,
        output: str | None = None,
        error: str | None = None,
        predict_time: float | None = None,
    ) -> Prediction | None:
        """Record the outcome: ``labels`` (and ``output``) on success, or an ``error``.

        Only while ``owner`` still holds the prediction; returns the finished prediction, or
        ``None`` when the lease was lost (the outcome is then discarded). Enqueues the webhook
        delivery, if the prediction has a ``webhook_url``, in the same transaction.
        """
        if (labels is None) == (error is None):
            raise ValueError("finish a prediction with either labels or an error")
        outcome: dict[str, Any] = {
            "status": "failed" if error is not None else "succeeded",
            "labels": dict(labels) if labels is not None else None,
            "output": output,
            "error": error,
            "predict_time": predict_time,
            "lease_owner": None,
            "lease_expires_at": None,
        }
        async with self._write() as connection:  # the time is taken holding the write lock
            now = self.clock()
            finish = (
                update(predictions)
                .where(
                    predictions.c.id == prediction_id,
                    predictions.c.lease_owner == owner,
                    predictions.c.status == "processing",
                )
                .values(
                    **outcome,
                    # never before started_at, whatever the replicas' clocks say
                    finished_at=_not_before(predictions.c.started_at, now),
                    expires_at=now + self.result_ttl,
                )
                .returning(*predictions.c)
            )
            row = (await connection.execute(finish)).first()
            if row is None:
                return None
            finished = _prediction(row)
            await self._enqueue_delivery(connection, finished, now)
        self._notify_deliveries([finished])
        return finished

    async def fail_abandoned(self) -> list[Prediction]:
        """Fail every prediction whose lease expired after its last allowed attempt; returns them.

        The error says how many times the server stopped while running it. Each claim does
        this too; call it directly to settle such predictions without claiming work.
        """
        async with self._write() as connection:
            failed = await self._fail_abandoned(connection, self.clock())
        self._notify_deliveries(failed)
        return failed

    async def _fail_abandoned(self, connection: AsyncConnection, now: datetime) -> list[Prediction]:
        message = (
            literal("the server stopped while running this prediction ")
            + cast(predictions.c.attempts, String)
            + literal(" times; giving up")
        )
        fail = (
            update(predictions)
            .where(
                predictions.c.status == "processing",
                predictions.c.lease_expires_at < now,
                predictions.c.attempts >= self.max_attempts,
            )
            .values(
                status="failed",
                error=message,
                finished_at=_not_before(predictions.c.started_at, now),
                expires_at=now + self.result_ttl,
                lease_owner=None,
                lease_expires_at=None,
            )
            .returning(*predictions.c)
        )
        failed = [_prediction(row) for row in (await connection.execute(fail)).all()]
        for prediction in failed:
            log.warning("prediction %s: %s", prediction.id, prediction.error)
            await self._enqueue_delivery(connection, prediction, now)
        return failed

    async def count_in_flight(self, api_key: str) -> int:
        """Queued and processing predictions of ``api_key``."""
        async with self._read() as connection:
            return await _count(
                connection,
                and_(predictions.c.api_key == api_key, predictions.c.status.in_(UNFINISHED)),
            )

    async def count_unfinished(self) -> int:
        """Queued and processing predictions in the whole store."""
        async with self._read() as connection:
            return await _count(connection, predictions.c.status.in_(UNFINISHED))

    async def count_created_since(self, api_key: str, since: datetime) -> int:
        """Predictions ``api_key`` created after ``since`` (for per-minute rate limits)."""
        async with self._read() as connection:
            return await _count(
                connection,
                and_(predictions.c.api_key == api_key, predictions.c.created_at > since),
            )

    async def purge_expired(self, now: datetime | None = None) -> int:
        """Delete finished predictions past their ``expires_at``, with their inputs and webhook
        deliveries; one whose delivery is still pending is kept until it is settled. Returns
        how many predictions were deleted."""
        pending = select(webhook_deliveries.c.prediction_id).where(
            webhook_deliveries.c.status == "pending"
        )
        purge = delete(predictions).where(
            predictions.c.expires_at <= (now or self.clock()),
            predictions.c.id.not_in(pending),
        )
        async with self._write() as connection:
            deleted: int = (await connection.execute(purge)).rowcount
        if deleted:
            log.info("purged %d expired predictions", deleted)
        return deleted

    # --- webhook deliveries ------------------------------------------------------------------

    async def _enqueue_delivery(
        self, connection: AsyncConnection, prediction: Prediction, now: datetime
    ) -> None:
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

    def _notify_deliveries(self, finished: Collection[Prediction]) -> None:
        if any(prediction.webhook_url for prediction in finished):
            self.deliveries_available.set()

    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        """The delivery with this id (``msg_...``), or ``None``."""
        return await self._one_delivery(webhook_deliveries.c.id == delivery_id)

    async def delivery_for(self, prediction_id: str) -> Delivery | None:
        """The webhook delivery of a prediction, or ``None`` (no webhook, or not finished)."""
        return await self._one_delivery(webhook_deliveries.c.prediction_id == prediction_id)

    async def _one_delivery(self, condition: ColumnElement[bool]) -> Delivery | None:
        async with self._read() as connection:
            row = (await connection.execute(select(webhook_deliveries).where(condition))).first()
        return None if row is None else _delivery(row)

    async def claim_deliveries(self, owner: str, limit: int, lease_s: float) -> list[Delivery]:
        """Lease up to ``limit`` deliveries that are due to ``owner`` for ``lease_s`` seconds,
        most overdue first (also those whose previous sender's lease expired)."""
        if limit < 1:
            return []
        now = self.clock()
        candidates = (
            select(webhook_deliveries.c.id)
            .where(
                webhook_deliveries.c.status == "pending",
                webhook_deliveries.c.next_attempt_at <= now,
                or_(
                    webhook_deliveries.c.lease_expires_at.is_(None),
                    webhook_deliveries.c.lease_expires_at < now,
                ),
            )
            .order_by(webhook_deliveries.c.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        claim = (
            update(webhook_deliveries)
            .where(webhook_deliveries.c.id.in_(candidates))
            .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_s))
            .returning(*webhook_deliveries.c)
        )
        async with self._write() as connection:
            rows = (await connection.execute(claim)).all()
        return sorted(map(_delivery, rows), key=lambda d: (d.next_attempt_at, d.id))

    async def record_delivery_attempt(
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
        async with self._write() as connection:
            row = (await connection.execute(record)).first()
        return None if row is None else _delivery(row)

    # --- API keys --------------------------------------------------------------------------

    async def create_key(
        self, name: str, *, creates_per_minute: int = 100, max_in_flight: int = 10
    ) -> tuple[str, ApiKey]:
        """Create an API key; returns its secret (shown once, never stored) and its record."""
        plaintext = keys.generate_key()
        record = ApiKey(
            id=str(uuid.uuid4()),
            name=name,
            prefix=keys.display_prefix(plaintext),
            key_hash=keys.hash_key(plaintext),
            creates_per_minute=creates_per_minute,
            max_in_flight=max_in_flight,
            created_at=self.clock(),
        )
        async with self._write() as connection:
            await connection.execute(api_keys.insert().values(_columns(record, api_keys.c.keys())))
        return plaintext, record

    async def list_keys(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        async with self._read() as connection:
            return [_api_key(row) for row in (await connection.execute(query)).all()]

    async def has_keys(self) -> bool:
        """Whether any key was ever created, revoked ones included (one row read at most)."""
        query = select(api_keys.c.id).limit(1)
        async with self._read() as connection:
            return (await connection.execute(query)).first() is not None

    async def revoke_key(self, id_or_prefix: str) -> ApiKey | None:
        """Revoke the key with this id, display prefix or secret; returns it (revoked), or
        ``None`` when none matches. Raises :class:`AmbiguousKeyError` if several match."""
        match = or_(
            api_keys.c.id == id_or_prefix,
            api_keys.c.prefix == id_or_prefix,
            api_keys.c.key_hash == keys.hash_key(id_or_prefix),
        )
        async with self._write() as connection:
            rows = (await connection.execute(select(api_keys).where(match))).all()
            if not rows:
                return None
            if len(rows) > 1:
                raise AmbiguousKeyError(
                    f"{id_or_prefix!r} matches {len(rows)} keys; name the key by its id"
                )
            key = _api_key(rows[0])
            if key.revoked_at is None:
                revoke = (
                    update(api_keys)
                    .where(api_keys.c.id == key.id)
                    .values(revoked_at=self.clock())
                    .returning(*api_keys.c)
                )
                key = _api_key((await connection.execute(revoke)).one())
        return key

    async def find_key(self, plaintext: str) -> ApiKey | None:
        """The unrevoked key whose secret is ``plaintext``, or ``None``."""
        query = select(api_keys).where(
            api_keys.c.key_hash == keys.hash_key(plaintext), api_keys.c.revoked_at.is_(None)
        )
        async with self._read() as connection:
            row = (await connection.execute(query)).first()
        return None if row is None else _api_key(row)

    # --- connections -----------------------------------------------------------------------

    def _engine_or_raise(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the store is not open; call `await store.open()` first")
        return self._engine

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self._engine_or_raise().connect() as connection:
            yield connection

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        self._engine_or_raise()
        assert self._writer is not None
        async with self._writer.begin() as connection:
            yield connection


def _not_before(column: ColumnElement[datetime], moment: datetime) -> ColumnElement[datetime]:
    """``moment``, or the column's value where that is later (NULL counts as earlier)."""
    bound = literal(moment, UtcDateTime())
    return case((column > bound, column), else_=bound)


async def _count(connection: AsyncConnection, condition: ColumnElement[bool]) -> int:
    query = select(func.count()).select_from(predictions).where(condition)
    return int((await connection.execute(query)).scalar_one())


def _columns(record: Any, names: Collection[str]) -> dict[str, Any]:
    return {name: getattr(record, name) for name in names}


__all__ = [
    "AmbiguousKeyError",
    "CapacityError",
    "Limits",
    "PayloadBuilder",
    "Store",
    "default_webhook_payload",
]
