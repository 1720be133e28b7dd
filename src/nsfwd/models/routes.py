"""The ways a model can run (a :class:`Route`: runtime, precision, quantisation) and which of
them the options leave open (:func:`plan`): one route when the options fix it, else the
candidates the start-up measurement (:mod:`nsfwd.models.choice`) chooses among. No torch: the
command line names these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

RUNTIMES = ("torch", "openvino")
"""``torch``: eager PyTorch (or ``torch.compile``); ``openvino``: OpenVINO's CPU plugin."""
QUANTIZATIONS = ("int8",)
"""``int8``: the fast CPU mode, static int8 on OpenVINO (NNCF); results differ slightly from
the exact mode's (BENCHMARKS.md)."""
AS_ASKED = "as asked"


@dataclass(frozen=True)
class Route:
    """How a model runs: the runtime, the precision, and the quantisation if any."""

    runtime: str
    dtype: str
    quantize: str | None = None

    def __str__(self) -> str:
        return f"{self.runtime} {self.quantize or self.dtype}"


def refused_options(
    *,
    device: str | None = None,
    dtype: str | None = None,
    runtime: str | None = None,
    quantize: str | None = None,
    compile: str | None = None,
) -> list[str]:
    """The route options (``--device``...) that ask a model running one fixed way (torch or
    onnxruntime in float32, unquantised, uncompiled; on the CPU where ``device`` is given) for
    another: open-nsfw and the detectors refuse them rather than ignore them."""
    asked = (
        ("--device", device is not None and device.partition(":")[0] != "cpu"),
        ("--dtype", dtype not in (None, "float32")),
        ("--runtime", runtime not in (None, "torch")),
        ("--quantize", quantize is not None),
        ("--compile", compile not in (None, "off")),
    )
    return [option for option, clash in asked if clash]


def route_info(device: object, route: Route, reason: str, kind: str) -> dict[str, str]:
    """A loaded model's ``model_info`` (:class:`~nsfwd.models.runner.Runner`): ``device``,
    ``dtype``, ``runtime`` (with its quantisation: ``openvino int8``), ``dtype_reason`` (why
    that route) and ``kind``, as ``/healthz``, the metrics and the bench show them."""
    return {
        "device": str(device),
        "dtype": route.dtype,
        "runtime": " ".join(filter(None, (route.runtime, route.quantize))),
        "dtype_reason": reason,
        "kind": kind,
    }


EXACT = Route("torch", "float32")
"""The exact mode, every other route's reference."""
INT8 = Route("openvino", "float32", "int8")


@dataclass(frozen=True)
class Plan:
    """The routes the options leave open, preferred first: one, with why (:attr:`reason`), or
    several, for the start-up measurement to choose among."""

    routes: list[Route]
    reason: str = AS_ASKED


def candidate_routes(*, native_bf16: bool, openvino: bool) -> list[Route]:
    """The routes the start-up measurement tries, preferred first: torch, then OpenVINO (where
    it is installed), each in fp32 then, where the CPU computes it natively, bf16. The bench
    compares them all."""
    dtypes = ["float32", "bfloat16"] if native_bf16 else ["float32"]
    runtimes = ["torch", *(["openvino"] if openvino else [])]
    return [Route(name, dtype) for dtype in dtypes for name in runtimes]


def check_options(
    device: torch.device,
    *,
    dtype: str | None,
    runtime: str | None,
    quantize: str | None,
    compiled: bool,
) -> None:
    """ValueError saying what to drop when the options do not go together."""
    if runtime not in (None, *RUNTIMES):
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
    if quantize not in (None, *QUANTIZATIONS):
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, not {quantize!r}")
    if compiled and quantize is not None:
        raise ValueError("compile and quantize do not combine; choose one")
    if compiled and runtime == "openvino":
        raise ValueError("--compile is torch.compile; OpenVINO compiles on its own: drop one")
    if device.type != "cpu" and (runtime == "openvino" or quantize is not None):
        raise ValueError(
            "the OpenVINO runtime and int8 are CPU modes here; on a GPU, torch in bf16 is the "
            "fast path: drop --runtime openvino and --quantize"
        )
    if quantize is not None and runtime == "torch":
        raise ValueError(
            "int8 runs on the OpenVINO runtime (static int8 calibrated by NNCF); torch's "
            "dynamic int8 is deprecated: drop --runtime torch"
        )
    if quantize is not None and dtype not in (None, "float32"):
        raise ValueError("int8 quantisation starts from float32 weights; drop --dtype")
    if runtime == "openvino" and dtype not in (None, "float32", "bfloat16"):
        raise ValueError("the OpenVINO runtime runs in float32 or bfloat16; drop --dtype")


def plan(
    device: torch.device,
    *,
    dtype: str | None,
    runtime: str | None,
    quantize: str | None,
    compiled: bool,
    default_dtype: tuple[str, str],
    native_bf16: bool,
    openvino: bool,
) -> Plan:
    """The routes open to a model on ``device`` given the options (checked first, see
    :func:`check_options`). Any option fixes the route: ``quantize`` int8; ``dtype`` that
    precision on ``runtime``, else torch (``float32`` is the exact mode); ``runtime`` that
    runtime in ``default_dtype`` (the device's default for its flags, and why); so do a device
    other than the CPU and ``compiled`` (torch). Nothing, on a CPU, leaves every candidate open
    (:func:`candidate_routes`) for the start-up measurement."""
    check_options(device, dtype=dtype, runtime=runtime, quantize=quantize, compiled=compiled)
    if quantize is not None:
        return Plan([INT8])
    if dtype is not None:
        return Plan([Route(runtime or "torch", dtype)])
    name, why = default_dtype
    if runtime is not None or device.type != "cpu" or compiled:
        return Plan([Route(runtime or "torch", name)], why)
    routes = candidate_routes(native_bf16=native_bf16, openvino=openvino)
    if len(routes) > 1:
        return Plan(routes, "")
    return Plan(routes, f"the only route here: {why}; OpenVINO is not installed (nsfwd[openvino])")
