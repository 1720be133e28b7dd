"""The default precision follows the CPU: bf16 where it is native (AMX, AVX512_BF16), fp32 (the
exact mode) elsewhere; bf16 on a GPU; ``--dtype`` overrides. The choice is a pure function of
the CPU's flags, so every class of CPU is checked here, and the loaded model on this machine's
CPU, whatever it is, against that function's answer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import torch

from nsfwd.api.app import create_app
from nsfwd.bench.report import BenchConfig, reference_dtypes
from nsfwd.engine.batcher import Engine
from nsfwd.models.classifier import DTYPES, Classifier, choose_dtype
from nsfwd.models.cpu import cpu_class, cpu_flags, default_cpu_dtype, has_int8_dot_products
from nsfwd.settings import Settings

SAPPHIRE_RAPIDS = "fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8"
ZEN4 = "fpu sse2 avx2 avx512f avx512_vnni avx512_bf16"
SKYLAKE_SP = "fpu sse2 avx2 avx512f avx512bw avx512_vnni"
ZEN3 = "fpu sse2 avx avx2 fma"
GRAVITON3 = "fp asimd evtstrm aes sha3 sve bf16 i8mm"


@pytest.mark.parametrize(
    ("flags", "cls", "dtype", "reason"),
    [
        (SAPPHIRE_RAPIDS, "AMX", "bfloat16", "this CPU has AMX (amx_bf16)"),
        (ZEN4, "AVX512_BF16", "bfloat16", "this CPU has native bf16 (avx512_bf16)"),
        (SKYLAKE_SP, "AVX512", "float32", "this CPU has no native bf16 (AVX512)"),
        (ZEN3, "AVX2", "float32", "this CPU has no native bf16 (AVX2)"),
        (GRAVITON3, "ARM", "float32", "bf16 on Arm CPUs is not measured, so not the default (ARM)"),
        ("fpu sse2", "other", "float32", "this CPU has no native bf16 (other)"),
        ("", "other", "float32", "this CPU has no native bf16 (other)"),
    ],
)
def test_each_class_of_cpu_gets_its_default(flags: str, cls: str, dtype: str, reason: str) -> None:
    assert cpu_class(flags.split()) == cls
    assert default_cpu_dtype(flags.split()) == (dtype, reason)


@pytest.mark.parametrize(
    ("flags", "dot_products"),
    [(SAPPHIRE_RAPIDS, True), (ZEN4, True), (SKYLAKE_SP, True), (ZEN3, False)],
)
def test_int8_dot_products_are_told_by_the_flags(flags: str, dot_products: bool) -> None:
    assert has_int8_dot_products(flags.split()) is dot_products


def test_flags_are_read_from_cpuinfo_on_x86_and_arm(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text(f"processor\t: 0\nmodel name\t: Xeon\nflags\t\t: {SAPPHIRE_RAPIDS}\n\n")
    assert cpu_class(cpu_flags(x86)) == "AMX"
    arm = tmp_path / "arm"
    arm.write_text(f"processor\t: 0\nFeatures\t: {GRAVITON3}\nCPU implementer\t: 0x41\n")
    assert "bf16" in cpu_flags(arm) and cpu_class(cpu_flags(arm)) == "ARM"


def test_without_cpuinfo_the_flags_come_from_torchs_probes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert cpu_class(cpu_flags(tmp_path / "absent")) == "AVX512_BF16"


def test_dtype_asked_for_overrides_the_default_and_int8_starts_from_fp32() -> None:
    cpu = torch.device("cpu")
    assert choose_dtype(cpu, "float32") == (torch.float32, "as asked")
    assert choose_dtype(cpu, "bfloat16") == (torch.bfloat16, "as asked")
    assert choose_dtype(torch.device("cuda")) == (torch.bfloat16, "the GPU default")
    assert choose_dtype(cpu, quantize="int8")[0] == torch.float32
    name, reason = default_cpu_dtype(cpu_flags())
    assert choose_dtype(cpu) == (DTYPES[name], reason)


def test_the_model_on_this_cpu_runs_in_the_default_for_its_flags(
    timm_checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    name, reason = default_cpu_dtype(cpu_flags())
    with caplog.at_level("INFO", logger="nsfwd.models.classifier"):
        classifier = Classifier.load(str(timm_checkpoint), device="cpu")
    assert classifier.dtype == DTYPES[name]
    assert classifier.dtype_reason == reason
    assert f"dtype {name}: {reason}" in caplog.messages


def test_healthz_and_metrics_show_the_device_and_dtype(classifier: Classifier) -> None:
    engine = Engine(classifier, max_batch_size=2)
    dtype = str(classifier.dtype).removeprefix("torch.")
    app = create_app(engine, Settings(api_keys=["k" * 16]))

    async def ask() -> tuple[httpx.Response, httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return await client.get("/healthz"), await client.get("/metrics")

    health, metrics = asyncio.run(ask())
    assert health.status_code == 200
    lines = health.text.splitlines()
    assert lines[0] == "ok"
    assert lines[1] == f"device: {classifier.device}"
    assert lines[2] == f"dtype: {dtype} ({classifier.dtype_reason})"
    assert lines[3] == "runtime: torch"
    info = f'device="{classifier.device}",dtype="{dtype}",runtime="torch"'
    assert f"nsfwd_model_info{{{info}}} 1.0" in metrics.text


def test_bench_runs_the_package_in_both_precisions_to_find_its_faster_mode() -> None:
    cpu = torch.device("cpu")
    assert reference_dtypes(BenchConfig(), cpu) == ["float32", "bfloat16"]
    assert reference_dtypes(BenchConfig(), torch.device("cuda")) == ["bfloat16"]
    both = BenchConfig(reference_dtypes=["float32", "bfloat16"])
    assert reference_dtypes(both, cpu) == ["float32", "bfloat16"]
