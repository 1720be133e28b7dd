"""Video (issue 23): sampling, the min_frames rule and its segments, decoding every codec PyAV's
wheels carry, rotation, and the engine's timeline. Videos are written here with PyAV's own
encoders (tests/videos.py); :class:`~test_viewer.RedlessClassifier` flags blue, passes red.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from nsfwd.engine.batcher import Engine
from nsfwd.intake import ImageLimits, sniff_format
from nsfwd.intake.containers import iso_bmff_kind
from nsfwd.intake.video import Sampling, VideoReader, sample_times, sniff_video
from nsfwd.models.classifier import Classifier
from nsfwd.timeline import Timeline, VideoOptions, false_positive_rate
from nsfwd.verdict import Judgement, Policy, Region
from test_viewer import RedlessClassifier
from videos import BLUE, RED, solid, stretch, write_video

HIGH = {"neutral": 0.1, "low": 0.0, "medium": 0.0, "high": 0.9}
LOW = {"neutral": 0.9, "low": 0.0, "medium": 0.0, "high": 0.1}


def colour_model(classifier: Classifier) -> RedlessClassifier:
    """The tiny model's plumbing, flagging blue and passing red: P(high) is the lack of red."""
    model = RedlessClassifier(classifier.loaded, classifier.device, classifier.dtype, "redless")
    model.batches = []
    return model


@pytest.fixture(name="redless")
def redless_fixture(classifier: Classifier) -> RedlessClassifier:
    return colour_model(classifier)


def rgb(image: Image.Image, where: tuple[int, int]) -> tuple[int, int, int]:
    red, green, blue = np.asarray(image)[where[1], where[0]]
    return int(red), int(green), int(blue)


# --- sampling -------------------------------------------------------------------------------


def test_a_frame_every_interval_the_last_always() -> None:
    assert sample_times(4.0, Sampling(1.0)) == [0, 1, 2, 3, 4]
    assert sample_times(3.96, Sampling(1.0)) == [0, 1, 2, 3, 3.96]
    assert sample_times(0.0, Sampling(1.0)) == [0.0]
    assert sample_times(2.0, Sampling(0.5)) == [0, 0.5, 1, 1.5, 2]


def test_long_videos_are_spread_evenly_and_short_ones_densely() -> None:
    spread = sample_times(600.0, Sampling(1.0, max_frames=300))
    assert len(spread) == 300 and spread[0] == 0 and spread[-1] == 600
    assert {round(b - a, 6) for a, b in itertools.pairwise(spread)} == {round(600 / 299, 6)}
    assert sample_times(0.5, Sampling(1.0, min_frames=3)) == [0, 0.25, 0.5]


# --- the rule ---------------------------------------------------------------------------------


def timeline(flags: str, min_frames: int = 2) -> Timeline:
    """A timeline of one sample a second: ``x`` flagged, ``.`` not."""
    line = Timeline(Policy("strict", 0.5), min_frames)
    for second, flag in enumerate(flags):
        line.add([float(second)], HIGH if flag == "x" else LOW)
    return line


@pytest.mark.parametrize(
    ("flags", "segments"),
    [
        ("..........", []),
        ("....x.....", []),  # one flagged frame mid-video: a fluke, not a segment
        ("....xx....", [(4, 5)]),
        ("..xx..xxx.", [(2, 3), (6, 8)]),
        ("x.........", [(0, 0)]),  # the first frame alone: the poster every viewer sees
        (".........x", [(9, 9)]),  # the last frame alone: left on screen after playback
        ("x", [(0, 0)]),
    ],
)
def test_segments_need_min_frames_in_a_row_or_a_still(flags: str, segments: list[Any]) -> None:
    found = [(s.start, s.end) for s in timeline(flags).segments()]
    assert found == segments
    judged = timeline(flags).judgement(frames=10, frames_judged=10, duration=9, incomplete=None)
    assert Policy("strict", 0.5).flagged(judged.labels) == bool(segments)


def test_the_worst_moment_agrees_with_the_segments_at_every_threshold() -> None:
    rng = random.Random(4)
    for _ in range(300):
        scores = [rng.random() for _ in range(rng.randint(1, 12))]
        k = rng.randint(1, 4)
        threshold = rng.random()
        line = Timeline(Policy("strict", threshold), k)
        for second, score in enumerate(scores):
            line.add([float(second)], {"neutral": 1 - score, "high": score})
        judged = line.judgement(frames=1, frames_judged=1, duration=1, incomplete=None)
        assert (judged.labels["high"] > threshold) == bool(line.segments()), (scores, k)


