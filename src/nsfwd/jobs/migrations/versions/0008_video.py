"""Videos: a prediction's video options and segments, and a key's own video sampling.

``predictions.video`` holds the video options a prediction's key and request set (an object,
possibly empty, for a video input; null for an image), applied over the server's by whichever
replica runs it; ``predictions.segments`` the flagged stretches of a judged video.
``api_keys.video_interval`` and ``api_keys.video_min_frames`` are a key's own sampling interval
and the flagged samples in a row its segments need (null: the server's).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the columns (existing rows: null, images and the server's options)."""
    op.add_column("predictions", sa.Column("video", sa.JSON(), nullable=True))
    op.add_column("predictions", sa.Column("segments", sa.JSON(), nullable=True))
    op.add_column("api_keys", sa.Column("video_interval", sa.Float(), nullable=True))
    op.add_column("api_keys", sa.Column("video_min_frames", sa.Integer(), nullable=True))


def downgrade() -> None:
    """Drop them again."""
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("video_min_frames")
        batch.drop_column("video_interval")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("segments")
        batch.drop_column("video")
