"""The verdict: label probabilities, the policy that turns them into a flag, and the judgement
an image is answered with (its worst picture's labels, and which picture that was).

Policies, from Freepik's model card: pick the lowest severity to flag, sum that bucket and every
bucket above it, and flag when the sum exceeds the threshold (0.5 by default).

* ``strict``: P(high) (blocks only explicit content)
* ``moderate``: P(medium) + P(high) (the default)
* ``lenient``: P(low) + P(medium) + P(high) (blocks anything not neutral)

For a classifier without severity buckets (for example ``Falconsai/nsfw_image_detection`` with
``normal``/``nsfw``) every policy scores 1 - P(safe label), the safe label being the first of
``neutral``, ``normal``, ``safe`` or ``sfw`` that the model has.

A detector (``nudenet``, a transformers object detector) answers with :class:`Region` boxes; its
labels are each class's best region score. A policy's region thresholds (by default NudeNet's
exposed explicit classes over 0.5) flag an image on a region whose label is over its own
threshold, whether the regions come from a detector alone or beside a classifier's labels (then
either flags).

A picture that matches a bank of known images (:mod:`nsfwd.banks`) is flagged whatever the
policy: its judgement carries the :class:`Match`, and the model need not run for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, cast

if TYPE_CHECKING:
    from nsfwd.intake.pictures import PictureKind
    from nsfwd.intake.views import Backdrop, Colours, Views
    from nsfwd.timeline import VideoVerdict

Labels = dict[str, float]
"""Probability per label, summing to 1."""

PolicyName = Literal["strict", "moderate", "lenient"]
POLICIES: dict[str, tuple[str, ...]] = {
    "strict": ("high",),
    "moderate": ("medium", "high"),
    "lenient": ("low", "medium", "high"),
}
DEFAULT_POLICY: PolicyName = "moderate"
DEFAULT_THRESHOLD = 0.5
SAFE_LABELS = ("neutral", "normal", "safe", "sfw")
DEFAULT_REGION_THRESHOLDS: tuple[tuple[str, float], ...] = tuple(
    (label, 0.5)
    for label in (
        "FEMALE_BREAST_EXPOSED",
        "FEMALE_GENITALIA_EXPOSED",
        "MALE_GENITALIA_EXPOSED",
        "BUTTOCKS_EXPOSED",
        "ANUS_EXPOSED",
    )
)
"""The region labels a policy flags by default, each over its own threshold: NudeNet's exposed
explicit classes (faces, feet, covered parts and the like are found but do not flag)."""


@dataclass(frozen=True)
class Region:
    """Where a detector found something: ``box`` is ``(x, y, width, height)`` in the pixels of
    the picture as a viewer sees it (upright, after EXIF rotation), in the frame it was found in.
    """

    label: str
    score: float
    box: tuple[int, int, int, int]
    frame: int = 0
    """The frame's index in the file (0 for a still image)."""
    time: float | None = None
    """Seconds into a video where the frame is shown (None for images)."""

    def as_dict(self) -> dict[str, Any]:
        """The wire form: ``{"label", "score", "box": [x, y, width, height], "frame"}``, and
        ``time`` for a video's frame."""
        found: dict[str, Any] = {
            "label": self.label,
            "score": self.score,
            "box": list(self.box),
            "frame": self.frame,
        }
        if self.time is not None:
            found["time"] = self.time
        return found

    @classmethod
    def from_dict(cls, found: Mapping[str, Any]) -> Region:
        """The region :meth:`as_dict` describes."""
        x, y, width, height = (int(v) for v in found["box"])
        time = found.get("time")
        return cls(
            str(found["label"]),
            float(found["score"]),
            (x, y, width, height),
            int(found.get("frame", 0)),
            None if time is None else float(time),
        )


class Finding(NamedTuple):
    """What a model says of one picture: its labels, and a detector's regions (None for a
    classifier)."""

    labels: Labels
    regions: list[Region] | None = None


def parse_region_thresholds(text: str) -> tuple[tuple[str, float], ...]:
    """``LABEL=T,LABEL=T`` (or an empty string, for none) as region thresholds; ValueError
    naming the bad part otherwise."""
    rules: list[tuple[str, float]] = []
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        label, sep, value = part.partition("=")
        try:
            threshold = float(value)
        except ValueError:
            threshold = math.nan
        if not sep or not label.strip() or not 0.0 <= threshold <= 1.0:
            raise ValueError(
                f"region threshold {part!r}: write LABEL=T with T between 0 and 1, "
                "e.g. FEMALE_BREAST_EXPOSED=0.5"
            )
        rules.append((label.strip(), threshold))
    return tuple(rules)


