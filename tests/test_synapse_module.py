"""The Synapse module's own logic, without Synapse: its configuration, how it reads nsfwd's
answers, and that it imports nothing Synapse's environment lacks. tests/test_synapse.py runs it
inside a real Synapse."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nsfwd.integrations.synapse import ModeratorConfig, parse_config, read_answer


def test_the_configuration_is_checked_and_builds_the_validation_url() -> None:
    config = parse_config({"url": "http://nsfwd:8000/", "token": " k ", "policy": "strict",
                           "threshold": 0.7, "timeout_s": 3, "fail_open": True})  # fmt: skip
    assert config == ModeratorConfig("http://nsfwd:8000/", "k", "strict", 0.7, None, 3.0, True)
    assert config.endpoint == "http://nsfwd:8000/v1/validate?policy=strict&threshold=0.7"
    plain = parse_config({"url": "https://mod.example"})
    assert (plain.endpoint, plain.timeout_s, plain.fail_open) == (
        "https://mod.example/v1/validate", 10.0, False)  # fmt: skip
    for bad, message in (
        ({}, "url must be"),
        ({"url": "ftp://x"}, "url must be"),
        ({"url": "http://x", "policy": "harsh"}, "policy must be"),
        ({"url": "http://x", "timeout_s": 0}, "timeout_s must be"),
        ({"url": "http://x", "fail_open": "yes"}, "fail_open must be"),
        ({"url": "http://x", "threshold": 2}, "threshold must be"),
        ({"url": "http://x", "tokn": "k"}, "unknown option"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_config(bad)


def test_nsfwds_answers_become_store_refuse_or_cannot_tell() -> None:
    assert read_answer(200, b'{"valid": true}').store is True
    flagged = read_answer(422, b'{"valid": false, "reason": "flagged", "message": "matched"}')
    assert (flagged.store, flagged.why) == (False, "matched")
    assert read_answer(415, b'{"reason": "unsupported", "message": "a PDF"}').store is True
    for status, body in (
        (400, b'{"reason": "invalid"}'),
        (401, b'{"reason": "unauthorized"}'),
        (429, b"{}"),
        (503, b"<html>"),
        (422, b'{"reason": "other"}'),
    ):
        assert read_answer(status, body).store is None, status  # fmt: skip


def test_the_module_imports_nothing_synapse_lacks() -> None:
    code = (
        "import sys, nsfwd.integrations.synapse\n"
        "heavy = {'torch', 'fastapi', 'PIL', 'numpy', 'starlette', 'pydantic', 'sqlalchemy'}\n"
        "assert not heavy & set(sys.modules), heavy & set(sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
