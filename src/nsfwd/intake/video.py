"""Video intake: bytes in, the frames a viewer sees at the sampled times out, or a typed error.

PyAV decodes (FFmpeg, carried in its wheels: nothing to install beside it). The checks run
cheapest first, and no frame is decoded before the video is known to be within
:class:`VideoLimits`:

1. the container by content (:func:`sniff_video`: MP4, MOV, WebM, MKV) and the byte size;
2. opened with that demuxer forced, so FFmpeg never probes for another format (a playlist
   format would open other files or URLs), with at most ``max_streams`` streams;
3. one video stream (the first that is not cover art), in a codec on :data:`CODECS`; its
   frame size from the header against the side and pixel limits, which FFmpeg also enforces
   on every frame it allocates (``max_pixels``: a stream cannot grow later); its declared
   duration against ``max_seconds``;
4. an index of its frames from one pass over the packets, without decoding: their real
   timestamps (the real duration, also against ``max_seconds``, whatever the header declared),
   keyframes and count (against ``max_rate`` frames a second);
5. the sample times (:func:`sample_times`), each mapped to the frame on screen then;
6. decoding (:class:`VideoReader`): a seek to the keyframe before the next sampled frame where
   that skips work, else decoding on; each sampled frame turned upright by the stream's display
   matrix (phones record sideways and say so), converted to RGB and prepared. Frames that are
   not sampled are decoded (later frames depend on them) but never converted.

A file that ends early (truncated, or frames missing that its header promises) is judged on
the frames it holds and says so (:attr:`VideoReader.incomplete`); one with no decodable frame
is a :class:`~nsfwd.intake.errors.CorruptImageError`. Decoding checks a deadline between
frames and stops with :class:`~nsfwd.intake.errors.ImageComplexityError` once past it.
Audio is never decoded.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, Final, Generic, Literal, TypeVar

import av
import av.error
from PIL import Image

from nsfwd.intake.containers import is_quicktime, iso_bmff_kind, matroska_doctype
from nsfwd.intake.errors import (
    CorruptImageError,
    ImageComplexityError,
    ImageDimensionsError,
    ImageError,
    ImageTooLargeError,
    UnsupportedFormatError,
)
from nsfwd.intake.limits import MIB

T = TypeVar("T")

VideoFormat = Literal["MP4", "MOV", "WEBM", "MKV"]
VIDEO_FORMATS: Final[tuple[VideoFormat, ...]] = ("MP4", "MOV", "WEBM", "MKV")
DEMUXERS: Final[dict[VideoFormat, str]] = {
    "MP4": "mov",
    "MOV": "mov",
    "WEBM": "matroska",
    "MKV": "matroska",
}
"""The FFmpeg demuxer each container is opened with, and no other."""
CODECS: Final = {"h264": "H.264", "hevc": "H.265", "av1": "AV1", "vp8": "VP8", "vp9": "VP9"}
"""The video codecs decoded (FFmpeg's names, and how messages name them); any other is
refused unread, which keeps the rest of FFmpeg's decoders out of reach of uploads."""
VIDEO_MEDIA_TYPES: Final[dict[str, str]] = {
    "MP4": "video/mp4",
    "MOV": "video/quicktime",
    "WEBM": "video/webm",
    "MKV": "video/x-matroska",
}
"""Each accepted container's media type (as :data:`nsfwd.intake.sniff.MEDIA_TYPES` for
images)."""
VIDEO_EXTENSIONS: Final[dict[str, str]] = {"MP4": "mp4", "MOV": "mov", "WEBM": "webm", "MKV": "mkv"}
"""Each accepted container's usual file extension."""
VIDEO_SUFFIXES: Final = frozenset({".mp4", ".m4v", ".mov", ".webm", ".mkv"})
"""What folders are searched for besides images (a file named on the command line is tried
whatever its name: the content decides)."""
DECODER_THREADS: Final = 1
"""FFmpeg threads per video. One thread decodes a 1080p H.264 stream far faster than the
model judges its samples (BENCHMARKS.md), at the least CPU time per frame; several videos
decode at once on the server's decode pool."""
ACCEPTED: Final = "MP4 or MOV (H.264, H.265, AV1), WebM or MKV (VP8, VP9, AV1)"


def sniff_video(data: bytes) -> VideoFormat | None:
    """``"MP4"``, ``"MOV"``, ``"WEBM"`` or ``"MKV"`` from the first bytes of ``data``, else
    ``None`` (a HEIC or AVIF image is not a video:
    :func:`~nsfwd.intake.containers.iso_bmff_kind`)."""
    if iso_bmff_kind(data) == "video":
        return "MOV" if is_quicktime(data) else "MP4"
    doctype = matroska_doctype(data)
    if doctype is not None:
        return "WEBM" if doctype == "webm" else "MKV"
    return None


@dataclass(frozen=True)
class VideoLimits:
    """What an accepted video may be; checked from the header and the packets, before any
    frame is decoded."""

    max_bytes: int = 100 * MIB
    """Largest accepted file (uploads and URLs)."""
    max_seconds: float = 600.0
    """Longest accepted video, by its frames' timestamps and by its header
    (``NSFWD_MAX_VIDEO_SECONDS``)."""
    min_side: int = 16
    max_side: int = 4096
    max_pixels: int = 4096 * 2160
    """Largest frame (width x height): DCI 4K. Bounds what one decoded frame can take."""
    max_rate: float = 240.0
    """Most frames a second, on average over the video's length (at least one second): bounds
    the packets indexed and the frames decoding may have to go through."""
    max_streams: int = 16
    """Most streams a file may have (video, audio, subtitles...); more are refused unread."""

    def __post_init__(self) -> None:
        """Refuse limits that make no sense."""
        for name in ("max_bytes", "min_side", "max_side", "max_pixels", "max_streams"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VideoLimits.{name} must be a positive int, got {value!r}")
        if not (self.max_seconds > 0 and self.max_rate > 0):
            raise ValueError("VideoLimits.max_seconds and max_rate must be positive")

    @property
    def max_frames_indexed(self) -> int:
        """Most frames a video within these limits may hold."""
        return math.ceil(max(self.max_seconds, 1.0) * self.max_rate)


@dataclass(frozen=True)
class Sampling:
    """Which frames of a video are judged."""

    interval: float = 1.0
    """Seconds between samples, from the first frame; the last frame is always one."""
    max_frames: int = 300
    """Most samples; a longer video gets this many spread evenly, first and last included."""
    min_frames: int = 1
    """Fewest samples where the video has that many frames: a short clip is sampled more
    densely, so that a rule needing this many flagged samples can apply to it."""

    def __post_init__(self) -> None:
        """Refuse a sampling that cannot be done."""
        if not (math.isfinite(self.interval) and self.interval > 0):
            raise ValueError(f"interval must be a positive number of seconds, not {self.interval}")
        if self.max_frames < 1 or self.min_frames < 1:
            raise ValueError("max_frames and min_frames must be at least 1")


def sample_times(duration: float, sampling: Sampling) -> list[float]:
    """The sampled times of a video whose last frame starts ``duration`` seconds after its
    first: every ``interval`` from 0, and the last frame; at least ``min_frames`` times (spread
    evenly) and at most ``max_frames`` (spread evenly, first and last included)."""
    if duration <= 0:
        return [0.0]
    count = math.floor(duration / sampling.interval + 1e-9) + 1
    if count > sampling.max_frames:
        return _spread(duration, sampling.max_frames)
    times = [i * sampling.interval for i in range(count)]
    if duration - times[-1] > 1e-6:
        times.append(duration)
    if len(times) < sampling.min_frames:
        return _spread(duration, min(sampling.min_frames, sampling.max_frames))
    return times[: sampling.max_frames] if len(times) > sampling.max_frames else times


def _spread(duration: float, count: int) -> list[float]:
    if count == 1:
        return [0.0]
    return [duration * i / (count - 1) for i in range(count)]


@dataclass(frozen=True)
class VideoInfo:
    """What the header and the packets say about a video, before any frame is decoded."""

    format: VideoFormat
    codec: str
    """How messages name it: ``H.264``, ``H.265``, ``AV1``, ``VP8`` or ``VP9``."""
    width: int
    height: int
    """The frames' size as stored (before the display rotation)."""
    frames: int
    """Frames the stream holds (those its packets carry)."""
    duration: float
    """Seconds from the first frame's start to the last frame's start, by their timestamps."""
    declared: float | None
    """The duration the header declares, if it does."""


@dataclass(frozen=True)
class Sample(Generic[T]):
    """One decoded frame that is judged, and the sampled times it answers for."""

    image: T
    time: float
    """When it starts showing, in seconds from the first frame."""
    frame: int
    """Its index among the stream's frames, in presentation order."""
    times: tuple[float, ...]
    """The sampled times at which it is on screen (several when the frame stays up longer
    than the interval)."""


@dataclass
class _Target:
    pts: int
    frame: int
    times: list[float] = field(default_factory=list)


_FFMPEG_ERRORS: Final = (av.error.FFmpegError, OSError, ValueError, IndexError, OverflowError)
"""What PyAV raises for data it cannot read."""


class VideoReader(Generic[T]):
    """A video opened and indexed, its sampled frames decoded a few at a time by :meth:`read`.

    The constructor runs steps 1 to 5 of the module's list (cheap: no frame decoded) and raises
    an :class:`~nsfwd.intake.errors.ImageError` for a video they refuse. One :meth:`read` at a
    time (the engine hands the reader from one decode task to the next); :meth:`close` may be
    called from any thread at any time: a read in progress closes it when it ends, so FFmpeg
    never frees what a decoding thread still uses.
    """

    def __init__(
        self,
        data: bytes,
        prepare: Callable[[Image.Image], T],
        limits: VideoLimits = VideoLimits(),
        sampling: Sampling = Sampling(),
        *,
        deadline: float | None = None,
    ) -> None:
        """Open ``data`` and plan its samples; ``prepare`` makes each upright RGB frame into
        what is judged; past ``deadline`` (``time.monotonic()``), indexing stops with
        :class:`~nsfwd.intake.errors.ImageComplexityError`."""
        self.prepare = prepare
        self.limits = limits
        self.incomplete: str | None = None
        """Why the judged frames are not all that was sampled (the file ends early), or None."""
        fmt = sniff_video(data)
        if fmt is None:
            raise UnsupportedFormatError(f"not a video; accepted videos are {ACCEPTED}")
        if len(data) > limits.max_bytes:
            raise ImageTooLargeError(
                f"video is {len(data):,} bytes ({len(data) / MIB:.1f} MiB); the limit is "
                f"{limits.max_bytes:,} bytes ({limits.max_bytes / MIB:.1f} MiB)"
            )
        self._container = _open(data, fmt, limits)
        try:
            self._stream = _video_stream(self._container, fmt, limits)
            index = _index(self._container, self._stream, limits, deadline)
            self.info = _info(fmt, self._container, self._stream, index, limits)
            self._pts = index.pts
            self._keyframes = index.keyframes
            self._start = index.pts[0]
            self._time_base = float(self._stream.time_base or 0)
            self.times = sample_times(self.info.duration, sampling)
            self._targets = self._plan(self.times)
            self._short = _short_of_declared(self.info)
        except BaseException:
            self._container.close()
            raise
        self._next = 0
        self._frames: Iterator[av.VideoFrame] | None = None
        self._position: int | None = None  # pts of the last frame decoded
        self._decoded = 0  # frames decoded
        self._judged = 0  # sampled frames handed out
        self._stopped: str | None = None  # why decoding could not go on
        self._lock = threading.Lock()  # held while reading
        self._closing = False

    @property
    def planned(self) -> int:
        """Frames to decode and judge (distinct frames on screen at the sampled times)."""
        return len(self._targets)

    @property
    def done(self) -> bool:
        """Whether every planned frame has been read (or the file ended first)."""
        return self._next >= len(self._targets)

    def close(self) -> None:
        """Release the demuxer and decoder, now or, while a :meth:`read` runs, when it ends."""
        self._closing = True
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if self._closing and self._lock.acquire(blocking=False):
            try:
                self._frames = None
                self._next = len(self._targets)
                self._container.close()
            finally:
                self._lock.release()

    def read(self, count: int, deadline: float | None = None) -> list[Sample[T]]:
        """The next (up to) ``count`` sampled frames, decoded and prepared; an empty list once
        :attr:`done` (or closed). Past ``deadline`` (``time.monotonic()``) raises
        :class:`~nsfwd.intake.errors.ImageComplexityError`."""
        try:
            with self._lock:
                return [] if self._closing else self._read(count, deadline)
        finally:
            self._close_if_idle()  # a close() asked for while this read ran

    def _read(self, count: int, deadline: float | None) -> list[Sample[T]]:
        samples: list[Sample[T]] = []
        while len(samples) < count and not self.done:
            target = self._targets[self._next]
            frame = self._decode_to(target.pts, deadline)
            if frame is None:  # the file ended, or stopped decoding, before this frame
                self._next = len(self._targets)
                break
            self._next += 1
            self._judged += 1
            time_s = (target.pts - self._start) * self._time_base
            picture = self.prepare(self._upright(frame))
            samples.append(Sample(picture, time_s, target.frame, tuple(target.times)))
            if self._stopped is not None:  # the last frame there was: nothing follows it
                self._next = len(self._targets)
        if self.done and self.incomplete is None:
            self.incomplete = self._why_incomplete()
        if not samples and self._decoded == 0 and self.done:
            raise CorruptImageError(
                f"{self.info.format} video: no frame could be decoded ({self.incomplete})"
            )
        return samples

    def _why_incomplete(self) -> str | None:
        """Why the frames judged stop before the last sampled one (or the declared end)."""
        missing = len(self._targets) - self._judged
        if self._stopped is not None and missing:
            return (
                f"{self._stopped}: the frames before were judged, {missing} of "
                f"{len(self._targets)} sampled frames were not there"
            )
        return self._short

    # --- planning ------------------------------------------------------------------------

    def _plan(self, times: list[float]) -> list[_Target]:
        """The frame on screen at each sampled time (the last to start at or before it), in
        order; a frame on screen at several sampled times is decoded once."""
        targets: list[_Target] = []
        for moment in times:
            wanted = self._start + round(moment / self._time_base) if self._time_base else 0
            at = max(0, bisect.bisect_right(self._pts, wanted) - 1)
            pts = self._pts[at]
            if not targets or targets[-1].pts != pts:
                targets.append(_Target(pts, at))
            targets[-1].times.append(moment)
        return targets

    # --- decoding ------------------------------------------------------------------------

    def _decode_to(self, pts: int, deadline: float | None) -> av.VideoFrame | None:
        """The frame whose timestamp is ``pts`` (or, if the decoder never gives that one, the
        last before it); ``None`` when the file ends or cannot be decoded further first."""
        keyframe = self._keyframe_before(pts)
        ahead = self._frames is None or self._position is None or keyframe > self._position
        if ahead and not self._seek(keyframe):  # seeking skips work only past where we are
            return None
        previous: av.VideoFrame | None = None
        while True:
            try:
                frame = next(self._frames) if self._frames is not None else None
            except StopIteration:
                frame = None
            except _FFMPEG_ERRORS as exc:
                self._stop(f"decoding failed after {self._decoded_seconds():.2f} s ({exc})")
                return previous
            if frame is None:
                self._stop(f"the file ends after {self._decoded_seconds():.2f} s")
                return previous
            if deadline is not None and time.monotonic() > deadline:
                raise ImageComplexityError(
                    f"decoding the video took longer than the server allows for "
                    f"{self.planned} sampled frames"
                )
            if frame.pts is None:
                continue
            self._decoded += 1
            self._position = frame.pts
            if frame.pts == pts:
                return frame
            if frame.pts > pts:
                return frame if previous is None else previous
            previous = frame

    def _keyframe_before(self, pts: int) -> int:
        at = bisect.bisect_right(self._keyframes, pts) - 1
        return self._keyframes[max(at, 0)]

    def _seek(self, pts: int) -> bool:
        """Seek to the keyframe at ``pts`` (failing that, to the start); False when the file
        cannot be sought at all."""
        for where in dict.fromkeys((pts, self._start)):
            try:
                self._container.seek(where, stream=self._stream, backward=True)
            except _FFMPEG_ERRORS as exc:
                failure = exc
                continue
            self._frames = self._decode_frames()
            self._position = None
            return True
        self._stop(f"seeking failed at {self._decoded_seconds():.2f} s ({_detail(failure)})")
        return False

    def _decode_frames(self) -> Iterator[av.VideoFrame]:
        for packet in self._container.demux(self._stream):
            yield from packet.decode()

    def _stop(self, why: str) -> None:
        """Decoding cannot go on (``why``): the frames read so far are what is judged."""
        self._frames = None
        if self._stopped is None:
            self._stopped = why

    def _decoded_seconds(self) -> float:
        if self._position is None:
            return 0.0
        return max(0.0, (self._position - self._start) * self._time_base)

    def _upright(self, frame: av.VideoFrame) -> Image.Image:
        """The frame in RGB, turned as its display matrix says (FFmpeg hands the container's
        matrix to every frame; a quarter turn counterclockwise is 90)."""
        image: Image.Image = frame.to_image(src_color_range=frame.color_range)  # type: ignore[no-untyped-call]
        method = _ROTATIONS.get((round((frame.rotation or 0) / 90) * 90) % 360)
        return image if method is None else image.transpose(method)


_ROTATIONS: Final = {
    90: Image.Transpose.ROTATE_90,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_270,
}
"""PIL's counterclockwise turn for each display rotation."""


# --- opening and indexing ----------------------------------------------------------------


def _open(data: bytes, fmt: VideoFormat, limits: VideoLimits) -> Any:
    """The container opened with its own demuxer only; a :class:`CorruptImageError` (or too
    many streams) when FFmpeg cannot read its header."""
    try:
        return av.open(
            BytesIO(data),
            format=DEMUXERS[fmt],
            # FFmpeg stops adding streams past max_streams; one more than the limit shows it
            container_options={"max_streams": str(limits.max_streams + 1)},
            # the decoders FFmpeg may open to probe the streams: bounded like ours
            options={"max_pixels": str(limits.max_pixels), "threads": "1"},
        )
    except _FFMPEG_ERRORS as exc:
        hint = (
            " (truncated, or its index, the 'moov' box, is missing?)"
            if fmt in ("MP4", "MOV")
            else ""
        )
        raise CorruptImageError(
            f"{fmt} video is truncated or corrupt and cannot be opened{hint}: {_detail(exc)}"
        ) from exc


def _video_stream(container: Any, fmt: VideoFormat, limits: VideoLimits) -> Any:
    """The one video stream read (the first that is not cover art), checked against the codec
    list and the frame limits, its decoder set up; every other stream is discarded."""
    streams = list(container.streams)
    if len(streams) > limits.max_streams:
        raise ImageComplexityError(
            f"{fmt} video has {len(streams)} streams; at most {limits.max_streams} are accepted"
        )
    videos = [
        stream
        for stream in container.streams.video
        if not stream.disposition & av.stream.Disposition.attached_pic
    ]
    if not videos:
        raise UnsupportedFormatError(f"{fmt} file has no video stream (audio only?)")
    stream = videos[0]
    for other in streams:
        if other is not stream:
            other.discard = av.stream.Discard.all
    context = stream.codec_context
    if context is None:  # FFmpeg knows no decoder for it
        raise UnsupportedFormatError(
            f"{fmt} video in a codec FFmpeg does not know; accepted videos are {ACCEPTED}"
        )
    codec = context.codec.canonical_name  # the format, not the decoder's name
    if codec not in CODECS:
        raise UnsupportedFormatError(
            f"{fmt} video in the {codec!r} codec; accepted videos are {ACCEPTED}"
        )
    _check_frame_size(context.width, context.height, fmt, limits)
    context.options = {"max_pixels": str(limits.max_pixels)}
    context.thread_count = DECODER_THREADS
    return stream


def _check_frame_size(width: int, height: int, fmt: str, limits: VideoLimits) -> None:
    if width < limits.min_side or height < limits.min_side:
        raise ImageDimensionsError(
            f"{fmt} video frames are {width}x{height} px; each side must be at least "
            f"{limits.min_side} px"
        )
    if max(width, height) > limits.max_side or width * height > limits.max_pixels:
        raise ImageDimensionsError(
            f"{fmt} video frames are {width}x{height} px; the limit is {limits.max_side} px a "
            f"side and {limits.max_pixels:,} pixels a frame"
        )


@dataclass(frozen=True)
class _Index:
    pts: list[int]
    """Every frame's presentation timestamp, sorted, without repeats."""
    keyframes: list[int]
    """The keyframes' timestamps, sorted."""


def _index(container: Any, stream: Any, limits: VideoLimits, deadline: float | None) -> _Index:
    """The stream's frames from its packets (one demuxing pass, nothing decoded)."""
    cap = limits.max_frames_indexed
    pts: set[int] = set()
    keyframes: set[int] = set()
    try:
        for packet in container.demux(stream):
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is None or packet.is_discard:
                continue
            pts.add(stamp)
            if packet.is_keyframe:
                keyframes.add(stamp)
            if len(pts) > cap:
                raise ImageComplexityError(
                    f"video has more than {cap:,} frames, over the limit of "
                    f"{limits.max_rate:g} a second for {limits.max_seconds:g} s"
                )
            if deadline is not None and len(pts) % 256 == 0 and time.monotonic() > deadline:
                raise ImageComplexityError("reading the video's packets took too long")
    except ImageError:
        raise
    except _FFMPEG_ERRORS:
        pass  # a damaged tail: the frames before it are indexed
    if not pts:
        raise CorruptImageError("video holds no frames that can be read")
    ordered = sorted(pts)
    return _Index(ordered, sorted(keyframes) or ordered[:1])


def _info(
    fmt: VideoFormat, container: Any, stream: Any, index: _Index, limits: VideoLimits
) -> VideoInfo:
    """What the header and the index say, the durations checked against the limits."""
    time_base = float(stream.time_base or 0)
    if time_base <= 0:
        raise CorruptImageError(f"{fmt} video stream has no time base")
    duration = (index.pts[-1] - index.pts[0]) * time_base
    declared = _declared(container, stream)
    if declared is not None and declared > limits.max_seconds:
        raise ImageDimensionsError(
            f"video declares {declared:,.1f} s; the limit is {limits.max_seconds:g} s"
        )
    if not math.isfinite(duration) or duration > limits.max_seconds:
        raise ImageDimensionsError(
            f"video's frame timestamps span {duration:,.1f} s; the limit is "
            f"{limits.max_seconds:g} s"
        )
    if len(index.pts) > max(duration, 1.0) * limits.max_rate:
        raise ImageComplexityError(
            f"video has {len(index.pts):,} frames in {duration:.1f} s, over the limit of "
            f"{limits.max_rate:g} frames a second"
        )
    context = stream.codec_context
    return VideoInfo(
        format=fmt,
        codec=CODECS[context.codec.canonical_name],
        width=context.width,
        height=context.height,
        frames=len(index.pts),
        duration=duration,
        declared=declared,
    )


def _declared(container: Any, stream: Any) -> float | None:
    """The duration the header declares: the stream's, else the container's."""
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return float(container.duration / av.time_base)
    return None


def _short_of_declared(info: VideoInfo) -> str | None:
    """Why the frames stop well before the declared end (a truncated file), or None."""
    if info.declared is None:
        return None
    gap = info.declared - info.duration
    if gap <= max(1.0, 0.05 * info.declared):
        return None
    return (
        f"its frames end at {info.duration:.2f} s, though it declares {info.declared:.2f} s "
        "(truncated?); the frames it holds were judged"
    )


def _detail(exc: BaseException) -> str:
    if isinstance(exc, av.error.FFmpegError):
        return exc.strerror or type(exc).__name__
    return str(exc) or type(exc).__name__
