"""Fuzz the image intake or the multipart reader with atheris (libFuzzer, coverage-guided) for as
long as you like; the bounded version runs in ``make test`` (tests/test_campaign_intake.py and
tests/test_campaign_multipart.py). RELIABILITY.md says how to run it.

    python scripts/fuzz_intake.py images tests/corpus -max_total_time=3600
    python scripts/fuzz_intake.py videos tests/corpus -max_total_time=3600
    python scripts/fuzz_intake.py multipart -max_total_time=3600

Any exception other than the target's own refusal is a crash: libFuzzer stops and writes the
input to ``crash-<hash>`` in the current folder. Arguments after the target go to libFuzzer
(a corpus folder to start from and grow, ``-max_total_time``, ``-timeout``, ``-jobs`` ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator

import atheris

with atheris.instrument_imports(include=["nsfwd.intake", "nsfwd.api.http.multipart", "PIL",
                                          "pillow_heif", "python_multipart"]):  # fmt: skip
    from nsfwd.api.http.errors import ApiError
    from nsfwd.api.http.multipart import read_form
    from nsfwd.intake import ImageError, load_views
    from nsfwd.intake.video import Sampling, VideoReader


def images(data: bytes) -> None:
    """Pixels of every picture judged (frames, pages, images, thumbnails) or an ImageError,
    nothing else."""
    with contextlib.suppress(ImageError):
        load_views(data)


def videos(data: bytes) -> None:
    """Sampled frames or an ImageError, nothing else (FFmpeg itself is not instrumented: a
    crash in it is a crash of this process, which libFuzzer reports all the same)."""
    with contextlib.suppress(ImageError):
        reader = VideoReader(data, lambda image: image, sampling=Sampling(0.5, max_frames=8))
        try:
            reader.read(8)
        finally:
            reader.close()


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


def multipart(data: bytes) -> None:
    """Parts or a 4xx ApiError, nothing else. The first line is the Content-Type header."""
    header, _, body = data.partition(b"\n")
    content_type = header.decode("latin-1")  # as the server decodes headers
    try:
        asyncio.run(
            read_form(content_type, _one_chunk(body), part_limits={"job": 1024, "input": 65536})
        )
    except ApiError as exc:
        if not 400 <= exc.status < 500:
            raise


TARGETS = {"images": images, "videos": videos, "multipart": multipart}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer arguments...]")
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
