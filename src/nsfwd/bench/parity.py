"""The parity suite: the mode under test against the exact mode, image by image.

The exact mode is what every other path must agree with: fp32, eager, on the CPU, with Pillow
decoding and resizing (the path ``tests/test_parity.py`` holds to Freepik's package). The mode
under test is the benchmark's classifier as configured (a GPU in bf16, the tensor decode path
with nvjpeg, the compiled graphs, int8), run on the same files through ``nsfwd classify``'s
pipeline. Reported: the largest probability difference per label, the mean, and the images whose
moderate-policy decision changed, with both scores (a flip at a score of 0.5 is noise; one at
0.2 is a bug), and how close the exact scores came to the threshold (no flip means more when
some came close).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nsfwd.batch.pipeline import FileResult, classify_files
from nsfwd.models.classifier import Classifier
from nsfwd.models.tensor_decode import resolve_decode
from nsfwd.verdict import Labels, Policy

EXACT = {"device": "cpu", "dtype": "float32", "compile": "off", "decode": "pil"}


def describe(classifier: Classifier, decode: str) -> dict[str, str]:
    """What a classifier runs as, in :data:`EXACT`'s terms (plus int8 when quantised)."""
    mode = {
        "device": str(classifier.device),
        "dtype": str(classifier.dtype).removeprefix("torch."),
        "compile": classifier.compiled.mode if classifier.compiled else "off",
        "decode": decode,
    }
    if classifier.quantized:
        mode["quantize"] = classifier.quantized
    return mode


def _labels(results: list[FileResult]) -> dict[str, Labels]:
    failed = [r for r in results if r.labels is None]
    if failed:
        raise RuntimeError(
            f"the parity suite could not classify {failed[0].path}: {failed[0].error}"
        )
    return {r.path: r.labels for r in results if r.labels is not None}


def exact_labels(model: str, files: list[Path]) -> dict[str, Labels]:
    """Each file's labels in the exact mode."""
    exact = Classifier.load(model, device="cpu", dtype="float32")
    return _labels(list(classify_files(exact, files, batch_size=exact.batch_size, decode="pil")))


def compare(
    exact: dict[str, Labels], tested: dict[str, Labels], policy: Policy | None = None
) -> dict[str, Any]:
    """How far ``tested`` strays from ``exact`` (same files, same labels)."""
    policy = policy or Policy("moderate")
    labels = list(next(iter(exact.values())))
    max_dp = dict.fromkeys(labels, 0.0)
    total = 0.0
    changed = []
    for path, want in exact.items():
        got = tested[path]
        for label in labels:
            dp = abs(got[label] - want[label])
            max_dp[label] = max(max_dp[label], dp)
            total += dp
        if policy.flagged(want) != policy.flagged(got):
            changed.append(
                {"image": Path(path).name, "exact": policy.score(want), "tested": policy.score(got)}
            )
    scores = [policy.score(want) for want in exact.values()]
    return {
        "images": len(exact),
        "exact_scores": {"min": min(scores), "max": max(scores)},
        "closest_to_threshold": min(abs(score - policy.threshold) for score in scores),
        "max_abs_dp": max(max_dp.values()),
        "max_abs_dp_per_label": max_dp,
        "mean_abs_dp": total / (len(exact) * len(labels)),
        "moderate_decisions_changed": len(changed),
        "changed": changed,
    }


def bench_parity(
    classifier: Classifier,
    exact: dict[str, Labels],
    files: list[Path],
    batch_size: int,
    decode: str,
) -> dict[str, Any]:
    """The mode under test (``classifier`` with ``decode``) against :func:`exact_labels`."""
    decode = resolve_decode(decode, classifier)
    results = classify_files(classifier, files, batch_size=batch_size, decode=decode)
    return {
        "exact": EXACT,
        "tested": describe(classifier, decode),
        **compare(exact, _labels(list(results))),
    }
