"""Which picture of an image answered: ``judged`` on each prediction.

An animation is judged frame by frame and a transparent image over white and over black; the
worst picture answers (:mod:`nsfwd.intake.views`). ``judged`` records which one (frame, frames,
frames judged, backdrop) where more than one was judged; null otherwise and on older rows.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``judged`` (JSON, null on existing rows) to the predictions."""
    op.add_column("predictions", sa.Column("judged", sa.JSON(), nullable=True))


def downgrade() -> None:
    """Drop it again."""
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("judged")
