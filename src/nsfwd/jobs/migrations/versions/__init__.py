"""Migration scripts, oldest first (alembic orders them by their ``down_revision`` chain)."""
