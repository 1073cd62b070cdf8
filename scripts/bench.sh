#!/usr/bin/env bash
# Benchmarks whose figures go into docs/benchmarks.md. Starts its own etcd and Kelp
# servers on loopback ports, runs the store and API benchmarks, and stops them.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v etcd >/dev/null || { echo "etcd is required (apt-get install etcd-server)"; exit 1; }
cargo build --release --bin kelp --example api_bench -p kelp
cargo build --release -p kelp-storage --example store_bench

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

wait_for() { # file-or-url check command, tries
  for _ in $(seq 1 300); do eval "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "timed out waiting for: $1"; return 1
}

echo "== store: embedded sqlite, etcd backend, raw etcd =="
target/release/examples/store_bench --backend sqlite
target/release/examples/store_bench --backend etcd
target/release/examples/store_bench --backend raw-etcd

echo "== API server on the embedded store =="
target/release/kelp server --data-dir "$work/sqlite" --https-port 16443 >"$work/sqlite.log" 2>&1 &
pids+=($!)
wait_for "test -f $work/sqlite/kubeconfig && kubectl --kubeconfig $work/sqlite/kubeconfig get --raw /readyz"
target/release/examples/api_bench "$work/sqlite/kubeconfig" 6400 1000

echo "== API server on etcd =="
etcd --data-dir "$work/etcd" --listen-client-urls http://127.0.0.1:12379 --advertise-client-urls http://127.0.0.1:12379 \
  --listen-peer-urls http://127.0.0.1:12380 >"$work/etcd.log" 2>&1 &
pids+=($!)
wait_for "curl -sf http://127.0.0.1:12379/health"
target/release/kelp server --data-dir "$work/etcdk" --https-port 16444 --datastore etcd://127.0.0.1:12379 >"$work/etcdk.log" 2>&1 &
pids+=($!)
wait_for "test -f $work/etcdk/kubeconfig && kubectl --kubeconfig $work/etcdk/kubeconfig get --raw /readyz"
target/release/examples/api_bench "$work/etcdk/kubeconfig" 6400 1000