def test_a_detectors_regions_are_answered_where_the_video_flags() -> None:
    """A detector's labels are each class's best region: the regions of the segment's frames
    and of the worst moment's come back, each with its frame and time; a lone flagged frame's
    do not (the rule does not flag it)."""
    line = Timeline(Policy(), 2)
    for second, score in enumerate([0.1, 0.1, 0.9, 0.1, 0.9, 0.8, 0.1]):
        found = Region("FEMALE_BREAST_EXPOSED", score, (0, 0, 4, 4), 25 * second, second)
        line.add([float(second)], {"FEMALE_BREAST_EXPOSED": score, "FACE_FEMALE": 0.5}, [found])
    judged = line.judgement(frames=175, frames_judged=7, duration=6.0, incomplete=None)
    assert judged.segments == [{"start": 4.0, "end": 5.0, "score": 0.9}]
    assert [(r.frame, r.time) for r in judged.regions or ()] == [(100, 4), (125, 5)]
    assert judged.flagged(Policy()) and judged.video is not None and judged.video.time == 5.0
    stored = Judgement.from_stored(judged.labels, judged.stored(), segments=judged.segments)
    assert stored == judged


def test_the_false_positive_arithmetic() -> None:
    def brute(p: float, n: int, k: int) -> float:
        total = 0.0
        for bits in itertools.product([0, 1], repeat=n):
            line = timeline("".join(".x"[b] for b in bits), k)
            if line.segments():
                total += float(np.prod([p if b else 1 - p for b in bits]))
        return total

    for n, k in [(1, 2), (5, 2), (7, 3), (8, 2)]:
        assert false_positive_rate(0.06, n, k) == pytest.approx(brute(0.06, n, k))
    assert false_positive_rate(0.06, 61, 1) == pytest.approx(1 - 0.94**61)  # any frame: 97.7%
    assert false_positive_rate(0.06, 61, 2) < 0.3


def test_options_from_a_request_or_a_key() -> None:
    server = VideoOptions(interval=1.0, max_frames=300, min_frames=2)
    assert server.overridden({"interval": 0.5, "min_frames": None}).interval == 0.5
    assert server.overridden({"max_frames": 10_000}).max_frames == 300  # only lowered
    for bad in ({"interval": 0}, {"interval": "1"}, {"min_frames": 0}, {"min_frames": 301},
                {"stop_on_flag": "yes"}, {"fps": 2}):  # fmt: skip
        with pytest.raises(ValueError):
            server.overridden(bad)


# --- formats ----------------------------------------------------------------------------------


def test_video_brands_are_told_from_image_brands() -> None:
    def ftyp(major: bytes, *compatible: bytes) -> bytes:
        body = major + b"\0\0\0\0" + b"".join(compatible)
        return (8 + len(body)).to_bytes(4, "big") + b"ftyp" + body + b"\0" * 16

    assert iso_bmff_kind(ftyp(b"heic", b"mif1", b"heic")) == "image"
    assert iso_bmff_kind(ftyp(b"avif", b"avif", b"mif1", b"miaf")) == "image"
    assert iso_bmff_kind(ftyp(b"mif1", b"heic", b"iso8")) == "image"
    assert iso_bmff_kind(ftyp(b"isom", b"isom", b"avc1", b"mp41")) == "video"
    # an image brand decides, as the image intake reads it (nsfwd.intake.isobmff)
    assert iso_bmff_kind(ftyp(b"mp42", b"mp42", b"mif1")) == "image"
    assert sniff_format(ftyp(b"mp42", b"mp42", b"mif1")) == "HEIF"
    assert iso_bmff_kind(ftyp(b"XYZW")) == "video"  # a camera's own brand
    assert sniff_video(ftyp(b"qt  ")) == "MOV"
    assert sniff_video(ftyp(b"heic", b"mif1")) is None


