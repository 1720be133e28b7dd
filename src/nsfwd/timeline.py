"""A video's verdict: its judged samples in time order become the worst moment and the segments
where the policy flags, under a rule that keeps per-frame false positives from compounding.

The rule (README, "Video"): a *segment* is a run of at least ``min_frames`` consecutive
flagged samples, or the first or the last sample flagged alone (the first frame is the poster
that players and chat apps show before playing, the last stays on screen when playback ends:
stills that viewers look at for as long as they like). A *moment* is any ``min_frames``
consecutive samples, or the first or the last sample alone, and scores the lowest score in it;
the worst moment is the one that scores highest, and the video answers with the labels of
the sample that sets its score. So the video's labels flag it exactly when it has a segment,
at every threshold of that policy, and a client that applies its own threshold to ``labels``
agrees with ``segments``. A detector's samples are flagged by each label's own region
threshold (:meth:`~nsfwd.verdict.Policy.flagged`), and a flagged sample ranks above any
unflagged one, so its labels agree with its segments too.

With a per-frame false-positive rate ``p`` and ``n`` samples judged independently, flagging
any flagged frame flags a benign video with probability ``1 - (1 - p)^n``; this rule, about
``2p + (n - min_frames) p^min_frames`` (:func:`false_positive_rate` computes it exactly).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from nsfwd.verdict import Judgement, Labels, Policy, Region

DEFAULT_INTERVAL: Final = 1.0
DEFAULT_MAX_FRAMES: Final = 300
DEFAULT_MIN_FRAMES: Final = 2
"""Two consecutive samples: a stretch of two intervals (2 s by default) is always caught,
while a benign minute's false positives fall from ``1 - (1 - p)^61`` to about ``2p + 59 p^2``
(README, "Video", has the figures)."""


@dataclass(frozen=True)
class VideoOptions:
    """How a video is sampled and judged: the server's (``NSFWD_VIDEO_*``), a key's own, or a
    request's."""

    interval: float = DEFAULT_INTERVAL
    """Seconds between samples, from the first frame; the last frame is always sampled."""
    max_frames: int = DEFAULT_MAX_FRAMES
    """Most frames judged; a longer video gets this many, spread evenly."""
    min_frames: int = DEFAULT_MIN_FRAMES
    """Consecutive flagged samples a segment needs (the first or last frame alone also makes
    one)."""
    stop_on_flag: bool = False
    """End the decoding at the first segment, for callers that only need to know whether to
    refuse (the answer then says the video was not judged to its end)."""

    def __post_init__(self) -> None:
        """Refuse options that cannot be applied, with a message for the client."""
        if isinstance(self.interval, bool) or not isinstance(self.interval, int | float):
            raise ValueError(f"interval must be a number of seconds, not {self.interval!r}")
        if not (math.isfinite(self.interval) and self.interval > 0):
            raise ValueError(f"interval must be a positive number of seconds, not {self.interval}")
        for name in ("max_frames", "min_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}")
        if self.min_frames > self.max_frames:
            raise ValueError(
                f"min_frames ({self.min_frames}) cannot exceed max_frames ({self.max_frames})"
            )
        if not isinstance(self.stop_on_flag, bool):
            raise ValueError(f"stop_on_flag must be true or false, not {self.stop_on_flag!r}")

    def overridden(self, changes: Mapping[str, Any] | None) -> VideoOptions:
        """These options with ``changes`` (a key's or a request's) in place where they are not
        None; ``max_frames`` may only be lowered. ValueError names what is wrong."""
        given = {key: value for key, value in (changes or {}).items() if value is not None}
        unknown = sorted(set(given) - set(OPTION_NAMES))
        if unknown:
            known = ", ".join(OPTION_NAMES)
            raise ValueError(f"unknown video option {unknown[0]!r}; the options are {known}")
        if "max_frames" in given and _is_int(given["max_frames"]):
            given["max_frames"] = min(given["max_frames"], self.max_frames)
        return replace(self, **given)

    def changes(self, base: VideoOptions) -> dict[str, Any]:
        """The fields where these options differ from ``base`` (what a request set)."""
        return {name: getattr(self, name) for name in OPTION_NAMES
                if getattr(self, name) != getattr(base, name)}  # fmt: skip


