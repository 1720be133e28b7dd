"""Time the ``nudenet`` detector against the nudenet package's own ``detect``, and redaction of a
12 MP photograph (BENCHMARKS.md, "Regions").

Both detectors run in this one process, alternating image by image, on scikit-image's
photographs; each is timed from the file on disk to the regions (ours: the intake's decoding,
then prepare, one session call and our post-processing; theirs: ``NudeDetector().detect(path)``).
Redaction is timed on the astronaut scaled to 4000x3000, as a JPEG and as a PNG, with three
boxes of about 600x600 pixels, for each style.

    PYTHONPATH=src python scripts/bench_regions.py [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import skimage.data
from PIL import Image

from nsfwd.intake import ImageLimits, load_image_file
from nsfwd.models.detector import Detector
from nsfwd.models.names import NUDENET
from nsfwd.redact import STYLES, Redaction, redact
from nsfwd.verdict import Region

PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg")


def _median_ms(run: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def bench_detect(rounds: int) -> None:
    """Median ms per image, ours and the package's, photo by photo."""
    from nudenet import NudeDetector

    folder = Path(skimage.data.__file__).parent
    ours, theirs = Detector.load(NUDENET), NudeDetector()
    print("image            ours ms  nudenet ms  ratio")
    totals = [0.0, 0.0]
    for name in PHOTOS:
        path = folder / name
        ours.detect([load_image_file(path)])  # warm
        theirs.detect(str(path))
        mine, package = 0.0, 0.0
        for _ in range(rounds):  # alternate, so load on the machine hits both alike
            mine += _median_ms(lambda p=path: ours.detect([load_image_file(p)]), 1)
            package += _median_ms(lambda p=path: theirs.detect(str(p)), 1)
        mine, package = mine / rounds, package / rounds
        totals[0] += mine
        totals[1] += package
        print(f"{name:15s} {mine:8.1f} {package:11.1f} {package / mine:6.2f}x")
    print(f"{'mean':15s} {totals[0] / 5:8.1f} {totals[1] / 5:11.1f} {totals[1] / totals[0]:6.2f}x")


def bench_redact(rounds: int) -> None:
    """Median ms to redact a 4000x3000 JPEG and PNG, per style."""
    folder = Path(skimage.data.__file__).parent
    big = Image.open(folder / "astronaut.png").convert("RGB").resize((4000, 3000))
    limits = ImageLimits(max_bytes=64 << 20, max_side=4000, max_pixels=4000 * 3000,
                         max_animation_pixels=4000 * 3000)  # fmt: skip
    regions = [Region("X", 0.9, (x, 1000, 600, 600)) for x in (400, 1700, 3000)]
    for fmt, options in (("JPEG", {"quality": 90}), ("PNG", {})):
        buffer = BytesIO()
        big.save(buffer, fmt, **options)
        data = buffer.getvalue()
        nothing = _median_ms(lambda d=data: redact(d, [], Redaction(), limits), rounds)
        cells = [f"none {nothing:.0f}"]
        for style in STYLES:
            took = _median_ms(
                lambda d=data, s=style: redact(d, regions, Redaction(None, s), limits), rounds
            )
            cells.append(f"{style} {took:.0f}")
        print(f"12 MP {fmt} ({len(data) / 1e6:.1f} MB), ms: " + ", ".join(cells))


def main() -> None:
    """Run both, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory():
        bench_detect(args.rounds)
        bench_redact(max(1, args.rounds // 3))


if __name__ == "__main__":
    main()
