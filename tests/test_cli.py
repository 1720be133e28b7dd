"""`nsfwd classify` and `nsfwd download`, run as a user runs them."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from nsfwd.cli import main
from nsfwd.settings import Settings
from nsfwd.verdict import Policy

NSFWD = [sys.executable, "-m", "nsfwd"]


def _write_images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image = Image.new("RGB", (200 + 10 * i, 180), (40 * i % 256, 90, 200 - 10 * i))
        image.paste((255, 255 - 20 * i % 256, 0), (10, 10, 90 + 5 * i, 80))
        path = folder / f"img{i:02d}.{['jpg', 'png', 'webp'][i % 3]}"
        image.save(path)
        paths.append(path)
    return paths


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NSFWD, *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_classify_a_folder_prints_one_record_per_image_in_order(
    tmp_path: Path, timm_checkpoint: Path
) -> None:
    images = _write_images(tmp_path / "photos" / "nested", 10)
    (tmp_path / "photos" / "notes.txt").write_text("not an image, and not named like one")
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    done = _run(
        "classify", "--model", str(timm_checkpoint), "--batch-size", "4", str(tmp_path / "photos")
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["path"] for r in records] == [str(tmp_path / "photos" / "broken.jpg")] + [
        str(p) for p in images
    ]
    assert "error" in records[0] and "labels" not in records[0]
    for record in records[1:]:
        assert set(record) >= {"path", "labels", "flagged", "policy"}
        assert list(record["labels"]) == ["neutral", "low", "medium", "high"]
        assert sum(record["labels"].values()) == pytest.approx(1.0, abs=1e-5)
        assert record["policy"] == "moderate"
        assert record["flagged"] == Policy("moderate").flagged(record["labels"])
    assert "classifying" in done.stderr  # the progress bar, on stderr


def test_policy_threshold_and_csv(
    tmp_path: Path, timm_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_images(tmp_path, 3)
    code = main(
        [
            "classify",
            "--model",
            str(timm_checkpoint),
            "--format",
            "csv",
            "--policy",
            "lenient",
            "--threshold",
            "0.0",
            str(tmp_path),
        ]
    )
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 3
    assert list(rows[0]) == [
        "path",
        "neutral",
        "low",
        "medium",
        "high",
        "score",
        "flagged",
        "policy",
        "error",
    ]
    for row in rows:
        score = float(row["low"]) + float(row["medium"]) + float(row["high"])
        assert float(row["score"]) == pytest.approx(score, abs=1e-5)
        assert row["flagged"] == "true"  # any mass above 0 is flagged at threshold 0
        assert row["policy"] == "lenient"


def test_policy_and_threshold_default_to_the_settings_and_the_options_win(
    tmp_path: Path,
    timm_checkpoint: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _write_images(tmp_path, 2)
    monkeypatch.setenv("NSFWD_POLICY", "strict")
    monkeypatch.setenv("NSFWD_THRESHOLD", "0.0")

    def verdicts(*options: str) -> set[tuple[str, float, bool]]:
        assert main(["classify", "--model", str(timm_checkpoint), *options, str(tmp_path)]) == 0
        records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        return {(r["policy"], r["threshold"], r["flagged"]) for r in records}

    assert verdicts() == {("strict", 0.0, True)}
    assert verdicts("--threshold", "1") == {("strict", 1.0, False)}
    assert verdicts("--policy", "lenient") == {("lenient", 0.0, True)}


def test_serve_takes_the_policy_and_threshold_its_verdicts_follow() -> None:
    from nsfwd.cli import build_parser

    args = build_parser().parse_args(["serve", "--policy", "lenient", "--threshold", "0.37"])
    assert (args.policy, args.threshold) == ("lenient", 0.37)
    assert Settings(policy="lenient", threshold=0.37).verdict_policy == Policy("lenient", 0.37)
    assert Settings().verdict_policy == Policy("moderate", 0.5)


def test_nothing_classifiable_exits_non_zero(
    tmp_path: Path, timm_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"%PDF-1.7 not an image")
    assert (
        main(["classify", "--model", str(timm_checkpoint), str(bad), str(tmp_path / "missing.jpg")])
        == 1
    )
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in out] == [str(bad), str(tmp_path / "missing.jpg")]
    assert "PDF" in out[0]["error"]
    assert out[1]["error"] == "no such file"
    assert main(["classify", "--model", str(timm_checkpoint), str(tmp_path / "empty-dir-x")]) == 1


def test_bad_options_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["classify", "--threshold", "2", str(tmp_path)]) == 2
    assert "threshold must be between 0 and 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["classify", "--policy", "harsh", str(tmp_path)])


def test_decode_paths_give_the_same_records(
    tmp_path: Path, timm_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "imgs"
    _write_images(folder, 4)  # JPEG, PNG, WebP, JPEG
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    records = {}
    for decode in ("pil", "tensor"):
        argv = ["classify", "--model", str(timm_checkpoint), "--decode", decode, str(folder)]
        assert main(argv) == 0
        records[decode] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    pil, tensor = records["pil"], records["tensor"]
    assert [r["path"] for r in tensor] == [r["path"] for r in pil]
    assert tensor[0] == pil[0] and "error" in tensor[0]  # broken.jpg: the same error record
    for a, b in zip(tensor[1:], pil[1:], strict=True):
        assert a["flagged"] == b["flagged"]
        assert max(abs(a["labels"][k] - b["labels"][k]) for k in b["labels"]) <= 2e-3

    # A preprocessing the tensor path does not reproduce (timm's "border" crop) is refused.
    border = tmp_path / "border"
    shutil.copytree(timm_checkpoint, border)
    config = json.loads((border / "config.json").read_text())
    config["pretrained_cfg"]["crop_mode"] = "border"
    (border / "config.json").write_text(json.dumps(config))
    assert main(["classify", "--model", str(border), "--decode", "tensor", str(folder)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "ResizeKeepRatio" in captured.err and "--decode pil" in captured.err
    from nsfwd.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["classify", "--help"])
    assert "--decode {auto,pil,tensor}" in capsys.readouterr().out


def test_an_unreachable_hub_says_how_to_supply_the_model(tmp_path: Path) -> None:
    _write_images(tmp_path, 1)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    done = _run("classify", str(tmp_path), env=env)
    assert done.returncode == 2
    assert "Freepik/nsfw_image_detector" in done.stderr
    assert "nsfwd download" in done.stderr and "--model DIR" in done.stderr
    done = _run("download", "--to", str(tmp_path / "m"), env=env)
    assert done.returncode == 2
    assert "cannot download 'Freepik/nsfw_image_detector'" in done.stderr


def test_a_hub_id_loads_offline_from_the_cache(tmp_path: Path, wrapper_checkpoint: Path) -> None:
    """The Freepik repo id resolves through HF_HOME's cache, labels from the known-model table."""
    repo = tmp_path / "hf" / "hub" / "models--Freepik--nsfw_image_detector"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(wrapper_checkpoint, snapshot)
    config = json.loads((snapshot / "config.json").read_text())
    for key in ("id2label", "label2id"):
        config.pop(key)
    (snapshot / "config.json").write_text(json.dumps(config))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    _write_images(tmp_path / "imgs", 2)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    done = _run("classify", str(tmp_path / "imgs"), env=env)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [list(r["labels"]) for r in records] == [["neutral", "low", "medium", "high"]] * 2


