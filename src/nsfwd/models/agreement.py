"""How far one run's probabilities stray from another's on the same images: the measure the
parity suite reports and the start-up measurement bounds (largest and mean absolute difference,
and the decisions of the moderate policy that changed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nsfwd.verdict import Labels, Policy


def compare(
    exact: dict[str, Labels], tested: dict[str, Labels], policy: Policy | None = None
) -> dict[str, Any]:
    """How far ``tested`` strays from ``exact`` (same images by name, same labels). Decisions
    are compared where ``policy`` (default: moderate at 0.5) can score the labels; otherwise
    none is counted as changed and ``exact_scores`` is None."""
    policy = policy or Policy("moderate")
    labels = list(next(iter(exact.values())))
    max_dp = dict.fromkeys(labels, 0.0)
    total = 0.0
    for name, want in exact.items():
        got = tested[name]
        for label in labels:
            dp = abs(got[label] - want[label])
            max_dp[label] = max(max_dp[label], dp)
            total += dp
    found: dict[str, Any] = {
        "images": len(exact),
        "max_abs_dp": max(max_dp.values()),
        "max_abs_dp_per_label": max_dp,
        "mean_abs_dp": total / (len(exact) * len(labels)),
    }
    return found | _decisions(exact, tested, policy)


def _decisions(
    exact: dict[str, Labels], tested: dict[str, Labels], policy: Policy
) -> dict[str, Any]:
    try:
        policy.check(list(next(iter(exact.values()))))
    except ValueError:  # labels no policy scores (LABEL_0, LABEL_1...)
        return {
            "exact_scores": None,
            "closest_to_threshold": None,
            "moderate_decisions_changed": 0,
            "changed": [],
        }
    changed = []
    for name, want in exact.items():
        got = tested[name]
        if policy.flagged(want) != policy.flagged(got):
            changed.append(
                {"image": Path(name).name, "exact": policy.score(want), "tested": policy.score(got)}
            )
    scores = [policy.score(want) for want in exact.values()]
    return {
        "exact_scores": {"min": min(scores), "max": max(scores)},
        "closest_to_threshold": min(abs(score - policy.threshold) for score in scores),
        "moderate_decisions_changed": len(changed),
        "changed": changed,
    }
