"""The container image (Containerfile) as an operator runs it: through the port published on
127.0.0.1, with its data on a volume, a read-only root filesystem and a tmpfs for /tmp, as
README.md ("Containers") shows.

`make container-test` (container/ci.sh) builds the images on this machine and passes their ids
in ``NSFWD_CONTAINER_IMAGES`` (``slim=ID,full=ID``); this module runs the containers, and
removes each one, and each volume, by id. It is the ``container`` tier: `make test` leaves it out.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from openai import OpenAI
from openai.types import ModerationImageURLInputParam

from checkpoints import write_timm_checkpoint
from photos import DATA_DIR, PHOTOS
from prodia_jobs import job_files
from waiting import wait_for

IMAGES = dict(
    entry.split("=", 1)
    for entry in os.environ.get("NSFWD_CONTAINER_IMAGES", "").split(",")
    if "=" in entry
)
"""The images under test by variant, from `make container-test`."""

PODMAN = os.environ.get("NSFWD_PODMAN", "podman")
REPORT = os.environ.get("NSFWD_CONTAINER_REPORT")
"""A JSON Lines file for the figures BENCHMARKS.md records (time to a healthy /healthz)."""
ROCKET = (DATA_DIR / PHOTOS["rocket"]).read_bytes()
KEY = "container-test-key"
V1 = "inference.vit.img2label.v1"
UID = 10001
"""The image's user, nsfwd."""


