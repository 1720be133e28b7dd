"""container/requirements.py, which the Containerfile runs on the wheel: what each image variant
installs, read from the wheel's own metadata."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REQUIREMENTS = Path(__file__).parents[1] / "container" / "requirements.py"
METADATA = """\
Metadata-Version: 2.4
Name: nsfwd
Version: 0.1.0
Requires-Dist: torch>=2.13
Requires-Dist: torchvision>=0.19
Requires-Dist: timm>=1.0.12
Requires-Dist: onnxruntime>=1.17
Requires-Dist: fastapi>=0.115
Provides-Extra: ray
Requires-Dist: ray[data]>=2.40; extra == "ray"
Provides-Extra: serve
Requires-Dist: ray[serve]>=2.60; extra == "serve"
Provides-Extra: dev
Requires-Dist: nsfwd[ray]; extra == "dev"
Requires-Dist: pytest>=8; extra == "dev"
Requires-Dist: atheris>=3.0; (sys_platform == "nowhere") and extra == "dev"
"""


def requirements(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run the script on a wheel with :data:`METADATA`; the result and its output folder."""
    wheel = tmp_path / "nsfwd-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("nsfwd-0.1.0.dist-info/METADATA", METADATA)
    out = tmp_path / "out"
    command = [sys.executable, str(REQUIREMENTS), str(wheel), str(out), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False), out


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_the_full_image_takes_torch_from_its_index_and_the_rest_from_pypi(tmp_path: Path) -> None:
    done, out = requirements(tmp_path, "--extras", "serve")
    assert done.returncode == 0, done.stderr
    assert lines(out / "torch.txt") == ["torch>=2.13", "torchvision>=0.19"]
    assert lines(out / "other.txt") == ["timm>=1.0.12", "onnxruntime>=1.17", "fastapi>=0.115",
                                        "ray[serve]>=2.60"]  # fmt: skip


def test_the_slim_image_leaves_the_torch_stack_out(tmp_path: Path) -> None:
    done, out = requirements(tmp_path, "--without", "torch,torchvision,timm")
    assert done.returncode == 0, done.stderr
    assert lines(out / "torch.txt") == []
    assert lines(out / "other.txt") == ["onnxruntime>=1.17", "fastapi>=0.115"]


def test_an_extra_brings_the_extras_it_names_and_markers_are_evaluated(tmp_path: Path) -> None:
    done, out = requirements(tmp_path, "--extras", "dev", "--without", "torch,torchvision,timm")
    assert done.returncode == 0, done.stderr
    assert lines(out / "other.txt") == ["onnxruntime>=1.17", "fastapi>=0.115", "pytest>=8",
                                        "ray[data]>=2.40"]  # fmt: skip


def test_an_unknown_extra_fails_the_build_saying_which_exist(tmp_path: Path) -> None:
    done, _ = requirements(tmp_path, "--extras", "nudenet")
    assert done.returncode == 2
    assert "nsfwd has no extra nudenet; it has dev, ray, serve" in done.stderr
