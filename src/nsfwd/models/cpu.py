"""What this CPU computes fast: its vector extensions decide the speed of fp32, bf16 and int8.

The same network runs faster in bf16 than in fp32 on a CPU with AVX512_BF16 or AMX, and several
times slower on one without (PyTorch then converts around every operation; BENCHMARKS.md), so a
CPU figure means little without these beside it, and bf16 on such a CPU deserves a warning.
"""

from __future__ import annotations

import torch

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
