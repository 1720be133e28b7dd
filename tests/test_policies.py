"""Policies: which buckets count, and the threshold."""

from __future__ import annotations

import pytest

from nsfwd.verdict import Policy

PROBS = {"neutral": 0.40, "low": 0.25, "medium": 0.20, "high": 0.15}


@pytest.mark.parametrize(
    ("name", "score"), [("strict", 0.15), ("moderate", 0.35), ("lenient", 0.60)]
)
def test_score_sums_the_lowest_flagged_bucket_and_above(name: str, score: float) -> None:
    assert Policy(name, 0.5).score(PROBS) == pytest.approx(score)  # type: ignore[arg-type]


def test_flagged_only_strictly_above_the_threshold() -> None:
    assert Policy("lenient", 0.5).flagged(PROBS)
    assert not Policy("moderate", 0.5).flagged(PROBS)
    assert Policy("moderate", 0.3).flagged(PROBS)
    assert not Policy("moderate", 0.35).flagged(
        {"neutral": 0.65, "low": 0, "medium": 0.35, "high": 0}
    )


def test_binary_models_score_one_minus_the_safe_label() -> None:
    probs = {"normal": 0.3, "nsfw": 0.7}
    for name in ("strict", "moderate", "lenient"):
        assert Policy(name).score(probs) == pytest.approx(0.7)
        assert Policy(name).flagged(probs)


def test_unscorable_labels_and_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot apply policy"):
        Policy().check(["cat", "dog"])
    with pytest.raises(ValueError, match="cannot apply policy"):
        Policy().score({"cat": 0.5, "dog": 0.5})
    with pytest.raises(ValueError, match="policy must be one of"):
        Policy("harsh")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threshold must be between 0 and 1"):
        Policy("strict", 1.5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_scores_that_are_not_numbers_fail_closed(bad: float) -> None:
    """NaN compares False with every threshold, so it would pass as unflagged: refused instead."""
    for name in ("strict", "moderate", "lenient"):
        policy = Policy(name)
        for label in PROBS:
            with pytest.raises(ValueError, match="not finite"):
                policy.flagged(PROBS | {label: bad})
    with pytest.raises(ValueError, match="not finite"):
        Policy().flagged({"normal": bad, "nsfw": 0.5})
