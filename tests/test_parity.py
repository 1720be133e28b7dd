"""Parity with Freepik's own package, `nsfw-image-detector` 0.1.2, on an EVA-02-B/448.

The package hard-codes eva02_base_patch14_448's transform, so the checkpoint is the real
architecture (random weights with a scaled head, see checkpoints.py) in the style Freepik ships:
transformers' TimmWrapper with bf16 weights (conftest.py's ``eva02_b448_checkpoint``, written
once for the session and shared with the crash test). Both sides run in fp32 on the CPU on the same
decoded images: every accepted format and shape, decoded by nsfwd's intake (the package does
no EXIF or colour-mode handling of its own).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from nsfw_image_detector import NSFWDetector

from checkpoints import SEVERITY
from nsfwd.intake import load_image
from nsfwd.models.classifier import Classifier
from nsfwd.verdict import Policy
from photos import variants

TOLERANCE = 2e-3


def per_bucket(cumulative: dict[str, float]) -> dict[str, float]:
    """Undo the package's cumulative scores (low = P(low)+P(medium)+P(high), ...)."""
    return {
        "neutral": cumulative["neutral"],
        "low": cumulative["low"] - cumulative["medium"],
        "medium": cumulative["medium"] - cumulative["high"],
        "high": cumulative["high"],
    }


def test_labels_match_freepiks_package(eva02_b448_checkpoint: Path) -> None:
    files = variants()
    # Files that decode to the same pixels (a PNG with and without EXIF, ...) give both sides
    # the same input, so each distinct image runs once and its result stands for all of them.
    decoded = {name: load_image(data) for name, data in files.items()}
    same_as: dict[str, str] = {}  # file name -> the first file with the same pixels
    firsts: dict[tuple[tuple[int, int], bytes], str] = {}
    for name, image in decoded.items():
        pixels = (image.size, hashlib.sha256(image.tobytes()).digest())
        same_as[name] = firsts.setdefault(pixels, name)
    names = list(firsts.values())
    images = [decoded[name] for name in names]
    ours = Classifier.load(str(eva02_b448_checkpoint), device="cpu", dtype="float32")
    assert ours.input_size == (3, 448, 448)
    reference = NSFWDetector(
        model_name=str(eva02_b448_checkpoint), device="cpu", dtype=torch.float32
    )

    got: list[dict[str, float]] = []
    want: list[dict[str, float]] = []
    for start in range(0, len(images), 8):
        chunk = images[start : start + 8]
        got += ours.classify(chunk)
        want += [
            per_bucket({str(k.value): v for k, v in p.items()})
            for p in reference.predict_proba(chunk)
        ]

    spread = max(abs(a[label] - b[label]) for a in got for b in got for label in SEVERITY)
    assert spread > 0.1, "probabilities barely move between photos: parity would be vacuous"
    ours_by_name = dict(zip(names, got, strict=True))
    theirs_by_name = dict(zip(names, want, strict=True))
    worst = {}
    for name, first in same_as.items():
        a, b = ours_by_name[first], theirs_by_name[first]
        assert list(a) == SEVERITY
        worst[name] = max(abs(a[label] - b[label]) for label in SEVERITY)
        assert (
            Policy().flagged(a) == Policy().flagged(b) or abs(Policy().score(a) - 0.5) < TOLERANCE
        )
    assert max(worst.values()) <= TOLERANCE, worst
