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

A picture that matches a bank of known images (:mod:`nsfwd.banks`) is flagged whatever the
policy: its judgement carries the :class:`Match`, and the model need not run for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, cast

if TYPE_CHECKING:
    from nsfwd.intake.views import Backdrop, Views

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

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, not {self.name!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be between 0 and 1, not {self.threshold}")

    def overridden(self, name: str | None = None, threshold: float | None = None) -> Policy:
        """This policy with ``name`` and ``threshold`` in place of its own where they are given:
        an API key's own setting over the server's. Raises ValueError when either is invalid."""
        return Policy(
            cast(PolicyName, name or self.name), self.threshold if threshold is None else threshold
        )

    def check(self, labels: Sequence[str]) -> None:
        """Raise ValueError when a model with these labels cannot be scored by this policy."""
        if not set(POLICIES[self.name]) <= set(labels) and _safe_label(labels) is None:
            raise ValueError(
                f"cannot apply policy {self.name!r} to labels {list(labels)}: they have neither "
                f"the severity buckets nor a safe label ({', '.join(SAFE_LABELS)})"
            )

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
        return 1.0 - probs[_safe_label(list(probs)) or ""]

    def flagged(self, probs: Mapping[str, float]) -> bool:
        """Whether these probabilities are flagged: score strictly above the threshold."""
        return self.score(probs) > self.threshold


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
    """The labels an image is answered with: those of its worst view, and which view that was."""

    labels: dict[str, float]
    frame: int = 0
    frames: int = 1
    frames_judged: int = 1
    backdrop: Backdrop | None = None
    match: Match | None = None
    """The banked image a picture matched, if any: the image is flagged whatever the labels."""

    def flagged(self, policy: Policy) -> bool:
        """Whether ``policy`` flags this judgement: a bank matched, or the labels score over
        the threshold (ValueError where the policy cannot score them)."""
        return self.match is not None or policy.flagged(self.labels)

    @property
    def chosen(self) -> bool:
        """Whether more than one picture was judged, so that which one answers is news."""
        return self.frames_judged > 1 or self.backdrop is not None

    def details(self) -> dict[str, Any]:
        """Which picture answered, for responses: ``frame`` (its index), ``frames`` (in the
        file), ``frames_judged`` and ``backdrop`` (``white``, ``black`` or null)."""
        return {
            "frame": self.frame,
            "frames": self.frames,
            "frames_judged": self.frames_judged,
            "backdrop": self.backdrop,
        }

    @classmethod
    def from_details(
        cls, labels: dict[str, float], details: Mapping[str, Any], match: Match | None = None
    ) -> Judgement:
        """The judgement :meth:`details` describes, for ``labels`` (and ``match``)."""
        return cls(
            labels,
            frame=int(details["frame"]),
            frames=int(details["frames"]),
            frames_judged=int(details["frames_judged"]),
            backdrop=details.get("backdrop"),
            match=match,
        )


def worst(
    views: Views[Any],
    labels: Sequence[dict[str, float]],
    score: Callable[[dict[str, float]], float],
) -> Judgement:
    """The judgement of the view whose ``score`` is highest (the earliest on a tie)."""
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
    )
