"""Region thresholds per API key, and on each prediction its key's.

Nullable: a key without its own (and every key made before this revision) follows the server's
(``NSFWD_REGION_THRESHOLDS``). Stored as the ``LABEL=T,...`` text the setting takes; an empty
string is a key whose regions never flag. A prediction carries its key's, as it does the policy
and threshold (0002), so whichever replica's worker finishes it applies the same.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("api_keys", "predictions")


def upgrade() -> None:
    """Add ``region_thresholds`` to the keys and the predictions (existing rows: null)."""
    for table in TABLES:
        op.add_column(table, sa.Column("region_thresholds", sa.Text(), nullable=True))


def downgrade() -> None:
    """Drop it again (keys and predictions then follow the server's region thresholds)."""
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("region_thresholds")
