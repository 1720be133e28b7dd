"""The torch.compile mode (`nsfwd.models.compiled`): buckets, parity, the persistent cache.

Compiling the tiny EVA-02 costs 10-20 s a graph on two cores, so the module compiles the
buckets of a batch size of 4 (1, 2, 4) once into a fresh cache; later tests reuse them.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import pytest
import torch
from PIL import Image

from judging import labels_of
from nsfwd.cli import main
from nsfwd.engine.batcher import Engine
from nsfwd.models.buckets import default_buckets
from nsfwd.models.classifier import Classifier
from nsfwd.models.compiled import CACHE_ENV, COMPILE_CHOICES, cache_stats, compile_mode
from nsfwd.settings import Settings
from nsfwd.verdict import Labels

BUCKETS = (1, 2, 4)
PARITY = 1e-4
"""Largest |dp| allowed between compiled and eager probabilities (fp32 on the CPU)."""


@dataclass
class Compiled:
    classifier: Classifier
    cache_dir: Path
    first_start: dict[str, int]
    """Cache hits and misses of the warm-up into the empty cache."""


@pytest.fixture(scope="module")
def compiled(timm_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compiled]:
    """The tiny EVA-02 compiled for batches of 1, 2 and 4, into a cache of its own."""
    cache_dir = tmp_path_factory.mktemp("compile-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(CACHE_ENV, raising=False)  # restored afterwards; load() sets it
        classifier = Classifier.load(
            str(timm_checkpoint), dtype="float32", compile="on", compile_cache_dir=cache_dir
        )
        before = cache_stats()
        classifier.warm_up(4)  # the engine's call: default buckets
        first = {key: value - before[key] for key, value in cache_stats().items()}
        yield Compiled(classifier, cache_dir, first)


def _batch(size: int, seed: int) -> torch.Tensor:
    """``size`` different prepared images (uint8 noise over a colour field)."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 256, (size, 3, 1, 1), generator=generator, dtype=torch.uint8)
    noise = torch.randint(0, 64, (size, 3, 224, 224), generator=generator, dtype=torch.uint8)
    return base.expand(-1, -1, 224, 224).clone().add_(noise)


def test_default_buckets_are_powers_of_two_then_the_batch_size() -> None:
    assert default_buckets(1) == (1,)
    assert default_buckets(2) == (1, 2)
    assert default_buckets(6) == (1, 2, 4, 6)
    assert default_buckets(32) == (1, 2, 4, 8, 16, 32)
    with pytest.raises(ValueError, match="at least 1"):
        default_buckets(0)


def test_on_means_cuda_graphs_on_a_gpu_and_the_default_mode_elsewhere() -> None:
    assert compile_mode("on", torch.device("cuda")) == "reduce-overhead"
    assert compile_mode("on", torch.device("cpu")) == "default"
    assert compile_mode("max-autotune", torch.device("cpu")) == "max-autotune"
    assert compile_mode("off", torch.device("cpu")) is None
    assert compile_mode(None, torch.device("cpu")) is None


