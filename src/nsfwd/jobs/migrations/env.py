"""Alembic's environment: run on the connection that :func:`nsfwd.jobs.database.migrate` hands over.

There is no ``alembic.ini`` and no URL here; nsfwd migrates its own database at start-up, inside
a transaction it has already opened (and, on PostgreSQL, locked against other replicas).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from nsfwd.jobs.schema import VERSION_TABLE, metadata

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError(
        "nsfwd migrations run from nsfwd.jobs.database.migrate() (at server start-up), which "
        "passes a connection; the alembic command line is not set up for them"
    )
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=True,  # SQLite alters tables by copying them; batch mode does that
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
