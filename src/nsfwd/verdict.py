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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

if TYPE_CHECKING:
    from nsfwd.intake.views import Backdrop, Colours, Views

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


@dataclass(frozen=True)
class Judgement:
    """The labels an image is answered with: those of its worst view, and which view that was."""

    labels: dict[str, float]
    frame: int = 0
    frames: int = 1
    frames_judged: int = 1
    backdrop: Backdrop | None = None
    colours: Colours | None = None

    @property
    def chosen(self) -> bool:
        """Whether more than one picture was judged, so that which one answers is news."""
        return self.frames_judged > 1 or self.backdrop is not None or self.colours is not None

    def details(self) -> dict[str, Any]:
        """Which picture answered, for responses: ``frame`` (its index), ``frames`` (in the
        file), ``frames_judged``, ``backdrop`` (``white``, ``black``, ``grey`` or null) and
        ``colours`` (``converted`` by the file's colour tags, ``stored``, or null where the
        tags change nothing)."""
        return {
            "frame": self.frame,
            "frames": self.frames,
            "frames_judged": self.frames_judged,
            "backdrop": self.backdrop,
            "colours": self.colours,
        }

    @classmethod
    def from_details(cls, labels: dict[str, float], details: Mapping[str, Any]) -> Judgement:
        """The judgement :meth:`details` describes, for ``labels``."""
        return cls(
            labels,
            frame=int(details["frame"]),
            frames=int(details["frames"]),
            frames_judged=int(details["frames_judged"]),
            backdrop=details.get("backdrop"),
            colours=details.get("colours"),
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
        colours=view.colours,
    )