OPTION_NAMES: Final = ("interval", "max_frames", "min_frames", "stop_on_flag")
"""The video options a request or a key may set, by the names the APIs use."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Segment:
    """A stretch where the policy flags: from the first to the last flagged sample of a run
    (seconds from the first frame), and the highest score in it."""

    start: float
    end: float
    score: float

    def as_dict(self) -> dict[str, float]:
        """``{"start", "end", "score"}``, as every surface answers a segment."""
        return {"start": round(self.start, 3), "end": round(self.end, 3), "score": self.score}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Segment:
        """The segment :meth:`as_dict` describes."""
        return cls(float(doc["start"]), float(doc["end"]), float(doc["score"]))


@dataclass(frozen=True)
class VideoVerdict:
    """What a video's judgement says beyond its labels: when the worst moment is, how much was
    judged, and the segments."""

    time: float
    """Seconds from the first frame to the sample whose labels answer."""
    duration: float
    """Seconds from the first frame to the last, by their timestamps."""
    frames: int
    """Frames in the video stream."""
    frames_judged: int
    segments: tuple[Segment, ...] = ()
    incomplete: str | None = None
    """Why the judged frames stop before the video's end (the file is truncated, or
    ``stop_on_flag`` ended the decoding at the first segment); None when it was judged to
    its end."""

    def details(self) -> dict[str, Any]:
        """``judged`` for a video: ``time``, ``duration``, ``frames``, ``frames_judged`` and
        ``incomplete``."""
        return {
            "time": round(self.time, 3),
            "duration": round(self.duration, 3),
            "frames": self.frames,
            "frames_judged": self.frames_judged,
            "incomplete": self.incomplete,
        }

    @property
    def segment_dicts(self) -> list[dict[str, float]]:
        """The segments as the APIs answer them."""
        return [segment.as_dict() for segment in self.segments]

    @classmethod
    def from_details(
        cls, details: Mapping[str, Any], segments: Sequence[Mapping[str, Any]]
    ) -> VideoVerdict:
        """The verdict :meth:`details` and :attr:`segment_dicts` describe."""
        return cls(
            time=float(details["time"]),
            duration=float(details["duration"]),
            frames=int(details["frames"]),
            frames_judged=int(details["frames_judged"]),
            segments=tuple(Segment.from_dict(item) for item in segments),
            incomplete=details.get("incomplete"),
        )


def is_video_details(details: Mapping[str, Any] | None) -> bool:
    """Whether a ``judged`` document is a video's (it has a ``time``)."""
    return details is not None and "time" in details


