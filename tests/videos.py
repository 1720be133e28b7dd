"""Real videos for tests, written with PyAV's own encoders (FFmpeg's libx264, libx265,
libvpx, libvpx-vp9 and SVT-AV1, all in PyAV's wheels): solid colours by time, so that a model
that reads colours (``test_viewer.RedlessClassifier``: red is safe, blue explicit) tells where
the flagged stretch is."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from io import BytesIO
from typing import Any, Final

import av
import numpy as np

RED: Final = (255, 0, 0)
BLUE: Final = (0, 0, 255)

CODECS: Final[dict[str, tuple[str, str, dict[str, str]]]] = {
    # name: (encoder, container format, fast options)
    "h264": ("libx264", "mp4", {"preset": "ultrafast"}),
    "h265": ("libx265", "mp4", {"preset": "ultrafast", "x265-params": "log-level=error"}),
    "vp8": ("libvpx", "webm", {"deadline": "realtime", "cpu-used": "16"}),
    "vp9": ("libvpx-vp9", "webm", {"deadline": "realtime", "cpu-used": "8"}),
    "av1": ("libsvtav1", "matroska", {"preset": "12"}),
    "av1-mp4": ("libsvtav1", "mp4", {"preset": "12"}),
    "h264-mov": ("libx264", "mov", {"preset": "ultrafast"}),
    "h264-mkv": ("libx264", "matroska", {"preset": "ultrafast"}),
}
"""The codecs tests write, each in a container that carries it."""


def stretch(
    start: float, end: float, inside: tuple[int, int, int] = BLUE
) -> Callable[[float], Any]:
    """Colours by time: ``inside`` from ``start`` (included) to ``end`` (excluded), red
    elsewhere."""
    return lambda t: inside if start <= t < end else RED


def write_video(
    colour_at: Callable[[float], Any],
    seconds: float,
    *,
    codec: str = "h264",
    fps: int = 25,
    size: tuple[int, int] = (160, 120),
    rotation: int | None = None,
    keyint: int | None = None,
    frame_at: Callable[[float], np.ndarray[Any, Any]] | None = None,
    audio: bool = False,
) -> bytes:
    """A video of ``seconds`` at ``fps``: each frame solid ``colour_at(t)`` (or
    ``frame_at(t)``, an RGB array), encoded with ``codec`` (:data:`CODECS`); ``rotation``
    (degrees counterclockwise) is written as the stream's display matrix, as phones do."""
    encoder, container, options = CODECS[codec]
    out = BytesIO()
    with scheduling_kept(), av.open(out, "w", format=container) as muxer:
        stream = muxer.add_stream(encoder, rate=fps, options=dict(options))
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        if keyint is not None:
            stream.codec_context.gop_size = keyint
        if rotation is not None:
            stream.set_display_rotation(rotation)
        sound = muxer.add_stream("aac", rate=8000) if audio else None
        assert sound is None or isinstance(sound, av.AudioStream)
        for index in range(round(seconds * fps)):
            t = index / fps
            pixels = frame_at(t) if frame_at is not None else solid(size, colour_at(t))
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            muxer.mux(stream.encode(frame))
        muxer.mux(stream.encode(None))
        if sound is not None:
            samples = av.AudioFrame.from_ndarray(
                np.zeros((1, 8000), np.float32), format="fltp", layout="mono"
            )
            samples.sample_rate = 8000
            muxer.mux(sound.encode(samples))
            muxer.mux(sound.encode(None))
    return out.getvalue()


@contextlib.contextmanager
def scheduling_kept() -> Iterator[None]:
    """Put the calling thread's scheduling back as it was. SVT-AV1 raises the thread that
    drives it to real time (SCHED_FIFO 99) where it may, as under root: a test worker, and every
    server and browser it starts later, then ran real-time, and a Chromium spinning in the
    kernel at that priority starved both cores for minutes."""
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        if os.sched_getscheduler(0) != policy:
            os.sched_setscheduler(0, policy, param)


def solid(size: tuple[int, int], colour: Any) -> np.ndarray[Any, Any]:
    """A frame of one colour."""
    width, height = size
    return np.full((height, width, 3), colour, np.uint8)
