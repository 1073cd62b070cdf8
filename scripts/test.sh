#!/usr/bin/env bash
# Installs everything the tests need on a fresh Debian machine with the Rust toolchain,
# then runs every test. CI (.ci/run) calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need_apt=()
command -v etcd >/dev/null || need_apt+=(etcd-server)
command -v docker-registry >/dev/null || need_apt+=(docker-registry)
command -v curl >/dev/null || need_apt+=(curl)
command -v ip >/dev/null || need_apt+=(iproute2)
# Linux containers (tests/containerd.rs): containerd with runc, the CNI plugins, and
# busybox-static for the locally built pause and busybox images.
command -v containerd >/dev/null || need_apt+=(containerd)
command -v runc >/dev/null || need_apt+=(runc)
[ -x /usr/lib/cni/bridge ] || need_apt+=(containernetworking-plugins)
[ -x /bin/busybox ] || need_apt+=(busybox-static)
if [ ${#need_apt[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
# etcd-server's package starts a system etcd on 2379; tests start their own on other ports.
$SUDO systemctl stop etcd >/dev/null 2>&1 || true
# docker-registry's package starts a system registry on 5000; tests start their own.
$SUDO systemctl stop docker-registry >/dev/null 2>&1 || true
# containerd's package starts a system containerd; tests start their own.
$SUDO systemctl stop containerd >/dev/null 2>&1 || true

python3 -c 'import kubernetes' 2>/dev/null || python3 -m pip install -q 'kubernetes>=30'

command -v kubectl >/dev/null || { echo "kubectl is required (see README)"; exit 1; }

export RUST_BACKTRACE=1
# Wasm example workloads (rustup target add wasm32-wasip1 wasm32-wasip2 if missing).
scripts/build-wasm-examples.sh
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads=2
