"""Time the intake per format against the model (BENCHMARKS.md, "Formats"): a 12-megapixel
photograph as JPEG, HEIC and AVIF, and a 100-frame GIF, each from bytes to the prepared
pictures the model takes (checks, structure, decoding, orientation, colour, resize), next to
the model's time for those pictures (its time for one picture, times the pictures judged: on
a CPU a batch costs about the sum of its pictures), on a random-weight EVA-02-B/448 (the
default model's architecture; the same compute as the trained one).

Rounds alternate the formats, so a shared machine's load falls on all of them alike.

    PYTHONPATH=src python scripts/bench_formats.py [--rounds N] [--arch ARCH]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from io import BytesIO
from pathlib import Path
from typing import TypeVar

import numpy as np
import pillow_heif
import skimage.data
import torch
from PIL import Image

from nsfwd.intake import ImageLimits, load_prepared
from nsfwd.models.classifier import Classifier
from nsfwd.models.synthetic import write_timm_checkpoint

T = TypeVar("T")
PHOTO_SIZE = (4032, 3024)  # a 12 MP phone photograph
GIF_SIZE, GIF_FRAMES = (480, 360), 100
LIMITS = ImageLimits(max_bytes=64 << 20, max_side=4096, max_pixels=4096 * 4096,
                     max_animation_pixels=400 << 20)  # fmt: skip


def photograph() -> Image.Image:
    """The astronaut at 12 MP with a little grain, so the codecs have detail to code."""
    rng = np.random.default_rng(0)
    base = np.asarray(
        Image.fromarray(skimage.data.astronaut()).resize(PHOTO_SIZE, Image.Resampling.BICUBIC)
    )
    grain = rng.normal(0, 6, base.shape)
    return Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8))


def encoded(picture: Image.Image, fmt: str, **params: object) -> bytes:
    out = BytesIO()
    if fmt == "HEIC":
        pillow_heif.from_pillow(picture).save(out, **params)
    else:
        picture.save(out, fmt, **params)
    return out.getvalue()


def animated_gif() -> bytes:
    """100 frames of 480x360 (the astronaut panning), 40 ms each."""
    source = Image.fromarray(skimage.data.astronaut()).resize((960, 720))
    frames = [source.crop((4 * i, 3 * i, 4 * i + 480, 3 * i + 360)) for i in range(GIF_FRAMES)]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40)


def timed(run: Callable[[], T]) -> tuple[float, T]:
    """``run()``'s time in milliseconds, and its result."""
    started = time.perf_counter()
    result = run()
    return (time.perf_counter() - started) * 1000, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--arch", default="eva02_base_patch14_448")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = write_timm_checkpoint(Path(folder), arch=args.arch)
        classifier = Classifier.load(str(checkpoint), dtype="float32")
    picture = photograph()
    files = {
        "JPEG q90": encoded(picture, "JPEG", quality=90),
        "HEIC q75": encoded(picture, "HEIC", quality=75),  # a phone's size, some 3 MB
        "AVIF q80": encoded(picture, "AVIF", quality=80, speed=8),
        "GIF 100 frames": animated_gif(),
    }
    intake: dict[str, list[float]] = {name: [] for name in files}
    model: list[float] = []
    pictures: dict[str, int] = {}
    for round_ in range(args.rounds):
        for name, data in files.items():
            took, views = timed(partial(load_prepared, data, classifier.prepare, LIMITS))
            intake[name].append(took)
            pictures[name] = len(views.images)
            if name == "JPEG q90":
                model.append(timed(partial(classifier.predict, torch.stack(views.images)))[0])
        print(f"round {round_ + 1} of {args.rounds} done", file=sys.stderr, flush=True)
    per_picture = statistics.median(model)
    jpeg = statistics.median(intake["JPEG q90"]) + per_picture
    print(
        f"{args.arch}, float32, {torch.get_num_threads()} threads, median of {args.rounds}; "
        f"the model: {per_picture:.0f} ms a picture"
    )
    print("| file | bytes | pictures judged | intake | model | judged in all | / JPEG |")
    print("|---|---|---|---|---|---|---|")
    for name, data in files.items():
        took, ran = statistics.median(intake[name]), per_picture * pictures[name]
        print(
            f"| {name} | {len(data):,} | {pictures[name]} | {took:.0f} ms | {ran:.0f} ms | "
            f"{took + ran:.0f} ms | {(took + ran) / jpeg:.2f}x |"
        )


if __name__ == "__main__":
    main()
