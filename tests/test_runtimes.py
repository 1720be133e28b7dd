"""The CPU's routes: OpenVINO (float and static int8) beside torch on a tiny EVA-02, on any CPU;
the export a host without torch can run; the start-up measurement that chooses a route and
keeps its choice; and the options that fix a route instead.

One two-block EVA-02 is converted once for the session (tracing a network costs seconds a block
on a busy machine) and its export shared through a data directory the tests copy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from checkpoints import write_timm_checkpoint
from nsfwd.api.app import create_app
from nsfwd.bench.images import make_jpegs
from nsfwd.cli import main
from nsfwd.engine.batcher import Engine
from nsfwd.intake.files import load_image_file
from nsfwd.models import choice
from nsfwd.models.calibration import Calibration
from nsfwd.models.choice import CHOICES_FILE, Choices, Trial, pick
from nsfwd.models.classifier import Classifier
from nsfwd.models.identity import model_key
from nsfwd.models.openvino_network import META_FILE, ExportMeta, read_export
from nsfwd.models.openvino_runtime import OpenVinoForward, head, quantize_int8, store
from nsfwd.models.routes import EXACT, INT8, Route, plan
from nsfwd.settings import Settings

pytest.importorskip("openvino", reason="the OpenVINO runtime: pip install 'nsfwd[openvino]'")

FLOAT = Route("openvino", "float32")
DEPTH_2 = {"depth": 2}
"""A two-block tiny EVA-02: the same operations as any EVA-02, a sixth of the tracing."""


def _pixels(classifier: Classifier, count: int) -> torch.Tensor:
    """``count`` different prepared images (smooth gradients), as one batch."""
    base = torch.linspace(0, 255, classifier.input_size[-1]).to(torch.uint8)
    images = [(base.roll(17 * i) + i * 29).expand(classifier.input_size) for i in range(count)]
    return torch.stack(images).contiguous()


@dataclass
class Converted:
    """The small checkpoint, its exact classifier, and a data directory holding its export."""

    checkpoint: Path
    exact: Classifier
    data_dir: Path
    openvino: Classifier
    warned: list[str]

    def data_copy(self, folder: Path) -> Path:
        """A fresh data directory with the session's exports (so nothing converts again)."""
        shutil.copytree(store(self.data_dir), store(folder), symlinks=True)
        return folder


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Converted:
    checkpoint = write_timm_checkpoint(tmp_path_factory.mktemp("depth2"), model_args=DEPTH_2)
    data_dir = tmp_path_factory.mktemp("data")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        classifier = Classifier.load(str(checkpoint), runtime="openvino", data_dir=data_dir)
    exact = Classifier.load(str(checkpoint), dtype="float32")
    return Converted(checkpoint, exact, data_dir, classifier, [str(w.message) for w in caught])


def test_openvino_agrees_with_the_exact_mode_at_any_batch_size(converted: Converted) -> None:
    classifier = converted.openvino
    assert classifier.route == FLOAT
    assert classifier.runtime == "openvino"
    classifier.warm_up(4)  # the engine's buckets: 1, 2, 4
    assert classifier.runner is not None and classifier.runner.buckets == (1, 2, 4)
    pixels = _pixels(classifier, 9)
    for size in (1, 2, 3, 5, 9):  # 3 pads to 4; 5 and 9 are split at 4 and padded
        got, want = classifier.predict(pixels[:size]), converted.exact.predict(pixels[:size])
        assert got.shape == (size, 4)
        assert (got - want).abs().max().item() < 1e-5
    assert classifier.predict(pixels[:0]).shape == (0, 4)


def test_warming_up_compiles_every_batch_size_and_runs_one_image(converted: Converted) -> None:
    # OpenVINO compiles ahead: a batch of each size at start would only lengthen a cold start.
    runner = converted.openvino.runner
    assert isinstance(runner, OpenVinoForward)
    ran: list[int] = []
    runner.warm_up((1, 2, 4), ran.append)
    assert ran == [1]
    assert {1, 2, 4} <= set(runner.network.sizes)


