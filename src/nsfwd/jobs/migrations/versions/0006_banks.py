"""Banks of known images: named banks of PDQ hashes, their revision counter, the match a
prediction's picture made, and the API keys that may administer the banks.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``banks``, ``bank_hashes`` and ``bank_revision`` (its one row at 0); add
    ``predictions.match`` and ``api_keys.admin`` (existing keys: not admins)."""
    op.create_table(
        "banks",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("category", sa.String(32), nullable=True),
        sa.Column("distance", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_banks")),
    )
    op.create_table(
        "bank_hashes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("bank", sa.String(64), nullable=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.Column("quality", sa.Integer(), nullable=True),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["bank"], ["banks.name"], name=op.f("fk_bank_hashes_bank_banks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bank_hashes")),
        sa.UniqueConstraint("bank", "hash", name=op.f("uq_bank_hashes_bank_hash")),
    )
    revision_table = op.create_table(
        "bank_revision",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("removals", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bank_revision")),
    )
    op.bulk_insert(revision_table, [{"id": 1, "revision": 0, "removals": 0}])
    op.add_column("predictions", sa.Column("match", sa.JSON(), nullable=True))
    op.add_column(
        "api_keys", sa.Column("admin", sa.Boolean(), nullable=False, server_default=sa.false())
    )


def downgrade() -> None:
    """Drop the banks and the two columns."""
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("admin")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("match")
    op.drop_table("bank_revision")
    op.drop_table("bank_hashes")
    op.drop_table("banks")
