"""The tensor decode path against the PIL path: same pixels within a level, same verdicts.

Parity runs on the real photographs of photos.py (every JPEG variant: baseline, progressive,
grayscale, EXIF orientations 3/6/8, 128 to 2048 px, tall and wide) through a tiny EVA-02 whose
head is scaled (see nsfwd.models.synthetic), so probabilities move between photos, in both
geometries timm writes: a shorter-side resize and centre crop, and Freepik's squash. It runs
twice: with the CPU's uint8 resize kernels, and resizing in float32 as torchvision does on a GPU
(nvjpeg itself is not available here). Pixel differences are printed (pytest -s).
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Iterator
from dataclasses import replace
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from checkpoints import SEVERITY
from nsfwd.batch.pipeline import classify_files
from nsfwd.intake import ImageError, ImageLimits, load_image
from nsfwd.intake.decode import ORIENTATION_TRANSPOSE
from nsfwd.models import tensor_decode
from nsfwd.models.classifier import Classifier
from nsfwd.models.tensor_decode import (
    AUTO_ON_CPU,
    Geometry,
    TensorDecoder,
    TensorDecodeUnavailableError,
    hide_app1,
    orient,
    resolve_decode,
)
from nsfwd.verdict import Policy
from photos import encode, photo, resized, variants

TOLERANCE = 2e-3
JPEGS = {name: data for name, data in variants().items() if name.startswith("jpeg_")}
PLAIN_JPEGS = {name: data for name, data in JPEGS.items() if name != "jpeg_cmyk"}


def _with_pretrained_cfg(source: Path, folder: Path, **changes: object) -> Path:
    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    config["pretrained_cfg"].update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def squash(timm_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    """The tiny EVA-02 with Freepik's geometry: squash to the input size, no crop margin."""
    folder = tmp_path_factory.mktemp("squash") / "model"
    _with_pretrained_cfg(timm_checkpoint, folder, crop_pct=1.0, crop_mode="squash")
    return Classifier.load(str(folder), device="cpu", dtype="float32")


@pytest.fixture(params=["center", "squash"], scope="module")
def model(request: pytest.FixtureRequest, classifier: Classifier) -> Classifier:
    return classifier if request.param == "center" else request.getfixturevalue("squash")


@pytest.fixture(scope="module")
def pil_reference(model: Classifier) -> tuple[list[torch.Tensor], list[dict[str, float]]]:
    """The PIL path's pixels and labels for every JPEG variant."""
    pixels = [model.prepare(load_image(data)) for data in JPEGS.values()]
    return pixels, model.to_labels(model.predict(torch.stack(pixels)))


@pytest.fixture
def pil_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """The images the tensor path handed to the PIL path."""
    calls: list[bytes] = []

    def spy(data: bytes, limits: ImageLimits) -> Image.Image:
        calls.append(data)
        return load_image(data, limits)

    monkeypatch.setattr(tensor_decode, "load_image", spy)
    yield calls


def _pil_prepare(classifier: Classifier, data: bytes) -> torch.Tensor | str:
    try:
        return classifier.prepare(load_image(data))
    except ImageError as exc:
        return str(exc)


def test_geometry_comes_from_the_checkpoint(classifier: Classifier, squash: Classifier) -> None:
    center = Geometry.of(classifier.loaded.prepare)
    assert (center.size, center.crop) == ([248], [224, 224])  # crop_pct 0.9: 224 / 0.9
    squashed = Geometry.of(squash.loaded.prepare)
    assert (squashed.size, squashed.crop) == ([224, 224], [224, 224])
    assert str(center.interpolation) == "InterpolationMode.BICUBIC"