def test_conversion_calls_no_deprecated_torch_api(converted: Converted) -> None:
    # torch.jit.trace (OpenVINO's default way in) is deprecated: nsfwd converts through
    # torch.export, and quantises with NNCF, never torch.ao.
    assert not [message for message in converted.warned if "torch.jit" in message]
    calls = re.compile(r"\b(torch\.(ao|jit)(\.\w+)+|quantize_dynamic)\(")
    source = Path(__file__).parents[1] / "src" / "nsfwd"
    for path in source.rglob("*.py"):
        found = calls.search(path.read_text())
        assert found is None, f"{path} calls {found and found.group()}"


def test_the_export_is_kept_and_read_back_without_converting(
    converted: Converted, caplog: pytest.LogCaptureFixture
) -> None:
    key = model_key(converted.checkpoint, str(converted.checkpoint))
    folder = store(converted.data_dir) / key / "float"
    meta = ExportMeta.from_json((folder / META_FILE).read_text())
    assert meta.labels == converted.exact.labels
    assert meta.input_size == (3, 224, 224)
    assert meta.input_dtype == "uint8" and meta.variant == "float"
    assert meta.preprocessing["interpolation"] == "bicubic"
    with caplog.at_level(logging.INFO, logger="nsfwd.models.openvino_runtime"):
        again = Classifier.load(
            str(converted.checkpoint), runtime="openvino", data_dir=converted.data_dir
        )
    assert f"OpenVINO model from {folder}" in caplog.messages
    assert not [m for m in caplog.messages if m.startswith("converted to OpenVINO")]
    pixels = _pixels(again, 2)  # not warmed up (as Ray Data's actors): compiled on first use
    assert (again.predict(pixels) - converted.openvino.predict(pixels)).abs().max() < 1e-6


def test_changed_weights_get_a_key_of_their_own(converted: Converted, tmp_path: Path) -> None:
    copy = shutil.copytree(converted.checkpoint, tmp_path / "elsewhere" / converted.checkpoint.name)
    name = str(converted.checkpoint)
    assert model_key(copy, name) == model_key(converted.checkpoint, name)  # by content, not path
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert model_key(copy, name) != model_key(converted.checkpoint, name)


