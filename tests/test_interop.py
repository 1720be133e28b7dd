"""The official Prodia npm client (prodia@1.6.0, ``prodia/v2``), unchanged, against a real server.

``tests/interop/run-job.js`` runs one job through the client and prints what its caller sees;
``make install`` installs the client (``npm ci`` in tests/interop).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from gates import gated_server
from nsfwd.models.classifier import Classifier
from photos import ASTRONAUT, astronaut_jpeg
from prodia_jobs import LABELS, MODEL, TOKEN, guide_session, job_files
from servers import metric
from waiting import wait_for

INTEROP = Path(__file__).parent / "interop"
CLIENT_VERSION = "1.6.0"
V1 = "inference.vit.img2label.v1"
V2 = "inference.vit.img2label.v2"


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, with the pinned client installed beside the driver script."""
    binary = shutil.which("node") or "/usr/bin/node"
    if not Path(binary).exists():
        pytest.fail("node (>= 18) is not installed; the interop tests need it")
    manifest = INTEROP / "node_modules" / "prodia" / "package.json"
    if not manifest.exists():
        pytest.fail(f"the prodia npm client is not installed in {INTEROP}: run `make install`")
    version = json.loads(manifest.read_text())["version"]
    if version != CLIENT_VERSION:
        pytest.fail(
            f"prodia {version} is installed, the tests pin {CLIENT_VERSION}: `make install`"
        )
    return binary


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real photograph as a JPEG file for the client to upload."""
    path = tmp_path_factory.mktemp("interop") / "astronaut.jpg"
    path.write_bytes(astronaut_jpeg())
    return path


def run_job(node: str, base_url: str, job: dict[str, Any], **options: Any) -> dict[str, Any]:
    """Run ``job`` through the npm client; its result or the error it threw."""
    request = {"baseUrl": f"{base_url}/v2", "token": TOKEN, "job": job, **options}
    done = subprocess.run(
        [node, str(INTEROP / "run-job.js"), json.dumps(request)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=INTEROP,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def labels_job(job_type: str = V1, model: str = MODEL) -> dict[str, Any]:
    return {"type": job_type, "config": {"model": model}}


def test_v1_labels_arrive_in_the_job(node: str, server_url: str, image_file: Path) -> None:
    result = run_job(node, server_url, labels_job(), inputs=[str(image_file)])
    assert result["ok"], result
    job = result["job"]
    assert job["state"] == {"current": "completed"}
    assert list(job["config"]["labels"]) == LABELS
    assert sum(job["config"]["labels"].values()) == pytest.approx(1.0, abs=1e-5)
    direct = guide_session().post(f"{server_url}/v2/job", files=job_files(image=astronaut_jpeg()))
    assert job["config"]["labels"] == direct.json()["config"]["labels"]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("arraybuffer", ("image.jpg", "image/jpeg")),  # the guide's way: named by the client
        ("uint8array", ("image.jpg", "image/jpeg")),
        ("blob", ("image.jpg", "image/png")),
        ("file", ("astronaut.jpg", "image/png")),  # a File, which the client appends twice
    ],
)
def test_v2_outputs_are_the_labels_then_the_image_byte_for_byte(
    node: str, server_url: str, image_file: Path, kind: str, expected: tuple[str, str]
) -> None:
    result = run_job(
        node,
        server_url,
        labels_job(V2),
        inputs=[str(image_file)],
        inputKind=kind,
        accept="multipart/form-data",
    )
    assert result["ok"], result
    labels, image = result["outputs"]
    assert (labels["name"], labels["type"]) == ("labels.json", "application/json")
    assert json.loads(base64.b64decode(labels["base64"])) == result["job"]["config"]["labels"]
    assert list(result["job"]["config"]["labels"]) == LABELS
    assert (image["name"], image["type"]) == expected
    assert base64.b64decode(image["base64"]) == image_file.read_bytes()


def test_ping_checks_the_token(node: str, server_url: str) -> None:
    result = run_job(node, server_url, {"type": "inference.ping.v1"})
    assert result["ok"], result
    assert result["job"]["state"] == {"current": "completed"}


def test_a_bad_token_gives_a_clear_error(node: str, server_url: str, image_file: Path) -> None:
    result = run_job(node, server_url, labels_job(), inputs=[str(image_file)], token="wrong")
    assert not result["ok"]
    assert result["error"] == "ProdiaBadResponseError"
    assert result["message"].startswith("401 invalid API token")


def test_an_unknown_model_throws_the_server_message(
    node: str, server_url: str, image_file: Path
) -> None:
    result = run_job(node, server_url, labels_job(model="acme/nope"), inputs=[str(image_file)])
    assert not result["ok"]
    assert result["error"] == "ProdiaUserError"
    assert result["message"].startswith(
        'unknown model "acme/nope": this server runs "Freepik/nsfw_image_detector"'
    )
    assert "(id: " in result["message"]


def test_a_bad_image_throws_the_server_message(node: str, server_url: str, tmp_path: Path) -> None:
    small = tmp_path / "small.png"
    Image.open(ASTRONAUT).resize((100, 100)).save(small)
    result = run_job(node, server_url, labels_job(V2), inputs=[str(small)])
    assert not result["ok"]
    assert result["error"] == "ProdiaUserError"
    assert "input 'image.jpg'" in result["message"]
    assert "100 px is below the minimum" in result["message"]


def test_the_client_waits_out_a_429_and_succeeds(
    node: str, classifier: Classifier, image_file: Path
) -> None:
    with gated_server(classifier, max_queue=1) as (url, gated, _):
        holder = threading.Thread(
            target=requests.post,
            args=(f"{url}/v2/job",),
            kwargs={
                "headers": {"Authorization": f"Bearer {TOKEN}"},
                "files": job_files(image=astronaut_jpeg()),
            },
        )
        holder.start()
        assert gated.entered.wait(10)  # the one queue slot is taken

        def open_gate_after_a_refusal() -> None:
            wait_for(lambda: metric(url, "nsfwd_rejected_total") >= 1, timeout=30)
            gated.gate.set()

        opener = threading.Thread(target=open_gate_after_a_refusal)
        opener.start()
        result = run_job(node, url, labels_job(), inputs=[str(image_file)])
        opener.join()
        holder.join()
    assert result["ok"], result
    assert list(result["job"]["config"]["labels"]) == LABELS
