"""The tables, as SQLAlchemy Core metadata. Migrations (``migrations/versions``) create them;
a test checks that the migrated database and this file agree.

Times are UTC. SQLite has no time zone type, so :class:`UtcDateTime` stores naive UTC there
(SQLAlchemy's fixed-width text format, which sorts and compares correctly) and hands back
aware datetimes on every database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)

VERSION_TABLE: Final = "nsfwd_alembic_version"
"""Alembic's bookkeeping table, named so that it cannot clash in a shared database."""


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database; naive datetimes are refused."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC (naive on SQLite, which ignores time zones)."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware datetime (UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Read back as an aware UTC datetime."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

predictions = Table(
    "predictions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("protocol", String(16), nullable=False),
    Column("job_type", String(64), nullable=False),
    Column("api_key", String(64), nullable=True),
    Column("model", String(256), nullable=True),
    Column("config", JSON, nullable=True),
    Column("status", String(16), nullable=False),
    Column("input_url", Text, nullable=True),
    Column("input_filename", Text, nullable=True),
    Column("input_content_type", String(256), nullable=True),
    Column("labels", JSON, nullable=True),
    Column("flagged", Boolean, nullable=True),
    Column("error", Text, nullable=True),
    Column("webhook_url", Text, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("started_at", UtcDateTime, nullable=True),
    Column("finished_at", UtcDateTime, nullable=True),
    Column("predict_time", Float, nullable=True),
    Column("lease_owner", String(128), nullable=True),
    Column("lease_expires_at", UtcDateTime, nullable=True),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("expires_at", UtcDateTime, nullable=True),
    Column("policy", String(16), nullable=True),
    Column("threshold", Float, nullable=True),
    Column("judged", JSON, nullable=True),
    Column("region_thresholds", Text, nullable=True),
    Column("match", JSON, nullable=True),
    Column("video", JSON, nullable=True),
    Column("segments", JSON, nullable=True),
    Column("input_sha256", String(64), nullable=True),
    CheckConstraint("protocol IN ('eachlabs', 'prodia')", name="protocol"),
    CheckConstraint("status IN ('queued', 'processing', 'succeeded', 'failed')", name="status"),
    Index(None, "status", "created_at"),
    Index(None, "status", "lease_expires_at"),
    Index(None, "api_key", "status"),
    Index(None, "api_key", "created_at"),
    Index(None, "expires_at"),
)

inputs = Table(
    "inputs",
    metadata,
    Column(
        "prediction_id",
        String(36),
        ForeignKey("predictions.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("data", LargeBinary, nullable=False),
)
"""Uploaded image bytes, apart from ``predictions`` so that reading predictions never loads them."""

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(64), primary_key=True),
    Column(
        "prediction_id",
        String(36),
        ForeignKey("predictions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("url", Text, nullable=False),
    Column("payload", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UtcDateTime, nullable=False),
    Column("last_status", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("lease_owner", String(128), nullable=True),
    Column("lease_expires_at", UtcDateTime, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("delivered_at", UtcDateTime, nullable=True),
    CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="status"),
    UniqueConstraint("prediction_id"),  # one outcome per prediction, so one delivery
    Index(None, "status", "next_attempt_at"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(256), nullable=False),
    Column("prefix", String(32), nullable=False),
    Column("key_hash", String(64), nullable=False),
    Column("creates_per_minute", Integer, nullable=False, server_default="100"),
    Column("max_in_flight", Integer, nullable=False, server_default="10"),
    Column("created_at", UtcDateTime, nullable=False),
    Column("revoked_at", UtcDateTime, nullable=True),
    Column("policy", String(16), nullable=True),
    Column("threshold", Float, nullable=True),
    Column("region_thresholds", Text, nullable=True),
    Column("admin", Boolean, nullable=False, server_default=false()),
    Column("video_interval", Float, nullable=True),
    Column("video_min_frames", Integer, nullable=True),
    UniqueConstraint("key_hash"),
)

banks = Table(
    "banks",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("category", String(32), nullable=True),
    Column("distance", Integer, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)
"""Named banks of known images: what a match stands for (an OpenAI category; null:
``sexual``) and the Hamming distance within which a PDQ hash matches."""

bank_hashes = Table(
    "bank_hashes",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("bank", String(64), ForeignKey("banks.name", ondelete="CASCADE"), nullable=False),
    Column("hash", LargeBinary(32), nullable=False),
    Column("quality", Integer, nullable=True),
    Column("source", Text, nullable=True),
    Column("added_at", UtcDateTime, nullable=False),
    UniqueConstraint("bank", "hash"),
)
"""The PDQ hashes of each bank (32 bytes), with their quality (null when added by hash) and
where they came from (a file name, an import). ``id`` only grows, so a matcher that loaded
the rows up to some id loads the ones added since by ``id``."""

bank_revision = Table(
    "bank_revision",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("revision", BigInteger, nullable=False),
    Column("removals", BigInteger, nullable=False),
)
"""One row (id 1): ``revision`` grows with every change to the banks, ``removals`` with every
change that is not only hashes added (a bank created, changed or deleted, hashes removed).
Matchers poll it: a new revision loads what was added; new removals, everything again."""
