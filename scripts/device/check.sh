#!/usr/bin/env bash
# Every GPU figure BENCHMARKS.md asks for, in one run on a lent GPU machine (the device tool).
#
# Here, once:  bash scripts/device/wheels.sh     (what the GPU image lacks, into .whl/)
# Then:        device run, command "bash scripts/device/check.sh", carry [".whl"], timeout_s 560
#              (a rerun can name steps: "bash scripts/device/check.sh server8")
#
# Each step is one `nsfwd bench`, under a time limit of its own, writing $OUT/STEP.json; a step
# that fails or runs out of time does not stop the others. Logs go to $OUT/log.txt, the machine's
# facts to $OUT/machine.txt: 7 files, within what the tool brings back (8). About 6 minutes on
# an H200 with 16 cores; the limits below add up to 530 s.
#
# No step names --dtype or --reference-dtypes: each measures nsfwd's default precision (bf16 on
# a GPU; on a CPU, bf16 where native, else fp32) against Freepik's package in its faster mode on
# the same device (bf16 on a GPU; on a CPU, the same rule), as a new user would meet them.
#
# A dry run on a CPU, to see the plumbing work before spending device time:
#   CHECK_IMAGES=16 CHECK_EXTRA="--device cpu --arch eva02_tiny_patch14_224 --images 16
#     --requests 32 --reference-images 4 --batch-sizes 1,2 --batch-size 2" bash scripts/device/check.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
STEPS=("$@")
IMAGES=/tmp/nsfwd-jpegs   # 1024x768 JPEGs, ~150 KB each, made once for every step

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/nsfwd-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/nsfwd-site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export NSFWD_COMPILE_CACHE_DIR=/tmp/nsfwd-compile-cache

{
    date -u +%FT%TZ
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    nproc
    python3 - <<'PY'
import importlib.metadata as md
import torch
print("python", __import__("sys").version.split()[0], "cuda", torch.version.cuda)
for name in ("torch", "torchvision", "timm", "transformers", "pillow", "fastapi", "uvicorn"):
    print(name, md.version(name))
from nsfwd.models.cpu import cpu_class, cpu_features, cpu_flags, default_cpu_dtype
flags = cpu_flags()
print("cpu", cpu_class(flags), cpu_features(), "default cpu dtype", *default_cpu_dtype(flags))
PY
} >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

python3 -c "
from pathlib import Path
from nsfwd.bench.images import make_jpegs
make_jpegs(Path('$IMAGES'), ${CHECK_IMAGES:-1024}, (1024, 768))
" || exit 1

wanted() { [ ${#STEPS[@]} -eq 0 ] || [[ " ${STEPS[*]} " == *" $1 "* ]]; }

# bench STEP SECONDS ARGS...: one `nsfwd bench ARGS` under a limit of SECONDS.
bench() {
    local step=$1 limit=$2
    shift 2
    wanted "$step" || return 0
    local started=$SECONDS
    echo "== $step: nsfwd bench $*" | tee -a "$LOG"
    # shellcheck disable=SC2086  # CHECK_EXTRA is a list of arguments
    timeout --kill-after=15 "$limit" python3 -m nsfwd bench "$@" ${CHECK_EXTRA:-} \
        --json "$OUT/$step.json" >>"$LOG" 2>&1
    local status=$?
    echo "== $step: status $status after $((SECONDS - started)) s" | tee -a "$LOG"
    [ -f "$OUT/$step.json" ] && python3 -c "
import json, sys
from nsfwd.bench import BenchReport, format_report
print(format_report(BenchReport(**json.load(open(sys.argv[1])))))" "$OUT/$step.json"
}

# Ready tensors, eager bf16 (target: 1,500 img/s for EVA-02-B/448).
bench model 90 --suites model --batch-sizes 1,8,32,64,128,256
# The same through torch.compile with CUDA graphs; two graphs keep the compiling short.
bench compiled 200 --suites model --compile --batch-sizes 1,64 --batch-size 64
# nsfwd classify over 1024 JPEGs, both decode paths, Freepik's package in the same run, and
# parity of bf16 + nvjpeg with fp32 + Pillow on the CPU (targets: 1,000 img/s, 5x the package).
bench pipeline 120 --suites pipeline,parity --images 1024 --images-dir "$IMAGES" \
    --decode pil,tensor --batch-size 64 --compare-reference --reference-images 256
# The server under 64 clients, in one process, then with 8 HTTP processes (targets: idle p50
# 15 ms; 500 req/s with p99 250 ms).
bench server1 60 --suites server --images 256 --images-dir "$IMAGES" --batch-size 32 \
    --concurrency 64 --requests 2048 --http-workers 1
bench server8 60 --suites server --images 256 --images-dir "$IMAGES" --batch-size 32 \
    --concurrency 64 --requests 4096 --http-workers 8
echo "== done after $SECONDS s" | tee -a "$LOG"
