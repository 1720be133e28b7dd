"""The job store: predictions, their uploaded inputs, webhook deliveries and API keys.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _time(name: str, *, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    """Create the four tables and their indexes."""
    op.create_table(
        "predictions",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("protocol", sa.String(16), nullable=False),
        sa.Column("job_type", sa.String(64), nullable=False),
        sa.Column("api_key", sa.String(64), nullable=True),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("config", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("input_url", sa.Text(), nullable=True),
        sa.Column("input_filename", sa.Text(), nullable=True),
        sa.Column("input_content_type", sa.String(256), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=True),
        sa.Column("output", sa.String(32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        _time("created_at", nullable=False),
        _time("started_at"),
        _time("finished_at"),
        sa.Column("predict_time", sa.Float(), nullable=True),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        _time("lease_expires_at"),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        _time("expires_at"),
        sa.CheckConstraint(
            "protocol IN ('eachlabs', 'prodia')", name=op.f("ck_predictions_protocol")
        ),
        sa.CheckConstraint(
            "status IN ('queued', 'processing', 'succeeded', 'failed')",
            name=op.f("ck_predictions_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_predictions")),
    )
    for columns in (
        ("status", "created_at"),
        ("status", "lease_expires_at"),
        ("api_key", "status"),
        ("api_key", "created_at"),
        ("expires_at",),
    ):
        op.create_index(op.f(f"ix_predictions_{'_'.join(columns)}"), "predictions", columns)

    op.create_table(
        "inputs",
        sa.Column("prediction_id", sa.String(36), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["predictions.id"],
            name=op.f("fk_inputs_prediction_id_predictions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("prediction_id", name=op.f("pk_inputs")),
    )

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("prediction_id", sa.String(36), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        _time("next_attempt_at", nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        _time("lease_expires_at"),
        _time("created_at", nullable=False),
        _time("delivered_at"),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'failed')",
            name=op.f("ck_webhook_deliveries_status"),
        ),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["predictions.id"],
            name=op.f("fk_webhook_deliveries_prediction_id_predictions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint("prediction_id", name=op.f("uq_webhook_deliveries_prediction_id")),
    )
    op.create_index(
        op.f("ix_webhook_deliveries_status_next_attempt_at"),
        "webhook_deliveries",
        ["status", "next_attempt_at"],
    )

    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("creates_per_minute", sa.Integer(), server_default="100", nullable=False),
        sa.Column("max_in_flight", sa.Integer(), server_default="10", nullable=False),
        _time("created_at", nullable=False),
        _time("revoked_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )


def downgrade() -> None:
    """Drop everything (results, inputs, deliveries and keys are lost)."""
    op.drop_table("api_keys")
    op.drop_table("webhook_deliveries")
    op.drop_table("inputs")
    op.drop_table("predictions")
