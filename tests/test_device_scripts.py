"""The GPU check scripts (scripts/device/): device time is scarce, so what they run must parse
here, and the wheels they carry must cover what the GPU image lacks."""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest

from nsfwd.cli import build_parser
from nsfwd.cli.bench import bench_config

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / "scripts" / "device" / "check.sh"
WHEELS = ROOT / "scripts" / "device" / "wheels.sh"


def bench_steps() -> dict[str, list[str]]:
    """Each ``bench STEP SECONDS ARGS...`` line of check.sh (continuations joined): its args."""
    text = CHECK.read_text().replace("\\\n", " ")
    steps = {}
    for line in text.splitlines():
        if line.startswith("bench "):
            _, step, seconds, *args = shlex.split(line.replace('"$IMAGES"', "/tmp/images"))
            assert int(seconds) > 0
            steps[step] = args
    return steps


def names(variable: str) -> set[str]:
    """The package names in one of wheels.sh's lists, normalised as pip does."""
    found = re.search(rf'^{variable}="([^"]*)"', WHEELS.read_text(), re.MULTILINE)
    assert found, variable
    return {re.sub(r"[-_.]+", "-", name).lower() for name in found.group(1).split()}


def requirement_name(requirement: str) -> str:
    name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert name, requirement
    return re.sub(r"[-_.]+", "-", name.group(0)).lower()


@pytest.mark.parametrize("script", [CHECK, WHEELS], ids=lambda path: path.name)
def test_the_scripts_are_valid_bash(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_every_step_is_a_bench_command_this_version_accepts() -> None:
    steps = bench_steps()
    assert set(steps) == {"model", "compiled", "pipeline", "server1", "server8"}
    for step, args in steps.items():
        config = bench_config(build_parser().parse_args(["bench", *args]))
        assert config.suites, step
    # The step limits must leave room in one 600 s device command for the set-up.
    text = CHECK.read_text().replace("\\\n", " ")
    limits = [int(line.split()[2]) for line in text.splitlines() if line.startswith("bench ")]
    assert sum(limits) <= 540


def test_every_step_measures_the_default_precisions() -> None:
    for step, args in bench_steps().items():
        config = bench_config(build_parser().parse_args(["bench", *args]))
        assert config.dtype is None, f"{step}: nsfwd's default, not a fixed dtype"
        assert config.reference_dtypes is None, f"{step}: the package's faster mode here"


def test_the_carried_wheels_cover_what_the_gpu_image_lacks() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = {requirement_name(r) for r in project["dependencies"]}
    needed |= {requirement_name(r) for r in project["optional-dependencies"]["bench"]}
    missing = needed - names("ON_DEVICE") - names("CARRIED")
    assert not missing, f"add to CARRIED in {WHEELS.name} (or ON_DEVICE): {sorted(missing)}"
