"""The video suite: what decoding a video's sampled frames costs beside judging them.

A phone-like clip is generated (or ``--video`` names one): H.264 High at 1080p30 and about
10 Mbit/s by default, a photo-like field panning under fresh grain, so that the decoder has as
much to do as with a real recording. Three figures, each on its own: the intake alone (open,
index, seek and decode every sampled frame, turn it into the model's input:
:class:`~nsfwd.intake.video.VideoReader` with the classifier's ``prepare``), the model alone on
those frames, and ``nsfwd classify``'s video path end to end (:func:`nsfwd.batch.videos.
judge_video`, decoding the next batch while the model runs), each in wall and CPU time (on a
shared machine CPU time is the steadier cost). The target (issue 23): at the default sampling
the intake costs at most a quarter of the model's time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from PIL import Image

from nsfwd.batch.videos import judge_video
from nsfwd.engine.protocol import DECODE_TIMEOUT_S
from nsfwd.engine.video import sampling
from nsfwd.intake.video import VideoLimits, VideoReader
from nsfwd.models.classifier import Classifier
from nsfwd.timeline import VideoOptions
from nsfwd.verdict import Policy

GRAIN_FRAMES = 16
"""Distinct grain patterns cycled through the generated clip (fresh grain every frame would
cost more to generate than to encode)."""


def make_video(
    path: Path,
    size: tuple[int, int] = (1920, 1080),
    seconds: float = 60.0,
    *,
    fps: int = 30,
    bitrate: int = 10_000_000,
) -> Path:
    """A phone-like H.264 clip at ``path`` (kept: an existing one is reused, since encoding a
    1080p minute takes minutes on a few cores)."""
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    width, height = size
    coarse = rng.integers(0, 256, (height // 48 + 1, 2 * width // 48 + 1, 3), dtype=np.uint8)
    field = np.asarray(
        Image.fromarray(coarse).resize((2 * width, height), Image.Resampling.BICUBIC)
    ).astype(np.int16)
    grains = [rng.integers(-8, 9, (height, width, 3), dtype=np.int16) for _ in range(GRAIN_FRAMES)]
    count = round(seconds * fps)
    partial = path.with_suffix(".partial.mp4")
    with av.open(str(partial), "w", format="mp4") as muxer:
        stream = muxer.add_stream(
            "libx264", rate=fps, options={"preset": "superfast", "profile": "high"}
        )
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = bitrate
        for index in range(count):
            left = index * width // max(count, 1)
            pixels = field[:, left : left + width] + grains[index % GRAIN_FRAMES]
            frame = av.VideoFrame.from_ndarray(np.clip(pixels, 0, 255).astype(np.uint8), "rgb24")
            muxer.mux(stream.encode(frame))
        muxer.mux(stream.encode(None))
    partial.replace(path)
    return path


def bench_video(classifier: Classifier, video: Path, batch_size: int) -> dict[str, Any]:
    """The intake, the model and the two together on ``video`` at the default sampling."""
    data = video.read_bytes()
    limits, options = VideoLimits(), VideoOptions()
    started, cpu = time.perf_counter(), time.process_time()
    reader = VideoReader(data, classifier.prepare, limits, sampling(options))
    frames: list[torch.Tensor] = []
    while batch := reader.read(batch_size):
        frames.extend(sample.image for sample in batch)
    reader.close()
    decode_s, decode_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    info = reader.info
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(frames), batch_size):
        classifier.predict(classifier.stack(frames[start : start + batch_size]))
    judge_s, judge_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    started = time.perf_counter()
    judged = judge_video(
        classifier,
        data,
        batch_size=batch_size,
        limits=limits,
        options=options,
        policy=Policy(),
        decode_timeout_s=DECODE_TIMEOUT_S * 100,  # measure the work, not the bound
    )
    both_s = time.perf_counter() - started
    assert judged.video is not None
    return {
        "video": str(video),
        "bytes": len(data),
        "codec": info.codec,
        "size": f"{info.width}x{info.height}",
        "frames": info.frames,
        "seconds": info.duration,
        "mbit_s": len(data) * 8 / max(info.duration, 1e-9) / 1e6,
        "frames_judged": len(frames),
        "batch_size": batch_size,
        "decode_s": decode_s,
        "decode_cpu_s": decode_cpu_s,
        "judge_s": judge_s,
        "judge_cpu_s": judge_cpu_s,
        "decode_over_judge": decode_s / judge_s,
        "decode_over_judge_cpu": decode_cpu_s / judge_cpu_s,
        "end_to_end_s": both_s,
        "frames_judged_per_s": judged.video.frames_judged / both_s,
    }
