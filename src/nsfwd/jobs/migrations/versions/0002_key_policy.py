"""A verdict policy and threshold per API key, and on each prediction its key's.

Both are nullable: a key without its own (and every key made before this revision) follows the
server's (``NSFWD_POLICY``, ``NSFWD_THRESHOLD``). A prediction carries its key's, so whichever
replica's worker finishes it applies the same.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("api_keys", "predictions")


def upgrade() -> None:
    """Add ``policy`` and ``threshold`` to the keys and the predictions (existing rows: null)."""
    for table in TABLES:
        op.add_column(table, sa.Column("policy", sa.String(16), nullable=True))
        op.add_column(table, sa.Column("threshold", sa.Float(), nullable=True))


def downgrade() -> None:
    """Drop them again (keys and predictions then follow the server's policy)."""
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("threshold")
            batch.drop_column("policy")
