#!/usr/bin/env bash
# Build dapb's artifacts from a checkout whose BPF object and filter are built (bash bootstrap.sh setup):
#   bash deploy/images.sh wheel DIR          the wheel (BPF object, .wasm and model inside) into DIR
#   bash deploy/images.sh wheels DIR         the wheel and every dependency's wheel into DIR (the image's context)
#   bash deploy/images.sh base               the agent's base image (Debian 12 by mmdebstrap), cached; prints its name
#   bash deploy/images.sh agent TAG          the agent image from deploy/Containerfile; prints TAG
#   bash deploy/images.sh filter LAYOUT TAG  the filter's Wasm OCI image into an OCI layout; prints its digest
# Downloads come only from Debian's and Python's package registries; no image registry is needed. Built bases and
# dependency wheels are kept in $DAPB_IMAGE_CACHE (default /var/cache/dapb-test-images) under a key of what made
# them, so a second build reuses them. Timings go to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${DAPB_PYTHON:-$ROOT/.venv/bin/python}
CACHE=${DAPB_IMAGE_CACHE:-/var/cache/dapb-test-images}
RUNTIME=${DAPB_OCI_RUNTIME:-runc}  # crun 1.8 refuses hybrid cgroup hosts whose v2 tree holds a controller
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
BASE_PACKAGES=python3,python3-venv,libbpf1,iproute2,ca-certificates

log() { printf '[images] %s\n' "$*" >&2; }
key() { sha256sum | cut -c1-16; }

wheel() {  # DIR -> the path of the wheel
    local out=$1 before
    mkdir -p "$out"
    before=$(date +%s)
    rm -rf "$ROOT/build"  # setuptools reuses build/lib: a module deleted from the source would ship
    "$PY" -m pip wheel -q --no-deps -w "$out" "$ROOT" >&2
    log "wheel built in $(($(date +%s) - before)) s"
    ls -t "$out"/dapb_mesh-*.whl | head -n1
}

wheels() {  # DIR: the wheel and its dependencies' wheels, pinned by requirements.txt
    local out=$1 whl k house before
    whl=$(wheel "$out")
    k=$(cat requirements.txt pyproject.toml | key)
    house="$CACHE/wheelhouse-$k"
    if [[ ! -d $house ]]; then
        before=$(date +%s)
        mkdir -p "$CACHE"
        rm -rf "$house.tmp"
        "$PY" -m pip download -q -d "$house.tmp" -c requirements.txt "$whl" >&2
        rm -f "$house.tmp"/dapb_mesh-*.whl
        mv "$house.tmp" "$house"
        log "dependency wheels downloaded in $(($(date +%s) - before)) s ($house)"
    fi
    cp -l "$house"/*.whl "$out"/ 2>/dev/null || cp "$house"/*.whl "$out"/
    echo "$out"
}

base() {  # -> the base image's name, localhost/dapb-base:KEY
    local args k image tar before
    args=(--variant=minbase "--include=$BASE_PACKAGES"
          --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*'
          --dpkgopt='path-exclude=/usr/share/locale/*' --format=tar "$SUITE")
    local sources=("deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main"
                   "deb ${MIRROR}-security $SUITE-security main")
    k=$(printf '%s\n' "${args[@]}" "${sources[@]}" | key)
    image="localhost/dapb-base:$k"
    tar="$CACHE/base-$k.tar"
    if podman image exists "$image"; then
        echo "$image"
        return
    fi
    if [[ ! -f $tar ]]; then
        before=$(date +%s)
        mkdir -p "$CACHE"
        mmdebstrap -q "${args[@]}" "$tar.tmp" "${sources[@]}" >&2
        mv "$tar.tmp" "$tar"
        log "base root filesystem made by mmdebstrap in $(($(date +%s) - before)) s ($tar)"
    fi
    podman import -q "$tar" "$image" >/dev/null
    echo "$image"
}

agent() {  # TAG -> TAG
    local tag=$1 base_image before
    base_image=$(base)
    CONTEXT=$(mktemp -d)
    trap 'rm -rf "$CONTEXT"' EXIT
    wheels "$CONTEXT" >/dev/null
    before=$(date +%s)
    buildah bud -q --runtime "$RUNTIME" -f deploy/Containerfile --build-arg "BASE=$base_image" -t "$tag" \
        "$CONTEXT" >/dev/null
    log "agent image $tag built in $(($(date +%s) - before)) s"
    echo "$tag"
}

filter() {  # LAYOUT TAG -> sha256:HEX
    "$PY" -m dapb_mesh.artifacts filter-image "$1" "$2"
}

case "${1:-}" in
    wheel) wheel "${2:?DIR}" ;;
    wheels) wheels "${2:?DIR}" ;;
    base) base ;;
    agent) agent "${2:?TAG}" ;;
    filter) filter "${2:?LAYOUT}" "${3:?TAG}" ;;
    *)
        echo "usage: bash deploy/images.sh wheel DIR | wheels DIR | base | agent TAG | filter LAYOUT TAG" >&2
        exit 2
        ;;
esac
