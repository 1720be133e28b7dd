"""``nsfwd serve --ray --min-replicas 1 --max-replicas 2``: Serve adds a model replica while
requests queue, and lets it go once the queue has stayed short; meanwhile a client that finds
every replica and the handle's queue full gets 429 with Retry-After. On a SQLite job store
(the ingress pinned to this node); then SIGTERM to the whole process group, as systemd sends it.

Each request is an animated WebP whose frames are all judged, so a replica holds it long enough
for a queue to build on two cores; ``NSFWD_MAX_QUEUE=2`` lets a replica hold two requests and
the ingress's handle queue two more. Ray's state is private to the module (:mod:`ray_instance`).
"""

from __future__ import annotations

import io
import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("ray.serve", reason="needs nsfwd[serve]")

from photos import resized
from prodia_jobs import MODEL, TOKEN, post_job
from ray_instance import (
    environment,
    kill_all,
    private_folder,
    ray_processes,
    replicas,
    wait_until_none_left,
)
from serve_process import Served, health, log_of, nsfwd_serve
from waiting import wait_for, watchdog

MODULE_SECONDS = 480
"""The whole module, start and stop included: past this, its Ray instance is killed."""
DOWNSCALE_DELAY_S = 2
"""--downscale-delay: Serve's own 30 s look-back on the queue length comes first anyway."""
CLIENTS = 6


@pytest.fixture(scope="module")
def ray_home() -> Iterator[Path]:
    """A private folder for this module's Ray instance; its processes are killed if the
    module runs past :data:`MODULE_SECONDS`."""
    with (
        private_folder("nsfwd-scale-") as folder,
        watchdog(MODULE_SECONDS, lambda: kill_all(ray_processes(folder))),
    ):
        yield folder


@pytest.fixture(scope="module")
def served(
    ray_home: Path, timm_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("ray-autoscaling")
    env = {
        **environment(ray_home),
        "NSFWD_API_KEYS": TOKEN,
        "NSFWD_SERVED_MODEL_NAME": MODEL,
        "NSFWD_MAX_BATCH_SIZE": "1",
        "NSFWD_MAX_QUEUE": "2",
        # Every client posts the same image: answered from the ingress's cache of verdicts,
        # it would never reach a model replica, and no queue would build.
        "NSFWD_VERDICT_CACHE_ENTRIES": "0",
    }
    with nsfwd_serve(
        timm_checkpoint,
        folder,
        folder / "serve.log",
        "--ray",
        "--min-replicas",
        "1",
        "--max-replicas",
        "2",
        "--downscale-delay",
        str(DOWNSCALE_DELAY_S),
        env=env,
        start_timeout=240,
    ) as server:
        yield server


def animation(frames: int = 16) -> bytes:
    """An animated WebP of ``frames`` different 512x512 photographs' worth of pixels."""
    names = ["astronaut", "chelsea", "coffee", "rocket"]
    images = [resized(names[i % 4], (512, 512)).rotate(i * 7) for i in range(frames)]
    out = io.BytesIO()
    images[0].save(out, "WEBP", save_all=True, append_images=images[1:], duration=100, loop=0)
    return out.getvalue()


def classify(url: str, image: bytes) -> tuple[int, str | None]:
    """Post ``image`` as the guide does: its status and Retry-After."""
    res = post_job(url, image, filename="moving.webp", content_type="image/webp")
    return res.status_code, res.headers.get("retry-after")


def test_model_replicas_follow_the_queue(served: Served, ray_home: Path) -> None:
    assert len(replicas(ray_home, "nsfwd-model")) == 1, ray_processes(ray_home)
    image = animation()
    assert getattr(Image.open(io.BytesIO(image)), "n_frames", 1) == 16
    stop = threading.Event()
    answers: list[tuple[int, str | None]] = []

    def load() -> None:
        while not stop.is_set():
            status, retry_after = classify(served.url, image)
            answers.append((status, retry_after))
            if status == 429:  # as told, though not for long: the test waits on the queue
                stop.wait(min(float(retry_after or 1), 1.0))

    with ThreadPoolExecutor(CLIENTS) as pool:
        for _ in range(CLIENTS):
            pool.submit(load)
        try:
            wait_for(
                lambda: len(replicas(ray_home, "nsfwd-model")) == 2,
                120,
                "Serve to add a model replica under load",
                detail=log_of(served.log),
            )
            wait_for(
                lambda: "nsfwd-model HEALTHY (2 running)" in health(served.url),
                120,
                "the second replica to run",
            )
            scaled = len(answers)
            wait_for(
                lambda: [status for status, _ in answers[scaled:]].count(200) >= 10,
                60,
                "answers from both replicas",
            )
        finally:
            stop.set()
    statuses = [status for status, _ in answers]
    assert set(statuses) <= {200, 429}, statuses  # full replicas: a refusal, never a hang or 5xx
    assert 429 in statuses, statuses  # six clients, room for four a replica: some were refused
    assert all(int(after or 0) >= 1 for status, after in answers if status == 429), answers
    wait_for(
        lambda: len(replicas(ray_home, "nsfwd-model")) == 1,
        120,
        "Serve to let the idle replica go",
        detail=log_of(served.log),
    )
    assert classify(served.url, image)[0] == 200


def test_a_stop_sent_to_the_whole_process_group_leaves_no_ray_process(
    served: Served, ray_home: Path
) -> None:
    """systemd's stop (and ``timeout``) send SIGTERM to every process of the server, Ray's own
    among them: the server must still stop, and leave nothing behind."""
    os.killpg(served.process.pid, signal.SIGTERM)  # nsfwd_serve gave it a group of its own
    assert served.process.wait(timeout=90) == 0, served.log.read_text()[-3000:]
    wait_until_none_left(ray_home)