def podman(*args: str, timeout: float = 120) -> str:
    """``podman ARGS``' output; fails the test, with podman's error, if it fails."""
    done = subprocess.run(
        [PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"podman {' '.join(args)} exited {done.returncode}: {done.stderr}"
    return done.stdout.strip()


@pytest.fixture(params=sorted(IMAGES) or ["none"])
def image(request: pytest.FixtureRequest) -> str:
    """Each image under test; none given fails, since CI must not pass without trying one."""
    if not IMAGES:
        pytest.fail("no images to try: run `make container-test`, which builds them")
    return IMAGES[str(request.param)]


@pytest.fixture
def volume() -> Iterator[str]:
    """A fresh named volume for /data, removed afterwards."""
    name = podman("volume", "create")
    yield name
    podman("volume", "rm", "--force", name)


@dataclass
class Container:
    """A running container: its id and the URL of its published port."""

    id: str
    url: str

    def logs(self) -> str:
        """Everything the container wrote so far."""
        done = subprocess.run(
            [PODMAN, "logs", self.id], capture_output=True, text=True, timeout=60, check=False
        )
        return done.stdout + done.stderr

    def wait_healthy(self, timeout: float = 180) -> None:
        """Poll ``/healthz`` until 200; fail with the container's log if it exits first."""

        def healthy() -> bool:
            state = podman("inspect", "--format", "{{.State.Status}}", self.id)
            assert state == "running", f"the container is {state}:\n{self.logs()}"
            published = podman("port", self.id, "8000")
            if not published:  # exited since: the next poll says so
                return False
            self.url = f"http://{published}"
            try:
                return requests.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(healthy, timeout, "/healthz", interval=0.1, detail=self.logs)


def run_args(image: str, volume: str, env: dict[str, str], extra: tuple[str, ...]) -> list[str]:
    """``podman run`` arguments as README.md gives them: read-only, /tmp on a tmpfs (podman's
    own tmpfs mounts left out, as Docker has none), the volume on /data."""
    environment = [f"--env={name}={value}" for name, value in env.items()]
    return [
        *("--read-only", "--read-only-tmpfs=false", "--tmpfs=/tmp"),
        f"--volume={volume}:/data",
        *environment,
        *extra,
        image,
    ]


@contextmanager
def serving(
    image: str, volume: str, env: dict[str, str], *extra: str, healthy_within: float = 180
) -> Iterator[Container]:
    """A server container, healthy; removed by id on leaving."""
    started = time.monotonic()
    cid = podman(
        "run", "--detach", "--publish=127.0.0.1::8000", *run_args(image, volume, env, extra)
    )
    container = Container(cid, "")
    try:
        container.wait_healthy(healthy_within)
        record(image, "healthy_s", time.monotonic() - started)
        yield container
    finally:
        podman("rm", "--force", "--time=0", cid)


def record(image: str, figure: str, value: float) -> None:
    """Add a figure for ``image`` (by its variant) to the report `make container-test` prints."""
    if REPORT:
        variant = next((name for name, each in IMAGES.items() if each == image), image)
        with Path(REPORT).open("a") as report:
            report.write(json.dumps({"variant": variant, figure: round(value, 2)}) + "\n")


def prodia_job(url: str, model: str, token: str = KEY) -> requests.Response:
    """A Prodia v1 job of the photograph, answered as JSON."""
    return requests.post(
        f"{url}/v2/job",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        files=job_files(V1, ROCKET, "rocket.jpg", model=model),
        timeout=120,
    )


def test_it_serves_the_apis_as_a_non_root_user_and_stops_on_sigterm(
    image: str, volume: str
) -> None:
    """The quick start: Prodia and OpenAI's API on a real photograph with open-nsfw (the full
    image offline, as here, serves it alone); the server is uid 10001; the image's HEALTHCHECK
    passes; SIGTERM stops it cleanly (exit 0) within 10 s."""
    env = {"NSFWD_API_KEYS": KEY, "HF_HUB_OFFLINE": "1"}
    with serving(image, volume, env) as container:
        job = prodia_job(container.url, "open-nsfw")
        assert job.status_code == 200, job.text
        labels = job.json()["config"]["labels"]
        assert list(labels) == ["sfw", "nsfw"]
        assert sum(labels.values()) == pytest.approx(1.0, abs=1e-4)

        client = OpenAI(api_key=KEY, base_url=f"{container.url}/v1", max_retries=0)
        data_uri = "data:image/jpeg;base64," + base64.b64encode(ROCKET).decode()
        image_url: ModerationImageURLInputParam = {
            "type": "image_url",
            "image_url": {"url": data_uri},
        }
        moderation = client.moderations.create(model="open-nsfw", input=[image_url])
        (result,) = moderation.results
        assert result.category_scores.sexual == pytest.approx(labels["nsfw"], abs=1e-4)

        status = podman("exec", container.id, "cat", "/proc/1/status")
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        assert uids == [str(UID)] * 4, status
        podman("healthcheck", "run", container.id)

        started = time.monotonic()
        podman("stop", "--time=10", container.id, timeout=60)
        stopped_in = time.monotonic() - started
        code = podman("inspect", "--format", "{{.State.ExitCode}}", container.id)
        assert (code, stopped_in < 10) == ("0", True), (code, stopped_in, container.logs())
        assert "Application shutdown complete" in container.logs()
        record(image, "stop_s", stopped_in)


def async_state(url: str, job_id: str, token: str) -> str:
    """An async job's ``job.state.current``."""
    answer = requests.get(
        f"{url}/v2/job/async/{job_id}/job.state.current",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return answer.text.strip()


def test_jobs_and_keys_outlive_a_restart_and_the_container(image: str, volume: str) -> None:
    """Without a key the server refuses to listen; `nsfwd keys create` in a one-off container
    makes one on the volume; async jobs still waiting when the container restarts finish after
    it, and a new container on the same volume has their results and the key."""
    refused = subprocess.run(
        [PODMAN, "run", "--rm", *run_args(image, volume, {"HF_HUB_OFFLINE": "1"}, ())],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "refusing to bind 0.0.0.0 without API keys" in refused.stderr
    created = podman("run", "--rm", *run_args(image, volume, {}, ()), "keys", "create", "ci")
    token = created.split()[0]
    # Batches wait up to 8 s for more pictures: jobs submitted together stay queued that long.
    slow = {"HF_HUB_OFFLINE": "1", "NSFWD_BATCH_WAIT_MS": "8000", "NSFWD_MAX_BATCH_SIZE": "8"}
    with serving(image, volume, slow) as container:
        ids = []
        for _ in range(3):
            answer = requests.post(
                f"{container.url}/v2/job/async",
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                files=job_files(V1, ROCKET, "rocket.jpg", model="open-nsfw"),
                timeout=60,
            )
            assert answer.status_code == 201, answer.text
            ids.append(answer.json()["id"])
        assert [async_state(container.url, i, token) for i in ids] == ["processing"] * 3
        podman("restart", "--time=10", container.id, timeout=60)
        container.wait_healthy()

        def finished() -> bool:
            return all(async_state(container.url, i, token) == "processed" for i in ids)

        wait_for(finished, 60, "the jobs to finish after the restart", detail=container.logs)
    with serving(image, volume, {"HF_HUB_OFFLINE": "1"}) as again:
        answer = requests.get(
            f"{again.url}/v2/job/async/{ids[0]}/job.json",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert list(answer.json()["config"]["labels"]) == ["sfw", "nsfw"]
        assert prodia_job(again.url, "open-nsfw", token="wrong").status_code == 401


def test_a_mounted_model_is_served(tmp_path: Path, volume: str) -> None:
    """The full image serves a model folder mounted read-only (NSFWD_MODEL=/models/...): a
    tiny EVA-02 checkpoint in the Hub's format, on torch."""
    if "full" not in IMAGES:
        pytest.fail("no full image to try: run `make container-test`, which builds it")
    folder = write_timm_checkpoint(tmp_path / "tiny")
    folder.chmod(0o755)  # readable by the image's user, as README.md asks of a mounted model
    for file in folder.iterdir():
        file.chmod(0o644)
    env = {"NSFWD_API_KEYS": KEY, "NSFWD_MODEL": "/models/tiny"}
    with serving(IMAGES["full"], volume, env, f"--volume={folder}:/models/tiny:ro") as container:
        job = prodia_job(container.url, "/models/tiny")
        assert job.status_code == 200, job.text
        assert list(job.json()["config"]["labels"]) == ["neutral", "low", "medium", "high"]
