"""`nsfwd classify --ray` on real Ray: a local instance, a two-node cluster started here, and
images in a real S3 server (moto's server mode) on loopback.

Ray keeps its state private to the tests: its own short temp folder (its sockets live there,
and a Unix socket path must stay short) and its own HOME. The two-node cluster is stopped by
the ids of the processes this test started, never by ``ray stop``, which would stop every Ray
on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

pytest.importorskip("ray.data", reason="needs nsfwd[ray]")
pytest.importorskip("moto.server", reason="needs moto[server] (the dev install)")

import ray

from nsfwd.cli import main
from photos import encode, photo
from ray_instance import environment, private_folder
from servers import free_port
from waiting import time_limit

TEST_SECONDS = 150
"""No test here may run longer: a stuck cluster fails the test rather than the suite."""
BUCKET = "photos"


@pytest.fixture(autouse=True)
def bounded() -> Iterator[None]:
    """Fail the test with TimeoutError once it has run :data:`TEST_SECONDS`."""
    with time_limit(TEST_SECONDS):
        yield


def write_images(folder: Path, count: int, start: int = 0) -> list[Path]:
    """``count`` small distinct images, JPEG, PNG and WebP in turn."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        image = Image.new("RGB", (160 + 8 * i, 144), (30 * i % 256, 90, 200 - 7 * i % 200))
        image.paste((255, 240 - 20 * i % 240, 0), (10, 10, 60 + 4 * i, 70))
        path = folder / f"img{i:03d}.{['jpg', 'png', 'webp'][i % 3]}"
        image.save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def ray_home() -> Iterator[Path]:
    """A private folder for the module's Ray instance, and a HOME of its own."""
    with private_folder("nsfwd-ray-") as folder, pytest.MonkeyPatch.context() as patch:
        for name, value in environment(folder).items():
            patch.setenv(name, value)
        yield folder


@pytest.fixture(scope="module")
def s3(ray_home: Path) -> Iterator[str]:
    """A real S3 server on 127.0.0.1 holding a bucket; its endpoint, also in AWS_ENDPOINT_URL
    (with test credentials) so that the Ray workers started after it read from it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL", endpoint)
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        try:
            yield endpoint
        finally:
            server.stop()


@pytest.fixture(scope="module")
def local_ray(ray_home: Path, s3: str) -> Iterator[None]:
    """A local Ray instance of two CPUs for the module; ``nsfwd classify --ray`` uses it."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=str(ray_home / "local"),
    )
    try:
        yield
    finally:
        ray.shutdown()


def classify(*args: str) -> int:
    return main(["classify", "--no-progress", *args])


def read_jsonl(path: Path) -> dict[str, dict[str, Any]]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    by_path = {record["path"]: record for record in records}
    assert len(by_path) == len(records), "a path recorded twice"
    return by_path


def assert_same_records(got: dict[str, dict[str, Any]], want: dict[str, dict[str, Any]]) -> None:
    assert sorted(got) == sorted(want)
    for path, record in want.items():
        other = got[path]
        assert set(other) == set(record), path
        if "error" in record:
            assert other == record
            continue
        assert list(other["labels"]) == list(record["labels"])
        for label, prob in record["labels"].items():
            assert other["labels"][label] == pytest.approx(prob, abs=1e-4)
        assert other["score"] == pytest.approx(record["score"], abs=1e-4)
        assert (other["flagged"], other["policy"]) == (record["flagged"], record["policy"])


@pytest.mark.usefixtures("local_ray")
def test_records_match_the_single_machine_run_with_a_corrupt_file_among_them(
    tmp_path: Path, timm_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "photos"
    write_images(folder / "nested", 7)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "notes.txt").write_text("not an image, and not named like one")
    model = ["--model", str(timm_checkpoint)]

    assert classify(*model, "--output", str(tmp_path / "one.jsonl"), str(folder)) == 0
    assert classify(*model, "--ray", str(folder)) == 0  # stdout, as without --ray
    captured = capsys.readouterr()
    on_ray = {r["path"]: r for r in map(json.loads, captured.out.splitlines())}
    assert_same_records(on_ray, read_jsonl(tmp_path / "one.jsonl"))
    assert "truncated" in on_ray[str(folder / "broken.jpg")]["error"]
    last = captured.err.strip().splitlines()[-1]
    assert "8 images" in last and "images/s" in last and "1 error" in last