@pytest.mark.parametrize("resize_in_float", [False, True], ids=["uint8-resize", "float-resize"])
def test_parity_with_the_pil_path_on_real_photographs(
    model: Classifier,
    pil_reference: tuple[list[torch.Tensor], list[dict[str, float]]],
    resize_in_float: bool,
    pil_calls: list[bytes],
) -> None:
    decoder = TensorDecoder(model, resize_in_float=resize_in_float)
    got = decoder.prepare(list(JPEGS.values()))
    assert pil_calls == [JPEGS["jpeg_cmyk"]]  # every other JPEG went the tensor way
    want, theirs = pil_reference
    tensors = [t for t in got if isinstance(t, torch.Tensor) and t.dtype == torch.uint8]
    assert [t.shape for t in tensors] == [w.shape for w in want]
    diffs = {  # the CMYK JPEG went the PIL way: no difference to count
        name: (a.int() - b.int()).abs()
        for name, a, b in zip(JPEGS, tensors, want, strict=True)
        if name in PLAIN_JPEGS
    }
    pixel_max = max(int(diff.max()) for diff in diffs.values())
    pixel_mean = float(np.mean([float(diff.float().mean()) for diff in diffs.values()]))

    ours = model.to_labels(model.predict(torch.stack(tensors)))
    spread = max(abs(a[k] - b[k]) for a in theirs for b in theirs for k in SEVERITY)
    assert spread > 0.1, "probabilities barely move between photos: parity would be vacuous"
    moderate = Policy("moderate")
    worst = {}
    for name, a, b in zip(JPEGS, ours, theirs, strict=True):
        worst[name] = max(abs(a[k] - b[k]) for k in SEVERITY)
        same = moderate.flagged(a) == moderate.flagged(b)
        assert same or abs(moderate.score(b) - moderate.threshold) < TOLERANCE, name
    geometry = Geometry.of(model.loaded.prepare)
    print(
        f"\nresize {geometry.size} crop {geometry.crop}, resize_in_float={resize_in_float}: "
        f"max |dp| {max(worst.values()):.2e} ({max(worst, key=worst.__getitem__)}), pixels "
        f"mean {pixel_mean:.4f} max {pixel_max}, moderate flags "
        f"{sum(map(moderate.flagged, theirs))}/{len(theirs)} on both"
    )
    for name, diff in diffs.items():
        print(f"  {name:20s} |dp| {worst[name]:.1e}  pixels mean {diff.float().mean():.4f} "
              f"max {int(diff.max())}")  # fmt: skip
    assert max(worst.values()) <= TOLERANCE, worst
    # The resizes round differently: a level or two apart on the CPU, more in float32.
    assert pixel_max <= (2 if not resize_in_float else 12)
    assert pixel_mean <= (0.05 if not resize_in_float else 0.5)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_turns_pixels_as_pillow_does(orientation: int) -> None:
    pixels = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    image = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    method = ORIENTATION_TRANSPOSE.get(orientation)
    expected = image if method is None else image.transpose(method)
    turned = orient(pixels, orientation)
    assert torch.equal(turned.permute(1, 2, 0), torch.from_numpy(np.array(expected)))


def test_hide_app1_leaves_the_decoder_no_orientation_to_apply() -> None:
    from torchcodec.decoders import decode_jpeg

    data = JPEGS["jpeg_exif_6"]
    hidden = hide_app1(data)
    assert hidden is not None and len(hidden) == len(data) and b"\xff\xe1" not in hidden
    with Image.open(BytesIO(data)) as image:
        stored = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # as stored, not turned
    decoded = decode_jpeg(bytes(hidden))
    assert isinstance(decoded, torch.Tensor) and torch.equal(decoded, stored)
    assert hide_app1(JPEGS["jpeg_baseline"]) == bytearray(JPEGS["jpeg_baseline"])  # no APP1