def test_a_host_without_torch_runs_the_export(converted: Converted, tmp_path: Path) -> None:
    """What a slim image without torch does: read the folder, compile, classify pixels."""
    pixels = _pixels(converted.exact, 3)
    np.save(tmp_path / "pixels.npy", pixels.numpy())
    np.save(tmp_path / "want.npy", converted.exact.predict(pixels).numpy())
    key = model_key(converted.checkpoint, str(converted.checkpoint))
    folder = store(converted.data_dir) / key / "float"
    code = f"""
        import sys
        from pathlib import Path
        import numpy as np
        from nsfwd.models.openvino_network import OpenVinoNetwork, read_export
        model, meta = read_export(Path({str(folder)!r}))
        assert meta.labels == ("neutral", "low", "medium", "high"), meta.labels
        network = OpenVinoNetwork(model, precision="f32", cache_dir=Path({str(tmp_path)!r}))
        network.compile([3])
        got = network(np.load({str(tmp_path / "pixels.npy")!r}))
        want = np.load({str(tmp_path / "want.npy")!r})
        assert np.abs(got - want).max() < 1e-5, np.abs(got - want).max()
        assert "torch" not in sys.modules, "torch was imported"
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="session")
def calibration_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("calibration")
    make_jpegs(folder, 4, (320, 240))
    return folder


@pytest.fixture(scope="session")
def int8(converted: Converted, calibration_images: Path) -> Classifier:
    return Classifier.load(
        str(converted.checkpoint),
        quantize="int8",
        data_dir=converted.data_dir,
        calibration=Calibration(calibration_images, images=4),
    )


def test_int8_is_static_int8_on_openvino_close_to_the_exact_mode(
    int8: Classifier, converted: Converted, calibration_images: Path
) -> None:
    assert int8.route == INT8 and int8.quantized == "int8"
    int8.warm_up(2)
    pixels = _pixels(int8, 4)
    got, want = int8.predict(pixels), converted.exact.predict(pixels)
    assert torch.allclose(got.sum(dim=1), torch.ones(4), atol=1e-5)
    assert 0 < (got - want).abs().max().item() < 0.1  # int8 shows, and stays small
    key = model_key(converted.checkpoint, str(converted.checkpoint))
    [folder] = (store(converted.data_dir) / key).glob("int8-*")
    meta = ExportMeta.from_json((folder / META_FILE).read_text())
    assert meta.variant == "int8"
    assert meta.calibration == f"up to 4 images from {calibration_images}"


def test_calibrating_keeps_stdout_for_the_records(
    converted: Converted, capsys: pytest.CaptureFixture[str]
) -> None:
    key = model_key(converted.checkpoint, str(converted.checkpoint))
    model, _ = read_export(store(converted.data_dir) / key / "float")
    sample = _pixels(converted.exact, 1).numpy()
    quantize_int8(model, [sample], converted.exact.loaded.module)
    out, err = capsys.readouterr()
    assert out == "" and "Statistics collection" in err  # NNCF's progress, on stderr


def test_int8_keeps_the_classifier_head_in_float(converted: Converted) -> None:
    """The head reads one pooled vector an image: an int8 range there moved probabilities by
    tenths on a random EVA-02-B; every other matrix multiplication is quantised."""
    key = model_key(converted.checkpoint, str(converted.checkpoint))
    model, _ = read_export(store(converted.data_dir) / key / "float")
    name = head(model)
    assert name is not None
    quantized = quantize_int8(model, [_pixels(converted.exact, 1).numpy()],
                              converted.exact.loaded.module)  # fmt: skip

    def quantized_inputs(node: Any) -> bool:
        return any(
            value.get_node().get_type_name() in ("FakeQuantize", "FakeConvert")
            or "fq" in value.get_node().get_friendly_name().lower()
            for value in node.input_values()
        )

    matmuls = [op for op in quantized.get_ordered_ops() if op.get_type_name() == "MatMul"]
    [the_head] = [op for op in matmuls if op.get_friendly_name() == name]
    assert not quantized_inputs(the_head)
    assert sum(quantized_inputs(op) for op in matmuls) >= len(matmuls) // 2


def test_an_export_that_cannot_be_read_is_made_again(
    int8: Classifier,
    converted: Converted,
    calibration_images: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data_dir = converted.data_copy(tmp_path / "data")
    key = model_key(converted.checkpoint, str(converted.checkpoint))
    [folder] = (store(data_dir) / key).glob("int8-*")
    (folder / META_FILE).write_text("{not json")  # a disk that filled up mid-write, say
    with caplog.at_level(logging.INFO, logger="nsfwd.models.openvino_runtime"):
        again = Classifier.load(
            str(converted.checkpoint),
            quantize="int8",
            data_dir=data_dir,
            calibration=Calibration(calibration_images, images=4),
        )
    assert any("holds no readable nsfwd export" in m for m in caplog.messages)
    assert ExportMeta.from_json((folder / META_FILE).read_text()).variant == "int8"
    again.warm_up(2)
    pixels = _pixels(again, 2)
    assert (again.predict(pixels) - int8.predict(pixels)).abs().max() < 1e-6


def test_a_changed_calibration_folder_is_calibrated_anew(
    calibration_images: Path, tmp_path: Path
) -> None:
    folder = shutil.copytree(calibration_images, tmp_path / "images")
    first = Calibration(folder, images=4).key
    assert Calibration(folder, images=4).key == first
    make_jpegs(folder, 1, (320, 240), seed=99)  # rewrites bench-00000.jpg
    assert Calibration(folder, images=4).key != first
    assert Calibration(None, images=8).key == "photo-like-8"
    with pytest.raises(ValueError, match="is not a folder"):
        Calibration(tmp_path / "missing")


def _fixed(**options: str | bool) -> list[Route]:
    settings = {"dtype": None, "runtime": None, "quantize": None, "compiled": False, **options}
    return plan(
        torch.device(str(settings.pop("device", "cpu"))),
        default_dtype=("float32", "no native bf16"),
        native_bf16=False,
        openvino=True,
        **settings,  # type: ignore[arg-type]
    ).routes


def test_options_fix_the_route_and_nothing_leaves_the_candidates() -> None:
    assert _fixed() == [EXACT, FLOAT]
    assert _fixed(dtype="float32") == [EXACT]
    assert _fixed(runtime="openvino") == [FLOAT]
    assert _fixed(runtime="torch") == [EXACT]
    assert _fixed(quantize="int8") == [INT8]
    assert _fixed(compiled=True) == [EXACT]
    assert _fixed(device="cuda") == [Route("torch", "float32")]
    bf16 = plan(
        torch.device("cpu"), dtype=None, runtime=None, quantize=None, compiled=False,
        default_dtype=("bfloat16", "native"), native_bf16=True, openvino=True,
    )  # fmt: skip
    assert bf16.routes == [EXACT, FLOAT, Route("torch", "bfloat16"), Route("openvino", "bfloat16")]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"quantize": "int8", "runtime": "torch"}, "int8 runs on the OpenVINO runtime"),
        ({"quantize": "int8", "dtype": "bfloat16"}, "starts from float32 weights"),
        ({"quantize": "int8", "compiled": True}, "compile and quantize do not combine"),
        ({"runtime": "openvino", "compiled": True}, "OpenVINO compiles on its own"),
        ({"runtime": "openvino", "device": "cuda"}, "CPU modes here"),
        ({"runtime": "onnx"}, "runtime must be one of torch, openvino"),
        ({"quantize": "int4"}, "quantize must be one of int8"),
    ],
)
def test_options_that_do_not_go_together_are_refused(
    options: dict[str, str | bool], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        _fixed(**options)


def _trial(route: Route, seconds: float, dp: float = 0.0, changed: int = 0) -> Trial:
    found = {"max_abs_dp": dp, "mean_abs_dp": dp / 2, "moderate_decisions_changed": changed}
    return choice.judge(route, seconds, found)


def test_the_fastest_route_within_the_bound_wins_and_noise_keeps_the_simpler() -> None:
    exact, fast, faster = _trial(EXACT, 2.0), _trial(FLOAT, 1.0), _trial(INT8, 0.5, dp=0.02)
    assert not faster.accepted and "over 3e-03" in faster.why_not
    assert pick([exact, fast, faster]) is fast
    assert pick([exact, _trial(FLOAT, 1.96)]).route == EXACT  # within 5%: noise
    flipped = _trial(FLOAT, 1.0, dp=1e-3, changed=1)
    assert not flipped.accepted and "1 moderate decision(s) changed" in flipped.why_not
    assert pick([exact, flipped]).route == EXACT


@dataclass
class _Scripted:
    """A stand-in classifier whose outputs are set: the exact one, or off by ``offset``."""

    offset: float
    labels: tuple[str, ...] = ("neutral", "low", "medium", "high")

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        probs = torch.full((len(batch), 4), 0.25) + torch.tensor([1, -1, 0, 0]) * self.offset
        return probs if math.isfinite(self.offset) else torch.full((len(batch), 4), math.nan)

    def warm_up(self, max_batch_size: int, buckets: object = None) -> None:
        return None


def test_the_measurement_compares_every_route_with_the_exact_mode() -> None:
    runnables = {EXACT: _Scripted(0.0), FLOAT: _Scripted(1e-4), INT8: _Scripted(math.nan)}
    trials = choice.measure([EXACT, FLOAT, INT8], dict(runnables), torch.zeros(5, 3, 8, 8), 2)
    assert [trial.route for trial in trials] == [EXACT, FLOAT, INT8]
    assert trials[1].accepted and trials[1].max_abs_dp == pytest.approx(1e-4, abs=1e-6)
    assert not trials[2].accepted and "not finite" in trials[2].why_not


@pytest.fixture
def measured_dir(converted: Converted, tmp_path: Path) -> Path:
    return converted.data_copy(tmp_path / "data")


def test_the_first_start_measures_the_routes_and_later_starts_keep_the_choice(
    converted: Converted, measured_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoint = str(converted.checkpoint)
    with caplog.at_level(logging.INFO, logger="nsfwd.models"):
        first = Classifier.load(checkpoint, data_dir=measured_dir)
    assert any(m.startswith("measuring torch float32, openvino float32") for m in caplog.messages)
    assert first.dtype_reason.startswith("measured fastest here on ")
    assert "14 parity photographs" in first.dtype_reason
    kept = json.loads((measured_dir / CHOICES_FILE).read_text())
    [entry] = kept.values()
    assert Route(**entry["route"]) == first.route
    assert entry["machine"]["cores"] >= 1 and entry["model"] == checkpoint
    assert {Route(**trial["route"]) for trial in entry["trials"]} == {EXACT, FLOAT}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nsfwd.models"):
        again = Classifier.load(checkpoint, data_dir=measured_dir)
    assert not [m for m in caplog.messages if m.startswith("measuring")]
    assert (again.route, again.dtype_reason) == (first.route, first.dtype_reason)
    # A kept choice that the options no longer allow is measured again, not obeyed.
    assert Choices(measured_dir).get(next(iter(kept)), [Route("torch", "bfloat16")]) is None


def test_an_option_skips_the_measurement(
    converted: Converted, measured_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="nsfwd.models"):
        exact = Classifier.load(str(converted.checkpoint), dtype="float32", data_dir=measured_dir)
        openvino = Classifier.load(
            str(converted.checkpoint), runtime="openvino", data_dir=measured_dir
        )
    assert (exact.route, exact.dtype_reason) == (EXACT, "as asked")
    assert openvino.route == FLOAT
    assert not [m for m in caplog.messages if m.startswith("measuring")]
    assert not (measured_dir / CHOICES_FILE).exists()


def test_healthz_and_metrics_name_the_runtime(converted: Converted) -> None:
    engine = Engine(converted.openvino, max_batch_size=2)
    app = create_app(engine, Settings(api_keys=["k" * 16]))

    async def ask() -> tuple[str, str]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                health = await client.get("/healthz")
                return health.text, (await client.get("/metrics")).text

    health, metrics = asyncio.run(ask())
    assert "runtime: openvino\n" in health
    assert 'nsfwd_model_info{device="cpu",dtype="float32",runtime="openvino"} 1.0' in metrics


@pytest.fixture
def unpinned(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("NSFWD_RUNTIME", raising=False)
    yield


@pytest.mark.usefixtures("unpinned")
def test_classify_takes_the_runtime_from_the_command_line(
    converted: Converted,
    calibration_images: Path,
    measured_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("NSFWD_DATA_DIR", str(measured_dir))
    images = sorted(calibration_images.iterdir())[:2]
    args = ["classify", "--model", str(converted.checkpoint), "--runtime", "openvino"]
    assert main([*args, "--no-progress", *map(str, images)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [record["path"] for record in records] == list(map(str, images))
    want = converted.exact.classify([_open(path) for path in images])
    for record, labels in zip(records, want, strict=True):
        assert max(abs(record["labels"][k] - labels[k]) for k in labels) < 1e-4
    assert not (measured_dir / CHOICES_FILE).exists(), "--runtime fixes the route"


def _open(path: Path) -> Image.Image:
    return load_image_file(path)
