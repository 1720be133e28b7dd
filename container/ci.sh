#!/usr/bin/env bash
# `make container-test`: build the nsfwd images on this machine and try them
# (tests/test_container.py), then remove what this run made, by id.
#
# What belongs to this machine, and so lives here and not in the Containerfile:
# - no container registry is reachable: the base is a minimal Debian with Python, built with
#   mmdebstrap once and kept (the tarball under $NSFWD_CONTAINER_CACHE, the image in podman's
#   store), then passed as BASE_IMAGE;
# - podman here runs containers with runc (crun fails on its hybrid cgroups), and may only set
#   rlimits within its own: default_ulimits, in a containers.conf passed through CONTAINERS_CONF;
# - pip's configuration (local wheel folders, the torch cap) and the CA bundle that TLS here
#   needs are mounted for the build only (podman build --volume), never copied into an image;
#   torch comes from that configuration (TORCH_INDEX_URL empty), not PyTorch's CPU index.
#
# Settings: NSFWD_CONTAINER_CACHE (default /var/cache/nsfwd-container); NSFWD_CONTAINER_VARIANTS
# (default "slim full"); NSFWD_CONTAINER_KEEP=1 keeps the images (for a look afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${NSFWD_CONTAINER_CACHE:-/var/cache/nsfwd-container}
VARIANTS=${NSFWD_CONTAINER_VARIANTS:-slim full}
SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,ca-certificates
MIRROR=http://deb.debian.org/debian
PYTHON=${PYTHON:-.venv/bin/python}

log() { printf '[container-test %s] %s\n' "$(date +%T)" "$*" >&2; }

apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "$@"
}

for tool in podman runc mmdebstrap; do
    if ! command -v "$tool" >/dev/null; then
        log "installing podman, runc and mmdebstrap from Debian"
        apt_install podman runc mmdebstrap
        break
    fi
done

run_dir=$(mktemp -d)
images=()
cleanup() {
    if [ "${NSFWD_CONTAINER_KEEP:-0}" != 1 ] && [ ${#images[@]} -gt 0 ]; then
        podman rmi --force "${images[@]}" >/dev/null || true
    fi
    rm -rf "$run_dir"
}
trap cleanup EXIT

# runc, and rlimits no higher than this machine grants: open files from `ulimit -Hn`, processes
# from `ulimit -Hu` but no more than pid_max (runc is refused anything above it here).
nproc=$(ulimit -Hu)
pid_max=$(cat /proc/sys/kernel/pid_max)
if [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ]; then nproc=$pid_max; fi
cat >"$run_dir/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$(ulimit -Hn):$(ulimit -Hn)", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$run_dir/containers.conf"

# The base: named by what goes into it, so a change of recipe builds a new one; one run at a
# time makes it (two CI runs on this machine would otherwise write the same file).
mkdir -p "$CACHE"
exec 9>"$CACHE/base.lock"
flock 9
recipe="mmdebstrap --variant=minbase --include=$BASE_PACKAGES $SUITE $MIRROR (no docs)"
base_key=$(printf '%s' "$recipe" | sha256sum | cut -c1-12)
BASE_IMAGE=localhost/nsfwd-ci-base:$base_key
base_tar=$CACHE/base-$base_key.tar
if ! podman image exists "$BASE_IMAGE"; then
    if [ ! -s "$base_tar" ]; then
        log "building the base with mmdebstrap: $recipe"
        started=$SECONDS
        mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" \
            --dpkgopt='path-exclude=/usr/share/doc/*' \
            --dpkgopt='path-exclude=/usr/share/man/*' \
            --dpkgopt='path-exclude=/usr/share/info/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' \
            "$SUITE" "$CACHE/partial-$base_key.tar" \
            "deb $MIRROR $SUITE main" \
            "deb $MIRROR $SUITE-updates main" \
            "deb ${MIRROR}-security $SUITE-security main"
        mv "$CACHE/partial-$base_key.tar" "$base_tar"  # mmdebstrap writes a tarball for .tar
        log "base built in $((SECONDS - started)) s"
    fi
    podman import --quiet "$base_tar" "$BASE_IMAGE" >/dev/null
fi
flock --unlock 9
log "base $BASE_IMAGE: $(podman image inspect --format '{{.Size}}' "$BASE_IMAGE") bytes"

# This machine's pip configuration and CA bundle, for the build only.
build_mounts=()
for path in /etc/ssl/certs/ca-certificates.crt /etc/pip.conf /etc/xdg/pip \
    "$HOME/.config/pip" "$HOME/.pip" /opt/pypi /opt/pypi-more /opt/wheels; do
    if [ -e "$path" ]; then
        target=$path
        case $path in "$HOME"/*) target=/root/${path#"$HOME"/} ;; esac
        build_mounts+=("--volume=$path:$target:ro")
    fi
done

report=$run_dir/report.jsonl
image_list=()
for variant in $VARIANTS; do
    log "building the $variant image"
    started=$SECONDS
    podman build --quiet --format docker --layers=false --file Containerfile \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "VARIANT=$variant" \
        --build-arg TORCH_INDEX_URL= "${build_mounts[@]}" \
        --iidfile "$run_dir/$variant.iid" . >"$run_dir/$variant.build.log" 2>&1 ||
        { tail -n 60 "$run_dir/$variant.build.log" >&2; exit 1; }
    id=$(cat "$run_dir/$variant.iid")
    images+=("$id")
    image_list+=("$variant=$id")
    size=$(podman image inspect --format '{{.Size}}' "$id")
    log "$variant image ${id#sha256:}: $((size / 1000000)) MB, built in $((SECONDS - started)) s"
    printf '{"image": "%s", "variant": "%s", "size_mb": %d, "build_s": %d}\n' \
        "$id" "$variant" "$((size / 1000000))" "$((SECONDS - started))" >>"$report"
done

log "trying the images"
status=0
NSFWD_CONTAINER_IMAGES=$(IFS=,; echo "${image_list[*]}") NSFWD_CONTAINER_REPORT=$report \
    "$PYTHON" -m pytest -p no:cacheprovider -m container tests/test_container.py || status=$?
log "figures (sizes, build and start times):"
cat "$report" >&2
exit $status
