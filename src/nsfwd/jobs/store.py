"""The job store: one database, and the parts that keep what it holds.

A :class:`Store` owns the :class:`~nsfwd.jobs.database.Database` and hands out its parts:

* ``store.predictions`` (:mod:`nsfwd.jobs.predictions`): predictions and their leases;
* ``store.deliveries`` (:mod:`nsfwd.jobs.deliveries`): the webhook outbox, filled in the
  transaction that finishes a prediction;
* ``store.keys`` (:mod:`nsfwd.jobs.keys`): API keys;
* ``store.banks`` (:mod:`nsfwd.jobs.banks`): banks of known images (PDQ hashes).

Every method of a part is one short transaction and returns frozen records
(:mod:`nsfwd.jobs.records`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Self

from nsfwd.jobs import database
from nsfwd.jobs.banks import Banks
from nsfwd.jobs.database import Database
from nsfwd.jobs.deliveries import Deliveries, PayloadBuilder, default_webhook_payload
from nsfwd.jobs.keys import ApiKeys
from nsfwd.jobs.predictions import Predictions
from nsfwd.settings import DEFAULT_MAX_ATTEMPTS, DEFAULT_RESULT_TTL_S

if TYPE_CHECKING:
    from nsfwd.settings import Settings

log = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Store:
    """Predictions, webhook deliveries, API keys and banks in SQLite or PostgreSQL.

    ``await store.open()`` (or ``async with store``) connects and migrates the schema; then
    every part's methods may be called from any task of the event loop that opened it.
    """

    def __init__(
        self,
        url: str,
        *,
        result_ttl_s: float = DEFAULT_RESULT_TTL_S,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        webhook_payload: PayloadBuilder = default_webhook_payload,
        clock: Callable[[], datetime] = _utcnow,
        webhook_key_concurrency: int | None = None,
    ) -> None:
        """A store on ``url`` (see :func:`nsfwd.jobs.database.database_url`), not yet open.

        ``result_ttl_s``: how long finished predictions are kept; ``max_attempts``: claims before
        an abandoned prediction is failed; ``webhook_payload``: the body of each prediction's
        webhook; ``clock``: the current UTC time (tests move it); ``webhook_key_concurrency``:
        most deliveries of one key in progress at once (``None``: no cap).
        """
        self.url = url
        self.clock = clock
        self.database = Database(url)
        self.deliveries = Deliveries(
            self.database,
            clock=clock,
            webhook_payload=webhook_payload,
            key_concurrency=webhook_key_concurrency,
        )
        self.predictions = Predictions(
            self.database,
            self.deliveries,
            clock=clock,
            result_ttl_s=result_ttl_s,
            max_attempts=max_attempts,
        )
        self.keys = ApiKeys(self.database, clock=clock)
        self.banks = Banks(self.database, clock=clock)

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        """The store :class:`nsfwd.settings.Settings` describe (``data_dir``, ``database_url``)."""
        return cls(
            database.database_url(settings.data_dir, settings.database_url),
            result_ttl_s=settings.result_ttl_s,
            max_attempts=settings.max_attempts,
            webhook_key_concurrency=settings.webhook_key_concurrency,
        )

    async def open(self) -> None:
        """Connect and migrate the schema to the newest revision."""
        await self.database.open()
        log.info("job store: %s", database.redacted(self.url))

    async def close(self) -> None:
        """Close every connection; the store can be opened again."""
        await self.database.close()

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


__all__ = ["Store"]
