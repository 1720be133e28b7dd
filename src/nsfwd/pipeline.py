"""Classify many image files: decode on worker threads while the model runs, keep input order."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch

from nsfwd.images import ImageError, ImageLimits, load_image_file
from nsfwd.models import Classifier, Labels

# Folders are searched for these; a file named on the command line is tried whatever its name.
# Formats nsfwd refuses are listed too, so such files get an error record rather than vanish.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".webp"}
    | {".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)


@dataclass(frozen=True)
class FileResult:
    """The outcome for one file: its labels, or why it could not be classified."""

    path: str
    labels: Labels | None = None
    error: str | None = None


def find_images(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Files as given, and image files under folders (recursive, sorted, hidden ones skipped)."""
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            yield path
            continue
        for child in sorted(path.rglob("*")):
            relative = child.relative_to(path).parts
            if any(part.startswith(".") for part in relative):
                continue
            if child.suffix.lower() in IMAGE_SUFFIXES and child.is_file():
                yield child


def _prepare(classifier: Classifier, path: Path, limits: ImageLimits) -> torch.Tensor | str:
    """The prepared pixels of ``path``, or the reason it cannot be classified."""
    try:
        return classifier.prepare(load_image_file(path, limits))
    except ImageError as exc:
        return str(exc)
    except IsADirectoryError:
        return "is a folder"
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return f"cannot read the file: {exc.strerror or exc}"


def classify_files(
    classifier: Classifier,
    paths: Iterable[Path],
    *,
    batch_size: int = 8,
    workers: int | None = None,
    limits: ImageLimits | None = None,
) -> Iterator[FileResult]:
    """Yield one result per path, in order, classifying ``batch_size`` images at a time.

    Worker threads decode and preprocess the next batches while the current one is on the model
    (Pillow and torch release the GIL), so on a CPU the cores stay busy with inference.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    limits = limits or ImageLimits()
    workers = workers or max(2, len(os.sched_getaffinity(0)))
    path_iter = iter(paths)
    with ThreadPoolExecutor(workers, thread_name_prefix="nsfwd-decode") as pool:
        pending: deque[list[tuple[Path, Future[torch.Tensor | str]]]] = deque()

        def submit_next_chunk() -> None:
            chunk = list(islice(path_iter, batch_size))
            if chunk:
                pending.append([(p, pool.submit(_prepare, classifier, p, limits)) for p in chunk])

        for _ in range(3):  # this batch and two more decoding ahead of the model
            submit_next_chunk()
        while pending:
            chunk = [(path, future.result()) for path, future in pending.popleft()]
            submit_next_chunk()
            yield from _run_chunk(classifier, chunk)


def _run_chunk(
    classifier: Classifier, chunk: list[tuple[Path, torch.Tensor | str]]
) -> Iterator[FileResult]:
    tensors = [item for _, item in chunk if isinstance(item, torch.Tensor)]
    labels = (
        iter(classifier.to_labels(classifier.predict(torch.stack(tensors)))) if tensors else None
    )
    for path, item in chunk:
        if isinstance(item, str):
            yield FileResult(str(path), error=item)
        else:
            assert labels is not None
            yield FileResult(str(path), labels=next(labels))
