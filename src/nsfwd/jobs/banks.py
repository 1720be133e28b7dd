"""Banks of known images in the store: named sets of PDQ hashes, and the revision that tells
matchers what changed.

Every change bumps ``bank_revision.revision`` in its own transaction, before it writes (on
PostgreSQL the row lock then orders the writers, so hash ids grow in commit order); a change
that is not only hashes added also bumps ``removals``. A matcher (:mod:`nsfwd.banks.matcher`)
that polls the revision loads the hashes added since by id, or everything again after a
removal.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Row, delete, func, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from nsfwd.banks.pdq import DEFAULT_DISTANCE, HASH_BITS, HASH_BYTES
from nsfwd.jobs.database import Database
from nsfwd.jobs.records import Bank, BankedHash
from nsfwd.jobs.schema import bank_hashes, bank_revision, banks
from nsfwd.verdict import CATEGORIES

NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_DISTANCE: Final = 64
"""The widest distance a bank may match within: a quarter of PDQ's bits (unrelated pictures
differ in about half)."""
WRITE_ROWS: Final = 5_000
"""Hashes written per statement: large imports go in slices."""
READ_ROWS: Final = 50_000
"""Hashes read per query when a matcher loads a bank."""


class BankError(ValueError):
    """A bank request that cannot be done: a bad name, category or distance, a bank that
    exists already or does not exist."""


class UnknownBankError(BankError, LookupError):
    """No bank has that name."""


def check_name(name: str) -> str:
    """``name`` if it can name a bank (letters, digits, ``.``, ``_`` and ``-``, up to 64,
    starting with a letter or digit); :class:`BankError` else."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise BankError(
            f"{str(name)[:80]!r} cannot name a bank: use 1 to 64 letters, digits, '.', '_' or "
            "'-', starting with a letter or digit"
        )
    return name


def check_settings(category: str | None, distance: int) -> None:
    """:class:`BankError` unless ``category`` is None or an OpenAI category and ``distance``
    is 0 to :data:`MAX_DISTANCE`."""
    if category is not None and category not in CATEGORIES:
        raise BankError(
            f"unknown category {category[:80]!r}: a bank stands for one of OpenAI's moderation "
            f"categories ({', '.join(CATEGORIES)})"
        )
    if isinstance(distance, bool) or not isinstance(distance, int):
        raise BankError(f"the distance must be a whole number of bits, not {distance!r}")
    if not 0 <= distance <= MAX_DISTANCE:
        raise BankError(
            f"the distance must be 0 to {MAX_DISTANCE} bits of PDQ's {HASH_BITS} (usual: "
            f"{DEFAULT_DISTANCE}), not {distance}"
        )


def _bank(row: Row[Any], size: int = 0) -> Bank:
    return Bank(row.name, row.category, row.distance, row.created_at, size)


