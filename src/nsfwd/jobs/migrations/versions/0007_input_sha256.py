"""Predictions record the SHA-256 of the image bytes they judged (``input_sha256``).

A prediction of a URL is a verdict on what the URL served nsfwd, which a host may serve
differently to others (cloaking); the digest says which bytes the verdict holds for. Null on
older rows and until the prediction has run.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-09
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``input_sha256``."""
    op.add_column("predictions", sa.Column("input_sha256", sa.String(64), nullable=True))


def downgrade() -> None:
    """Drop ``input_sha256``."""
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("input_sha256")
