"""Inputs beyond local files: fsspec URLs and manifests, listed and read where the work runs.

An input is a local file or folder, a URL that fsspec opens (``s3://bucket/prefix/``,
``gs://...``; credentials and ``AWS_ENDPOINT_URL`` as the filesystem's library reads them), or a
manifest: a ``.txt`` of paths or URLs, one a line, or a ``.csv`` or ``.parquet`` with a
``path`` or ``url`` column. Each image keeps the name it was given as its record's ``path``, so
records match a single-machine run's; relative local names are read from the folder the
command ran in (``cwd``), wherever the reading runs.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from nsfwd.intake import ImageError, ImageLimits, read_image_file
from nsfwd.intake.files import MEDIA_SUFFIXES, check_file_size, find_media

MANIFEST_SUFFIXES = frozenset({".txt", ".csv", ".parquet"})
MANIFEST_COLUMNS = ("path", "url")
"""The manifest columns that name the images, tried in this order."""


def is_url(name: str) -> bool:
    """Whether ``name`` is a URL (``scheme://...``) rather than a local path."""
    scheme, sep, _ = name.partition("://")
    return bool(sep) and scheme.isascii() and scheme.replace("+", "").isalnum()


def is_manifest(name: str) -> bool:
    """Whether ``name`` is a list of images rather than an image or a folder."""
    return _suffix(name) in MANIFEST_SUFFIXES


def location(name: str, cwd: str) -> str:
    """Where to read ``name`` from: a URL as it is, a local path made absolute from ``cwd``."""
    if is_url(name) or Path(name).is_absolute():
        return name
    return str(Path(cwd) / name)


def expand(name: str, cwd: str) -> Iterator[tuple[str, str]]:
    """The images an input names, as (record path, where to read it), one at a time: the input
    itself, the image files under a folder or URL prefix (recursive, sorted, hidden ones
    skipped), or the entries of a manifest (read as a stream, never whole)."""
    if is_manifest(name):
        yield from _manifest_entries(name, cwd)
        return
    if is_url(name):
        yield from _expand_url(name)
        return
    where = location(name, cwd)
    for found in find_media([where]):
        relative = os.path.relpath(found, where)
        path = Path(name) if relative == "." else Path(name) / relative  # as find_media has it
        yield str(path), str(found)


def _expand_url(url: str) -> Iterator[tuple[str, str]]:
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(url)
    if not fs.isdir(root):
        yield url, url
        return
    root = root.rstrip("/")
    for key in sorted(fs.find(root)):
        relative = PurePosixPath(key).relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if relative.suffix.lower() in MEDIA_SUFFIXES:
            full = fs.unstrip_protocol(key)
            yield full, full


def read(where: str, limits: ImageLimits) -> bytes | str:
    """The bytes of an image file or URL (at most ``limits.max_bytes + 1`` read), or the reason
    it cannot be classified, worded as ``nsfwd classify`` words it for a local file."""
    try:
        if is_url(where):
            return _read_url(where, limits)
        return read_image_file(Path(where), limits)
    except ImageError as exc:
        return str(exc)
    except IsADirectoryError:
        return "is a folder"
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return f"cannot read the file: {exc.strerror or exc}"


def _read_url(url: str, limits: ImageLimits) -> bytes:
    import fsspec

    with fsspec.open(url, "rb") as file:
        data: bytes = file.read(limits.max_bytes + 1)
        size = max(len(data), int(getattr(file, "size", 0) or 0))
    if len(data) > limits.max_bytes:
        check_file_size(size, limits, url)
    return data


def manifest_column(name: str, cwd: str) -> str | None:
    """The column of a CSV or Parquet manifest that names the images (None for ``.txt``);
    ValueError when it has neither a ``path`` nor a ``url`` column. Reads the header only."""
    suffix = _suffix(name)
    if suffix == ".txt":
        return None
    with _open(location(name, cwd)) as file:
        if suffix == ".csv":
            columns = next(csv.reader(io.TextIOWrapper(file, encoding="utf-8", newline="")), [])
        else:
            import pyarrow.parquet as pq

            columns = pq.ParquetFile(file).schema_arrow.names
    column = next((c for c in MANIFEST_COLUMNS if c in columns), None)
    if column is None:
        raise ValueError(
            f"the manifest {name} has no path or url column (its columns: {', '.join(columns)})"
        )
    return column


def _open(where: str) -> Any:
    import fsspec

    return fsspec.open(where, "rb").open()


def _manifest_entries(name: str, cwd: str) -> Iterator[tuple[str, str]]:
    column = manifest_column(name, cwd)
    with _open(location(name, cwd)) as file:
        for raw in _manifest_names(file, _suffix(name), column):
            entry = raw.strip()
            if entry and not entry.startswith("#"):
                yield entry, location(entry, cwd)


def _suffix(name: str) -> str:
    return PurePosixPath(name.rstrip("/")).suffix.lower()


def _manifest_names(file: Any, suffix: str, column: str | None) -> Iterator[str]:
    if suffix == ".txt":  # a name a line
        yield from io.TextIOWrapper(file, encoding="utf-8")
    elif suffix == ".csv":
        for row in csv.DictReader(io.TextIOWrapper(file, encoding="utf-8", newline="")):
            yield str(row.get(column or "") or "")
    else:
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(file).iter_batches(columns=[column], batch_size=65_536):
            yield from (str(value or "") for value in batch.column(0).to_pylist())