def format_region_thresholds(rules: Iterable[tuple[str, float]]) -> str:
    """Region thresholds as :func:`parse_region_thresholds` reads them."""
    return ",".join(f"{label}={threshold:g}" for label, threshold in rules)


CATEGORIES: Final = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
    "illicit/violent", "self-harm", "self-harm/intent", "self-harm/instructions", "sexual",
    "sexual/minors", "violence", "violence/graphic",
)  # fmt: skip
"""The moderation categories a verdict may be filed under (OpenAI's); a model's verdict is
``sexual``, and a bank may stand for any of them."""
JUDGED_CATEGORY: Final = "sexual"


@dataclass(frozen=True)
class Policy:
    """A named policy with its threshold."""

    name: PolicyName = DEFAULT_POLICY
    threshold: float = DEFAULT_THRESHOLD
    regions: tuple[tuple[str, float], ...] = DEFAULT_REGION_THRESHOLDS
    """Region labels that flag an image, each over its own threshold (empty: regions never
    flag)."""

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, not {self.name!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be between 0 and 1, not {self.threshold}")
        for label, threshold in self.regions:
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(f"region threshold for {label} must be between 0 and 1")

    def overridden(
        self, name: str | None = None, threshold: float | None = None, regions: str | None = None
    ) -> Policy:
        """This policy with ``name``, ``threshold`` and ``regions`` (region thresholds as
        ``LABEL=T,...``; empty: none) in place of its own where they are given: an API key's
        own setting over the server's. Raises ValueError when one is invalid."""
        return Policy(
            cast(PolicyName, name or self.name),
            self.threshold if threshold is None else threshold,
            self.regions if regions is None else parse_region_thresholds(regions),
        )

    def check(self, labels: Sequence[str]) -> None:
        """Raise ValueError when a model with these labels cannot be scored by this policy."""
        if self.scores(labels):
            return
        raise ValueError(
            f"cannot apply policy {self.name!r} to labels {list(labels)}: they have neither "
            f"the severity buckets nor a safe label ({', '.join(SAFE_LABELS)}), nor a region "
            "label the policy's region thresholds name (set them with --region-thresholds or "
            "NSFWD_REGION_THRESHOLDS, e.g. LABEL=0.5)"
        )

    def scores(self, labels: Iterable[str]) -> bool:
        """Whether this policy can score a model with these labels (:meth:`check` without
        raising)."""
        found = list(labels)
        return self._is_classifier(found) or bool(self._region_labels(found))

    def _is_classifier(self, labels: Sequence[str]) -> bool:
        """Whether these are a classifier's labels (this policy's severity buckets, or a safe
        label) rather than a detector's classes."""
        return set(POLICIES[self.name]) <= set(labels) or _safe_label(labels) is not None

    def _region_labels(self, labels: Iterable[str]) -> list[tuple[str, float]]:
        present = set(labels)
        return [(label, threshold) for label, threshold in self.regions if label in present]

    def score(self, probs: Mapping[str, float]) -> float:
        """The probability mass this policy counts as unsafe.

        Raises ValueError when a probability is NaN or infinite: NaN compares False with every
        threshold, so such scores would pass as unflagged; refusing them fails closed.
        """
        bad = nonfinite_labels(probs)
        if bad:
            raise ValueError(
                f"the scores for {', '.join(bad)} are not finite numbers (NaN or infinite); "
                "they cannot be judged, and are refused rather than passed as safe"
            )
        flagged = POLICIES[self.name]
        if set(flagged) <= probs.keys():
            return sum(probs[label] for label in flagged)
        self.check(list(probs))
        safe = _safe_label(list(probs))
        if safe is not None:
            return 1.0 - probs[safe]
        return max(probs[label] for label, _ in self._region_labels(probs))

    def flagged(self, probs: Mapping[str, float], regions: Iterable[Region] = ()) -> bool:
        """Whether an image is flagged: a classifier's score strictly above the threshold, or
        (a detector's labels, or ``regions`` found beside a classifier's) a region label over
        its own threshold."""
        if not self._is_classifier(list(probs)):
            self.score(probs)  # refuses what it cannot score, and NaN
            return any(probs[label] > limit for label, limit in self._region_labels(probs))
        return self.score(probs) > self.threshold or self.flags_regions(regions)

    def flags_regions(self, regions: Iterable[Region]) -> bool:
        """Whether any of ``regions`` has a label over that label's region threshold."""
        limits = dict(self.regions)
        return any(region.score > limits.get(region.label, math.inf) for region in regions)


def nonfinite_labels(probs: Mapping[str, float]) -> list[str]:
    """The labels whose probability is NaN or infinite (an empty list for usable scores)."""
    return [label for label, prob in probs.items() if not math.isfinite(prob)]


def _safe_label(labels: Sequence[str]) -> str | None:
    lowered = {label.lower(): label for label in labels}
    return next((lowered[name] for name in SAFE_LABELS if name in lowered), None)


def certain(labels: Sequence[str]) -> Labels:
    """Labels that every policy flags at any threshold below 1: all the probability on the
    most severe label (``high`` where the model has severity buckets, else the first label
    that is not the safe one). What an image matched in a bank is answered with when the
    model does not run, so that a client that reads only the labels refuses it too."""
    if not labels:
        raise ValueError("a model has at least one label")
    safe = _safe_label(labels)
    severe = "high" if "high" in labels else next((x for x in labels if x != safe), labels[-1])
    return {label: 1.0 if label == severe else 0.0 for label in labels}


def with_match(judgement: Judgement, match: Match, labels: Sequence[str]) -> Judgement:
    """``judgement`` (the model's) carrying a bank's ``match``, answered with labels that flag
    it (:func:`certain`) where the model's ``labels`` are known: a video's, whose timeline the
    model still gives."""
    return replace(judgement, labels=certain(labels) if labels else judgement.labels, match=match)


@dataclass(frozen=True)
class Match:
    """A judged picture whose PDQ hash is within a bank's distance of a banked hash."""

    bank: str
    hash: str
    """The banked hash it matched (64 hexadecimal digits)."""
    distance: int
    """How many of the 256 bits differ."""
    category: str | None = None
    """The moderation category the bank stands for (:data:`CATEGORIES`); None: ``sexual``."""
    frame: int = 0
    """The frame of the picture that matched."""

    def details(self) -> dict[str, Any]:
        """The match as responses give it: ``bank``, ``hash``, ``distance``, ``category``
        and ``frame``."""
        return {
            "bank": self.bank,
            "hash": self.hash,
            "distance": self.distance,
            "category": self.category or JUDGED_CATEGORY,
            "frame": self.frame,
        }

    @classmethod
    def from_details(cls, details: Mapping[str, Any]) -> Match:
        """The match :meth:`details` describes."""
        category = details.get("category")
        return cls(
            bank=str(details["bank"]),
            hash=str(details["hash"]),
            distance=int(details["distance"]),
            category=None if category in (None, JUDGED_CATEGORY) else str(category),
            frame=int(details.get("frame", 0)),
        )


@dataclass(frozen=True)
class Judgement:
    """The labels an image is answered with: those of its worst view, and which view that was
    (for a video, its worst moment: :mod:`nsfwd.timeline`); for a detector, also the regions
    it found in every judged frame."""

    labels: dict[str, float]
    frame: int = 0
    frames: int = 1
    frames_judged: int = 1
    backdrop: Backdrop | None = None
    video: VideoVerdict | None = None
    """A video's worst moment, how much was judged, and its segments; None for an image."""
    colours: Colours | None = None
    regions: tuple[Region, ...] | None = None
    """What a detector found, frame by frame (None: the model is a classifier)."""
    picture: PictureKind = "frame"
    """What the answering picture is: a frame (or the still image), a TIFF page, another
    top-level image of a HEIF or AVIF, or a thumbnail."""
    match: Match | None = None
    """The banked image a picture matched, if any: the image is flagged whatever the labels."""

    def flagged(self, policy: Policy) -> bool:
        """Whether ``policy`` flags this judgement: a bank matched, or the labels (and a
        detector's regions) are over the policy's thresholds (ValueError where the policy
        cannot score them)."""
        return self.match is not None or policy.flagged(self.labels, self.regions or ())

    @property
    def chosen(self) -> bool:
        """Whether more than one picture was judged, so that which one answers is news."""
        return (
            self.frames_judged > 1
            or self.backdrop is not None
            or self.colours is not None
            or self.video is not None
        )

    @property
    def segments(self) -> list[dict[str, float]] | None:
        """A video's segments as the APIs answer them (``start``, ``end``, ``score``); None
        for an image."""
        return None if self.video is None else self.video.segment_dicts

    def details(self) -> dict[str, Any]:
        """Which picture answered, for responses: ``frame`` (its index), ``frames`` (pictures
        in the file), ``frames_judged``, ``backdrop`` (``white``, ``black``, ``grey`` or null)
        and ``colours`` (``converted`` by the file's colour tags, ``stored``, or null where the
        tags change nothing); and ``picture`` (``page``, ``image`` or ``thumbnail``) where it
        is not a frame; for a video, :meth:`nsfwd.timeline.VideoVerdict.details` (``time`` of
        the worst moment...)."""
        if self.video is not None:
            return self.video.details()
        details: dict[str, Any] = {
            "frame": self.frame,
            "frames": self.frames,
            "frames_judged": self.frames_judged,
            "backdrop": self.backdrop,
            "colours": self.colours,
        }
        if self.picture != "frame":
            details["picture"] = self.picture
        return details

    def region_dicts(self) -> list[dict[str, Any]] | None:
        """The regions in their wire form (:meth:`Region.as_dict`), or None for a classifier."""
        return None if self.regions is None else [region.as_dict() for region in self.regions]

    def stored(self) -> dict[str, Any] | None:
        """What a record keeps beside the labels (a job's ``judged``, the inference socket's
        answer): :meth:`details` where a picture was chosen, and ``regions`` for a detector;
        None when there is neither."""
        kept = self.details() if self.chosen else {}
        if self.regions is not None:
            kept["regions"] = self.region_dicts()
        return kept or None

    @classmethod
    def from_stored(
        cls,
        labels: dict[str, float],
        kept: Mapping[str, Any] | None,
        match: Match | None = None,
        segments: Sequence[Mapping[str, Any]] | None = None,
    ) -> Judgement:
        """The judgement :meth:`stored` (and, for a video, :attr:`segments`) describe, for
        ``labels`` (and ``match``)."""
        kept = kept or {}
        found = kept.get("regions")
        regions = None if found is None else tuple(Region.from_dict(item) for item in found)
        if "time" in kept:
            from nsfwd.timeline import VideoVerdict

            video = VideoVerdict.from_details(kept, segments or ())
            return cls(
                labels,
                frames=video.frames,
                frames_judged=video.frames_judged,
                video=video,
                regions=regions,
                match=match,
            )
        return cls(
            labels,
            frame=int(kept.get("frame", 0)),
            frames=int(kept.get("frames", 1)),
            frames_judged=int(kept.get("frames_judged", 1)),
            backdrop=kept.get("backdrop"),
            colours=kept.get("colours"),
            regions=regions,
            picture=kept.get("picture", "frame"),
            match=match,
        )


def split_stored(
    kept: Mapping[str, Any] | None,
) -> tuple[dict[str, Any] | None, list[dict[str, Any]] | None]:
    """A record's ``judged`` (:meth:`Judgement.stored`) as the two things answers show apart:
    which picture answered (None unless one was chosen) and the regions (None unless a
    detector judged)."""
    if not kept:
        return None, None
    rest = {key: value for key, value in kept.items() if key != "regions"}
    return rest or None, kept.get("regions")


def worst(
    views: Views[Any],
    labels: Sequence[dict[str, float]],
    score: Callable[[dict[str, float]], float],
    regions: Sequence[Sequence[Region]] | None = None,
) -> Judgement:
    """The judgement of the view whose ``score`` is highest (the earliest on a tie). With
    ``regions`` (a detector's, one list per view), the judgement carries them all, each placed
    in its view's frame; of a frame seen over white and black, those of its worse view."""
    if len(labels) != len(views.views) or not labels:
        raise ValueError(f"{len(labels)} label sets for {len(views.views)} views")
    scores = [score(item) for item in labels]
    index = max(range(len(scores)), key=lambda i: (scores[i], -i))
    view = views.views[index]
    return Judgement(
        dict(labels[index]),
        frame=view.frame,
        frames=views.frames,
        frames_judged=views.frames_judged,
        backdrop=view.backdrop,
        colours=view.colours,
        regions=None if regions is None else _regions_by_frame(views, scores, regions),
        picture=view.picture,
    )


def _regions_by_frame(
    views: Views[Any], scores: Sequence[float], regions: Sequence[Sequence[Region]]
) -> tuple[Region, ...]:
    """Each frame's regions, from its worst view, with the frame's index, in frame order."""
    if len(regions) != len(views.views):
        raise ValueError(f"{len(regions)} region lists for {len(views.views)} views")
    best: dict[int, int] = {}
    for i, view in enumerate(views.views):
        if view.frame not in best or scores[i] > scores[best[view.frame]]:
            best[view.frame] = i
    return tuple(
        replace(region, frame=views.views[i].frame)
        for _, i in sorted(best.items())
        for region in regions[i]
    )


def judge(views: Views[Any], found: Sequence[Finding], policy: Policy) -> Judgement:
    """The judgement of an image from what the model found in each of its pictures: the worst
    picture's labels under ``policy``, and every frame's regions when the model detects."""
    labels = [finding.labels for finding in found]
    if not found or found[0].regions is None:
        return worst(views, labels, policy.score)
    regions = [finding.regions or [] for finding in found]
    score = policy.score if policy.scores(labels[0]) else _best_region
    return worst(views, labels, score, regions)


def _best_region(labels: Labels) -> float:
    """The worst-picture order for a detector the policy names no class of: its best region."""
    return max(labels.values(), default=0.0)
