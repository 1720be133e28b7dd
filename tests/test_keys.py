"""`nsfwd keys create|list|revoke`: keys in the job store, only their hashes kept, working
against every API (Prodia and Eachlabs) until revoked; and the one rule deciding who may call."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from eachlabs_calls import (
    KEY,
    SERVED,
    assert_error,
    create,
    created_id,
    eachlabs_server,
    poll,
)
from hosts import Host, jpeg
from nsfwd.api.auth import AuthenticationError, KeyRing
from nsfwd.cli import main
from nsfwd.jobs import Store
from nsfwd.jobs.database import DATABASE_FILE, database_url
from nsfwd.jobs.keys import static_key_ref
from nsfwd.models.classifier import Classifier
from nsfwd.settings import Settings
from photos import astronaut_jpeg
from prodia_jobs import job_files
from servers import serve_app

NSFWD = Path(sys.executable).with_name("nsfwd")


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data folder the CLI (NSFWD_DATA_DIR) and the test server share."""
    folder = tmp_path / "data"
    monkeypatch.setenv("NSFWD_DATA_DIR", str(folder))
    monkeypatch.delenv("NSFWD_DATABASE_URL", raising=False)
    return folder


def prodia_job() -> list[tuple[str, tuple[str, Any, str]]]:
    """A Prodia img2label job (the guide's multipart files) for the served model."""
    return job_files(image=astronaut_jpeg(), model=SERVED)


