"""Webhook delivery: the outbox the store fills, sent out signed (Standard Webhooks), retried
until taken or given up (:class:`WebhookSender`), and the signing secret (:func:`resolve_secret`).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import httpx
from standardwebhooks import Webhook

from nsfwd.engine import pools
from nsfwd.fetch import FetchError, FetchPolicy, FetchTimeouts, safe_async_client
from nsfwd.jobs.claims import ClaimLoop, worker_name
from nsfwd.jobs.records import Delivery
from nsfwd.jobs.store import Store
from nsfwd.settings import WEBHOOK_SECRET_PREFIX, Settings

log = logging.getLogger(__name__)

SECRET_FILE: Final = "webhook_secret"
"""Where a generated secret is kept, under ``NSFWD_DATA_DIR``."""
POLL_S: Final = 2.0
CONCURRENCY: Final = 16
STOP_GRACE_S: Final = 5.0
"""How long :meth:`WebhookSender.stop` lets attempts under way finish before cancelling them."""
LEASE_MARGIN_S: Final = 30.0
"""A claimed delivery's lease outlasts the attempt's timeout by this much."""
MAX_ERROR_CHARS: Final = 500


def generate_secret() -> str:
    """A new Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64."""
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def webhooks_enabled(settings: Settings) -> bool:
    """Whether the server can sign webhooks: a secret is set, or it can generate and keep one
    (SQLite, where one data folder holds the store and the secret)."""
    return settings.webhook_secret is not None or not settings.database_url


def resolve_secret(settings: Settings) -> str | None:
    """The signing secret: ``NSFWD_WEBHOOK_SECRET``, else the one kept in
    ``data_dir/webhook_secret`` (generated there, readable by the owner only, on first use);
    ``None`` on PostgreSQL without a configured secret."""
    if settings.webhook_secret is not None:
        return settings.webhook_secret.get_secret_value().strip()
    if settings.database_url:
        return None
    path = Path(settings.data_dir).expanduser() / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = generate_secret()
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        kept = path.read_text().strip()
        if not kept:
            raise RuntimeError(
                f"{path} is empty; delete it to generate a new webhook secret, or set "
                "NSFWD_WEBHOOK_SECRET"
            ) from None
        return kept
    with os.fdopen(descriptor, "w") as file:
        file.write(secret + "\n")
    log.warning(
        "generated a webhook signing secret into %s; give it to webhook receivers so they can "
        "verify deliveries (or set NSFWD_WEBHOOK_SECRET)",
        path.resolve(),
    )
    return secret


def sign(secret: str, delivery_id: str, payload: str, moment: datetime) -> dict[str, str]:
    """The Standard Webhooks headers for ``payload`` sent as message ``delivery_id`` at
    ``moment``, plus its content type."""
    return {
        "content-type": "application/json",
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": Webhook(secret).sign(delivery_id, moment, payload),
    }


class WebhookSender:
    """Sends the store's webhook deliveries from this replica; see the module docstring."""

    def __init__(
        self,
        store: Store,
        secret: str | None,
        policy: FetchPolicy,
        *,
        retry_delays: Sequence[float],
        timeout_s: float = 30.0,
        concurrency: int = CONCURRENCY,
        poll_s: float = POLL_S,
        name: str | None = None,
    ) -> None:
        """Send with ``secret`` (``None``: resolved by :meth:`start` from settings, or the
        sender does nothing), to receivers ``policy`` allows; ``retry_delays`` are the seconds
        before each retry; ``timeout_s`` bounds one attempt; at most ``concurrency`` at once."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if any(delay < 0 for delay in retry_delays):
            raise ValueError(f"retry delays must not be negative: {list(retry_delays)}")
        self.store = store
        self.secret = secret
        self.retry_delays = tuple(retry_delays)
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.poll_s = poll_s
        self.name = name or f"webhooks:{worker_name()}"
        self.lease_s = timeout_s + LEASE_MARGIN_S
        self.policy = replace(
            policy,
            timeouts=FetchTimeouts(
                connect=min(policy.timeouts.connect, timeout_s), read=timeout_s, total=timeout_s
            ),
        )
        self._settings: Settings | None = None
        self._client: httpx.AsyncClient | None = None
        self._claims = ClaimLoop(
            store.deliveries,
            self._send,
            owner=self.name,
            slots=concurrency,
            lease_s=self.lease_s,
            poll_s=poll_s,
            name="webhook",
        )
        self._timers: set[asyncio.TimerHandle] = set()

    @classmethod
    def from_settings(cls, store: Store, settings: Settings) -> WebhookSender:
        """A sender configured by ``settings``; its secret is resolved when it starts."""
        sender = cls(
            store,
            None,
            settings.webhook_policy,
            retry_delays=settings.webhook_retry_delays,
            timeout_s=settings.webhook_timeout_s,
        )
        sender._settings = settings
        return sender

    @property
    def running(self) -> bool:
        """Whether the delivery loop runs."""
        return self._claims.claiming

    async def start(self) -> None:
        """Start sending (the store must be open). Without a secret, log and do nothing."""
        if self.secret is None and self._settings is not None:
            settings = self._settings
            self.secret = await pools.named(pools.WEBHOOKS).run(lambda: resolve_secret(settings))
        if self.secret is None:
            log.warning(
                "webhooks are off: NSFWD_WEBHOOK_SECRET is not set (required with "
                "NSFWD_DATABASE_URL, so that every replica signs alike)"
            )
            return
        Webhook(self.secret)  # a bad secret fails here, at start, not at the first delivery
        self._client = safe_async_client(self.policy)
        self._claims.start()

    async def stop(self) -> None:
        """Stop claiming; let attempts under way finish for a moment, then cancel the rest
        (their leases run out and another sender, or this one after a restart, retries them)."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        await self._claims.stop(grace_s=STOP_GRACE_S)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # --- retries ---------------------------------------------------------------------------

    def _wake_at(self, moment: datetime) -> None:
        """Look for due deliveries again at ``moment`` (a retry this sender scheduled)."""
        delay = max(0.0, (moment - self.store.clock()).total_seconds())
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def wake() -> None:
            if handle is not None:
                self._timers.discard(handle)
            self.store.deliveries.work_available.set()

        handle = loop.call_later(delay, wake)
        self._timers.add(handle)

    # --- one attempt -------------------------------------------------------------------------

    async def _send(self, delivery: Delivery) -> None:
        status, error = await self._post(delivery)
        ok = status is not None and 200 <= status < 300
        attempt = delivery.attempts + 1
        next_attempt_at = None
        if not ok and attempt <= len(self.retry_delays):
            next_attempt_at = self.store.clock() + timedelta(seconds=self.retry_delays[attempt - 1])
        try:
            recorded = await self.store.deliveries.record_attempt(
                delivery.id,
                self.name,
                ok=ok,
                status=status,
                error=error,
                next_attempt_at=next_attempt_at,
            )
        except Exception:
            log.exception("webhook %s: recording attempt %d failed; its lease will run out and "
                          "it will be sent again", delivery.id, attempt)  # fmt: skip
            return
        if recorded is None:
            log.warning("webhook %s: lease lost during attempt %d; not recorded",
                        delivery.id, attempt)  # fmt: skip
        elif ok:
            log.info("webhook %s for prediction %s delivered (attempt %d)",
                     delivery.id, delivery.prediction_id, attempt)  # fmt: skip
        elif next_attempt_at is not None:
            log.info("webhook %s for prediction %s: attempt %d failed (%s); retrying at %s",
                     delivery.id, delivery.prediction_id, attempt, error,
                     next_attempt_at.isoformat(timespec="seconds"))  # fmt: skip
            self._wake_at(next_attempt_at)
        else:
            log.warning("webhook %s for prediction %s: attempt %d failed (%s); giving up",
                        delivery.id, delivery.prediction_id, attempt, error)  # fmt: skip

    async def _post(self, delivery: Delivery) -> tuple[int | None, str | None]:
        """Send one attempt; the receiver's status (``None`` if it did not answer) and what went
        wrong, if anything."""
        assert self._client is not None and self.secret is not None
        headers = sign(self.secret, delivery.id, delivery.payload, datetime.now(UTC))
        try:
            async with asyncio.timeout(self.timeout_s):
                request = self._client.stream(
                    "POST", delivery.url, content=delivery.payload.encode(), headers=headers
                )
                async with request as response:  # the body is never read
                    status = response.status_code
        except TimeoutError:
            return None, f"no answer within {self.timeout_s:g} s"
        except FetchError as exc:  # a refused address, or a redirect to one
            return None, _clip(f"refused: {exc.message}")
        except httpx.HTTPError as exc:
            return None, _clip(f"{type(exc).__name__}: {exc}".rstrip(": "))
        if 200 <= status < 300:
            return status, None
        return status, f"answered {status} {httpx.codes.get_reason_phrase(status)}".rstrip()


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "..."


__all__ = [
    "SECRET_FILE",
    "WebhookSender",
    "generate_secret",
    "resolve_secret",
    "sign",
    "webhooks_enabled",
]
