"""A job store out of reach or full is a 503 or 507 with ``Retry-After``, never a 500.

Found by the reliability campaign (tests/test_campaign_faults.py): with PostgreSQL stopped,
every route that needs the store answered 500. The store now raises
:class:`~nsfwd.jobs.database.StoreUnavailableError` (full disk: ``StoreFullError``) for driver
errors that mean "not now", and the API's edge renders them in each protocol's format.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from nsfwd.api import create_app
from nsfwd.engine.batcher import Engine
from nsfwd.jobs import Store
from nsfwd.jobs.database import (
    StoreFullError,
    StoreUnavailableError,
    database_url,
    unavailable,
)
from nsfwd.models.classifier import Classifier
from nsfwd.settings import Settings
from photos import astronaut_jpeg
from prodia_jobs import MODEL, TOKEN, job_files
from servers import serve_app


def test_a_full_sqlite_file_is_store_full(tmp_path: Path) -> None:
    async def fill() -> None:
        async with Store(database_url(tmp_path)) as store, store.database.write() as connection:
            pages = (await connection.execute(text("PRAGMA page_count"))).scalar_one()
            await connection.execute(text(f"PRAGMA max_page_count = {pages}"))
            await connection.execute(text("CREATE TABLE filler (data BLOB)"))
            await connection.execute(text("INSERT INTO filler VALUES (zeroblob(1000000))"))

    with pytest.raises(StoreFullError, match="disk is full") as caught:
        asyncio.run(fill())
    assert caught.value.status == 507


def test_driver_errors_that_mean_not_now_are_store_unavailable() -> None:
    import asyncpg.exceptions as pg

    refused = ConnectionRefusedError(111, "Connect call failed")
    closed = DBAPIError("SELECT 1", None, pg.ConnectionDoesNotExistError("closed mid-operation"))
    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorcode = 5
    for error in (refused, closed, busy):
        found = unavailable(error)
        assert isinstance(found, StoreUnavailableError) and found.status == 503, error
    constraint = DBAPIError("INSERT", None, pg.UniqueViolationError("duplicate key"))
    assert unavailable(constraint) is None
    assert unavailable(ValueError("a bug")) is None


class Outage:
    """Stands in for a store part whose database is out of reach: every method raises."""

    def __getattr__(self, name: str) -> Any:
        async def down(*args: Any, **kwargs: Any) -> Any:
            raise StoreUnavailableError("the job store's database cannot be reached right now")

        return down


@pytest.fixture(scope="module")
def url(classifier: Classifier, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = Settings(model=classifier.name, served_model_name=MODEL, api_keys=[TOKEN],
                      data_dir=tmp_path_factory.mktemp("outage"))  # fmt: skip
    store = Store.from_settings(config)
    engine = Engine(classifier, max_batch_size=2, limits=config.image_limits)
    with serve_app(create_app(engine, config, store)) as url:
        store.predictions = Outage()  # type: ignore[assignment]
        yield url


PRODIA = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}


def test_prodia_routes_answer_503_while_the_store_is_down(url: str) -> None:
    submitted = requests.post(f"{url}/v2/job/async", headers=PRODIA, timeout=30,
                              files=job_files(image=astronaut_jpeg((256, 256))))  # fmt: skip
    assert submitted.status_code == 503, submitted.text
    assert submitted.json()["state"]["current"] == "failed"
    assert "cannot be reached" in submitted.json()["error"]
    read = requests.get(f"{url}/v2/job/async/some-id/job.json", headers=PRODIA, timeout=30)
    assert read.status_code == 503, read.text
    assert "cannot be reached" in read.json()["error"]
    for answer in (submitted, read):
        assert int(answer.headers["Retry-After"]) >= 1


def test_eachlabs_routes_answer_503_while_the_store_is_down(url: str) -> None:
    headers = {"X-API-Key": TOKEN}
    got = requests.get(f"{url}/v1/prediction/some-id", headers=headers, timeout=30)
    assert got.status_code == 503, got.text
    assert got.json()["details"] == "unavailable"
    assert int(got.headers["Retry-After"]) >= 1