def keys(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `nsfwd keys ARGS` in this process; its exit status, stdout and stderr."""
    capsys.readouterr()
    status = main(["keys", *args])
    out, err = capsys.readouterr()
    return status, out, err


def listed(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    status, out, _ = keys(capsys, "list", "--json")
    assert status == 0
    rows: list[dict[str, object]] = json.loads(out)
    return rows


def database_text(data_dir: Path) -> str:
    """Every value in every table of the SQLite store, as text."""
    with sqlite3.connect(data_dir / DATABASE_FILE) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return "\n".join(
            repr(row) for table in tables for row in db.execute(f'SELECT * FROM "{table}"')
        )


def test_keys_are_created_listed_and_revoked(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = keys(capsys, "create", "alice")
    assert status == 0
    alice = out.strip()
    assert out == alice + "\n" and alice.startswith("nsfwd_") and len(alice) > 40
    assert "shown only this once" in err and alice not in err

    status, out, _ = keys(
        capsys, "create", "bob", "--creates-per-minute", "5", "--max-in-flight", "2"
    )
    bob = out.strip()
    assert status == 0 and bob != alice

    rows = listed(capsys)
    assert [row["name"] for row in rows] == ["alice", "bob"]
    assert rows[0]["prefix"] == alice[:12] and rows[1]["prefix"] == bob[:12]
    assert (rows[0]["creates_per_minute"], rows[0]["max_in_flight"]) == (100, 10)
    assert (rows[1]["creates_per_minute"], rows[1]["max_in_flight"]) == (5, 2)
    assert rows[0]["revoked"] is None and rows[0]["created"]

    status, table, _ = keys(capsys, "list")
    assert status == 0
    header, *lines = table.splitlines()
    assert header.split() == ["ID", "NAME", "PREFIX", "CREATES/MIN", "IN", "FLIGHT", "POLICY",
                              "THRESHOLD", "INTERVAL", "MIN", "FRAMES", "ADMIN", "CREATED",
                              "REVOKED"]  # fmt: skip
    assert len(lines) == 2 and str(rows[1]["id"]) in lines[1] and " 5 " in lines[1]
    for key in (alice, bob):
        assert key not in table

    # Only hashes are stored: neither key appears anywhere in the database.
    stored = database_text(data_dir)
    for key in (alice, bob):
        assert key not in stored
        assert hashlib.sha256(key.encode()).hexdigest() in stored

    status, out, _ = keys(capsys, "revoke", str(rows[0]["prefix"]))
    assert status == 0 and "revoked key" in out and str(rows[0]["id"]) in out
    status, out, _ = keys(capsys, "revoke", str(rows[1]["id"]))
    assert status == 0
    assert all(row["revoked"] for row in listed(capsys))

    status, _, err = keys(capsys, "revoke", "nsfwd_nothing")
    assert status == 1 and "no key" in err and "nsfwd keys list" in err


def test_limits_default_to_the_settings_and_are_checked(
    data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NSFWD_KEY_CREATES_PER_MINUTE", "7")
    monkeypatch.setenv("NSFWD_KEY_MAX_IN_FLIGHT", "3")
    assert keys(capsys, "create", "defaults")[0] == 0
    [row] = listed(capsys)
    assert (row["creates_per_minute"], row["max_in_flight"]) == (7, 3)
    with pytest.raises(SystemExit) as refused:
        main(["keys", "create", "zero", "--max-in-flight", "0"])
    assert refused.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_a_key_gets_its_own_policy_and_threshold(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = keys(capsys, "create", "strict", "--policy", "strict", "--threshold", "0.37")
    assert status == 0 and "strict at 0.37" in err
    status, _, err = keys(capsys, "create", "lower", "--threshold", "0.2")
    assert status == 0 and "the server's policy at 0.2" in err
    status, _, err = keys(capsys, "create", "plain")
    assert status == 0 and "the server's policy and threshold" in err

    rows = listed(capsys)
    assert [(row["policy"], row["threshold"]) for row in rows] == [
        ("strict", 0.37),
        (None, 0.2),
        (None, None),
    ]
    status, table, err = keys(capsys, "list")
    assert status == 0
    header, *lines = table.splitlines()
    policy, threshold = header.index("POLICY"), header.index("THRESHOLD")
    assert [(line[policy:].split()[0], line[threshold:].split()[0]) for line in lines] == [
        ("strict", "0.37"),
        ("-", "0.2"),
        ("-", "-"),
    ]
    assert "-: the server's" in err and "NSFWD_POLICY" in err

    for bad in ("1.5", "-0.1", "nan"):
        status, out, err = keys(capsys, "create", "bad", "--threshold", bad)
        assert status == 2 and out == "" and "threshold must be between 0 and 1" in err
    with pytest.raises(SystemExit) as refused:
        main(["keys", "create", "bad", "--policy", "loose"])
    assert refused.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert len(listed(capsys)) == 3


def test_a_key_gets_its_own_video_sampling(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, _ = keys(capsys, "create", "dense", "--interval", "0.5", "--min-frames", "3")
    assert status == 0
    (row,) = listed(capsys)
    assert (row["interval"], row["min_frames"]) == (0.5, 3)
    for bad in (["--interval", "0"], ["--interval", "inf"], ["--min-frames", "0"]):
        with pytest.raises(SystemExit) as refused:
            main(["keys", "create", "bad", *bad])
        assert refused.value.code == 2
    assert len(listed(capsys)) == 1


def test_a_keys_own_threshold_decides_its_eachlabs_output(
    data_dir: Path, classifier: Classifier, capsys: pytest.CaptureFixture[str]
) -> None:
    """`nsfwd keys create --policy strict --threshold 0` flags what the server's setting (here
    strict at 1: nothing is flagged) calls normal."""
    host = Host()
    host.photo = jpeg(seed=1)
    with (
        serve_app(host.app, host="127.0.0.2", timeout_graceful_shutdown=1) as base,
        eachlabs_server(classifier, data_dir, policy="strict", threshold=1.0) as (url, _),
    ):
        status, out, _ = keys(capsys, "create", "strict", "--policy", "strict", "--threshold", "0")
        assert status == 0
        key = out.strip()
        for presented, output in ((key, "nsfw"), (KEY, "normal")):
            doc = poll(url, created_id(create(url, f"{base}/photo.jpg", key=presented)), presented)
            assert (doc["status"], doc["output"]) == ("success", output), doc


def test_a_created_key_works_against_the_api_until_revoked(
    data_dir: Path,
    classifier: Classifier,
    capsys: pytest.CaptureFixture[str],
) -> None:
    host = Host()
    host.photo = jpeg(seed=1)
    with (
        serve_app(host.app, host="127.0.0.2", timeout_graceful_shutdown=1) as base,
        eachlabs_server(classifier, data_dir) as (url, _),
    ):
        # The installed command, as an operator runs it, beside the running server.
        env = os.environ | {"NSFWD_DATA_DIR": str(data_dir)}
        made = subprocess.run(
            [str(NSFWD), "keys", "create", "app", "--creates-per-minute", "2"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=True,
        )
        key = made.stdout.strip()
        prediction_id = created_id(create(url, f"{base}/photo.jpg", key=key))
        assert poll(url, prediction_id, key=key)["status"] == "success"
        created_id(create(url, f"{base}/photo.jpg", key=key))
        assert_error(create(url, f"{base}/photo.jpg", key=key), 429, "rate_limited")

        [row] = listed(capsys)
        assert keys(capsys, "revoke", str(row["id"]))[0] == 0
        assert_error(create(url, f"{base}/photo.jpg", key=key), 401, "invalid_api_key")
        res = requests.get(
            f"{url}/v1/prediction/{prediction_id}", headers={"X-API-Key": key}, timeout=10
        )
        assert_error(res, 401, "invalid_api_key")


def test_one_set_of_keys_and_one_open_mode_rule_for_every_protocol(
    data_dir: Path, classifier: Classifier, capsys: pytest.CaptureFixture[str]
) -> None:
    """No static key and no key ever made: Prodia (sync and async) and Eachlabs all need no key.
    Once `nsfwd keys create` makes one, all of them need a key, and that key works on each;
    revoking it does not reopen any of them."""
    ping: list[tuple[str, tuple[str, str, str]]] = [
        ("job", ("job.json", json.dumps({"type": "inference.ping.v1"}), "application/json"))
    ]

    def bearer(key: str | None) -> dict[str, str]:
        return {} if key is None else {"Authorization": f"Bearer {key}"}

    def calls(url: str, key: str | None, job_id: str) -> dict[str, requests.Response]:
        """One call to each protocol's routes, with ``key`` (or none)."""
        return {
            "sync": requests.post(
                f"{url}/v2/job", headers=bearer(key), files=prodia_job(), timeout=30
            ),
            "ping": requests.post(f"{url}/v2/job", headers=bearer(key), files=ping, timeout=30),
            "async": requests.post(
                f"{url}/v2/job/async", headers=bearer(key), files=prodia_job(), timeout=30
            ),
            "async-get": requests.get(
                f"{url}/v2/job/async/{job_id}/job.state.current", headers=bearer(key), timeout=10
            ),
            "eachlabs": requests.get(
                f"{url}/v1/prediction/{uuid.uuid4()}",
                headers={} if key is None else {"X-API-Key": key},
                timeout=10,
            ),
        }

    def assert_refused(answers: dict[str, requests.Response], message: str) -> None:
        for name, res in answers.items():
            if name == "eachlabs":
                assert_error(res, 401, "invalid_api_key", message.replace("token", "key"))
            else:
                assert res.status_code == 401, (name, res.text)
                assert res.headers["www-authenticate"].startswith("Bearer"), name
                assert message in res.text, (name, res.text)

    with eachlabs_server(classifier, data_dir, api_keys=[]) as (url, _):
        opened = requests.post(f"{url}/v2/job/async", files=prodia_job(), timeout=30)
        assert opened.status_code == 201, opened.text
        job_id = opened.json()["id"]
        answers = calls(url, None, job_id)
        assert [answers[name].status_code for name in answers] == [200, 200, 201, 200, 404]

        status, out, _ = keys(capsys, "create", "everywhere")
        assert status == 0
        key = out.strip()
        missing = calls(url, None, job_id)
        assert_refused(missing, "missing API token")
        assert "nsfwd keys create" in missing["sync"].text
        assert "nsfwd keys create" in missing["eachlabs"].json()["message"]
        assert_refused(calls(url, "nsfwd_wrong", job_id), "invalid API token")

        answers = calls(url, key, job_id)
        # The job made while the API was open belongs to no key: 404 to this one.
        assert [answers[name].status_code for name in answers] == [200, 200, 201, 404, 404]
        own = answers["async"].json()["id"]
        assert requests.get(
            f"{url}/v2/job/async/{own}/job.json", headers=bearer(key), timeout=10
        ).ok

        assert keys(capsys, "revoke", key[:12])[0] == 0
        assert_refused(calls(url, key, own), "invalid API token")
        assert_refused(calls(url, None, own), "missing API token")  # not reopened


