"""Several models in one server: which ones the settings and the command line name, what
``nsfwd serve`` loads when none is named, and a real server of two models behind
``--http-workers``, where each HTTP worker reaches each model's engine in the inference process.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import requests

from hosts import jpeg
from nsfwd.cli import build_parser
from nsfwd.cli.options import settings_for
from nsfwd.engine import build as inference
from nsfwd.models import hub
from nsfwd.models.classifier import Classifier
from nsfwd.models.model import Model
from nsfwd.models.names import DEFAULT_MODEL, OPEN_NSFW, ModelNotAvailableError, ModelSpec
from nsfwd.settings import Settings
from prodia_jobs import job_files
from serve_process import nsfwd_serve


@pytest.fixture(autouse=True)
def no_models_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NSFWD_MODEL", "NSFWD_MODELS", "NSFWD_SERVED_MODEL_NAME"):
        monkeypatch.delenv(name, raising=False)


def test_model_specs_come_from_model_then_models(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().model_specs == []
    monkeypatch.setenv("NSFWD_MODELS", "a=./one, open-nsfw")
    assert Settings().model_specs == [ModelSpec("./one", "a"), ModelSpec(OPEN_NSFW)]
    monkeypatch.setenv("NSFWD_MODEL", "acme/first")
    assert Settings().model_specs[0] == ModelSpec("acme/first")
    named = Settings(served_model_name="shown").model_specs
    assert named[0] == ModelSpec("acme/first", "shown") and len(named) == 3


def test_a_repeated_model_flag_replaces_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NSFWD_MODEL", "acme/env")
    monkeypatch.setenv("NSFWD_MODELS", "acme/more")
    args = build_parser().parse_args(["serve", "--model", "x=acme/one", "--model", "open-nsfw"])
    assert settings_for(args).model_specs == [ModelSpec("acme/one", "x"), ModelSpec(OPEN_NSFW)]
    one = build_parser().parse_args(["serve", "--model", "acme/one"])
    assert settings_for(one).model_specs == [ModelSpec("acme/one")]


@pytest.mark.parametrize("text", ["=acme/x", "name=", ""])
def test_a_malformed_model_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="model"):
        ModelSpec.parse(text)


def test_a_folder_whose_name_holds_an_equals_sign_is_taken_whole(tmp_path: Path) -> None:
    folder = tmp_path / "a=b"
    folder.mkdir()
    assert ModelSpec.parse(str(folder)) == ModelSpec(str(folder))


def _hub_with(monkeypatch: pytest.MonkeyPatch, cached: Classifier | None) -> None:
    """The Hub as the server sees it: Freepik's model is ``cached``, or cannot be had."""
    real_load, real_resolve = inference.load_served_model, hub.resolve_model_dir

    def resolve(model: str, revision: str | None = None) -> Path:
        if model != DEFAULT_MODEL:
            return real_resolve(model, revision)
        if cached is None:
            raise ModelNotAvailableError(f"{DEFAULT_MODEL} is not in the local cache.")
        return Path(cached.name)

    def load(options: Any, model: str | None = None) -> Model:
        if (model or options.model) != DEFAULT_MODEL:
            return real_load(options, model)
        resolve(DEFAULT_MODEL)
        assert cached is not None
        return cached

    monkeypatch.setattr(hub, "resolve_model_dir", resolve)
    monkeypatch.setattr(inference, "load_served_model", load)


def test_with_no_model_named_the_default_and_open_nsfw_are_served(
    monkeypatch: pytest.MonkeyPatch, classifier: Classifier
) -> None:
    _hub_with(monkeypatch, classifier)
    served = inference.load_served_classifiers(Settings(served_model_name=DEFAULT_MODEL))
    assert list(served) == [DEFAULT_MODEL, OPEN_NSFW]
    assert served[DEFAULT_MODEL] is classifier


def test_without_the_hub_open_nsfw_is_served_alone_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _hub_with(monkeypatch, None)
    with caplog.at_level(logging.WARNING, logger="nsfwd.models.names"):
        served = inference.load_served_classifiers(Settings())
    assert list(served) == [OPEN_NSFW]
    assert f"nsfwd download {DEFAULT_MODEL}" in caplog.text


def test_a_named_model_that_cannot_load_stops_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    _hub_with(monkeypatch, None)
    with pytest.raises(ModelNotAvailableError):
        inference.load_served_classifiers(Settings(models=[OPEN_NSFW, DEFAULT_MODEL]))


def test_two_models_under_one_name_are_refused() -> None:
    with pytest.raises(ValueError, match="two models are served as 'open-nsfw'"):
        inference.load_served_classifiers(Settings(models=[OPEN_NSFW, OPEN_NSFW]))


def test_http_workers_reach_every_model(
    timm_checkpoint: Path, vit_checkpoint: Path, tmp_path: Path
) -> None:
    args = ["--model", f"eva={timm_checkpoint}", "--model", f"vit={vit_checkpoint}"]
    with nsfwd_serve(
        timm_checkpoint, tmp_path / "data", tmp_path / "serve.log", *args, "--http-workers", "2"
    ) as served:
        listed = requests.get(f"{served.url}/v1/models", timeout=10).json()
        assert [model["id"] for model in listed["data"]] == ["eva", "vit"]
        labels = {}
        for name in ("eva", "vit"):
            answer = requests.post(
                f"{served.url}/v2/job",
                files=job_files(image=jpeg(), model=name),
                headers={"Accept": "application/json"},
                timeout=60,
            )
            assert answer.status_code == 200, answer.text
            labels[name] = list(answer.json()["config"]["labels"])
        health = requests.get(f"{served.url}/healthz", timeout=10).text
    assert labels == {"eva": ["neutral", "low", "medium", "high"], "vit": ["normal", "nsfw"]}
    assert "model: eva\n" in health and "model: vit\n" in health