class Banks:
    """The banks in a :class:`~nsfwd.jobs.database.Database`."""

    def __init__(self, database: Database, *, clock: Callable[[], datetime]) -> None:
        """Banks in ``database``; ``clock`` tells the current UTC time."""
        self.database = database
        self.clock = clock

    async def create(
        self, name: str, *, category: str | None = None, distance: int = DEFAULT_DISTANCE
    ) -> Bank:
        """Create an empty bank; :class:`BankError` when the name is taken or a setting is
        invalid."""
        check_name(name)
        check_settings(category, distance)
        async with self.database.write() as connection:
            await _bump(connection, removals=True)
            if await _find(connection, name) is not None:
                raise BankError(f"a bank named {name!r} exists already")
            bank = Bank(name, category, distance, self.clock())
            await connection.execute(
                banks.insert().values(
                    name=name, category=category, distance=distance, created_at=bank.created_at
                )
            )
        return bank

    async def delete(self, name: str) -> Bank:
        """Delete a bank and its hashes; returns it as it was. :class:`UnknownBankError`."""
        async with self.database.write() as connection:
            await _bump(connection, removals=True)
            bank = await self._get(connection, name)
            await connection.execute(delete(bank_hashes).where(bank_hashes.c.bank == name))
            await connection.execute(delete(banks).where(banks.c.name == name))
        return bank

    async def get(self, name: str) -> Bank:
        """The bank named ``name``, with its size; :class:`UnknownBankError`."""
        async with self.database.read() as connection:
            return await self._get(connection, name)

    async def all(self) -> list[Bank]:
        """Every bank, by name, with its size."""
        sizes = (
            select(bank_hashes.c.bank, func.count().label("size"))
            .group_by(bank_hashes.c.bank)
            .subquery()
        )
        query = (
            select(banks, func.coalesce(sizes.c.size, 0).label("size"))
            .outerjoin(sizes, sizes.c.bank == banks.c.name)
            .order_by(banks.c.name)
        )
        async with self.database.read() as connection:
            rows = (await connection.execute(query)).all()
        return [_bank(row, row.size) for row in rows]

    async def add(
        self,
        name: str,
        hashes: Sequence[tuple[bytes, int | None]],
        *,
        source: str | None = None,
    ) -> int:
        """Add ``hashes`` (each 32 bytes, with its quality or None) to a bank in one
        transaction; those it holds already are skipped. Returns how many were new."""
        for value, _ in hashes:
            if len(value) != HASH_BYTES:
                raise BankError(f"a PDQ hash is {HASH_BYTES} bytes, not {len(value)}")
        unique = list(dict(hashes).items())
        async with self.database.write() as connection:
            await _bump(connection, removals=False)
            await self._get(connection, name)
            now = self.clock()
            before = await _count(connection, name)
            pg = connection.dialect.name == "postgresql"
            insert = postgresql.insert if pg else sqlite.insert
            common = {"bank": name, "source": source, "added_at": now}
            for start in range(0, len(unique), WRITE_ROWS):
                rows = [
                    {**common, "hash": value, "quality": quality}
                    for value, quality in unique[start : start + WRITE_ROWS]
                ]
                statement = insert(bank_hashes).values(rows).on_conflict_do_nothing()
                await connection.execute(statement)
            return await _count(connection, name) - before

    async def remove(self, name: str, hashes: Sequence[bytes]) -> int:
        """Remove ``hashes`` from a bank; returns how many it held."""
        removed = 0
        async with self.database.write() as connection:
            await _bump(connection, removals=True)
            await self._get(connection, name)
            values = sorted(set(hashes))
            for start in range(0, len(values), WRITE_ROWS):
                chunk = values[start : start + WRITE_ROWS]
                result = await connection.execute(
                    delete(bank_hashes).where(
                        tuple_(bank_hashes.c.bank, bank_hashes.c.hash).in_(
                            [(name, value) for value in chunk]
                        )
                    )
                )
                removed += result.rowcount
        return removed

    async def hashes(self, name: str) -> AsyncIterator[BankedHash]:
        """The hashes of a bank, oldest first, read in slices; :class:`UnknownBankError`."""
        await self.get(name)
        last = -1
        while True:
            query = (
                select(bank_hashes)
                .where(bank_hashes.c.bank == name, bank_hashes.c.id > last)
                .order_by(bank_hashes.c.id)
                .limit(READ_ROWS)
            )
            async with self.database.read() as connection:
                rows = (await connection.execute(query)).all()
            for row in rows:
                yield BankedHash(row.bank, row.hash, row.quality, row.source, row.added_at)
            if len(rows) < READ_ROWS:
                return
            last = rows[-1].id

    async def revision(self) -> tuple[int, int]:
        """The banks' ``(revision, removals)`` counters (see the module)."""
        query = select(bank_revision.c.revision, bank_revision.c.removals).where(
            bank_revision.c.id == 1
        )
        async with self.database.read() as connection:
            row = (await connection.execute(query)).one()
        return int(row.revision), int(row.removals)

    async def settings(self) -> list[Bank]:
        """Every bank's settings (without sizes): a matcher's view."""
        async with self.database.read() as connection:
            rows = (await connection.execute(select(banks).order_by(banks.c.name))).all()
        return [_bank(row) for row in rows]

    async def rows_since(
        self, last_id: int, limit: int = READ_ROWS
    ) -> list[tuple[int, str, bytes]]:
        """Up to ``limit`` hashes of every bank with an id above ``last_id``, by id:
        ``(id, bank, hash)``."""
        query = (
            select(bank_hashes.c.id, bank_hashes.c.bank, bank_hashes.c.hash)
            .where(bank_hashes.c.id > last_id)
            .order_by(bank_hashes.c.id)
            .limit(limit)
        )
        async with self.database.read() as connection:
            rows = (await connection.execute(query)).all()
        return [(int(row.id), row.bank, bytes(row.hash)) for row in rows]

    async def _get(self, connection: AsyncConnection, name: str) -> Bank:
        row = await _find(connection, name)
        if row is None:
            raise UnknownBankError(f"no bank is named {str(name)[:80]!r}")
        return _bank(row, await _count(connection, name))


async def _find(connection: AsyncConnection, name: str) -> Row[Any] | None:
    return (await connection.execute(select(banks).where(banks.c.name == name))).first()


async def _count(connection: AsyncConnection, name: str) -> int:
    query = select(func.count()).select_from(bank_hashes).where(bank_hashes.c.bank == name)
    return int((await connection.execute(query)).scalar_one())


async def _bump(connection: AsyncConnection, *, removals: bool) -> None:
    """Bump the revision (and the removals): first in a writing transaction."""
    values: dict[str, Any] = {"revision": bank_revision.c.revision + 1}
    if removals:
        values["removals"] = bank_revision.c.removals + 1
    await connection.execute(update(bank_revision).where(bank_revision.c.id == 1).values(values))