def test_bad_compile_settings_say_what_is_accepted(
    timm_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert get_args(Settings.model_fields["compile"].annotation) == COMPILE_CHOICES
    assert Settings(compile="TRUE").compile == "on"
    assert Settings(compile="0").compile == "off"
    with pytest.raises(ValueError, match="compile must be one of off, on, default"):
        Classifier.load(str(timm_checkpoint), compile="fast")
    with pytest.raises(ValueError, match="compile and quantize do not combine"):
        Classifier.load(str(timm_checkpoint), compile="on", quantize="int8")
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(ValueError, match=r"cannot use .* as the compile cache"):
        Classifier.load(str(timm_checkpoint), compile="on", compile_cache_dir=not_a_folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NSFWD_COMPILE", "fast")
        code = main(["classify", "--model", str(timm_checkpoint), str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "compile" in err and "'reduce-overhead'" in err


def test_compiled_probabilities_equal_eager_ones_for_every_batch_size(
    compiled: Compiled, classifier: Classifier
) -> None:
    graphs = cache_stats()
    worst = 0.0
    for seed, size in enumerate((1, 3, 4, 5, 9)):  # 3 is padded to 4; 5 and 9 split as well
        batch = _batch(size, seed)
        expected = classifier.predict(batch)
        probs = compiled.classifier.predict(batch)
        assert probs.shape == expected.shape == (size, 4)
        worst = max(worst, (probs - expected).abs().max().item())
        if size > 1:  # rows differ, so a row out of place would show
            assert (expected[0] - expected[1]).abs().max() > 100 * PARITY
    print(f"compiled vs eager: max |dp| = {worst:.2e}")
    assert worst < PARITY
    assert cache_stats() == graphs, "a batch size outside the buckets was compiled afresh"


def test_buckets_round_up_and_the_largest_one_bounds_a_chunk(compiled: Compiled) -> None:
    runner = compiled.classifier.runner
    assert runner is not None
    assert runner.buckets == BUCKETS
    assert [runner.bucket_for(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 4]
    assert compiled.classifier.predict(_batch(0, 0)).shape == (0, 4)


def test_the_engine_warms_every_bucket_up_then_serves_any_batch_size(
    compiled: Compiled, classifier: Classifier
) -> None:
    images = []
    for seed in range(7):
        buffer = io.BytesIO()
        Image.fromarray(_batch(1, seed)[0].permute(1, 2, 0).numpy()).save(buffer, "PNG")
        images.append(buffer.getvalue())

    async def serve() -> list[Labels]:
        engine = Engine(compiled.classifier, max_batch_size=4, batch_wait_ms=50)
        await engine.start()
        try:
            return await asyncio.gather(*(labels_of(engine, data) for data in images))
        finally:
            await engine.stop()

    graphs = cache_stats()
    served = asyncio.run(serve())
    assert cache_stats() == graphs, "the engine compiled a graph the fixture had not"
    assert compiled.classifier.runner is not None
    assert compiled.classifier.runner.buckets == BUCKETS
    expected = classifier.classify([Image.open(io.BytesIO(data)) for data in images])
    for got, want in zip(served, expected, strict=True):
        assert max(abs(got[k] - want[k]) for k in want) < PARITY


def test_classify_compiles_one_graph_for_its_batch_size(
    compiled: Compiled,
    classifier: Classifier,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    images = []
    for i in range(3):  # batches of 2, then 1 padded to 2
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (200, 160), (80 * i, 200 - 60 * i, 30)).save(path)
        images.append(path)
    caplog.set_level(logging.INFO, logger="nsfwd.models.compiled")
    code = main([
        "classify", "--model", compiled.classifier.name, "--batch-size", "2", "--compile",
        "--dtype", "float32",  # the fixture's precision, whatever this CPU's default
        "--compile-cache-dir", str(compiled.cache_dir), *map(str, images),
    ])  # fmt: skip
    assert code == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in records] == [str(p) for p in images]
    expected = classifier.classify([Image.open(p).convert("RGB") for p in images])
    for record, labels in zip(records, expected, strict=True):
        assert max(abs(record["labels"][k] - labels[k]) for k in labels) < PARITY
    # In this process dynamo reuses the graph traced for batches of 2; a new process would load
    # it from the cache (see the last test). Either way nothing is compiled.
    assert "for batch sizes 2 in" in caplog.text
    assert ", 0 compiled" in caplog.text


def test_bench_reports_compiled_figures_from_the_cache(
    compiled: Compiled, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    code = main([
        "bench", "--arch", "eva02_tiny_patch14_224", "--suites", "model,pipeline",
        "--batch-sizes", "4", "--batch-size", "4", "--images", "3", "--image-size", "320x240",
        "--compile", "--compile-cache-dir", str(compiled.cache_dir), "--json", str(out),
        "--dtype", "float32",  # the fixture's precision, whatever this CPU's default
    ])  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    warm = report["results"]["compile"]
    assert warm["mode"] == "torch.compile default"
    assert warm["buckets"] == [4]
    assert warm["fxgraph_cache_miss"] == 0  # the fixture's graphs (same shapes) serve
    assert report["config"]["compile_cache_dir"] == str(compiled.cache_dir.resolve())
    assert [row["batch_size"] for row in report["results"]["model"]] == [4]
    assert [run["failed"] for run in report["results"]["pipeline"]] == [0]
    assert "compiled 0" in capsys.readouterr().out


def test_a_second_start_loads_every_graph_from_the_cache(
    compiled: Compiled, timm_checkpoint: Path
) -> None:
    # The first start compiled each bucket and wrote it to the cache folder.
    assert compiled.first_start["fxgraph_cache_miss"] == len(BUCKETS)
    assert compiled.first_start["fxgraph_cache_hit"] == 0
    assert any((compiled.cache_dir / "fxgraph").rglob("*"))
    assert any((compiled.cache_dir / "aotautograd").rglob("*"))
    # A new start: dynamo forgets what it traced, as a new process would.
    torch.compiler.reset()
    again = Classifier.load(
        str(timm_checkpoint), dtype="float32", compile="on", compile_cache_dir=compiled.cache_dir
    )
    before = cache_stats()
    again.warm_up(4)
    after = cache_stats()
    assert after["fxgraph_cache_hit"] - before["fxgraph_cache_hit"] == len(BUCKETS)
    assert after["fxgraph_cache_miss"] - before["fxgraph_cache_miss"] == 0
    assert after["autograd_cache_hit"] - before["autograd_cache_hit"] == len(BUCKETS)
    batch = _batch(3, 7)
    assert torch.allclose(again.predict(batch), compiled.classifier.predict(batch), atol=1e-6)
