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
from nsfwd.models.agreement import compare
from nsfwd.models.classifier import Classifier
from nsfwd.models.compiled import CompiledForward
from nsfwd.models.tensor_decode import resolve_decode
from nsfwd.verdict import Labels

EXACT = {"device": "cpu", "runtime": "torch", "dtype": "float32", "compile": "off", "decode": "pil"}


def describe(classifier: Classifier, decode: str) -> dict[str, str]:
    """What a classifier runs as, in :data:`EXACT`'s terms (plus int8 when quantised)."""
    runner = classifier.runner
    mode = {
        "device": str(classifier.device),
        "runtime": classifier.runtime,
        "dtype": str(classifier.dtype).removeprefix("torch."),
        "compile": runner.mode if isinstance(runner, CompiledForward) else "off",
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