def test_output_files_and_resume_without_ray(
    tmp_path: Path, timm_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = _write_images(tmp_path / "imgs", 5)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n nope")
    model = ["classify", "--no-progress", "--model", str(timm_checkpoint)]
    assert main([*model, str(tmp_path / "imgs")]) == 0
    stdout = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    every = sorted(r["path"] for r in stdout)

    jsonl, table = tmp_path / "out.jsonl", tmp_path / "out.csv"
    assert main([*model, "--output", str(jsonl), str(tmp_path / "imgs")]) == 0
    assert capsys.readouterr().out == ""
    assert [json.loads(line) for line in jsonl.read_text().splitlines()] == stdout
    assert main([*model, "--output", str(jsonl), str(tmp_path / "imgs")]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*model, "--resume", str(tmp_path / "imgs")]) == 2  # needs --output
    assert main([*model, "--output", str(tmp_path / "out.txt"), str(images[0])]) == 2

    # An interrupted run: two records and half of a third; --resume keeps and completes them.
    jsonl.unlink()
    for output in (jsonl, table):
        assert main([*model, "--output", str(output), *map(str, images[:2])]) == 0
        with output.open("a") as stream:
            stream.write(str(images[2])[:7])
        assert main([*model, "--resume", "--output", str(output), str(tmp_path / "imgs")]) == 0
    assert sorted(json.loads(line)["path"] for line in jsonl.read_text().splitlines()) == every
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    assert sorted(row["path"] for row in rows) == every
    assert next(r for r in rows if r["error"])["path"] == str(tmp_path / "imgs" / "broken.png")
    assert main([*model, "--resume", "--output", str(jsonl), str(tmp_path / "imgs")]) == 0
    assert "every input" in capsys.readouterr().err

    pq = pytest.importorskip("pyarrow.parquet")
    folder = tmp_path / "out.parquet"
    assert main([*model, "--output", str(folder), *map(str, images[:3])]) == 0
    assert main([*model, "--resume", "--output", str(folder), str(tmp_path / "imgs")]) == 0
    parquet = pq.read_table(folder)
    assert parquet.column_names == ["path", "labels", "score", "flagged", "policy", "error"]
    assert sorted(parquet.column("path").to_pylist()) == every
    by_path = {r["path"]: r for r in stdout}
    for row in parquet.to_pylist():
        want = by_path[row["path"]]
        assert row["error"] == want.get("error")
        if row["error"] is None:
            assert row["labels"] == pytest.approx(want["labels"], abs=1e-6)
            assert (row["flagged"], row["policy"]) == (want["flagged"], want["policy"])


def test_ray_without_ray_installed_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from nsfwd.cli import build_parser
    from nsfwd.cli.classify import split_ray_address

    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    _write_images(tmp_path, 1)
    assert main(["classify", "--ray", str(tmp_path)]) == 2
    assert "pip install 'nsfwd[ray]'" in capsys.readouterr().err
    # --ray takes an address only when the word is one; else it is the first input
    for argv, address, paths in (
        (["--ray", "photos/"], "", ["photos/"]),
        (["--ray", "auto", "photos/"], "auto", ["photos/"]),
        (["--ray", "ray://head:10001", "a.jpg"], "ray://head:10001", ["a.jpg"]),
        (["--ray", "10.0.0.5:6379", "s3://b/p/"], "10.0.0.5:6379", ["s3://b/p/"]),
        (["--ray", "s3://b/p/", "x.txt"], "", ["s3://b/p/", "x.txt"]),
    ):
        args = build_parser().parse_args(["classify", *argv])
        split_ray_address(args)
        assert (args.ray, args.paths) == (address, paths)
