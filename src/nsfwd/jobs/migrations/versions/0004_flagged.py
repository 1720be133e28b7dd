"""Predictions speak of verdicts, not of a protocol: ``flagged`` for ``output``, and no model
named for the server's default.

``output`` held Eachlabs' verdict text (``nsfw``/``normal``); ``flagged`` holds the verdict
itself (true, false, or null for a model its policy cannot score), which each protocol renders
in its own words. ``model`` may be null, meaning the server's default model: Eachlabs'
``nsfw-image-detection`` names it, and rows that stored that name now store null.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SLUG = "nsfw-image-detection"


def upgrade() -> None:
    """Add ``flagged`` from ``output``, drop ``output``; let ``model`` be null for the default."""
    op.add_column("predictions", sa.Column("flagged", sa.Boolean(), nullable=True))
    op.execute("UPDATE predictions SET flagged = (output = 'nsfw') WHERE output IS NOT NULL")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("output")
        batch.alter_column("model", existing_type=sa.String(256), nullable=True)
    op.execute(
        f"UPDATE predictions SET model = NULL WHERE protocol = 'eachlabs' AND model = '{_SLUG}'"
    )


def downgrade() -> None:
    """Bring ``output`` back from ``flagged``, and the default model's rows back to the slug."""
    op.execute(f"UPDATE predictions SET model = '{_SLUG}' WHERE model IS NULL")
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("output", sa.String(32), nullable=True))
        batch.alter_column("model", existing_type=sa.String(256), nullable=False)
    op.execute(
        "UPDATE predictions SET output = CASE WHEN flagged THEN 'nsfw' ELSE 'normal' END "
        "WHERE flagged IS NOT NULL"
    )
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("flagged")
