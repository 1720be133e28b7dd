"""The requirements of an nsfwd wheel for an image, in two pip requirement files.

Run inside the image build (Containerfile): it reads the wheel's own metadata, so the
dependencies stay written once, in pyproject.toml. ``torch.txt`` gets the packages that come
from PyTorch's index (``TORCH_INDEX_URL``: CPU-only or CUDA wheels), ``other.txt`` the rest,
with the extras asked for. ``--without`` leaves packages out entirely (the slim image: the torch
stack, for the built-in open-nsfw alone).

    python requirements.py WHEEL OUT_DIR [--extras ray,serve] [--without torch,timm,...]
"""

from __future__ import annotations

import argparse
import email
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

TORCH_INDEX_PACKAGES = frozenset({"torch", "torchvision"})
"""What PyTorch's own index serves in CPU-only and CUDA builds (PyPI's Linux torch is CUDA)."""


def wheel_metadata(wheel: Path) -> tuple[str, set[str], list[Requirement]]:
    """The project name, extras and ``Requires-Dist`` entries of ``wheel``."""
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = (n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        message = email.message_from_bytes(archive.read(metadata))
    extras = {str(canonicalize_name(extra)) for extra in message.get_all("Provides-Extra", [])}
    requires = [Requirement(line) for line in message.get_all("Requires-Dist", [])]
    return str(message["Name"]), extras, requires


def resolve(
    name: str, requires: list[Requirement], extras: set[str], without: set[str]
) -> list[Requirement]:
    """The requirements that apply with ``extras`` (an extra naming the project's own other
    extras, like ``dev``, brings theirs), markers dropped, those in ``without`` left out."""
    own = canonicalize_name(name)
    chosen: dict[str, Requirement] = {}
    pending, seen = sorted(extras), set(extras)
    environments = [{"extra": ""}]
    while True:
        for requirement in requires:
            if requirement.marker and not any(
                requirement.marker.evaluate(env) for env in environments
            ):
                continue
            key = canonicalize_name(requirement.name)
            if key == own:
                pending += sorted(requirement.extras - seen)
                seen |= requirement.extras
            elif key not in without:
                requirement.marker = None
                chosen[str(requirement)] = requirement
        if not pending:
            return list(chosen.values())
        environments = [{"extra": extra} for extra in pending]
        pending = []


def main() -> None:
    """Write OUT_DIR/torch.txt and OUT_DIR/other.txt for the wheel."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--extras", default="", help="comma-separated extras to include")
    parser.add_argument("--without", default="", help="comma-separated packages to leave out")
    args = parser.parse_args()

    def names(text: str) -> set[str]:
        return {canonicalize_name(part) for part in text.replace(" ", ",").split(",") if part}

    name, provided, requires = wheel_metadata(args.wheel)
    extras = names(args.extras)
    if unknown := sorted(extras - provided):
        parser.error(
            f"{name} has no extra {', '.join(unknown)}; it has {', '.join(sorted(provided))}"
        )
    chosen = resolve(name, requires, extras, names(args.without))
    torch = [str(r) for r in chosen if canonicalize_name(r.name) in TORCH_INDEX_PACKAGES]
    other = [str(r) for r in chosen if canonicalize_name(r.name) not in TORCH_INDEX_PACKAGES]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "torch.txt").write_text("".join(f"{line}\n" for line in torch))
    (args.out / "other.txt").write_text("".join(f"{line}\n" for line in other))


if __name__ == "__main__":
    main()