def test_the_key_ring_without_a_store_takes_static_keys_only() -> None:
    async def main() -> None:
        ring = KeyRing(Settings(api_keys=["static-one-0123456"]))
        caller = await ring.identify(" static-one-0123456 ")
        assert caller is not None and caller.ref == static_key_ref("static-one-0123456")
        assert caller.limits.creates_per_minute == ring.static_limits.creates_per_minute
        for presented, missing in ((None, True), ("", True), ("static-on", False)):
            with pytest.raises(AuthenticationError) as refused:
                await ring.identify(presented)
            assert refused.value.missing is missing
        assert "nsfwd keys create" not in refused.value.sources
        assert await KeyRing(Settings(api_keys=[])).identify("anything") is None  # open

    asyncio.run(main())


def test_the_key_ring_asks_the_store_until_a_key_exists(tmp_path: Path) -> None:
    async def main() -> None:
        async with Store(database_url(tmp_path)) as store:
            ring = KeyRing(Settings(api_keys=[]), store)
            assert not await ring.required() and await ring.identify(None) is None
            plaintext, record = await store.keys.create("first", max_in_flight=3)
            assert await ring.required()
            caller = await ring.identify(plaintext)
            assert caller is not None and caller.ref == record.id
            assert caller.limits.max_in_flight == 3
            await store.keys.revoke(record.id)
            assert await KeyRing(Settings(api_keys=[]), store).required()  # a fresh ring too
            for presented in (None, plaintext):
                with pytest.raises(AuthenticationError):
                    await ring.identify(presented)

    asyncio.run(main())
