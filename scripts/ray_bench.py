"""Measure `nsfwd classify --ray` on a cluster of local Ray nodes: images/s and the driver's RSS.

    python scripts/ray_bench.py --images 5000 --nodes 2 --cpus-per-node 1

Writes ``--images`` small JPEGs and a tiny random-weight EVA-02 into a scratch folder, starts
``--nodes`` nodes with ``ray start --block`` (each in a session of its own, stopped by its id
afterwards, never with ``ray stop``), runs ``nsfwd classify --ray auto --output ...jsonl`` as
the driver while sampling its resident memory, and prints one JSON line. Needs nsfwd[ray].
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

RAY_CLI = [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]


def write_images(folder: Path, count: int, side: int) -> None:
    """``count`` distinct small JPEGs."""
    folder.mkdir(parents=True)
    for i in range(count):
        image = Image.new("RGB", (side, side), (i % 256, (i // 256) % 256, 120))
        image.paste((255, 200, 0), (8, 8, 8 + i % (side - 16), side // 2))
        image.save(folder / f"{i:06d}.jpg", quality=85)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_node(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(
            [*RAY_CLI, "start", "--block", "--disable-usage-stats", *args],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_node(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def wait_for_nodes(env: dict[str, str], count: int, timeout: float = 120) -> None:
    """Until the cluster counts ``count`` live nodes."""
    probe = (
        "import ray; ray.init(address='auto', log_to_driver=False); "
        "print(sum(n['Alive'] for n in ray.nodes()))"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=False
        )
        if done.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1)
    raise TimeoutError(f"the cluster did not reach {count} nodes")


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--side", type=int, default=256, help="JPEG width and height")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    from nsfwd.models.synthetic import write_timm_checkpoint

    scratch = Path(tempfile.mkdtemp(prefix="nsfwd-raybench-", dir="/tmp"))
    model = write_timm_checkpoint(scratch / "model")
    write_images(scratch / "images", args.images, args.side)
    port = free_port()
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}", "HOME": str(scratch)}
    cpus = ["--num-cpus", str(args.cpus_per_node), "--node-ip-address", "127.0.0.1"]
    nodes = [
        start_node(
            ["--head", "--port", str(port), "--include-dashboard", "false",
             "--temp-dir", str(scratch / "ray"), *cpus],
            env,
            scratch / "head.log",
        )
    ]  # fmt: skip
    try:
        time.sleep(5)
        for i in range(1, args.nodes):
            nodes.append(
                start_node(["--address", env["RAY_ADDRESS"], *cpus], env, scratch / f"n{i}.log")
            )
        wait_for_nodes(env, args.nodes)
        command = [
            sys.executable, "-m", "nsfwd", "classify", "--no-progress", "--ray", "auto",
            "--model", str(model), "--batch-size", str(args.batch_size),
            "--output", str(scratch / "out.jsonl"), str(scratch / "images"),
        ]  # fmt: skip
        started = time.monotonic()
        driver = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        samples: list[tuple[float, int]] = []
        while driver.poll() is None:
            samples.append((time.monotonic() - started, rss_kib(driver.pid)))
            time.sleep(0.5)
        stderr = driver.stderr.read() if driver.stderr else ""
        seconds = time.monotonic() - started
    finally:
        for node in reversed(nodes):
            stop_node(node)
    records = len((scratch / "out.jsonl").read_text().splitlines())
    rss = [kib for _, kib in samples if kib]
    half = len(rss) // 2
    print(
        json.dumps(
            {
                "nodes": args.nodes,
                "cpus_per_node": args.cpus_per_node,
                "images": args.images,
                "records": records,
                "exit": driver.returncode,
                "driver_seconds": round(seconds, 1),
                "last_line": stderr.strip().splitlines()[-1] if stderr.strip() else "",
                "rss_mib_max": round(max(rss) / 1024, 1) if rss else None,
                "rss_mib_max_first_half": round(max(rss[:half]) / 1024, 1) if half else None,
                "rss_mib_max_second_half": round(max(rss[half:]) / 1024, 1) if half else None,
                "scratch": str(scratch),
            }
        )
    )


if __name__ == "__main__":
    main()
