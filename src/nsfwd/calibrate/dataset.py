"""A folder of labelled images for `nsfwd calibrate`: which layout it uses, and the truth.

The truth is the name of the subfolder an image sits in, in one of two layouts:

* two classes: ``safe`` (also ``neutral``, ``sfw``, ``normal``) and ``unsafe`` (also ``nsfw``);
  an unsafe image is one every policy should flag.
* Freepik's severity buckets: ``neutral``, ``low``, ``medium``, ``high``; each policy should
  flag the buckets it sums (:data:`nsfwd.verdict.POLICIES`), so moderate's truth is "medium or
  high" and lenient's "anything but neutral".

Anything else (another folder name, the two layouts mixed, images outside the class folders)
is refused with :class:`LayoutError`, whose message shows the expected layout: guessing what an
unknown folder means would make the figures quietly wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nsfwd.intake.files import find_images
from nsfwd.verdict import POLICIES

Layout = Literal["safe/unsafe", "severity"]

SAFE_NAMES = ("safe", "neutral", "sfw", "normal")
UNSAFE_NAMES = ("unsafe", "nsfw")
SEVERITY_NAMES = ("neutral", "low", "medium", "high")

EXPECTED_LAYOUT = """\
expected one subfolder per true class, in one of two layouts:
  DIR/safe/...    images no policy should flag   (or neutral/, sfw/, normal/)
  DIR/unsafe/...  images every policy should flag (or nsfw/)
or Freepik's severity buckets, each policy's truth following its definition:
  DIR/neutral/  DIR/low/  DIR/medium/  DIR/high/
  (strict flags high; moderate medium and high; lenient low, medium and high)"""


class LayoutError(ValueError):
    """The folder is not laid out as `nsfwd calibrate` expects; the message says how it should
    be."""


@dataclass(frozen=True)
class LabelledImage:
    """One image file and the class its folder names (``safe``/``unsafe``, or a bucket)."""

    path: Path
    label: str


@dataclass(frozen=True)
class LabelledSet:
    """The images under a calibration folder, in the order `nsfwd classify DIR` lists them."""

    root: Path
    layout: Layout
    classes: tuple[str, ...]
    """The classes of this layout, safest first (``safe``, ``unsafe`` or the four buckets)."""
    images: tuple[LabelledImage, ...]

    def positive_classes(self, policy: str) -> tuple[str, ...]:
        """The classes ``policy`` should flag: ``unsafe``, or the buckets it sums."""
        if self.layout == "safe/unsafe":
            return ("unsafe",)
        return POLICIES[policy]

    def counts(self) -> dict[str, int]:
        """Images per class, every class of the layout included (an empty one as 0)."""
        counts = dict.fromkeys(self.classes, 0)
        for image in self.images:
            counts[image.label] += 1
        return counts


def find_labelled(root: Path) -> LabelledSet:
    """The labelled images under ``root``; :class:`LayoutError` when it is not laid out as
    :data:`EXPECTED_LAYOUT` says."""
    if not root.is_dir():
        raise LayoutError(f"{root} is not a folder; {EXPECTED_LAYOUT}")
    entries = [entry for entry in sorted(root.iterdir()) if not entry.name.startswith(".")]
    loose = [entry.name for entry in entries if not entry.is_dir()]
    folders = [entry.name for entry in entries if entry.is_dir()]
    if loose:
        shown = ", ".join(loose[:3]) + (", ..." if len(loose) > 3 else "")
        raise LayoutError(
            f"{root} holds files outside the class folders ({shown}); {EXPECTED_LAYOUT}"
        )
    layout, aliases = _layout(root, {name.lower() for name in folders})
    classes = ("safe", "unsafe") if layout == "safe/unsafe" else SEVERITY_NAMES
    by_folder = {name: aliases[name.lower()] for name in folders}
    images = tuple(
        LabelledImage(path, by_folder[path.relative_to(root).parts[0]])
        for path in find_images([root])
    )
    return LabelledSet(root, layout, classes, images)


def _layout(root: Path, names: set[str]) -> tuple[Layout, dict[str, str]]:
    """The layout these (lower-cased) folder names make, and the class each folder stands for."""
    if not names:
        raise LayoutError(f"{root} has no class folders; {EXPECTED_LAYOUT}")
    severity = names & {"low", "medium", "high"}
    if severity or names <= set(SEVERITY_NAMES):
        unknown = names - set(SEVERITY_NAMES)
        if unknown:
            raise LayoutError(
                f"{root} mixes Freepik's severity buckets ({', '.join(sorted(severity))}) with "
                f"{', '.join(sorted(unknown))}; {EXPECTED_LAYOUT}"
            )
        return "severity", {name: name for name in names}
    unknown = names - set(SAFE_NAMES) - set(UNSAFE_NAMES)
    if unknown:
        raise LayoutError(
            f"{root} has folders nsfwd cannot read a truth from "
            f"({', '.join(sorted(unknown))}); {EXPECTED_LAYOUT}"
        )
    aliases = {name: "safe" if name in SAFE_NAMES else "unsafe" for name in names}
    return "safe/unsafe", aliases
