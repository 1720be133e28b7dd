"""The reliability campaign for video (issue 23): whatever bytes arrive behind a video
container's signature, the video intake gives sampled frames or one of its
:class:`~nsfwd.intake.ImageError`\\ s, never another exception, in bounded time. Inputs: small
valid videos of every codec, and the hostile corpus (tests/corpus/video-*), mutated as the
image campaign mutates images; ``NSFWD_CAMPAIGN_EXAMPLES`` raises the count.
"""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from nsfwd.intake import ImageError
from nsfwd.intake.video import Sampling, VideoReader
from test_campaign_intake import CAMPAIGN, DECODE_DEADLINE, corpus_files, mutated
from videos import stretch, write_video

SAMPLING = Sampling(interval=0.5, max_frames=16)
SEEDS: dict[str, bytes] = {
    **{
        f"clip.{codec}": write_video(stretch(0.5, 1.0), 1.0, codec=codec, size=(64, 48))
        for codec in ("h264", "h265", "vp9", "av1", "h264-mov")
    },
    **{name: data for name, data in corpus_files().items() if name.startswith("video-")},
}
"""Valid clips of each codec and container, and the hostile videos."""
SIGNATURES = [b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2", b"\x1a\x45\xdf\xa3"]


def assert_frames_or_image_error(data: bytes) -> None:
    """The video intake's contract: upright RGB frames, at most max_frames, or an
    ImageError; and no more than the decode deadline."""
    started = time.perf_counter()
    try:
        reader: VideoReader[Image.Image] = VideoReader(data, lambda image: image, sampling=SAMPLING)
        try:
            samples = reader.read(SAMPLING.max_frames + 1)
        finally:
            reader.close()
    except ImageError as exc:
        assert str(exc), "an ImageError must say what was wrong"
        return
    finally:
        assert time.perf_counter() - started < DECODE_DEADLINE.total_seconds()
    assert len(samples) <= SAMPLING.max_frames
    for sample in samples:
        assert sample.image.mode == "RGB" and sample.time >= 0


@CAMPAIGN
@given(data=mutated(SEEDS))
def test_mutated_videos_give_frames_or_an_image_error(data: bytes) -> None:
    assert_frames_or_image_error(data)


@CAMPAIGN
@given(prefix=st.sampled_from(SIGNATURES), rest=st.binary(max_size=4096))
def test_arbitrary_bytes_behind_a_video_signature(prefix: bytes, rest: bytes) -> None:
    assert_frames_or_image_error(prefix + rest)
