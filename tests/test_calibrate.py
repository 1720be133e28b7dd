"""`nsfwd calibrate`: labelled folders of real photographs, scored by the tiny random EVA-02.

The random model's curves mean nothing; the arithmetic does: every count, precision and recall
must be what `nsfwd classify`'s own scores and verdicts give at the same threshold.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from browser import CHROMIUM_ARGS, chromium_driver
from nsfwd.calibrate import EXPECTED_LAYOUT, Target, choose, find_labelled, operating_points
from nsfwd.calibrate.metrics import counts_at, roc_auc, round_threshold
from nsfwd.cli import main
from nsfwd.verdict import POLICIES
from photos import DATA_DIR

# Photographs that ship with scikit-image, each written as a 256x192 JPEG.
PHOTOS = [
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "camera.png",
    "horse.png",
    "coins.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "brick.png",
    "grass.png",
    "motorcycle_left.png",
]


@dataclass(frozen=True)
class Run:
    """One `nsfwd` command run in this process: exit status and what it printed."""

    status: int
    out: str
    err: str


def nsfwd(*args: str | Path) -> Run:
    """Run the ``nsfwd`` command line in this process, capturing its output."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = main([str(arg) for arg in args])
    return Run(status, out.getvalue(), err.getvalue())


def write_photo(path: Path, name: str) -> None:
    """One of :data:`PHOTOS` at ``path`` as a 256x192 RGB JPEG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(DATA_DIR / name) as image:
        image.convert("RGB").resize((256, 192)).save(path, "JPEG", quality=90)


def labelled_folder(root: Path, classes: dict[str, list[str]]) -> Path:
    """A calibration folder: each class folder (created even when empty) with its photos."""
    for label, names in classes.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for name in names:
            write_photo(root / label / f"{Path(name).stem}.jpg", name)
    return root


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory, timm_checkpoint: Path) -> dict[str, Any]:
    """A safe/unsafe folder with a broken file, calibrated once with --json and --report."""
    root = tmp_path_factory.mktemp("calibrate")
    folder = labelled_folder(root / "labelled", {"safe": PHOTOS[0::2], "unsafe": PHOTOS[1::2]})
    (folder / "unsafe" / "broken.jpg").write_bytes(b"\xff\xd8 this is no JPEG")
    out, report = root / "out.json", root / "report.html"
    run = nsfwd("calibrate", folder, "--model", timm_checkpoint, "--batch-size", "2",
                "--json", out, "--report", report, "--no-progress")  # fmt: skip
    return {"folder": folder, "run": run, "doc": json.loads(out.read_text()), "report": report}


def truth(path: str, folder: Path) -> bool:
    return Path(path).relative_to(folder).parts[0] == "unsafe"


def test_counts_equal_what_classify_gives_at_the_chosen_threshold(
    binary: dict[str, Any], timm_checkpoint: Path
) -> None:
    run, doc, folder = binary["run"], binary["doc"], binary["folder"]
    assert run.status == 0, run.err
    assert doc["layout"] == "safe/unsafe" and doc["flagged"] == "score > threshold"
    assert doc["counts"]["classified"] == {"safe": 6, "unsafe": 6}
    assert set(doc["policies"]) == set(POLICIES)
    by_path = {image["path"]: image for image in doc["images"]}
    for name, result in doc["policies"].items():
        threshold = result["threshold"]
        records = classify_records(folder, timm_checkpoint, name, threshold)
        scored = [r for r in records if "labels" in r]
        assert len(scored) == 12
        tp = sum(r["flagged"] and truth(r["path"], folder) for r in scored)
        fp = sum(r["flagged"] and not truth(r["path"], folder) for r in scored)
        fn = sum(not r["flagged"] and truth(r["path"], folder) for r in scored)
        tn = sum(not r["flagged"] and not truth(r["path"], folder) for r in scored)
        expected = {"true_positives": tp, "false_positives": fp,
                    "false_negatives": fn, "true_negatives": tn}  # fmt: skip
        assert {key: result[key] for key in expected} == expected, name
        assert result["precision"] == pytest.approx(tp / (tp + fp))
        assert result["recall"] == pytest.approx(tp / (tp + fn))
        for record in scored:  # the very scores classify prints
            assert by_path[record["path"]]["scores"][name] == record["score"]
        scores = [r["score"] for r in scored]
        unsafe = [truth(r["path"], folder) for r in scored]
        for point in result["curve"]:  # every point of the curve, counted again
            counted = flagged_counts(scores, unsafe, point["threshold"])
            assert (point["true_positives"], point["false_positives"]) == counted
        assert result["auc"] == pytest.approx(pairwise_auc(scores, unsafe))
        default = result["default"]
        counted = flagged_counts(scores, unsafe, 0.5)
        assert (default["true_positives"], default["false_positives"]) == counted
        assert f"{name}: threshold {threshold!r}" in run.out
        assert f"NSFWD_POLICY={name} NSFWD_THRESHOLD={threshold!r}" in run.out


def classify_records(
    folder: Path, checkpoint: Path, policy: str, threshold: float
) -> list[dict[str, Any]]:
    run = nsfwd("classify", folder, "--model", checkpoint, "--batch-size", "2",
                "--policy", policy, "--threshold", repr(threshold), "--no-progress")  # fmt: skip
    assert run.status == 0, run.err
    return [json.loads(line) for line in run.out.splitlines()]


def flagged_counts(scores: list[float], unsafe: list[bool], threshold: float) -> tuple[int, int]:
    """Unsafe and safe images scoring above ``threshold``."""
    flagged = [u for s, u in zip(scores, unsafe, strict=True) if s > threshold]
    return sum(flagged), len(flagged) - sum(flagged)


def pairwise_auc(scores: list[float], unsafe: list[bool]) -> float:
    """The probability that an unsafe image outscores a safe one, ties counting half."""
    pos = [s for s, u in zip(scores, unsafe, strict=True) if u]
    neg = [s for s, u in zip(scores, unsafe, strict=True) if not u]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_a_bad_file_is_reported_and_skipped(binary: dict[str, Any]) -> None:
    run, doc = binary["run"], binary["doc"]
    assert "skipped unsafe/broken.jpg" in run.err
    [skipped] = doc["skipped"]
    assert skipped["path"].endswith("broken.jpg") and skipped["error"]
    assert doc["counts"]["found"]["unsafe"] == 7
    assert all(not image["path"].endswith("broken.jpg") for image in doc["images"])
    assert "skipped 1 file that could not be classified" in run.out


def test_the_report_opens_in_headless_chromium_with_its_plots(
    binary: dict[str, Any], tmp_path: Path
) -> None:
    sync_playwright = chromium_driver()
    report: Path = binary["report"]
    html = report.read_text()
    assert "http://" not in html and "https://" not in html
    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"),
                                             args=CHROMIUM_ARGS)  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("request", lambda request: requests.append(request.url))
            page.goto(report.as_uri())
            page.wait_for_load_state("load")
            plots = page.eval_on_selector_all(
                "img.plot", "images => images.map(i => [i.dataset.plot, i.naturalWidth])"
            )
            thumbs = page.eval_on_selector_all(
                ".thumbs img", "images => images.map(i => i.naturalWidth)"
            )
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    print(f"report screenshot: {shot}")
    assert problems == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    assert len(plots) == 3 * len(POLICIES)
    assert {kind for kind, _ in plots} == {"precision-recall", "roc", "histogram"}
    assert all(width > 0 for _, width in plots), plots
    assert thumbs and all(width > 0 for width in thumbs)
    assert shot.stat().st_size > 10_000


def test_a_target_that_cannot_be_met_falls_back_to_the_best_f1(
    tmp_path: Path, timm_checkpoint: Path
) -> None:
    # The same photographs on both sides: every threshold flags as many safe images as unsafe.
    names = PHOTOS[:4]
    folder = labelled_folder(tmp_path / "twins", {"safe": names, "unsafe": names})
    out = tmp_path / "out.json"
    run = nsfwd("calibrate", folder, "--model", timm_checkpoint, "--policy", "moderate",
                "--batch-size", "1", "--target-precision", "0.9", "--json", out)  # fmt: skip
    assert run.status == 0, run.err
    result = json.loads(out.read_text())["policies"]["moderate"]
    assert result["target_met"] is False
    assert result["chosen_by"] == "best F1: no threshold reaches precision 0.9"
    assert "no threshold reaches precision 0.9" in run.out
    assert all(point["precision"] == 0.5 for point in result["curve"])
    assert result["auc"] == 0.5
    assert (result["recall"], result["precision"]) == (1.0, 0.5)  # flag all: the best F1


def test_severity_buckets_give_each_policy_its_truth_and_an_empty_one_is_reported(
    tmp_path: Path, timm_checkpoint: Path
) -> None:
    folder = labelled_folder(
        tmp_path / "buckets",
        {"neutral": PHOTOS[:3], "low": PHOTOS[3:5], "medium": PHOTOS[5:7], "high": []},
    )
    out = tmp_path / "out.json"
    run = nsfwd("calibrate", folder, "--model", timm_checkpoint, "--json", out,
                "--target-recall", "0.5")  # fmt: skip
    assert run.status == 0, run.err
    doc = json.loads(out.read_text())
    assert doc["layout"] == "severity"
    assert doc["counts"]["found"] == {"neutral": 3, "low": 2, "medium": 2, "high": 0}
    strict, moderate, lenient = (doc["policies"][name] for name in POLICIES)
    assert "no image strict should flag" in strict["error"]
    assert "strict: cannot be calibrated: no image strict should flag" in run.out
    assert moderate["unsafe_classes"] == ["medium", "high"]
    assert (moderate["positives"], moderate["negatives"]) == (2, 5)
    assert lenient["unsafe_classes"] == ["low", "medium", "high"]
    assert (lenient["positives"], lenient["negatives"]) == (4, 3)
    for result in (moderate, lenient):
        assert result["recall"] >= 0.5 and result["target_met"] is True


def test_an_empty_class_leaves_nothing_to_calibrate(tmp_path: Path, timm_checkpoint: Path) -> None:
    folder = labelled_folder(tmp_path / "half", {"safe": PHOTOS[:3], "unsafe": []})
    run = nsfwd("calibrate", folder, "--model", timm_checkpoint, "--policy", "lenient")
    assert run.status == 1
    assert "lenient: cannot be calibrated: no image lenient should flag" in run.out
    assert "no policy could be calibrated" in run.err


@pytest.mark.parametrize(
    ("classes", "loose", "words"),
    [
        (["cats", "safe"], False, "cannot read a truth from (cats)"),
        (["safe", "high"], False, "mixes Freepik's severity buckets (high) with safe"),
        (["safe", "unsafe"], True, "files outside the class folders (stray.jpg)"),
        ([], False, "has no class folders"),
    ],
    ids=["unknown-folder", "mixed-layouts", "loose-file", "no-folders"],
)
def test_other_layouts_are_refused_with_the_expected_one(
    tmp_path: Path, classes: list[str], loose: bool, words: str
) -> None:
    folder = tmp_path / "labelled"
    folder.mkdir()
    for label in classes:
        write_photo(folder / label / "a.jpg", PHOTOS[0])
    if loose:
        write_photo(folder / "stray.jpg", PHOTOS[1])
    # No model is loaded before the layout is checked: this one does not exist.
    run = nsfwd("calibrate", folder, "--model", tmp_path / "no-model")
    assert run.status == 2
    assert words in run.err and EXPECTED_LAYOUT in run.err


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    run = nsfwd("calibrate", tmp_path / "nowhere", "--model", tmp_path / "no-model")
    assert run.status == 2 and "is not a folder" in run.err


def test_folder_names_are_read_case_insensitively_with_their_aliases(tmp_path: Path) -> None:
    for label in ("SFW", "normal", "NSFW"):
        write_photo(tmp_path / label / "a.jpg", PHOTOS[0])
    labelled = find_labelled(tmp_path)
    assert labelled.layout == "safe/unsafe"
    assert labelled.counts() == {"safe": 2, "unsafe": 1}
    assert labelled.positive_classes("strict") == ("unsafe",)


# --- The arithmetic on made-up scores -----------------------------------------------------------


def test_operating_points_and_auc_match_counting_by_hand() -> None:
    rng = random.Random(16)
    scores = [round(rng.random(), 2) for _ in range(200)]  # two decimals: many ties
    unsafe = [rng.random() < 0.5 * (1 + s) - 0.25 for s in scores]
    points = operating_points(scores, unsafe)
    assert len(points) == len(set(scores))  # no score is 0 here: "flag everything" is a point
    for point in points:
        assert point.lower <= point.threshold < point.upper
        assert point.counts == counts_at(scores, unsafe, point.threshold)
        assert point.counts == counts_at(scores, unsafe, point.lower)
    assert points[-1].counts.fn == points[-1].counts.tn == 0  # the last point flags everything
    assert roc_auc(points) == pytest.approx(pairwise_auc(scores, unsafe))


def test_a_score_of_zero_cannot_be_flagged() -> None:
    points = operating_points([0.0, 0.0, 0.3, 0.8], [False, True, False, True])
    assert [p.counts.tp + p.counts.fp for p in points] == [1, 2]
    assert points[-1].threshold < 0.3


def test_thresholds_are_the_roundest_value_between_two_scores() -> None:
    assert round_threshold(0.3712, 0.4105) == 0.4
    assert round_threshold(0.49, 0.51) == 0.5
    assert round_threshold(0.123456, 0.123457) == 0.123456
    assert round_threshold(0.0, 0.0004) == 0.0


def test_the_choice_follows_the_target() -> None:
    #          flagged from the top: u    u    s    u    s    u    s    s
    scores = [0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    unsafe = [True, True, False, True, False, True, False, False]
    points = operating_points(scores, unsafe)
    precise = choose(points, Target("precision", 0.75))  # 3 of 4 above 0.6: recall 0.75
    assert precise.target_met and precise.point.counts == counts_at(scores, unsafe, 0.65)
    assert 0.6 <= precise.point.threshold < 0.7
    catching = choose(points, Target("recall", 1.0))  # all 4 unsafe: flag down to 0.5
    assert catching.target_met and catching.point.counts.fp == 2
    assert 0.4 <= catching.point.threshold < 0.5
    exact = choose(points, Target("precision", 1.0))
    assert exact.target_met  # the top two are unsafe: precision 1 at recall 0.5
    assert exact.point.counts.tp == 2 and exact.point.counts.fp == 0
    best = choose(points, None)
    assert best.how == "best F1" and best.target_met is None
    assert best.point.counts.f1 == max(p.counts.f1 for p in points)
    too_much = choose(operating_points(scores[2:], unsafe[2:]), Target("precision", 0.9))
    assert too_much.target_met is False and too_much.how.startswith("best F1: no threshold")


def test_targets_out_of_range_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="above 0 and at most 1"):
        Target("recall", 1.5)
    write_photo(tmp_path / "safe" / "a.jpg", PHOTOS[0])
    run = nsfwd("calibrate", tmp_path, "--target-precision", "0", "--model", tmp_path / "none")
    assert run.status == 2 and "above 0 and at most 1" in run.err
