"""A throwaway PostgreSQL server for tests: initdb into a temporary folder, listen on loopback.

``NSFWD_TEST_DATABASE_URL`` (e.g. ``postgresql://postgres@127.0.0.1:5432/postgres``) uses an
existing server instead; its user must be allowed to create databases.

PostgreSQL refuses to run as root. As root (CI, containers) the data folder is handed to the
``postgres`` user that Debian's package creates, and ``initdb`` and ``pg_ctl`` run as that user
through ``runuser``. The server uses trust authentication on 127.0.0.1 only, a free port, a unix
socket in its own folder and no fsync (its data is thrown away).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import make_url

from servers import free_port

INSTALL_HINT = (
    "PostgreSQL is needed by the job store tests: install it with "
    "`apt-get install -y postgresql` (Debian/Ubuntu; .ci/run does this), or point "
    "NSFWD_TEST_DATABASE_URL at a server where the user may create databases"
)


def find_binaries() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl``: Debian's newest, else the one on PATH."""
    folders = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for folder in reversed(folders):
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    initdb = shutil.which("initdb")
    if initdb is not None and shutil.which("pg_ctl") is not None:
        return Path(initdb).parent
    raise RuntimeError(f"initdb and pg_ctl not found. {INSTALL_HINT}")


def _as_server_user(folder: Path) -> list[str]:
    """The command prefix that runs PostgreSQL's programs as a user they accept."""
    if os.geteuid() != 0:
        return []
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError(
            f"running as root, and there is no 'postgres' user to run the test server as. "
            f"{INSTALL_HINT}"
        ) from None
    for path in (folder, *folder.rglob("*")):
        os.chown(path, user.pw_uid, user.pw_gid)
    return ["runuser", "-u", "postgres", "--"]


def _run(command: list[str], cwd: Path) -> None:
    result = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )


class PostgresServer:
    """A throwaway PostgreSQL server in a folder of its own, which tests may stop and start."""

    def __init__(self, *, durable: bool = False) -> None:
        """Create the data folder (initdb); the server is not running yet.

        Not ``durable``: commits return before their WAL is written (``synchronous_commit=off``),
        which is fast, and loses the last transactions if the server crashes (``stop()``).
        ``durable``: PostgreSQL's default, so a crash loses no committed transaction.
        """
        self.binaries = find_binaries()
        # Not under pytest's tmp_path: that is private to root, and the server may run as postgres.
        self.folder = Path(tempfile.mkdtemp(prefix="nsfwd-pg-"))
        self.data, sockets = self.folder / "data", self.folder / "sockets"
        sockets.mkdir()
        self.prefix = _as_server_user(self.folder)
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {sockets} -c fsync=off "
            "-c full_page_writes=off -c max_connections=100"
        )
        if not durable:
            self.options += " -c synchronous_commit=off"
        initdb = [str(self.binaries / "initdb"), "-D", str(self.data), "-U", "postgres"]
        initdb += ["-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions"]
        _run([*self.prefix, *initdb], self.folder)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        _run([*self.prefix, str(self.binaries / "pg_ctl"), "start", "-D", str(self.data), "-w",
              "-t", "60", "-l", str(self.folder / "server.log"), "-o", self.options],
             self.folder)  # fmt: skip

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server (``immediate``: as if it crashed; ``fast``: a clean shutdown)."""
        _run([*self.prefix, str(self.binaries / "pg_ctl"), "stop", "-D", str(self.data),
              "-m", mode], self.folder)  # fmt: skip

    def remove(self) -> None:
        """Delete the data folder (the server must be stopped)."""
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a PostgreSQL server; yields the URL of its ``postgres`` database; stops it after."""
    external = os.environ.get("NSFWD_TEST_DATABASE_URL")
    if external:
        yield external
        return
    with restartable_postgres(durable=False) as server:
        yield server.url


@contextlib.contextmanager
def restartable_postgres(*, durable: bool = True) -> Iterator[PostgresServer]:
    """A server of this test's own, started, that it may stop and start; removed after."""
    server = PostgresServer(durable=durable)
    try:
        server.start()
        try:
            yield server
        finally:
            with contextlib.suppress(RuntimeError):  # already stopped by the test
                server.stop()
    finally:
        server.remove()


async def _admin(server_url: str, statement: str) -> None:
    import asyncpg

    url = make_url(server_url)
    connection = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, password=url.password,
        database=url.database,
    )  # fmt: skip
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def _url(server_url: str, database: str) -> str:
    return make_url(server_url).set(database=database).render_as_string(hide_password=False)


@contextlib.contextmanager
def fresh_database(server_url: str, template: str | None = None) -> Iterator[str]:
    """A new database on the server for one test, dropped after; yields its URL.

    Empty, or a copy of ``template`` (see :func:`migrated_template`).
    """
    name = f"nsfwd_test_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template is not None else ""
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"{copy}'))
    try:
        yield _url(server_url, name)
    finally:
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _migrate(url: str) -> None:
    from nsfwd.jobs.database import create_engine, database_url, migrate

    engine = create_engine(database_url(".", url))
    try:
        await migrate(engine)
    finally:
        await engine.dispose()  # a template must have no connections left to be copied


@contextlib.contextmanager
def migrated_template(server_url: str) -> Iterator[str]:
    """A database holding the newest job store schema, to copy for each test; yields its name.

    ``CREATE DATABASE ... TEMPLATE`` copies it in about the time an empty database takes, so
    the schema is migrated once a session rather than once a test.
    """
    with fresh_database(server_url) as url:
        asyncio.run(_migrate(url))
        name = make_url(url).database
        assert name is not None
        yield name