@pytest.mark.usefixtures("local_ray")
def test_manifests_and_parquet_output(tmp_path: Path, timm_checkpoint: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = write_images(tmp_path / "imgs", 5)
    (tmp_path / "list.txt").write_text(
        "# a comment\n" + "\n".join(str(p) for p in images[:3]) + "\n\n"
    )
    pq.write_table(
        pa.table({"url": [str(p) for p in images[3:]] + [str(tmp_path / "gone.png")]}),
        tmp_path / "more.parquet",
    )
    out = tmp_path / "results.parquet"
    argv = ["--model", str(timm_checkpoint), "--ray", "--output", str(out)]
    assert classify(*argv, str(tmp_path / "list.txt"), str(tmp_path / "more.parquet")) == 0
    table = pq.read_table(out)
    assert table.column_names == ["path", "labels", "score", "flagged", "policy", "error"]
    rows = {row["path"]: row for row in table.to_pylist()}
    assert sorted(rows) == sorted([str(p) for p in images] + [str(tmp_path / "gone.png")])
    assert rows[str(tmp_path / "gone.png")]["error"] == "no such file"
    assert rows[str(tmp_path / "gone.png")]["labels"] is None
    for path in images:
        row = rows[str(path)]
        assert row["error"] is None and row["policy"] == "moderate"
        assert list(row["labels"]) == ["neutral", "low", "medium", "high"]
        assert sum(row["labels"].values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.usefixtures("local_ray")
def test_resume_after_an_interrupted_run(
    tmp_path: Path, timm_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "photos"
    images = write_images(folder, 9)
    out = tmp_path / "out.jsonl"
    model = ["--model", str(timm_checkpoint)]
    # The interrupted run got through three images and was killed writing the fourth record.
    assert classify(*model, "--ray", "--output", str(out), *map(str, images[:3])) == 0
    with out.open("a") as stream:
        stream.write('{"path": "' + str(images[3]))
    before = out.read_text().splitlines()[:3]

    assert classify(*model, "--ray", "--output", str(out), str(folder)) == 2
    assert "--resume" in capsys.readouterr().err
    assert classify(*model, "--ray", "--resume", "--output", str(out), str(folder)) == 0
    assert "6 images" in capsys.readouterr().err.strip().splitlines()[-1]
    lines = out.read_text().splitlines()
    assert lines[:3] == before  # kept as they were; the half-written record is gone
    assert sorted(read_jsonl(out)) == sorted(map(str, images))


@pytest.mark.usefixtures("local_ray")
def test_images_in_s3(tmp_path: Path, timm_checkpoint: Path, s3: str) -> None:
    import boto3

    local = write_images(tmp_path / "imgs", 6)
    client = boto3.client("s3", endpoint_url=s3)
    for path in local[:4]:
        client.upload_file(str(path), BUCKET, f"set/{path.name}")
    for path in local[4:]:  # named only by the manifest
        client.upload_file(str(path), BUCKET, f"other/{path.name}")
    client.put_object(Bucket=BUCKET, Key="set/broken.png", Body=b"\x89PNG\r\n\x1a\n nope")
    client.put_object(Bucket=BUCKET, Key="set/.hidden/x.jpg", Body=b"skipped")
    client.put_object(Bucket=BUCKET, Key="set/readme.md", Body=b"skipped")
    keys = [f"s3://{BUCKET}/set/{path.name}" for path in local[:4]]
    listed = [f"s3://{BUCKET}/other/{path.name}" for path in local[4:]]
    client.put_object(Bucket=BUCKET, Key="list.txt", Body="\n".join(listed).encode())

    model = ["--model", str(timm_checkpoint)]
    out = tmp_path / "s3.jsonl"
    inputs = [f"s3://{BUCKET}/set/", f"s3://{BUCKET}/list.txt"]
    assert classify(*model, "--ray", "--output", str(out), *inputs) == 0
    on_s3 = read_jsonl(out)
    assert sorted(on_s3) == sorted([*keys, *listed, f"s3://{BUCKET}/set/broken.png"])
    assert "PNG" in on_s3[f"s3://{BUCKET}/set/broken.png"]["error"]
    assert classify(*model, "--output", str(tmp_path / "one.jsonl"), *map(str, local)) == 0
    single = {
        Path(path).name: r | {"path": "-"} for path, r in read_jsonl(tmp_path / "one.jsonl").items()
    }
    on_s3_by_name = {
        k.rsplit("/", 1)[1]: r | {"path": "-"} for k, r in on_s3.items() if "broken" not in k
    }
    assert_same_records(on_s3_by_name, single)


@pytest.mark.usefixtures("local_ray")
def test_videos_are_spread_over_the_workers_with_the_same_records(
    tmp_path: Path, timm_checkpoint: Path
) -> None:
    from videos import stretch, write_video

    folder = tmp_path / "media"
    write_images(folder, 2)
    (folder / "clip.mp4").write_bytes(write_video(stretch(3.0, 5.0), 8.0))
    (folder / "clip.webm").write_bytes(write_video(stretch(0, 0), 3.0, codec="vp9"))
    (folder / "cut.mkv").write_bytes(write_video(stretch(0, 0), 2.0, codec="h264-mkv")[:300])
    model = ["--model", str(timm_checkpoint), "--interval", "0.5", "--batch-size", "3"]
    assert classify(*model, "--output", str(tmp_path / "one.jsonl"), str(folder)) == 0
    assert classify(*model, "--ray", "--output", str(tmp_path / "ray.jsonl"), str(folder)) == 0
    single, on_ray = read_jsonl(tmp_path / "one.jsonl"), read_jsonl(tmp_path / "ray.jsonl")
    assert_same_records(on_ray, single)
    for path, record in single.items():
        if "judged" in record and "time" in record["judged"]:
            got = on_ray[path]
            assert {**got["judged"]} == record["judged"], path
            assert len(got["segments"]) == len(record["segments"]), path
            for mine, theirs in zip(got["segments"], record["segments"], strict=True):
                assert (mine["start"], mine["end"]) == (theirs["start"], theirs["end"])
                assert mine["score"] == pytest.approx(theirs["score"], abs=1e-4)
    assert single[str(folder / "clip.mp4")]["judged"]["frames_judged"] == 17
    assert "error" in single[str(folder / "cut.mkv")]
    assert classify(*model, "--ray", "--stop-on-flag", str(folder)) == 2


def _start_node(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``ray start --block ...`` in a session of its own: stopping it stops its processes."""
    ray_cli = [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]
    with log.open("wb") as sink:
        return subprocess.Popen(
            [*ray_cli, "start", "--block", "--disable-usage-stats", *args],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop_node(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (Ray's node then stops the processes it started), then SIGKILL whatever is left
    in the process group this test created for it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _wait_until_started(node: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    """Until ``ray start --block`` logs that its node runs (or exits, or time runs out)."""
    while time.monotonic() < deadline:
        if b"Ray runtime started" in log.read_bytes():
            return
        if node.poll() is not None:
            raise RuntimeError(f"ray start exited: {log.read_text()[-2000:]}")
        time.sleep(0.5)
    raise TimeoutError(f"ray start did not start: {log.read_text()[-2000:]}")


def test_two_node_cluster_joined_with_auto(
    tmp_path: Path, timm_checkpoint: Path, ray_home: Path
) -> None:
    """``classify --ray auto`` on a two-node cluster gives the single machine's records; and
    ``serve --ray auto`` refuses to start there on a SQLite job store."""
    write_images(tmp_path / "photos", 6)
    (tmp_path / "photos" / "broken.webp").write_bytes(b"RIFF\x10\x00\x00\x00WEBPVP8 ")
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "RAY_ADDRESS": address}
    temp = ray_home / "cluster"
    nodes = []
    try:
        nodes.append(
            _start_node(
                ["--head", "--port", str(port), "--num-cpus", "1", "--include-dashboard",
                 "false", "--temp-dir", str(temp), "--node-ip-address", "127.0.0.1"],
                env,
                tmp_path / "head.log",
            )
        )  # fmt: skip
        _wait_until_started(nodes[0], tmp_path / "head.log", time.monotonic() + 90)
        nodes.append(
            _start_node(
                ["--address", address, "--num-cpus", "1", "--node-ip-address", "127.0.0.1"],
                env,
                tmp_path / "worker.log",
            )
        )
        _wait_until_started(nodes[1], tmp_path / "worker.log", time.monotonic() + 60)
        # One CPU a node: the labeller (1 CPU) and the preparer (half of one) cannot share a
        # node, so the pipeline runs on both.
        out = tmp_path / "cluster.jsonl"
        done = subprocess.run(
            [sys.executable, "-m", "nsfwd", "classify", "--no-progress", "--ray", "auto",
             "--model", str(timm_checkpoint), "--output", str(out), str(tmp_path / "photos")],
            env=env, capture_output=True, text=True, timeout=150, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert "7 images" in done.stderr and "1 error" in done.stderr
        # `serve --ray` will not run its job store on a SQLite file across these two nodes
        refused = subprocess.run(
            [sys.executable, "-m", "nsfwd", "serve", "--ray", "auto",
             "--model", str(timm_checkpoint)],
            env={**env, "NSFWD_DATA_DIR": str(tmp_path / "store")},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert refused.returncode == 2, refused.stderr[-3000:]
        assert "this Ray cluster has 2 nodes" in refused.stderr
        assert "NSFWD_DATABASE_URL=postgresql://" in refused.stderr
    finally:
        for node in reversed(nodes):
            _stop_node(node)
    single = tmp_path / "single.jsonl"
    assert (
        classify("--model", str(timm_checkpoint), "--output", str(single), str(tmp_path / "photos"))
        == 0
    )
    assert_same_records(read_jsonl(out), read_jsonl(single))


def nan_checkpoint(source: Path, folder: Path) -> Path:
    """A copy of the checkpoint at ``source`` whose weights are all NaN: every score is NaN."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(source, folder)
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    save_file({name: torch.full_like(t, float("nan")) if t.is_floating_point() else t
               for name, t in tensors.items()}, weights)  # fmt: skip
    return folder


@pytest.mark.usefixtures("local_ray")
def test_every_picture_is_judged_and_nan_scores_are_error_records(
    tmp_path: Path, timm_checkpoint: Path
) -> None:
    """A translucent animation is judged on every frame over each page, as without --ray, and
    says which picture answered; a model whose scores are NaN gives error records and the run
    ends. Before, --ray judged the first frame over white alone, and a NaN score stopped the
    whole run with a traceback."""
    folder = tmp_path / "photos"
    write_images(folder, 1)
    frames = [Image.new("RGBA", (160, 160), (60 * i, 0, 0, 128)) for i in range(3)]
    frames[0].save(folder / "anim.png", save_all=True, append_images=frames[1:], duration=100)
    pages = [Image.new("RGB", (160, 160), (0, 40 * i, 0)) for i in range(2)]
    pages[0].save(folder / "pages.tif", save_all=True, append_images=pages[1:])
    model = ["--model", str(timm_checkpoint)]
    assert classify(*model, "--output", str(tmp_path / "one.jsonl"), str(folder)) == 0
    assert classify(*model, "--ray", "--output", str(tmp_path / "ray.jsonl"), str(folder)) == 0
    one, on_ray = read_jsonl(tmp_path / "one.jsonl"), read_jsonl(tmp_path / "ray.jsonl")
    assert_same_records(on_ray, one)
    anim = str(folder / "anim.png")
    assert on_ray[anim]["judged"] == one[anim]["judged"]
    assert on_ray[anim]["judged"]["frames_judged"] == 3
    tiff = str(folder / "pages.tif")
    assert on_ray[tiff]["judged"] == one[tiff]["judged"]  # which page, and that it is one

    broken = ["--model", str(nan_checkpoint(timm_checkpoint, tmp_path / "nan-model"))]
    assert classify(*broken, "--ray", "--output", str(tmp_path / "nan.jsonl"), str(folder)) == 1
    records = read_jsonl(tmp_path / "nan.jsonl")
    assert len(records) == 3
    assert all("not finite" in record["error"] for record in records.values())


def test_banked_images_are_answered_with_their_match(
    tmp_path: Path, timm_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A photograph in a bank of known images (the job store's, as ``nsfwd banks`` fills it)
    is answered with its match and flagged, as without --ray; another is judged by the model;
    --no-banks judges both. Before, --ray never looked at the banks."""
    monkeypatch.setenv("NSFWD_DATA_DIR", str(tmp_path / "data"))
    folder = tmp_path / "photos"
    folder.mkdir()
    banked, other = folder / "banked.jpg", folder / "other.jpg"
    banked.write_bytes(encode(photo("chelsea"), "JPEG", quality=90))
    other.write_bytes(encode(photo("coffee"), "JPEG", quality=90))
    assert main(["banks", "create", "known"]) == 0
    assert main(["banks", "add", "known", str(banked)]) == 0
    model = ["--model", str(timm_checkpoint), "--threshold", "1"]
    for extra, matched in (([], True), (["--no-banks"], False)):
        out = tmp_path / f"ray{len(extra)}.jsonl"
        assert classify(*model, "--ray", *extra, "--output", str(out), str(folder)) == 0
        records = read_jsonl(out)
        found = records[str(banked)]
        assert ("match" in found, found["flagged"]) == (matched, matched), found
        assert "match" not in records[str(other)] and not records[str(other)]["flagged"]
        if matched:
            assert found["match"]["bank"] == "known" and found["labels"]["high"] == 1.0
