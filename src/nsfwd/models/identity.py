"""Names for "this model" and "this machine" that change when what they name changes: the keys
under which converted models and the start-up measurement's choice are kept."""

from __future__ import annotations

import hashlib
import json
import os
import re
from importlib import metadata
from pathlib import Path
from typing import Any

from nsfwd.models.cpu import cpu_class, cpu_features, cpu_flags

FLAG_PREFIXES = ("avx", "amx", "fma", "f16c", "sve", "asimd", "bf16", "i8mm")
"""The CPU flags that decide which kernels run (vector, matrix and dot-product extensions)."""
VERSIONED = ("torch", "timm", "transformers", "openvino", "nncf")
"""Packages whose version changes what a model converts to or how fast it runs."""


def versions() -> dict[str, str]:
    """The installed version of each of :data:`VERSIONED` (absent ones left out)."""
    found = {}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _digest(parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    """The SHA-256 of the file at ``path`` (a checkpoint's weights: a fraction of a second)."""
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def model_key(folder: Path, source: str) -> str:
    """The checkpoint in ``folder`` (loaded as ``source``): a readable slug (the Hub id, or the
    folder's name) and a digest of its config and weight files' contents and :func:`versions`,
    so the same weights anywhere share a key and changed ones never do."""
    files = [
        [path.name, file_digest(path)]
        for path in sorted(folder.iterdir())
        if path.suffix in (".json", ".safetensors", ".bin")
    ]
    readable = folder.name if Path(source).expanduser().exists() else source  # a Hub id
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", readable).strip("-.")[-48:] or "model"
    return f"{slug}-{_digest([files, versions()])}"


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (``AMD EPYC 9R14``), or ``unknown``."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "CPU part"):
            return value.strip()
    return "unknown"


def machine() -> dict[str, Any]:
    """What decides which route runs fastest here: the CPU's model, class, extensions (as the
    kernel and PyTorch see them) and cores, and :func:`versions`."""
    flags = sorted(flag for flag in cpu_flags() if flag.startswith(FLAG_PREFIXES))
    return {
        "cpu": cpu_model(),
        "cpu_class": cpu_class(cpu_flags()),
        "cpu_features": cpu_features(),
        "flags": flags,
        "cores": len(os.sched_getaffinity(0)),
        "versions": versions(),
    }


def machine_key(facts: dict[str, Any] | None = None) -> str:
    """A digest of :func:`machine`'s facts."""
    return _digest(facts if facts is not None else machine())
