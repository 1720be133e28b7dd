"""CPU time per request of each process of `nsfwd serve --ray`: Serve's proxy, the ingress
replica (nsfwd's HTTP app) and the model replicas, under load from `nsfwd.bench.loadgen`, above what
each spends idle (measured first).

    PYTHONPATH=src python scripts/serve_cpu.py --requests 384 --concurrency 16

Writes a tiny random-weight EVA-02 and ~290 KB JPEGs into a scratch folder, starts the server
on a local Ray instance of its own (private temp folder and HOME), waits for every replica,
reads /proc/PID/stat of each Ray process around the load, stops the server with SIGTERM and
prints one JSON line: requests/s and CPU milliseconds per request by process kind, then removes
the scratch folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

KINDS = {
    "ray::ProxyActor": "proxy",
    "ray::ServeReplica:nsfwd:nsfwd-ingress": "ingress",
    "ray::ServeReplica:nsfwd:nsfwd-model": "model",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def photo_jpegs(folder: Path, count: int) -> list[bytes]:
    """``nsfwd bench``'s generated photo-like 1024x768 JPEGs."""
    from nsfwd.bench.images import make_jpegs

    return [path.read_bytes() for path in make_jpegs(folder, count, (1024, 768))]


def processes(marker: bytes) -> dict[int, str]:
    """Ray processes carrying ``marker`` in their environment: pid -> kind."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        for prefix, kind in KINDS.items():
            if line.startswith(prefix):
                found[int(entry.name)] = kind
    return found


def plain_processes(root: int) -> dict[int, str]:
    """``nsfwd serve --http-workers N``'s processes: the supervisor (``root``), the inference
    process (the one that loaded torch) and the HTTP workers: pid -> kind."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = {root: "supervisor"}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            torch = "libtorch" in Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        found[pid] = "inference" if torch else "http"
    return found


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=384)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--plain-http-workers",
        type=int,
        help="measure `nsfwd serve --http-workers N` instead of --ray, for comparison",
    )
    parser.add_argument("--idle-s", type=float, default=20.0, help="idle CPU measured first")
    return parser.parse_args()


def main() -> None:
    args = parse_args()

    from nsfwd.bench.loadgen import run_load
    from nsfwd.models.synthetic import write_timm_checkpoint

    scratch = Path(tempfile.mkdtemp(prefix="nsfwd-servecpu-", dir="/tmp"))
    (scratch / "home").mkdir()
    model = write_timm_checkpoint(scratch / "model")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "HOME": str(scratch / "home"),
        "RAY_TMPDIR": str(scratch),
        "NSFWD_DATA_DIR": str(scratch / "data"),
        "NSFWD_API_KEYS": "",
        "NSFWD_MAX_BATCH_SIZE": str(args.batch_size),
        "NSFWD_MAX_QUEUE": str(max(64, 2 * args.concurrency)),
    }
    command = [sys.executable, "-m", "nsfwd", "serve", "--model", str(model), "--device", "cpu",
               "--port", str(port), "--served-model-name", "bench",
               "--ray", "--replicas", str(args.replicas)]  # fmt: skip
    ready = f"nsfwd-model HEALTHY ({args.replicas} running)"
    if args.plain_http_workers:
        command[command.index("--ray") :] = ["--http-workers", str(args.plain_http_workers)]
        ready = "ok"
    log = (scratch / "serve.log").open("wb")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        while True:
            if server.poll() is not None:
                raise RuntimeError((scratch / "serve.log").read_text()[-3000:])
            try:
                if ready in httpx.get(f"{url}/healthz", timeout=5).text:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        bodies = photo_jpegs(scratch / "images", 16)
        run_load(url, bodies, 1, 8)  # warm every path
        pids = (
            plain_processes(server.pid)
            if args.plain_http_workers
            else processes(f"RAY_TMPDIR={scratch}".encode())
        )
        # Idle first: Serve's own upkeep and nsfwd's job pollers cost CPU without requests.
        idle = {pid: cpu_seconds(pid) for pid in pids}
        time.sleep(args.idle_s)
        idle_rate = {pid: (cpu_seconds(pid) - idle[pid]) / args.idle_s for pid in pids}
        before = {pid: cpu_seconds(pid) for pid in pids}
        started = time.monotonic()
        result = run_load(url, bodies, args.concurrency, args.requests)
        seconds = time.monotonic() - started
        per_kind: dict[str, float] = {}
        upkeep: dict[str, float] = {}
        for pid, kind in pids.items():
            spent = cpu_seconds(pid) - before[pid] - idle_rate[pid] * seconds
            per_kind[kind] = per_kind.get(kind, 0.0) + spent
            upkeep[kind] = upkeep.get(kind, 0.0) + idle_rate[pid]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        json.dumps(
            {
                "server": f"--http-workers {args.plain_http_workers}"
                if args.plain_http_workers
                else f"--ray --replicas {args.replicas}",
                "requests": args.requests,
                "concurrency": args.concurrency,
                "jpeg_kb": round(sum(map(len, bodies)) / len(bodies) / 1024),
                "requests_per_s": round(result["requests_per_s"], 2),
                "p50_ms": round(result["p50_ms"], 1),
                "statuses": result["statuses"],  # loadgen posts model "bench"
                "idle_cpu_percent": {k: round(100 * v, 1) for k, v in sorted(upkeep.items())},
                "cpu_ms_per_request_above_idle": {
                    kind: round(1000 * seconds / args.requests, 2)
                    for kind, seconds in sorted(per_kind.items())
                },
            }
        )
    )


if __name__ == "__main__":
    main()
