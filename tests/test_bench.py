"""`nsfwd bench` end to end on a tiny architecture: every suite runs and reports sane figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nsfwd.cli import main


def test_bench_runs_every_suite_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    code = main([
        "bench", "--arch", "eva02_tiny_patch14_224", "--batch-sizes", "1,2", "--images", "6",
        "--image-size", "320x240", "--concurrency", "4", "--requests", "12", "--json", str(out),
    ])  # fmt: skip
    assert code == 0
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    results = report["results"]
    assert [row["batch_size"] for row in results["model"]] == [1, 2]
    assert all(row["images_per_s"] > 0 for row in results["model"])
    assert results["pipeline"]["images"] == 6
    assert results["pipeline"]["failed"] == 0
    server = results["server"]
    assert server["concurrent"]["statuses"] == {"200": 12}
    assert server["sequential"]["statuses"]["200"] == server["sequential"]["requests"]
    assert server["concurrent"]["mean_batch_size"] >= 1.0
    assert server["concurrent"]["p50_ms"] <= server["concurrent"]["p99_ms"]
    assert report["machine"]["device"] == "cpu"
    assert "pipeline" in table and "server" in table and "mean batch" in table


@pytest.mark.parametrize("decode", ["pil", "tensor"])
def test_the_pipeline_suite_measures_either_decode_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], decode: str
) -> None:
    out = tmp_path / "bench.json"
    code = main([
        "bench", "--arch", "eva02_tiny_patch14_224", "--suites", "pipeline", "--images", "4",
        "--image-size", "320x240", "--batch-size", "2", "--decode", decode, "--json", str(out),
    ])  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert report["config"]["decode"] == decode
    assert report["results"]["pipeline"]["decode"] == decode
    assert report["results"]["pipeline"]["failed"] == 0
    assert f"decode {decode}" in capsys.readouterr().out
