"""The database under the job store: which one, how to connect, and bringing its schema up to date.

:class:`Database` is one open database that the store's parts share.

SQLite (a file under ``NSFWD_DATA_DIR``) is the default, for one server with no set-up;
PostgreSQL (``NSFWD_DATABASE_URL``), through asyncpg, lets several replicas share the work.

A SQLite file is switched to WAL (readers never block the writer) once, before any pooled
connection opens: concurrent switches deadlock in SQLite itself, past any busy timeout. Its
connections get a busy timeout (writers queue instead of failing with "database is locked") and
foreign keys (off by default in SQLite, and purging relies on their cascades). SQLAlchemy, not
the sqlite3 module, emits ``BEGIN``, so transactions are real; a transaction that will write
starts with ``BEGIN IMMEDIATE`` (take the write lock first: a read-then-write transaction could
otherwise fail when another writer commits in between).
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final

from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from nsfwd.jobs.schema import VERSION_TABLE

log = logging.getLogger(__name__)

DATABASE_FILE: Final = "nsfwd.db"
SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
"""How long a SQLite writer waits for the write lock before failing."""
WRITE_OPTION: Final = "nsfwd_write"
"""Execution option marking a connection whose transactions write (SQLite: BEGIN IMMEDIATE)."""
BLOB_THREADS: Final = 2
"""Threads a SQLite store reads pieces of blobs on (stored images served a chunk at a time)."""
MIGRATION_LOCK_ID: Final = 0x6E73_6677_6400  # "nsfwd\0": a PostgreSQL advisory lock key
MIGRATIONS: Final = Path(__file__).with_name("migrations")


class DatabaseUrlError(ValueError):
    """``NSFWD_DATABASE_URL`` names a database nsfwd cannot use."""


class StoreUnavailableError(Exception):
    """The database cannot be reached or written right now (stopped, restarting, unreachable,
    locked past the busy timeout): worth retrying later, so the API answers 503."""

    status = 503
    retry_after = 5

    def __init__(self, message: str) -> None:
        """Create the error; ``message`` is for the client."""
        super().__init__(message)
        self.message = message


class StoreFullError(StoreUnavailableError):
    """The database's disk is full: nothing more can be stored until its operator frees space
    (507 Insufficient Storage)."""

    status = 507
    retry_after = 60


_SQLITE_FULL: Final = 13
_SQLITE_IOERR: Final = 10
_SQLITE_BUSY: Final = 5
_SQLITE_LOCKED: Final = 6


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack += [getattr(current, "orig", None), current.__cause__, current.__context__]


def unavailable(exc: BaseException) -> StoreUnavailableError | None:
    """What ``exc``, raised by the database driver, means for callers: the store is full, or
    out of reach for now; ``None`` for anything else (a bug, a constraint), which stays as is."""
    import asyncpg.exceptions as pg

    for cause in _causes(exc):
        code = getattr(cause, "sqlite_errorcode", None)
        if isinstance(code, int):
            if code & 0xFF == _SQLITE_FULL:
                return StoreFullError(
                    "the job store's disk is full; nothing more can be stored until its "
                    "operator frees space"
                )
            if code & 0xFF in (_SQLITE_IOERR, _SQLITE_BUSY, _SQLITE_LOCKED):
                return StoreUnavailableError(
                    f"the job store cannot be written right now ({cause}); retry in a moment"
                )
        if isinstance(
            cause,
            OSError | pg.PostgresConnectionError | pg.OperatorInterventionError
            | pg.InterfaceError,
        ):  # fmt: skip
            return StoreUnavailableError(
                "the job store's database cannot be reached right now; retry in a moment"
            )
    return None


@contextmanager
def _translated() -> Iterator[None]:
    """Raise what :func:`unavailable` makes of a driver error; other errors pass unchanged."""
    try:
        yield
    except StoreUnavailableError:
        raise
    except Exception as exc:
        mapped = unavailable(exc)
        if mapped is None:
            raise
        raise mapped from exc


def database_url(data_dir: Path | str, url: str | None = None) -> str:
    """The SQLAlchemy URL to use: ``url`` normalised, else SQLite ``nsfwd.db`` in ``data_dir``.

    ``postgresql://`` and ``postgres://`` become ``postgresql+asyncpg://``; ``sqlite://``
    becomes ``sqlite+aiosqlite://``. Other databases and drivers are refused.
    """
    if not url:
        return f"sqlite+aiosqlite:///{Path(data_dir).expanduser().resolve() / DATABASE_FILE}"
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseUrlError(
            f"NSFWD_DATABASE_URL is not a database URL ({url[:40]!r}...); use e.g. "
            "postgresql://user:password@host:5432/nsfwd"
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgresql", "postgres") and driver in ("", "asyncpg"):
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    if backend == "sqlite" and driver in ("", "aiosqlite"):
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    raise DatabaseUrlError(
        f"NSFWD_DATABASE_URL uses {parsed.drivername!r}; nsfwd runs on PostgreSQL "
        "(postgresql://..., through asyncpg) or SQLite (sqlite:///path/to/nsfwd.db)"
    )


def redacted(url: str) -> str:
    """``url`` with any password masked, for logs."""
    return make_url(url).render_as_string(hide_password=True)


def create_engine(url: str) -> AsyncEngine:
    """An async engine for ``url`` (from :func:`database_url`), set up as the module describes.

    For a SQLite file, its folder is created.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        use_wal(Path(parsed.database))
    engine = create_async_engine(url)

    @event.listens_for(engine.sync_engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN (below), not sqlite3
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous = NORMAL")  # with WAL: safe against a process crash
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(connection: Connection) -> None:
        writes = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")

    return engine


def use_wal(path: Path) -> None:
    """Put the SQLite file at ``path`` (created if missing) in WAL mode, which it keeps.

    Two connections switching a file at once can each wait for the other's lock until the busy
    timeout ends, so a switch that meets a lock gives up at once and tries again a moment later,
    and whoever comes second finds the file switched already.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        connection = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            (mode,) = connection.execute("PRAGMA journal_mode").fetchone()
            if mode == "wal":
                return
            connection.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
        finally:
            connection.close()
        time.sleep(random.uniform(0.005, 0.05))


@dataclass(frozen=True)
class BlobCell:
    """Where a blob is: its ``table`` and ``column``, in the row whose ``where`` column holds
    ``key`` (names from the code, never from a request)."""

    table: str
    column: str
    where: str
    key: str


def _read_blob(path: Path, cell: BlobCell, offset: int, size: int) -> bytes | None:
    """:meth:`Database.read_sqlite_blob` on a short-lived read-only connection."""
    connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        row = connection.execute(
            f"SELECT rowid FROM {cell.table} WHERE {cell.where} = ?",  # names from the code
            (cell.key,),
        ).fetchone()
        if row is None:
            return None
        with connection.blobopen(cell.table, cell.column, row[0], readonly=True) as blob:
            blob.seek(min(offset, len(blob)))
            return blob.read(size)
    finally:
        connection.close()


def writer(engine: AsyncEngine) -> AsyncEngine:
    """A view of ``engine`` whose transactions take SQLite's write lock at ``BEGIN``."""
    return engine.execution_options(**{WRITE_OPTION: True})


class Database:
    """One database the job store's parts share: open (migrated) or closed, and the two kinds of
    connection they use, one to read and one transaction to write.

    Each part's method is one short transaction on it; a change that spans parts (finishing a
    prediction and enqueueing its webhook) passes the write connection along, so it commits
    as one.
    """

    def __init__(self, url: str) -> None:
        """The database at ``url`` (from :func:`database_url`), not yet open."""
        self.url = url
        parsed = make_url(url)
        self.sqlite_file: Path | None = (
            Path(parsed.database)
            if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, ":memory:")
            else None
        )
        """The SQLite file, for what only the sqlite3 module does (reading part of a blob);
        ``None`` on PostgreSQL."""
        self._engine: AsyncEngine | None = None
        self._writer: AsyncEngine | None = None
        self._blob_threads: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        """Connect and migrate the schema to the newest revision."""
        engine = create_engine(self.url)
        try:
            await migrate(engine)
        except BaseException:
            await engine.dispose()
            raise
        self._engine, self._writer = engine, writer(engine)

    async def close(self) -> None:
        """Close every connection; the database can be opened again."""
        if self._engine is not None:
            await self._engine.dispose()
        self._engine = self._writer = None
        if self._blob_threads is not None:
            self._blob_threads.shutdown(wait=False)
            self._blob_threads = None

    async def read_sqlite_blob(self, cell: BlobCell, offset: int, size: int) -> bytes | None:
        """``size`` bytes from ``offset`` of the blob in ``cell``, by SQLite's incremental blob
        I/O, which reads those pages only (``substr`` would load the whole blob for each
        piece); ``None`` when there is no such row. On threads of the database's own."""
        self._opened()
        assert self.sqlite_file is not None
        if self._blob_threads is None:
            self._blob_threads = ThreadPoolExecutor(BLOB_THREADS, thread_name_prefix="nsfwd-blob")
        read = partial(_read_blob, self.sqlite_file, cell, offset, size)
        with _translated():
            return await asyncio.get_running_loop().run_in_executor(self._blob_threads, read)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection to read with. A database out of reach raises
        :class:`StoreUnavailableError`."""
        with _translated():
            async with self._opened().connect() as connection:
                yield connection

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that writes (on SQLite it holds the write lock from ``BEGIN``), committed
        when the block ends and rolled back if it raises. A database out of reach raises
        :class:`StoreUnavailableError`; a full disk, :class:`StoreFullError`."""
        self._opened()
        assert self._writer is not None
        with _translated():
            async with self._writer.begin() as connection:
                yield connection

    def _opened(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the store is not open; call `await store.open()` first")
        return self._engine


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (the newest, unless a test asks for an older one, to
    check that upgrading from it keeps the data), in one transaction.

    Safe when several replicas start at once: on PostgreSQL they queue on an advisory lock held
    until the transaction ends; on SQLite, on the write lock (``BEGIN IMMEDIATE``). The first
    migrates, the others then find the schema current.
    """
    async with writer(engine).begin() as connection:
        if connection.dialect.name == "postgresql":
            await connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_ID}
            )
        await connection.run_sync(_upgrade, revision)


def _upgrade(connection: Connection, target: str) -> None:
    # Alembic narrates every plugin it loads and every step at INFO; one line of ours is enough.
    for name in ("alembic.runtime.plugins", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from alembic import command
    from alembic.config import Config
    from alembic.migration import MigrationContext

    def revision() -> str | None:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()

    before = revision()
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, target)
    after = revision()
    if after != before:
        log.info("job store schema migrated from %s to %s", before or "nothing", after)
