"""Predictions and their leases: queued, claimed by workers, finished, purged.

Every method is one short transaction and returns frozen records (:mod:`nsfwd.jobs.records`).
Work is handed out by leases, so several workers, in one process or in several replicas on one
PostgreSQL, share it without running anything twice:

* :meth:`Predictions.claim` atomically moves up to ``limit`` queued predictions (and
  processing ones whose lease expired: their worker died) to ``processing`` under the caller's
  name, for ``lease_s`` seconds. On PostgreSQL the candidates are locked with
  ``FOR UPDATE SKIP LOCKED`` (concurrent claimers take different rows without waiting); SQLite
  has one writer at a time, so ``UPDATE ... WHERE id IN (SELECT ... LIMIT n) RETURNING`` is
  atomic as it stands.
* The worker renews its leases while it works (:meth:`Predictions.renew_leases`) and finishes
  with :meth:`Predictions.finish`, which only succeeds while it still holds the lease: a worker
  that stalled past its lease, and whose prediction another worker took over, cannot overwrite
  the result.
* A prediction claimed ``max_attempts`` times whose lease ran out again (the server keeps dying
  on it) is failed with a message by the next claim, instead of being claimed forever.

Finishing a prediction, or failing an abandoned one, enqueues its webhook delivery in the same
transaction (:mod:`nsfwd.jobs.deliveries`, the outbox). Creating one checks its
:class:`Limits` in its transaction, so concurrent creates cannot all slip under them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from sqlalchemy import (
    ColumnElement,
    LargeBinary,
    Row,
    String,
    Subquery,
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
from sqlalchemy.ext.asyncio import AsyncConnection

from nsfwd.jobs.database import BlobCell, Database
from nsfwd.jobs.deliveries import Deliveries
from nsfwd.jobs.records import UNFINISHED, Prediction, Protocol, Upload
from nsfwd.jobs.schema import UtcDateTime, inputs, predictions
from nsfwd.jobs.turns import turns
from nsfwd.settings import DEFAULT_MAX_ATTEMPTS, DEFAULT_RESULT_TTL_S
from nsfwd.verdict import PolicyName

log = logging.getLogger(__name__)

CREATE_LOCK_ID: Final = 0x6E73_6677_6401
"""PostgreSQL advisory lock taken by creates that check limits, so that checks do not race."""


@dataclass(frozen=True)
class Limits:
    """Bounds a new prediction must fit in; :meth:`Predictions.create` checks them in its
    transaction (so concurrent creates cannot all slip under one)."""

    max_unfinished: int | None = None
    """Most queued and processing predictions in the whole store."""
    max_in_flight: int | None = None
    """Most queued and processing predictions of the creating key."""
    creates_per_minute: int | None = None
    """Most predictions the creating key may create in 60 seconds."""
    max_stored_bytes: int | None = None
    """Most bytes of uploaded images the whole store may hold, the new upload included."""


Scope = Literal["server", "key", "rate", "storage"]
"""Which limit of :class:`Limits` a create ran into."""


class CapacityError(Exception):
    """A limit in :class:`Limits` is reached; nothing was created."""

    def __init__(self, scope: Scope, limit: int, count: int) -> None:
        """``scope`` names the limit (``server``: max_unfinished, ``key``: max_in_flight,
        ``rate``: creates_per_minute, ``storage``: max_stored_bytes); ``count`` is what was
        found (for ``storage``, the bytes stored with the new upload)."""
        what = {
            "server": "predictions waiting or running on this server",
            "key": "predictions waiting or running for this API key",
            "rate": "predictions created by this API key in the last minute",
            "storage": "bytes of uploaded images stored, with this one",
        }[scope]
        super().__init__(f"{count} {what}; the limit is {limit}")
        self.scope = scope
        self.limit = limit
        self.count = count


_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def possible_id(prediction_id: str) -> bool:
    """Whether ``prediction_id`` could name a prediction (ids are uuid4 text). Anything else is
    unknown without a query: PostgreSQL cannot even compare text holding a NUL."""
    return _ID.fullmatch(prediction_id) is not None


def _prediction(row: Row[Any]) -> Prediction:
    return Prediction(**row._asdict())


class Predictions:
    """The predictions in a :class:`~nsfwd.jobs.database.Database`; see the module."""

    def __init__(
        self,
        database: Database,
        outbox: Deliveries,
        *,
        clock: Callable[[], datetime],
        result_ttl_s: float = DEFAULT_RESULT_TTL_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        """Predictions in ``database`` whose webhooks go to ``outbox``.

        ``result_ttl_s``: how long finished predictions are kept; ``max_attempts``: claims before
        an abandoned prediction is failed; ``clock``: the current UTC time (tests move it).
        """
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.database = database
        self.outbox = outbox
        self.clock = clock
        self.result_ttl = timedelta(seconds=result_ttl_s)
        self.max_attempts = max_attempts
        self.work_available = asyncio.Event()
        """Set whenever this store queues work (a create, a release); workers wait on it."""

    async def create(
        self,
        *,
        protocol: Protocol,
        job_type: str,
        model: str | None,
        api_key: str | None = None,
        config: Mapping[str, Any] | None = None,
        input_url: str | None = None,
        upload: Upload | None = None,
        webhook_url: str | None = None,
        limits: Limits | None = None,
        policy: PolicyName | None = None,
        threshold: float | None = None,
        region_thresholds: str | None = None,
        video: Mapping[str, Any] | None = None,
    ) -> Prediction:
        """Queue a prediction of an uploaded image or of an image URL.

        ``policy``, ``threshold`` and ``region_thresholds`` are its API key's own (``None``:
        the worker applies the server's); ``video``, for a video, the video options its key
        and request set. Raises :class:`CapacityError` when ``limits`` are reached.
        """
        if (input_url is None) == (upload is None):
            raise ValueError("a prediction needs exactly one of input_url and upload")
        async with self.database.write() as connection:  # the time is taken holding the lock
            now = self.clock()
            prediction = Prediction(
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
                policy=policy,
                threshold=threshold,
                region_thresholds=region_thresholds,
                video=dict(video) if video is not None else None,
            )
            if limits is not None:
                size = 0 if upload is None else len(upload.data)
                await _check_limits(
                    connection, protocol, api_key, limits, now=now, upload_bytes=size
                )
            await connection.execute(
                predictions.insert().values(
                    {
                        column.name: getattr(prediction, column.name)
                        for column in predictions.columns
                    }
                )
            )
            if upload is not None:
                await connection.execute(
                    inputs.insert().values(prediction_id=prediction.id, data=upload.data)
                )
        self.work_available.set()
        return prediction

    async def get(self, prediction_id: str) -> Prediction | None:
        """The prediction with this id, or ``None`` (unknown, or purged)."""
        async with self.database.read() as connection:
            if not possible_id(prediction_id):
                return None
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
        async with self.database.read() as connection:
            if not possible_id(prediction_id):
                return None
            row = (await connection.execute(query)).first()
        if row is None:
            return None
        return Upload(
            data=bytes(row.data),
            filename=row.filename or "input",
            content_type=row.content_type or "application/octet-stream",
        )

    async def input_size(self, prediction_id: str) -> int | None:
        """The byte size of a prediction's upload, or ``None`` when it has none."""
        if not possible_id(prediction_id):
            return None
        query = select(func.length(inputs.c.data)).where(inputs.c.prediction_id == prediction_id)
        async with self.database.read() as connection:
            size = (await connection.execute(query)).scalar()
        return None if size is None else int(size)

    async def input_chunk(self, prediction_id: str, offset: int, size: int) -> bytes | None:
        """``size`` bytes of a prediction's upload from ``offset`` (fewer at its end), read
        without loading the rest; ``None`` when the upload is gone. A stored image is served
        this way, a chunk at a time, so that slow readers hold a chunk each, not the image."""
        if not possible_id(prediction_id):
            return None
        if self.database.sqlite_file is not None:
            cell = BlobCell("inputs", "data", "prediction_id", prediction_id)
            return await self.database.read_sqlite_blob(cell, offset, size)
        piece = func.substr(inputs.c.data, offset + 1, size, type_=LargeBinary)  # a TOAST slice
        query = select(piece).where(inputs.c.prediction_id == prediction_id)
        async with self.database.read() as connection:
            data = (await connection.execute(query)).scalar()
        return None if data is None else bytes(data)

    async def claim(self, owner: str, limit: int, lease_s: float) -> list[Prediction]:
        """Lease up to ``limit`` predictions to ``owner`` for ``lease_s`` seconds, shared
        fairly between API keys: the key with the fewest running goes first, then round the
        keys, each key's oldest first (one key's backlog does not make another key's job
        wait behind all of it); with one key, or none, that is simply oldest first.

        Takes queued predictions and reclaims processing ones whose lease expired; each claim
        counts an attempt. Abandoned predictions (their lease expired after the last allowed
        attempt) are failed first, with a message saying how many times the server stopped.
        """
        if limit < 1:
            return []
        async with self.database.write() as connection:  # the time is taken holding the lock
            now = self.clock()
            failed = await self._fail_abandoned(connection, now)
            rows = (await connection.execute(_claim(owner, limit, lease_s, now))).all()
        self.outbox.notify(failed)
        return sorted(map(_prediction, rows), key=lambda p: (p.created_at, p.id))

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
        async with self.database.write() as connection:
            return set((await connection.execute(renew)).scalars())

    async def release(self, owner: str, ids: Collection[str]) -> int:
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
        async with self.database.write() as connection:
            released = len((await connection.execute(release)).all())
        if released:
            self.work_available.set()
        return released

    async def finish(
        self,
        prediction_id: str,
        owner: str,
        *,
        labels: Mapping[str, float] | None = None,
        flagged: bool | None = None,
        error: str | None = None,
        predict_time: float | None = None,
        judged: Mapping[str, Any] | None = None,
        match: Mapping[str, Any] | None = None,
        segments: Sequence[Mapping[str, Any]] | None = None,
        input_sha256: str | None = None,
        keep_input: bool = True,
    ) -> Prediction | None:
        """Record the outcome: ``labels`` (and ``flagged``, the verdict, ``judged``: which
        picture they are of, ``match``: the banked image one matched, and a video's
        ``segments``) on success, or an ``error``; ``input_sha256``, the digest of the bytes
        judged (or fetched, when they could not be judged).

        Only while ``owner`` still holds the prediction; returns the finished prediction, or
        ``None`` when the lease was lost (the outcome is then discarded). Enqueues the webhook
        delivery, if the prediction has a ``webhook_url``, in the same transaction. The
        uploaded image is deleted with it unless the prediction succeeded and ``keep_input``
        (its result hands the image back, as Prodia's v2 jobs do): nothing reads it again.
        """
        if (labels is None) == (error is None):
            raise ValueError("finish a prediction with either labels or an error")
        outcome: dict[str, Any] = {
            "status": "failed" if error is not None else "succeeded",
            "labels": dict(labels) if labels is not None else None,
            "flagged": flagged,
            "error": error,
            "predict_time": predict_time,
            "judged": dict(judged) if judged is not None else None,
            "input_sha256": input_sha256,
            "match": dict(match) if match is not None else None,
            "segments": [dict(item) for item in segments] if segments is not None else None,
            "lease_owner": None,
            "lease_expires_at": None,
        }
        async with self.database.write() as connection:  # the time is taken holding the lock
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
            if error is not None or not keep_input:
                await connection.execute(delete(inputs).where(inputs.c.prediction_id == row.id))
            await self.outbox.enqueue(connection, finished, now)
        self.outbox.notify([finished])
        return finished

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
            await self.outbox.enqueue(connection, prediction, now)
        return failed

    async def purge_expired(self, now: datetime | None = None) -> int:
        """Delete finished predictions past their ``expires_at``, with their inputs and webhook
        deliveries; one whose delivery is still pending is kept until it is settled. Returns
        how many predictions were deleted."""
        purge = delete(predictions).where(
            predictions.c.expires_at <= (now or self.clock()),
            predictions.c.id.not_in(self.outbox.pending_predictions()),
        )
        async with self.database.write() as connection:
            deleted: int = (await connection.execute(purge)).rowcount
        if deleted:
            log.info("purged %d expired predictions", deleted)
        return deleted


