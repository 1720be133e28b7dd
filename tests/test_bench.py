"""`nsfwd bench` end to end on a tiny architecture: every suite runs and reports sane figures."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from nsfwd.bench.images import folder_images, make_jpegs
from nsfwd.bench.loadgen import percentile
from nsfwd.bench.suites import median_run
from nsfwd.cli import build_parser, main
from nsfwd.models.agreement import compare

TINY = ["--arch", "eva02_tiny_patch14_224", "--image-size", "320x240"]


def bench_report(tmp_path: Path, *args: str) -> dict[str, Any]:
    """`nsfwd bench` on the tiny EVA-02 with ``args``; the JSON report of the run, which must
    succeed."""
    out = tmp_path / "bench.json"
    assert main(["bench", *TINY, *args, "--json", str(out)]) == 0
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def test_bench_runs_every_suite_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # fp32 on every CPU (the default is bf16 where it is native), so parity measures the
    # decode path alone
    report = bench_report(
        tmp_path, "--dtype", "float32", "--batch-sizes", "1,2", "--images", "6",
        "--concurrency", "4", "--requests", "12", "--load-processes", "2",
    )  # fmt: skip
    table = capsys.readouterr().out
    results = report["results"]
    assert [row["batch_size"] for row in results["model"]] == [1, 2]
    assert all(row["images_per_s"] > 0 for row in results["model"])
    [pipeline] = results["pipeline"]
    assert pipeline["images"] == 6
    assert pipeline["failed"] == 0
    # On the CPU, auto decodes with the tensor path: parity holds it to Pillow's on 14 photos.
    [parity] = results["parity"]
    assert parity["tested"]["decode"] == "tensor"
    assert parity["exact"]["decode"] == "pil"
    assert parity["images"] == 14
    assert 0 < parity["max_abs_dp"] < 2e-3
    assert parity["moderate_decisions_changed"] == 0
    server = results["server"]
    assert server["concurrent"]["statuses"] == {"200": 12}  # from both load processes
    assert server["concurrent"]["load_processes"] == 2
    assert server["sequential"]["statuses"]["200"] == server["sequential"]["requests"]
    assert server["concurrent"]["mean_batch_size"] >= 1.0
    assert server["concurrent"]["p50_ms"] <= server["concurrent"]["p99_ms"]
    assert report["machine"]["device"] == "cpu"
    features = report["machine"]["cpu_features"]
    assert features.split("+")[0] == torch.backends.cpu.get_cpu_capability()
    assert f"({features})" in table.splitlines()[0]
    for row in ("pipeline", "parity", "server", "mean batch"):
        assert row in table


def test_the_pipeline_suite_measures_both_decode_paths_in_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = bench_report(
        tmp_path, "--suites", "pipeline", "--images", "4", "--batch-size", "2",
        "--decode", "pil,tensor",
    )  # fmt: skip
    assert report["config"]["decode"] == ["pil", "tensor"]
    runs = report["results"]["pipeline"]
    assert [run["decode"] for run in runs] == ["pil", "tensor"]
    assert all(run["failed"] == 0 for run in runs)
    table = capsys.readouterr().out
    assert "decode pil" in table and "decode tensor" in table


def test_bf16_parity_is_measured_and_larger_than_the_tensor_paths(tmp_path: Path) -> None:
    report = bench_report(tmp_path, "--suites", "parity", "--dtype", "bfloat16", "--decode", "pil")
    [parity] = report["results"]["parity"]
    assert parity["tested"] == {
        "device": "cpu", "runtime": "torch", "dtype": "bfloat16", "compile": "off",
        "decode": "pil",
    }  # fmt: skip
    assert 1e-4 < parity["max_abs_dp"] < 0.1  # bf16 rounding shows, but stays small
    assert set(parity["max_abs_dp_per_label"]) == {"neutral", "low", "medium", "high"}


def test_the_exact_mode_has_no_parity_to_measure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["bench", *TINY, "--suites", "parity", "--decode", "pil", "--device", "cpu",
         "--dtype", "float32"]
    )  # fmt: skip
    assert code == 0
    assert "parity    not run: the mode under test is the exact mode" in capsys.readouterr().out


def test_a_reference_that_cannot_run_keeps_the_other_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Freepik's package hard-codes a 448 px input; the tiny EVA-02 takes 224.
    results = bench_report(
        tmp_path, "--suites", "pipeline", "--images", "2", "--decode", "pil",
        "--compare-reference", "--reference-dtypes", "float32", "--rounds", "2",
        "--routes", "none",
    )["results"]  # fmt: skip
    assert results["pipeline"][0]["failed"] == 0
    assert len(results["pipeline"][0]["rounds_s_per_image"]) == 2
    assert results["reference"] == []
    assert "doesn't match model" in results["reference_error"]
    printed, progress = capsys.readouterr()
    assert "reference failed: AssertionError" in printed
    assert progress.count("reference: Freepik's package") == 1, "not tried again each round"


def test_rounds_alternate_and_report_each_paths_median(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = bench_report(
        tmp_path, "--suites", "pipeline", "--images", "2", "--batch-size", "2",
        "--decode", "pil,tensor", "--rounds", "3",
    )  # fmt: skip
    printed, progress = capsys.readouterr()
    order = [line.split("decode ")[1] for line in progress.splitlines() if "round " in line]
    assert order == [
        "pil (round 1 of 3) ...", "tensor (round 1 of 3) ...", "pil (round 2 of 3) ...",
        "tensor (round 2 of 3) ...", "pil (round 3 of 3) ...", "tensor (round 3 of 3) ...",
    ]  # fmt: skip
    for run in report["results"]["pipeline"]:
        rounds = run["rounds_s_per_image"]
        assert len(rounds) == 3
        assert run["s_per_image"] == sorted(rounds)[1]
    assert printed.count("(median of 3 rounds)") == 2


def test_the_median_run_of_an_even_count_is_the_slower_middle_one() -> None:
    runs = [{"seconds": t, "s_per_image": t / 2} for t in (4.0, 1.0, 3.0, 2.0)]
    assert median_run(runs) == {
        "seconds": 3.0, "s_per_image": 1.5, "rounds_s_per_image": [2.0, 0.5, 1.5, 1.0]
    }  # fmt: skip


def test_compare_reports_decisions_that_change_with_both_scores() -> None:
    exact = {
        "a.jpg": {"neutral": 0.9, "low": 0.05, "medium": 0.03, "high": 0.02},
        "b.jpg": {"neutral": 0.2, "low": 0.2, "medium": 0.3, "high": 0.3},
    }
    tested = {
        "a.jpg": {"neutral": 0.9, "low": 0.05, "medium": 0.03, "high": 0.02},
        "b.jpg": {"neutral": 0.3, "low": 0.3, "medium": 0.2, "high": 0.2},
    }
    found = compare(exact, tested)
    assert found["max_abs_dp"] == pytest.approx(0.1)
    assert found["moderate_decisions_changed"] == 1
    [changed] = found["changed"]
    assert changed == {"image": "b.jpg", "exact": pytest.approx(0.6), "tested": pytest.approx(0.4)}
    assert found["mean_abs_dp"] == pytest.approx(0.4 / 8)
    assert found["exact_scores"] == {"min": pytest.approx(0.05), "max": pytest.approx(0.6)}
    assert found["closest_to_threshold"] == pytest.approx(0.1)


def test_percentiles_interpolate_as_numpy_does() -> None:
    values = [0.3, 0.1, 0.9, 0.4, 0.5, 0.2, 0.8]
    for q in (0, 50, 95, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert math.isnan(percentile([], 50))


def test_generated_jpegs_are_photo_sized_and_reproducible(tmp_path: Path) -> None:
    first = make_jpegs(tmp_path / "a", 3, (1024, 768))
    again = make_jpegs(tmp_path / "b", 3, (1024, 768))
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert len({p.read_bytes() for p in first}) == 3
    for path in first:
        assert 100_000 < path.stat().st_size < 200_000  # like a typical photo upload
        assert Image.open(path).size == (1024, 768)


def test_an_images_folder_is_repeated_up_to_the_count(tmp_path: Path) -> None:
    made = make_jpegs(tmp_path / "mine", 2, (160, 160))
    assert folder_images(tmp_path / "mine", 5) == [*made, *made, made[0]]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        folder_images(tmp_path / "empty", 1)
    with pytest.raises(ValueError, match="not a folder"):
        folder_images(tmp_path / "missing", 1)


def test_bench_refuses_bad_arguments_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--suites", "model,speed"]) == 2
    assert "unknown suites ['speed']" in capsys.readouterr().err
    assert main(["bench", "--image-size", "1024"]) == 2
    assert "WIDTHxHEIGHT" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--decode", "pil,fast"])
    assert "comma-separated list of auto, pil, tensor" in capsys.readouterr().err
