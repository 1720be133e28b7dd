#!/usr/bin/env bash
# Cold start to a healthy /healthz with a warm cache (the kept choice and the OpenVINO export
# and compiled models in the data directory), after one start that fills it.
cd "$(dirname "$0")/.."
mkdir -p "${OUT:-/tmp/nsfwd-cold}"
export NSFWD_DATA_DIR=${OUT:-/tmp/nsfwd-cold}/cold NSFWD_API_KEYS=a-long-enough-key-for-the-bench-0123
test -d ${OUT:-/tmp/nsfwd-cold}/ckpt || .venv/bin/python -c "
from pathlib import Path; from nsfwd.models.synthetic import write_timm_checkpoint
write_timm_checkpoint(Path('${OUT:-/tmp/nsfwd-cold}/ckpt'), arch='eva02_base_patch14_448')"
for run in first second third; do
  start=$(date +%s.%N)
  .venv/bin/nsfwd serve --model ${OUT:-/tmp/nsfwd-cold}/ckpt --port 8765 > ${OUT:-/tmp/nsfwd-cold}/cold-$run.log 2>&1 &
  pid=$!
  until curl -sf http://127.0.0.1:8765/healthz >/dev/null; do sleep 0.2; done
  end=$(date +%s.%N)
  echo "$run start: $(echo "$end - $start" | bc) s to a healthy /healthz"
  curl -s http://127.0.0.1:8765/healthz | head -c 600; echo
  kill -TERM $pid; wait $pid
done
