"""What this CPU computes fast: its vector extensions decide the speed of fp32, bf16 and int8.

The same network runs faster in bf16 than in fp32 on a CPU with AVX512_BF16 or AMX, and several
times slower on one without (PyTorch then converts around every operation; BENCHMARKS.md), so a
CPU figure means little without these beside it, and bf16 on such a CPU deserves a warning.
The same flags choose the CPU's default precision (:func:`default_cpu_dtype`): bf16 where it is
native, fp32 (the exact mode) elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

CPU_CLASSES = ("AMX", "AVX512_BF16", "AVX512", "AVX2", "ARM", "other")
"""What :func:`cpu_class` answers, fastest bf16 first."""

_PROBES = (
    ("VNNI", "_is_vnni_supported"),
    ("BF16", "_is_avx512_bf16_supported"),
    ("AMX", "_is_amx_tile_supported"),
    ("AMX-FP16", "_is_amx_fp16_supported"),
)


def _has(probe: str) -> bool:
    supported = getattr(torch.cpu, probe, None)  # private probes: absent from some torch builds
    return supported is not None and bool(supported())


def cpu_features() -> str:
    """The CPU's vector extensions as PyTorch sees them: ``AVX2``, ``AVX512+VNNI+BF16``, ..."""
    names = [torch.backends.cpu.get_cpu_capability()]
    names += [name for name, probe in _PROBES if _has(probe)]
    return "+".join(names)


def computes_natively(dtype: torch.dtype) -> bool:
    """Whether this CPU computes ``dtype`` natively (fp32 always; bf16 with AVX512_BF16 or AMX;
    fp16 with AMX-FP16)."""
    if dtype == torch.bfloat16:
        return _has("_is_avx512_bf16_supported") or _has("_is_amx_tile_supported")
    if dtype == torch.float16:
        return _has("_is_amx_fp16_supported")
    return True


INT8_DOT_PRODUCTS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})
"""The flags of int8 dot-product instructions (AVX512-VNNI, AVX-VNNI, AMX-INT8; Arm's SDOT)."""


def has_int8_dot_products(flags: Iterable[str]) -> bool:
    """Whether a CPU with these flags multiplies int8 with dedicated dot-product instructions:
    without them OpenVINO's int8 kernels measured no faster than its float32 ones (AVX2)."""
    return not INT8_DOT_PRODUCTS.isdisjoint(flags)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags as Linux names them (``avx2``, ``avx512_bf16``, ``amx_bf16``;
    ``asimd``, ``bf16`` on Arm), from ``cpuinfo``; where that file is missing (macOS, Windows),
    the x86 ones PyTorch's probes can vouch for."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return _flags_from_torch()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, Arm
            return frozenset(value.split())
    return _flags_from_torch()


def _flags_from_torch() -> frozenset[str]:
    capability = torch.backends.cpu.get_cpu_capability()
    flags = {"AVX2": {"avx2"}, "AVX512": {"avx2", "avx512f"}}.get(capability, set())
    if _has("_is_avx512_bf16_supported"):
        flags.add("avx512_bf16")
    if _has("_is_amx_tile_supported"):
        flags |= {"amx_tile", "amx_bf16"}  # every AMX CPU so far has AMX-BF16
    return frozenset(flags)


def cpu_class(flags: Iterable[str]) -> str:
    """The class of CPU that decides nsfwd's CPU speed, one of :data:`CPU_CLASSES`: ``AMX``
    (``amx_bf16``: Sapphire Rapids and later), ``AVX512_BF16`` (Cooper Lake, AMD Zen 4 and 5),
    ``AVX512``, ``AVX2``, ``ARM`` (``asimd``), or ``other``."""
    present = set(flags)
    for flag, name in (
        ("amx_bf16", "AMX"),
        ("avx512_bf16", "AVX512_BF16"),
        ("avx512f", "AVX512"),
        ("avx2", "AVX2"),
        ("asimd", "ARM"),
    ):
        if flag in present:
            return name
    return "other"


def default_cpu_dtype(flags: Iterable[str]) -> tuple[str, str]:
    """The CPU's default precision for these flags and why: ``bfloat16`` where bf16 is native
    (AMX or AVX512_BF16), where it runs faster than fp32; ``float32``, the exact mode,
    elsewhere, where PyTorch emulates bf16 several times slower.

    Arm CPUs get fp32 too: some (Graviton 3, Neoverse V1 and later) have bf16 instructions, but
    nsfwd has not measured bf16 there against fp32.
    """
    name = cpu_class(flags)
    if name == "AMX":
        return "bfloat16", "this CPU has AMX (amx_bf16)"
    if name == "AVX512_BF16":
        return "bfloat16", "this CPU has native bf16 (avx512_bf16)"
    if name == "ARM":
        return "float32", "bf16 on Arm CPUs is not measured, so not the default (ARM)"
    return "float32", f"this CPU has no native bf16 ({name})"
