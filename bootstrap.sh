#!/usr/bin/env bash
# One script for all set-up on a fresh Debian 12 machine as root, then the job asked for:
#   bash bootstrap.sh run    the main job: doctor, then DAPB on the embedded testbed mesh
#   bash bootstrap.sh test   the whole test suite (lint + pytest); what CI runs
#   bash bootstrap.sh setup  set-up only
#   bash bootstrap.sh artifacts  set-up, then the wheel, the agent image and the filter's OCI image (docs/install.md)
# Set-up is idempotent: apt packages, bpffs, the venv with pinned dependencies, the BPF objects.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"
APT_PACKAGES=(clang llvm lld libbpf-dev libbpf1 bpftool iproute2 iptables tcpdump make python3-venv
              linux-libc-dev curl wrk nghttp2-client
              podman buildah runc skopeo mmdebstrap docker-registry)  # the artifacts (deploy/images.sh)

log() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }

install_apt() {
    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        log "installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    # docker-registry's package enables a registry on :5000 of every address; the tests start their own
    if [[ -d /run/systemd/system ]] && systemctl is-enabled -q docker-registry 2>/dev/null; then
        systemctl disable -q --now docker-registry
    fi
}

mount_fs() {
    if ! grep -qs ' /sys/fs/bpf bpf ' /proc/mounts; then
        log "mounting bpffs at /sys/fs/bpf"
        mount -t bpf bpf /sys/fs/bpf
    fi
}

install_venv() {
    local stamp="$VENV/.installed"
    if [[ -f "$stamp" && "$stamp" -nt requirements.txt && "$stamp" -nt pyproject.toml ]]; then
        return
    fi
    log "creating the venv with pinned Python dependencies"
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.txt
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -e .
    touch "$stamp"
}

build_bpf() {
    log "building the BPF objects and the Wasm filter"
    make -s -C bpf
    make -s -C wasm_filter
}

setup() {
    install_apt
    mount_fs
    install_venv
    build_bpf
}

case "${1:-}" in
    setup) setup ;;
    run)
        setup
        "$VENV/bin/dapb" doctor
        "$VENV/bin/dapb" bench --scenario stream-small --modes baseline,nagle,agent --arch inter-pod --quick \
            --json reports/quick.json --report reports/quick
        ;;
    artifacts)
        setup
        version=$("$VENV/bin/python" -c 'import dapb_mesh; print(dapb_mesh.__version__)')
        bash deploy/images.sh wheel dist
        bash deploy/images.sh filter dist/dapb-filter-oci "$version"
        bash deploy/images.sh agent "localhost/dapb-agent:$version"
        ;;
    test)
        setup
        "$VENV/bin/ruff" check dapb_mesh tests
        exec "$VENV/bin/pytest" -q
        ;;
    *)
        echo "usage: bash bootstrap.sh run|test|setup|artifacts" >&2
        exit 2
        ;;
esac
