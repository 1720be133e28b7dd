"""Loading checkpoints in every on-disk style, and the classifier's outputs."""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import pytest
import torch
from PIL import Image

from checkpoints import SEVERITY, write_timm_checkpoint
from nsfwd.models.checkpoint import load_checkpoint
from nsfwd.models.classifier import DTYPES, Classifier, choose_dtype
from nsfwd.models.cpu import cpu_flags, default_cpu_dtype
from nsfwd.models.names import ModelNotAvailableError


def _image(color: tuple[int, int, int], size: tuple[int, int] = (300, 200)) -> Image.Image:
    image = Image.new("RGB", size, color)
    image.paste((255 - color[0], color[1] // 2, 40), (20, 20, 150, 120))
    return image


IMAGES = [_image((250, 10, 10)), _image((10, 200, 30)), _image((30, 30, 240), (200, 400))]


def test_timm_style_loads_with_labels_and_preprocessing(timm_checkpoint: Path) -> None:
    loaded = load_checkpoint(timm_checkpoint)
    assert loaded.style == "timm"
    assert loaded.labels == tuple(SEVERITY)
    assert loaded.input_size == (3, 224, 224)
    pixels = loaded.preprocess(IMAGES[0])
    assert loaded.prepare(IMAGES[0]).dtype == torch.uint8
    assert pixels.shape == (3, 224, 224)
    assert pixels.dtype == torch.float32


def test_weights_load_without_a_random_init_and_match_a_normal_build(
    timm_checkpoint: Path,
) -> None:
    import timm

    from nsfwd.models.checkpoint import _build_uninitialised, _load_state_dict

    config = json.loads((timm_checkpoint / "config.json").read_text())
    build = partial(timm.create_model, config["architecture"], pretrained=False, num_classes=4)
    assert _build_uninitialised(build) is not None, "EVA-02 is built without its random init"
    normal = build().eval()
    normal.load_state_dict(_load_state_dict(timm_checkpoint))
    loaded = load_checkpoint(timm_checkpoint).module.eval()
    # Every buffer, the RoPE ones the checkpoint does not hold included, equals a normal build's.
    buffers = dict(normal.named_buffers())
    assert any(name.startswith("rope.") for name in buffers)
    for name, value in loaded.named_buffers():
        assert torch.equal(value, buffers[name]), name
    batch = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(loaded(batch), normal(batch))


def test_a_module_whose_computed_buffers_timm_cannot_refill_is_built_normally() -> None:
    from nsfwd.models.checkpoint import _build_uninitialised

    class Table(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("steps", torch.arange(4.0), persistent=False)

    assert _build_uninitialised(Table) is None
    assert _build_uninitialised(lambda: torch.nn.Linear(2, 2)) is not None


def test_both_styles_give_the_same_probabilities(
    timm_checkpoint: Path, wrapper_checkpoint: Path
) -> None:
    timm_style = Classifier.load(str(timm_checkpoint))
    wrapper_style = Classifier.load(str(wrapper_checkpoint))
    assert wrapper_style.loaded.style == "timm_wrapper"
    assert wrapper_style.labels == timm_style.labels
    # Same seed, same weights; the wrapper copy was stored in bf16, hence the tolerance.
    a = torch.tensor([list(p.values()) for p in timm_style.classify(IMAGES)])
    b = torch.tensor([list(p.values()) for p in wrapper_style.classify(IMAGES)])
    assert torch.allclose(a, b, atol=0.05)


def test_probabilities_are_a_softmax_that_depends_on_the_image(classifier: Classifier) -> None:
    results = classifier.classify(IMAGES)
    assert len(results) == len(IMAGES)
    for probs in results:
        assert list(probs) == SEVERITY
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert all(0.0 <= p <= 1.0 for p in probs.values())
    spread = max(abs(results[0][k] - results[1][k]) for k in SEVERITY)
    assert spread > 0.01, "different images should not get identical labels"


def test_batching_does_not_change_results(classifier: Classifier) -> None:
    together = classifier.classify(IMAGES)
    alone = [classifier.classify([image])[0] for image in IMAGES]
    for a, b in zip(together, alone, strict=True):
        for label in SEVERITY:
            assert a[label] == pytest.approx(b[label], abs=1e-5)


def test_stack_makes_one_batch_in_order_on_the_classifiers_device(classifier: Classifier) -> None:
    prepared = [classifier.prepare(image) for image in IMAGES]
    batch = classifier.stack(prepared)
    assert batch.shape == (len(IMAGES), *classifier.input_size)
    assert batch.dtype == torch.uint8
    assert batch.device == classifier.device
    for row, image in zip(batch, prepared, strict=True):
        assert torch.equal(row, image)
    with pytest.raises(ValueError, match="no images"):
        classifier.stack([])


def test_preprocessing_follows_the_checkpoint_not_a_fixed_448(tmp_path: Path) -> None:
    folder = write_timm_checkpoint(tmp_path / "eva", labels=["safe", "unsafe"])
    config = json.loads((folder / "config.json").read_text())
    config["pretrained_cfg"].update(input_size=[3, 112, 112], crop_pct=1.0, crop_mode="squash")
    config["model_args"]["img_size"] = [112, 112]
    (folder / "config.json").write_text(json.dumps(config))
    # Rebuild weights for the smaller input (position embeddings depend on it).
    import timm

    model = timm.create_model("eva02_tiny_patch14_224", num_classes=2, img_size=112)
    from safetensors.torch import save_file

    save_file(model.state_dict(), str(folder / "model.safetensors"))
    classifier = Classifier.load(str(folder))
    assert classifier.input_size == (3, 112, 112)
    assert classifier.labels == ("safe", "unsafe")
    assert classifier.prepare(IMAGES[2]).shape == (3, 112, 112)


def test_transformers_classifier_loads_with_id2label(vit_checkpoint: Path) -> None:
    classifier = Classifier.load(str(vit_checkpoint))
    assert classifier.loaded.style == "transformers"
    assert classifier.labels == ("normal", "nsfw")
    probs = classifier.classify(IMAGES[:2])
    assert [list(p) for p in probs] == [["normal", "nsfw"]] * 2
    assert sum(probs[0].values()) == pytest.approx(1.0, abs=1e-5)


def test_labels_fall_back_to_the_known_hub_model(tmp_path: Path, timm_checkpoint: Path) -> None:
    folder = tmp_path / "no-names"
    shutil.copytree(timm_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    del config["label_names"]
    (folder / "config.json").write_text(json.dumps(config))
    assert load_checkpoint(folder).labels == ("LABEL_0", "LABEL_1", "LABEL_2", "LABEL_3")
    known = load_checkpoint(folder, hub_id="Freepik/nsfw_image_detector")
    assert known.labels == tuple(SEVERITY)


def test_missing_or_broken_folders_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match="no model folder"):
        Classifier.load(str(tmp_path / "nope"))
    with pytest.raises(ModelNotAvailableError, match=r"no config\.json"):
        Classifier.load(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelNotAvailableError, match="cannot read"):
        Classifier.load(str(tmp_path))


def test_weights_that_do_not_match_the_architecture_are_refused(
    tmp_path: Path, timm_checkpoint: Path
) -> None:
    folder = tmp_path / "mismatch"
    shutil.copytree(timm_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_classes"] = 3
    config["label_names"] = ["a", "b", "c"]
    config["model_args"]["num_classes"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelNotAvailableError, match="do not fit"):
        Classifier.load(str(folder))


def test_dtype_defaults_follow_the_cpu_and_bf16_on_gpu() -> None:
    # fp32 on this CPU unless it has native bf16 (tests/test_cpu_default.py: every CPU class)
    assert choose_dtype(torch.device("cpu"))[0] == DTYPES[default_cpu_dtype(cpu_flags())[0]]
    assert choose_dtype(torch.device("cuda"))[0] == torch.bfloat16
    assert choose_dtype(torch.device("cpu"), "bfloat16")[0] == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be one of"):
        choose_dtype(torch.device("cpu"), "int3")[0]


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_that_emulates_it_is_warned_about(
    timm_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    native: bool,
) -> None:
    # The CPU's answer is the one thing a test cannot choose: take it from the probes.
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    with caplog.at_level("WARNING", logger="nsfwd.models.classifier"):
        Classifier.load(str(timm_checkpoint), device="cpu", dtype="bfloat16")
        Classifier.load(str(timm_checkpoint), device="cpu")
    warned = [r.getMessage() for r in caplog.records if "emulated" in r.getMessage()]
    assert len(warned) == (0 if native else 1), warned
    if not native:
        assert warned[0].startswith("bfloat16 on this CPU (") and "--quantize int8" in warned[0]


def test_int8_mode_is_refused_where_it_cannot_run(timm_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="quantize must be one of"):
        Classifier.load(str(timm_checkpoint), quantize="int4")
    with pytest.raises(ValueError, match="starts from float32 weights"):
        Classifier.load(str(timm_checkpoint), dtype="bfloat16", quantize="int8")


def test_uint8_prepare_then_normalize_equals_timms_transform_bit_for_bit(
    timm_checkpoint: Path,
) -> None:
    from timm.data import create_transform, resolve_data_config

    loaded = load_checkpoint(timm_checkpoint)
    config = json.loads((timm_checkpoint / "config.json").read_text())
    data_config = resolve_data_config(pretrained_cfg=config["pretrained_cfg"], model=loaded.module)
    timm_transform = create_transform(**data_config, is_training=False)
    for image in IMAGES:
        ours = loaded.normalize(loaded.prepare(image).unsqueeze(0))[0]
        assert torch.equal(ours, timm_transform(image))
