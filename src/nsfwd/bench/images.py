"""The images a benchmark runs on: generated photo-like JPEGs, a folder of the user's own, or
the real photographs that ship with scikit-image (for the parity suite)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from nsfwd.intake.files import find_images

NOISE_SIGMA = 4.0
"""Grain added to the generated JPEGs: at 1024x768 and quality 90 they come out near 150 KB,
the size of a typical photo upload."""

PHOTOGRAPHS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "camera.png",  # grayscale
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "coins.png",  # grayscale
    "moon.png",  # grayscale
    "brick.png",  # grayscale
    "grass.png",  # grayscale
    "gravel.png",  # grayscale
)
"""scikit-image's bundled photographs (``skimage.data``), read from its package folder: no
download. Real pictures have the edges and textures where resizing paths differ most."""


def _make_jpeg(path: Path, size: tuple[int, int], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    width, height = size
    coarse = rng.integers(0, 256, (height // 64 + 1, width // 64 + 1, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC))
    grain = rng.standard_normal((height, width, 3), dtype=np.float32) * NOISE_SIGMA
    pixels = np.clip(smooth.astype(np.float32) + grain, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def make_jpegs(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """``count`` photo-like JPEGs (smooth colour fields with grain, ~150 KB at 1024x768) in
    ``folder``, made on all cores; the same seed gives the same files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"bench-{i:05d}.jpg" for i in range(count)]
    with ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
        return list(pool.map(_make_jpeg, paths, itertools.repeat(size), range(seed, seed + count)))


def folder_images(folder: Path, count: int) -> list[Path]:
    """The first ``count`` image files under ``folder`` (as ``nsfwd classify`` finds them),
    repeated in order if there are fewer; ValueError if there are none."""
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    found = list(find_images([folder]))
    if not found:
        raise ValueError(f"no image files under {folder}")
    return list(itertools.islice(itertools.cycle(found), count))


def photographs(
    folder: Path, size: tuple[int, int], names: Sequence[str] = PHOTOGRAPHS
) -> list[Path]:
    """scikit-image's photographs fitted to ``size`` (bicubic, centre-cropped to its aspect
    ratio) and saved as quality-90 JPEGs in ``folder``, grayscale ones kept grayscale.

    Raises ImportError saying what to install when scikit-image is missing.
    """
    try:
        import skimage.data
    except ImportError as exc:
        raise ImportError(
            "the parity suite's photographs come with scikit-image: pip install scikit-image"
        ) from exc
    source = Path(skimage.data.__file__).parent
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        with Image.open(source / name) as photo:
            mode = "L" if photo.mode in ("L", "I;16", "I") else "RGB"
            fitted = ImageOps.fit(photo.convert(mode), size, Image.Resampling.BICUBIC)
        path = folder / f"{Path(name).stem}.jpg"
        fitted.save(path, quality=90)
        paths.append(path)
    return paths