@pytest.mark.parametrize(
    ("codec", "fmt", "name"),
    [
        ("h264", "MP4", "H.264"),
        ("h265", "MP4", "H.265"),
        ("av1-mp4", "MP4", "AV1"),
        ("h264-mov", "MOV", "H.264"),
        ("vp8", "WEBM", "VP8"),
        ("vp9", "WEBM", "VP9"),
        ("av1", "MKV", "AV1"),
    ],
)
def test_every_codec_decodes_at_the_sampled_times(codec: str, fmt: str, name: str) -> None:
    seconds = 1.0 if codec == "vp8" else 3.0  # libvpx's VP8 encoder is slow
    data = write_video(stretch(0.4, 1) if codec == "vp8" else stretch(1, 2), seconds, codec=codec)
    assert sniff_video(data) == fmt
    reader = VideoReader(data, lambda image: rgb(image, (80, 60)), sampling=Sampling(0.5))
    assert (reader.info.format, reader.info.codec) == (fmt, name)
    samples = reader.read(100)
    assert reader.done and reader.incomplete is None
    blue = [s.times[0] for s in samples if s.image[2] > 200 and s.image[0] < 50]
    assert blue == ([0.5, 0.96] if codec == "vp8" else [1.0, 1.5])
    # Neither encoding (videos.scheduling_kept) nor decoding leaves this thread real-time.
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_a_phone_video_is_judged_upright() -> None:
    """Stored sideways (red on the left, blue on the right) with a display matrix that turns
    it a quarter counterclockwise: upright, red is at the bottom."""

    def sideways(_: float) -> Any:
        frame = solid((160, 120), RED)
        frame[:, 80:] = BLUE
        return frame

    data = write_video(stretch(0, 0), 1.0, frame_at=sideways, rotation=90)
    reader = VideoReader(data, lambda image: image, sampling=Sampling(1.0))
    image: Image.Image = reader.read(1)[0].image
    assert image.size == (120, 160)
    top, bottom = rgb(image, (60, 20)), rgb(image, (60, 140))
    assert top[2] > 200 > top[0] and bottom[0] > 200 > bottom[2]


# --- through the engine -------------------------------------------------------------------------


def judge(engine_model: RedlessClassifier, data: bytes, **options: Any) -> Judgement:
    async def main() -> Judgement:
        engine = Engine(engine_model, max_batch_size=4, limits=ImageLimits())
        await engine.start()
        try:
            return await engine.judge(data, Policy("strict", 0.5), video=VideoOptions(**options))
        finally:
            await engine.stop()

    return asyncio.run(main())


def test_a_flagged_stretch_is_one_segment_in_its_place(redless: RedlessClassifier) -> None:
    data = write_video(stretch(10.0, 12.0), 20.0)
    judged = judge(redless, data)
    assert judged.video is not None and judged.segments is not None
    assert len(judged.segments) == 1
    segment = judged.segments[0]
    assert 9.0 <= segment["start"] <= 10.0 + 1 and 10.0 <= segment["end"] <= 12.0
    assert segment["score"] > 0.9 and judged.labels["high"] > 0.9
    assert 10.0 <= judged.video.time <= 12.0
    assert judged.video.frames_judged == 21 and judged.video.incomplete is None
    assert judged.details()["frames"] == 500 and judged.details()["duration"] == 19.96
    assert len(redless.batches) >= 6 and max(redless.batches) <= 4


def test_a_lone_flagged_frame_flags_only_as_the_poster(redless: RedlessClassifier) -> None:
    first = judge(redless, write_video(stretch(0.0, 0.04), 5.0))
    assert [(s["start"], s["end"]) for s in first.segments or []] == [(0.0, 0.0)]
    middle = judge(redless, write_video(stretch(2.0, 2.04), 5.0))
    assert middle.segments == [] and middle.labels["high"] < 0.5


def test_stop_on_flag_ends_the_decoding_at_the_first_segment(
    redless: RedlessClassifier,
) -> None:
    data = write_video(stretch(2.0, 20.0), 20.0)
    judged = judge(redless, data, stop_on_flag=True)
    assert judged.video is not None and judged.video.incomplete is not None
    assert "stop_on_flag" in judged.video.incomplete
    assert judged.video.frames_judged <= 8 and judged.segments


# --- the benchmark --------------------------------------------------------------------------------


def test_the_bench_video_suite_measures_decoding_beside_judging(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nsfwd.cli import main

    out = tmp_path / "bench.json"
    args = ["bench", "--arch", "eva02_tiny_patch14_224", "--suites", "video", "--video-size",
            "320x240", "--video-seconds", "3", "--batch-size", "2", "--json", str(out)]  # fmt: skip
    assert main(args) == 0
    run = json.loads(out.read_text())["results"]["video"]
    assert (run["codec"], run["size"], run["frames"]) == ("H.264", "320x240", 90)
    assert run["frames_judged"] == 4 and run["mbit_s"] > 1  # 0, 1, 2 s and the last frame
    assert run["decode_s"] > 0 and run["judge_s"] > 0 and run["frames_judged_per_s"] > 0
    assert "decoding is" in capsys.readouterr().out
