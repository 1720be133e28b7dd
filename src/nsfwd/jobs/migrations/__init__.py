"""Alembic migrations of the job store, applied at start-up by ``nsfwd.jobs.database.migrate``."""
