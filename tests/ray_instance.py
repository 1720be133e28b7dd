"""A Ray instance of a test module's own: a private folder for its session files, and its
processes found (and stopped) by id.

Every process of a Ray instance started with ``RAY_TMPDIR`` set carries that folder in its
environment, ``nsfwd serve --ray`` itself included; that is how a test finds them: to kill a
replica, to check that none outlives the server, and to stop exactly its own leftovers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from waiting import wait_for


def ray_processes(folder: Path) -> dict[int, str]:
    """The processes of the Ray instance whose temp folder is ``folder``: pid -> command line."""
    marker = f"RAY_TMPDIR={folder}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
    return {pid: line.decode(errors="replace") for pid, line in found.items()}


def kill_all(pids: Iterable[int]) -> None:
    """SIGKILL each of ``pids`` that still runs."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_until_none_left(folder: Path, timeout: float = 30) -> None:
    """Wait until no process of the Ray instance of ``folder`` runs, or fail naming them."""
    wait_for(
        lambda: not ray_processes(folder),
        timeout,
        "every Ray process to end",
        detail=lambda: str(ray_processes(folder)),
    )


def replicas(folder: Path, deployment: str) -> list[int]:
    """The pids of ``deployment``'s Serve replicas in the Ray instance of ``folder``."""
    name = f"ray::ServeReplica:nsfwd:{deployment}"
    return sorted(pid for pid, line in ray_processes(folder).items() if line.split()[:1] == [name])


def environment(folder: Path) -> dict[str, str]:
    """The variables that keep a Ray instance's state in ``folder`` (its HOME too)."""
    return {"HOME": str(folder / "home"), "RAY_TMPDIR": str(folder), "RAY_DEDUP_LOGS": "0"}


@contextmanager
def private_folder(prefix: str) -> Iterator[Path]:
    """A short folder under /tmp for a Ray instance's session files (its sockets live there,
    and a socket's path is limited to about 100 bytes); on leaving, any process still
    running there is killed (only when a test failed before its clean stop) and the folder
    removed."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    (folder / "home").mkdir()
    try:
        yield folder
    finally:
        kill_all(ray_processes(folder))
        shutil.rmtree(folder, ignore_errors=True)