class Timeline:
    """A video's judged samples, added in time order, under one policy and ``min_frames``."""

    def __init__(self, policy: Policy, min_frames: int = DEFAULT_MIN_FRAMES) -> None:
        self.policy = policy
        self.min_frames = min_frames
        self.times: list[float] = []
        self.scores: list[float] = []
        self.flags: list[bool] = []
        """Whether the policy flags each sample (for a detector, by each label's own threshold)."""
        self._labels: list[Labels] = []
        self._run = 0  # flagged samples in a row up to the last one
        self._found: list[tuple[tuple[float, ...], tuple[Region, ...]]] | None = None

    def add(
        self, times: Sequence[float], labels: Labels, regions: Sequence[Region] | None = None
    ) -> None:
        """One judged frame, on screen at each of ``times`` (sampled times, in order), and a
        detector's ``regions`` in it (None for a classifier)."""
        if regions is not None:
            self._found = [] if self._found is None else self._found
            self._found.append((tuple(times), tuple(regions)))
        score, flag = self.policy.score(labels), self.policy.flagged(labels)
        for moment in times:
            self.times.append(moment)
            self.scores.append(score)
            self.flags.append(flag)
            self._labels.append(labels)
            self._run = self._run + 1 if flag else 0

    @property
    def has_segment(self) -> bool:
        """Whether the samples so far make a segment for certain (the first sample flagged, or
        ``min_frames`` in a row): where ``stop_on_flag`` ends the decoding."""
        if not self.scores:
            return False
        return self.flags[0] or self._run >= self.min_frames

    def segments(self) -> tuple[Segment, ...]:
        """The runs of flagged samples that make segments (see the module)."""
        last = len(self.scores) - 1
        found: list[Segment] = []
        run: list[int] = []
        for index in [*range(last + 1), -1]:  # -1 closes the last run
            if index >= 0 and self.flags[index]:
                run.append(index)
                continue
            if run and (len(run) >= self.window or run[0] == 0 or run[-1] == last):
                peak = max(self.scores[i] for i in run)
                found.append(Segment(self.times[run[0]], self.times[run[-1]], peak))
            run = []
        return tuple(found)

    @property
    def window(self) -> int:
        """Samples in a moment: ``min_frames``, or all of them in a video with fewer."""
        return max(1, min(self.min_frames, len(self.scores)))

    def worst(self) -> int:
        """The index of the sample whose labels answer: the lowest-ranking sample of the
        highest-ranking moment (the earliest on ties), flagged samples ranking above the others,
        then by score."""
        if not self.scores:
            raise ValueError("no sample was judged")
        last, width = len(self.scores) - 1, self.window

        def rank(i: int) -> tuple[bool, float]:  # a flagged sample above any other
            return self.flags[i], self.scores[i]

        moments = [(rank(0), 0, 0), (rank(last), -last, last)]
        for start in range(last - width + 2):
            answer = min(range(start, start + width), key=lambda i: (rank(i), i))
            moments.append((rank(answer), -start, answer))
        return max(moments)[2]

    def judgement(
        self, *, frames: int, frames_judged: int, duration: float, incomplete: str | None
    ) -> Judgement:
        """The video's judgement: the worst moment's labels, and the :class:`VideoVerdict`."""
        index = self.worst()
        verdict = VideoVerdict(
            time=self.times[index],
            duration=duration,
            frames=frames,
            frames_judged=frames_judged,
            segments=self.segments(),
            incomplete=incomplete,
        )
        return Judgement(dict(self._labels[index]), frames=frames,
                         frames_judged=frames_judged, video=verdict,
                         regions=self._regions_shown(verdict))  # fmt: skip

    def _regions_shown(self, verdict: VideoVerdict) -> tuple[Region, ...] | None:
        """A detector's regions in the frames of the segments and of the worst moment (where
        the video is flagged, and what answers for it; not those of a lone flagged frame,
        which the rule does not flag); None for a classifier."""
        if self._found is None:
            return None

        def shown(moment: float) -> bool:
            inside = any(item.start <= moment <= item.end for item in verdict.segments)
            return inside or moment == verdict.time

        return tuple(region for times, found in self._found
                     if any(shown(moment) for moment in times) for region in found)  # fmt: skip


def false_positive_rate(p: float, samples: int, min_frames: int) -> float:
    """The probability that a benign video of ``samples`` independent samples, each a false
    positive with probability ``p``, gets a segment under the rule (first or last sample
    alone, or ``min_frames`` in a row); with ``min_frames`` 1, the any-frame rule."""
    if samples <= 0:
        return 0.0
    if min_frames <= 1 or samples <= 2:
        return 1 - (1 - p) ** samples
    # The first and the last sample must be benign (each alone would be a segment). In
    # between, no run of min_frames flagged samples: the state is how many flagged samples
    # end the run so far (0 .. min_frames - 1), and its probability.
    states = [1.0] + [0.0] * (min_frames - 1)
    for _ in range(samples - 2):
        states = [sum(states) * (1 - p)] + [states[run] * p for run in range(min_frames - 1)]
    return 1 - (1 - p) * sum(states) * (1 - p)
