"""Processes starting together on one machine (``serve --ray``'s replicas, ``classify --ray``'s
actors) measure the CPU routes once and all run the one chosen; and they find the same data
directory wherever they run."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from nsfwd.models.choice import CHOICES_FILE, Choice, Choices
from nsfwd.models.routes import EXACT, Route
from nsfwd.settings import Settings

FLOAT = Route("openvino", "float32")
ROUTES = [EXACT, FLOAT]


def _start(data_dir: Path, number: int, measured: Path, found: multiprocessing.Queue[str]) -> None:
    """One process's start: measuring takes a while and, left alone, each process would
    choose differently (as a noisy measurement might)."""

    def measure() -> Choice:
        with measured.open("a") as log:
            log.write(f"{number}\n")
        time.sleep(0.5)
        return Choice(ROUTES[number % 2], f"measured by {number}")

    choice = Choices(data_dir).kept_or_measured("model/machine", ROUTES, measure, {})
    found.put(f"{choice.route}|{choice.reason}")


def test_processes_starting_together_measure_once_and_run_one_choice(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    found: multiprocessing.Queue[str] = context.Queue()
    measured = tmp_path / "measured"
    data_dir = tmp_path / "data"
    starts = [
        context.Process(target=_start, args=(data_dir, number, measured, found))
        for number in range(3)
    ]
    for start in starts:
        start.start()
    for start in starts:
        start.join(30)
        assert start.exitcode == 0
    assert len(measured.read_text().split()) == 1, "one process measured"
    assert len({found.get(timeout=5) for _ in starts}) == 1, "all run the route it chose"
    assert (data_dir / CHOICES_FILE).is_file()


def test_an_unwritable_data_directory_measures_without_keeping(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    choice = Choice(FLOAT, "measured")
    kept = Choices(blocked / "data").kept_or_measured("k", ROUTES, lambda: choice, {})
    assert kept is choice


def test_portable_settings_name_their_folders_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    settings = Settings(
        data_dir=Path("data"),
        model="model",
        models=["small=model", "open-nsfw"],
        calibration_dir=Path("~/photos"),
    ).portable()
    assert settings.data_dir == tmp_path / "data"
    assert settings.model == str(tmp_path / "model")
    assert settings.models == [f"small={tmp_path / 'model'}", "open-nsfw"]
    assert settings.calibration_dir == Path.home() / "photos"
    assert settings.compile_cache_dir is None or settings.compile_cache_dir.is_absolute()
    assert Settings(model="Freepik/nsfw_image_detector").portable().model == (
        "Freepik/nsfw_image_detector"
    )
