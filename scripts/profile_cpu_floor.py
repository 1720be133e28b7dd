"""Where EVA-02-B/448's time goes on this CPU, against the matmul floor (BENCHMARKS.md).

Run with the dev extras and `nsfwd[openvino]`: `.venv/bin/python scripts/profile_cpu_floor.py`.

FLOPs by FlopCounterMode; the machine's GEMM rate from torch.mm at the model's shapes; torch
eager fp32 by operator (torch.profiler); OpenVINO f32 and int8 by node type (PERF_COUNT)."""
import collections, time, sys
import torch, timm
from torch.utils.flop_counter import FlopCounterMode

torch.manual_seed(0)
threads = torch.get_num_threads()
model = timm.create_model("eva02_base_patch14_448", pretrained=False, num_classes=4).eval()
x = torch.randn(1, 3, 448, 448)
with torch.no_grad(), FlopCounterMode(display=False) as counter:
    model(x)
flops = counter.get_total_flops()
by_op = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
print(f"threads {threads}; GFLOP an image {flops/1e9:.1f}; by op: " +
      ", ".join(f"{k} {v/1e9:.1f}" for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])))

def rate(m, k, n, reps=20):
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3): a @ b
    t = time.perf_counter()
    for _ in range(reps): a @ b
    return 2 * m * k * n * reps / (time.perf_counter() - t)

shapes = [(1025, 768, 2304), (1025, 768, 768), (1025, 768, 2048), (1025, 2048, 768)]
rates = {s: rate(*s) for s in shapes}
print("fp32 GEMM GFLOP/s at the model's shapes: " + ", ".join(f"{s}: {r/1e9:.0f}" for s, r in rates.items()))
best = max(rates.values())
print(f"matmul floor, fp32: {flops/best:.3f} s an image (all FLOPs at the best GEMM rate)")

def timed(fn, reps=3):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return min(times)

with torch.no_grad():
    eager = timed(lambda: model(x))
    print(f"torch eager fp32, batch 1: {eager:.3f} s ({flops/eager/1e9:.0f} GFLOP/s, {flops/best/eager:.0%} of the floor)")
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x)
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:10]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    print("torch eager fp32, self time by operator: " + ", ".join(
        f"{e.key} {e.self_cpu_time_total/total:.0%}" for e in rows))

import openvino as ov, nncf, numpy as np
core = ov.Core()
ovm = ov.convert_model(model, example_input=x)
cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": str(threads), "INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": "YES"}

def ov_profile(name, m):
    compiled = core.compile_model(m, "CPU", cfg)
    req = compiled.create_infer_request()
    xs = x.numpy()
    s = timed(lambda: req.infer({0: xs}))
    by = collections.Counter()
    for info in req.get_profiling_info():
        by[f"{info.node_type}/{info.exec_type}"] += info.real_time.total_seconds()
    tot = sum(by.values())
    print(f"openvino {name}, batch 1: {s:.3f} s ({flops/s/1e9:.0f} GFLOP/s, {flops/best/s:.0%} of the fp32 floor); by node: " +
          ", ".join(f"{k} {v/tot:.0%}" for k, v in by.most_common(8)))
    return s

f32 = ov_profile("f32", ovm)
images = [np.random.default_rng(i).standard_normal((1, 3, 448, 448)).astype(np.float32) for i in range(8)]
q = nncf.quantize(ovm, nncf.Dataset(images), model_type=nncf.ModelType.TRANSFORMER, subset_size=8)
i8 = ov_profile("int8", q)
print(f"int8 against torch eager fp32: {eager/i8:.2f}x; against openvino f32: {f32/i8:.2f}x")

# Agreement on photographs against torch fp32, for each OpenVINO route. timm's own head init
# gives near-uniform probabilities, so these differences are small by construction: the
# bench's parity suite (a head drawn to move probabilities) is the agreement to read.
from skimage import data as skdata
from PIL import Image
cfgd = timm.data.resolve_data_config({}, model=model)
tf = timm.data.create_transform(**cfgd)
photos = torch.stack([tf(Image.fromarray(getattr(skdata, n)()).convert("RGB")) for n in ("astronaut", "chelsea", "coffee", "rocket")])
with torch.no_grad():
    ref = torch.softmax(model(photos), -1).numpy()

def agreement(m, extra=None):
    c = core.compile_model(m, "CPU", {**{k: v for k, v in cfg.items() if k != "PERF_COUNT"}, **(extra or {})})
    out = np.concatenate([c(photos[i:i+1].numpy())[0] for i in range(len(photos))])
    e = np.exp(out - out.max(-1, keepdims=True)); p = e / e.sum(-1, keepdims=True)
    return float(np.abs(p - ref).max())

print(f"agreement, max |dp| on 4 photographs: openvino f32 {agreement(ovm):.1e}, int8 static (8 noise images) {agreement(q):.1e}")
calib = [photos[i:i+1].numpy() for i in range(4)]
q2 = nncf.quantize(ovm, nncf.Dataset(calib), model_type=nncf.ModelType.TRANSFORMER, subset_size=4)
print(f"int8 static calibrated on the 4 photographs themselves: max |dp| {agreement(q2):.1e}")
for mode in ("INT8_ASYM", "INT8_SYM"):
    w = nncf.compress_weights(ovm, mode=getattr(nncf.CompressWeightsMode, mode))
    for group in ("32", "0"):
        extra = {"DYNAMIC_QUANTIZATION_GROUP_SIZE": group}
        c = core.compile_model(w, "CPU", {**cfg, **extra})
        req = c.create_infer_request(); xs = x.numpy()
        s = timed(lambda: req.infer({0: xs}))
        print(f"weights {mode}, dynamic quantization group {group}: {s:.3f} s ({eager/s:.2f}x torch eager), max |dp| {agreement(w, extra):.1e}")
for pin in ("YES", "NO"):
    c = core.compile_model(ovm, "CPU", {**cfg, "ENABLE_CPU_PINNING": pin})
    req = c.create_infer_request(); xs = x.numpy()
    print(f"openvino f32, pinning {pin}: {timed(lambda: req.infer({0: xs})):.3f} s")