def test_a_jpeg_with_an_app1_after_its_scan_takes_the_pil_path(
    classifier: Classifier, pil_calls: list[bytes]
) -> None:
    # Pillow reads no marker past the scan; libjpeg saves one and TorchCodec would turn by it.
    exif = Image.Exif()
    exif[0x0112] = 3
    app1 = exif.tobytes()  # b"Exif\0\0" and the TIFF block
    late = JPEGS["jpeg_baseline"][:-2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1
    late += b"\xff\xd9"
    assert hide_app1(late) is None
    (got,) = TensorDecoder(classifier).prepare([late])
    assert pil_calls == [late]
    reference = _pil_prepare(classifier, late)
    assert isinstance(got, torch.Tensor) and isinstance(reference, torch.Tensor)
    assert torch.equal(got, reference)


def _fallback_batch() -> dict[str, bytes]:
    jpeg = JPEGS["jpeg_baseline"]
    half = len(jpeg) // 2
    sof = jpeg.index(b"\xff\xc0")
    too_wide = bytearray(jpeg)
    struct.pack_into(">HH", too_wide, sof + 5, 512, 4096)
    return {
        "jpeg": jpeg,
        "png": variants()["png_rgba"],
        "webp": variants()["webp_lossy"],
        "cmyk": JPEGS["jpeg_cmyk"],
        "truncated": jpeg[:half],
        "no-eoi": jpeg[:-2],
        "damaged-scan": jpeg[:half] + bytes(2000) + jpeg[half + 2000 :],
        "early-eoi": jpeg[:half] + b"\xff\xd9",
        "too-wide": bytes(too_wide),
        "too-small": encode(resized("coffee", (100, 100)), "JPEG"),
        "gif": encode(photo(), "GIF"),
        "empty": b"",
        "gray-jpeg": JPEGS["jpeg_gray"],
    }


def test_other_formats_and_bad_jpegs_give_what_the_pil_path_gives_in_order(
    classifier: Classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchcodec.decoders

    batch = _fallback_batch()
    seen: list[bytes] = []
    real_decode_jpeg = torchcodec.decoders.decode_jpeg

    def spy(data: list[torch.Tensor], **kwargs: Any) -> object:
        seen.extend(item.numpy().tobytes() for item in data)
        return real_decode_jpeg(data, **kwargs)

    monkeypatch.setattr(torchcodec.decoders, "decode_jpeg", spy)
    got = TensorDecoder(classifier).prepare(list(batch.values()))
    assert len(got) == len(batch)
    for (name, data), ours in zip(batch.items(), got, strict=True):
        theirs = _pil_prepare(classifier, data)
        if isinstance(theirs, str):
            assert isinstance(ours, ImageError), name
            assert str(ours) == theirs, name
            continue
        assert isinstance(ours, torch.Tensor), name
        exact = name in ("png", "webp", "cmyk")  # the PIL path itself
        assert int((ours.int() - theirs.int()).abs().max()) <= (0 if exact else 1), name
    # Only JPEGs that passed the header checks reach decode_jpeg; others never do.
    for name in ("jpeg", "truncated", "damaged-scan", "gray-jpeg"):
        assert batch[name] in seen, name
    for name in ("png", "webp", "cmyk", "too-wide", "too-small", "gif", "empty"):
        assert batch[name] not in seen, name


def test_a_model_whose_geometry_is_not_resize_and_crop_stays_on_pil(
    timm_checkpoint: Path, vit_checkpoint: Path, tmp_path: Path
) -> None:
    vit = Classifier.load(str(vit_checkpoint), device="cpu", dtype="float32")
    refusal = r"transformers or ONNX model.*--decode pil"
    with pytest.raises(TensorDecodeUnavailableError, match=refusal):
        TensorDecoder(vit)
    assert resolve_decode("auto", vit) == "pil"
    with pytest.raises(TensorDecodeUnavailableError):
        resolve_decode("tensor", vit)
    border = _with_pretrained_cfg(timm_checkpoint, tmp_path / "border", crop_mode="border")
    keep_ratio = Classifier.load(str(border), device="cpu", dtype="float32")
    with pytest.raises(TensorDecodeUnavailableError, match="ResizeKeepRatio"):
        Geometry.of(keep_ratio.loaded.prepare)
    with pytest.raises(ValueError, match="decode must be one of auto, pil, tensor"):
        resolve_decode("nvjpeg", keep_ratio)


def test_without_torchcodec_auto_stays_on_pil_and_tensor_is_refused(
    classifier: Classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a CPU-only torch gives with PyPI's (CUDA) TorchCodec wheel.
    missing = "OSError: Could not load this library: libtorchcodec_image.so"
    monkeypatch.setattr(tensor_decode, "_decoder_missing", lambda: missing)
    assert resolve_decode("auto", classifier) == "pil"
    with pytest.raises(TensorDecodeUnavailableError, match="TorchCodec, which did not load"):
        resolve_decode("tensor", classifier)
    with pytest.raises(TensorDecodeUnavailableError, match="libtorchcodec_image"):
        TensorDecoder(classifier)


def test_auto_picks_the_path_measured_faster_on_the_cpu(classifier: Classifier) -> None:
    assert resolve_decode("auto", classifier) == AUTO_ON_CPU
    assert resolve_decode("pil", classifier) == "pil"
    assert resolve_decode("tensor", classifier) == "tensor"
    on = {kind: replace(classifier, device=torch.device(kind)) for kind in ("cuda", "mps")}
    assert resolve_decode("auto", on["cuda"]) == "tensor"
    assert resolve_decode("auto", on["mps"]) == "pil"  # not measured there


def _mixed_folder(folder: Path) -> list[Path]:
    folder.mkdir()
    batch = _fallback_batch()
    names = ["jpeg", "png", "cmyk", "truncated", "damaged-scan", "gif", "gray-jpeg"]
    files = {"exif-6.jpg": JPEGS["jpeg_exif_6"], **{f"{name}.img": batch[name] for name in names}}
    paths = []
    for name, data in files.items():
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    return [*paths[:3], folder / "missing.jpg", folder, *paths[3:]]


def test_classify_files_gives_the_pil_paths_results_in_order(
    classifier: Classifier, tmp_path: Path
) -> None:
    paths = _mixed_folder(tmp_path / "mixed")
    pil = list(classify_files(classifier, paths, batch_size=4, decode="pil"))
    tensor = list(classify_files(classifier, paths, batch_size=4, decode="tensor"))
    assert [r.path for r in tensor] == [str(p) for p in paths]
    assert [r.error for r in tensor] == [r.error for r in pil]
    assert tensor[3].error == "no such file" and tensor[4].error == "is a folder"
    assert sum(r.labels is None for r in tensor) == 3  # a truncated JPEG, 2 unreadable paths
    for a, b in zip(tensor, pil, strict=True):
        if b.labels is not None:
            assert a.labels is not None
            assert max(abs(a.labels[k] - b.labels[k]) for k in SEVERITY) <= TOLERANCE, a.path