def _claim(owner: str, limit: int, lease_s: float, now: datetime) -> Update:
    claimable = or_(
        predictions.c.status == "queued",
        and_(predictions.c.status == "processing", predictions.c.lease_expires_at < now),
    )
    turns = _turns(claimable, now)
    fair = select(turns.c.id).order_by(turns.c.turn, turns.c.created_at, turns.c.id).limit(limit)
    candidates = (
        select(predictions.c.id)
        .where(predictions.c.id.in_(fair), claimable)
        .with_for_update(skip_locked=True)  # PostgreSQL; SQLite has one writer anyway
    )
    return (
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


def _turns(claimable: ColumnElement[bool], now: datetime) -> Subquery:
    """The claimable predictions (``id``, ``created_at``) with their ``turn``
    (:func:`nsfwd.jobs.turns.turns`): a key's running predictions count against it."""
    return turns(
        predictions,
        key=func.coalesce(predictions.c.api_key, ""),
        row_id=predictions.c.id,
        order=predictions.c.created_at,
        busy=(predictions.c.status == "processing", predictions.c.lease_expires_at >= now),
        eligible=(claimable,),
    )


async def _check_limits(
    connection: AsyncConnection,
    protocol: Protocol,
    api_key: str | None,
    limits: Limits,
    *,
    now: datetime,
    upload_bytes: int,
) -> None:
    """Raise :class:`CapacityError` for the first of ``limits`` the new prediction breaks. A
    key's counts are of its predictions in the same ``protocol``: each protocol's share of a
    key is limited on its own (Eachlabs' 10 in flight are not taken by Prodia jobs)."""
    if connection.dialect.name == "postgresql":
        await connection.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": CREATE_LOCK_ID}
        )
    if limits.max_stored_bytes is not None:
        stored = select(func.coalesce(func.sum(func.length(inputs.c.data)), 0))
        total = int((await connection.execute(stored)).scalar_one()) + upload_bytes
        if total > limits.max_stored_bytes:
            raise CapacityError("storage", limits.max_stored_bytes, total)
    unfinished = predictions.c.status.in_(UNFINISHED)
    checks: list[tuple[Scope, int | None, ColumnElement[bool]]] = [
        ("server", limits.max_unfinished, unfinished)
    ]
    if api_key is not None:
        mine = and_(predictions.c.api_key == api_key, predictions.c.protocol == protocol)
        checks += [
            ("key", limits.max_in_flight, and_(mine, unfinished)),
            ("rate", limits.creates_per_minute,
             and_(mine, predictions.c.created_at > now - timedelta(minutes=1))),
        ]  # fmt: skip
    for scope, limit, condition in checks:
        if limit is None:
            continue
        query = select(func.count()).select_from(predictions).where(condition)
        count = int((await connection.execute(query)).scalar_one())
        if count >= limit:
            raise CapacityError(scope, limit, count)


def _not_before(column: ColumnElement[datetime], moment: datetime) -> ColumnElement[datetime]:
    """``moment``, or the column's value where that is later (NULL counts as earlier)."""
    bound = literal(moment, UtcDateTime())
    return case((column > bound, column), else_=bound)


__all__ = ["CapacityError", "Limits", "Predictions", "Scope"]
