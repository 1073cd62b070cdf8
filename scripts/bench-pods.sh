#!/usr/bin/env bash
# Pod start benchmark (figures in docs/benchmarks.md, "Pods"): pod create → Running
# seen through a watch, one at a time and in bursts, on `kelp up`; then the node's
# memory: a `kelp server` plus a separate `kelp agent` (and the `kelp runtime` it
# starts), whose RSS is read idle and with the burst's pods running. Usage: scripts/bench-pods.sh [BURST...] (default 100 1000).
set -euo pipefail
cd "$(dirname "$0")/.."
bursts=("${@:-100 1000}")
read -r -a bursts <<<"${bursts[*]}"
burst_args=()
for b in "${bursts[@]}"; do burst_args+=(--burst "$b"); done

scripts/build-wasm-examples.sh
cargo build --release --bin kelp --example pod_bench -p kelp
counter=examples/wasm/target/wasm32-wasip1/release/counter.wasm
image=bench.local/counter:v1

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  # The pod interfaces the nodes made (their addresses go with them).
  ip link del kelpbench-up 2>/dev/null || true
  ip link del kelpbench-ag 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
wait_for() { # a check command; polls it for up to 60 s
  for _ in $(seq 1 600); do eval "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "timed out waiting for: $1"; return 1
}
node_ready() { # kubeconfig node
  [ "$(kubectl --kubeconfig "$1" get node "$2" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

echo "== kelp up: pod create → Running =="
target/release/kelp image import "$counter" --name "$image" --data-dir "$work/up" >/dev/null
# A /20 per node (4,094 pod addresses): the default /24 holds 254 pods, fewer than
# the 1,000-pod burst.
target/release/kelp up --data-dir "$work/up" --https-port 16450 --node-name bench-up --node-cidr-mask-size 20 \
  --pod-interface kelpbench-up >"$work/up.log" 2>&1 &
pids+=($!)
wait_for "node_ready $work/up/kubeconfig bench-up"
target/release/examples/pod_bench --kubeconfig "$work/up/kubeconfig" --node bench-up --image "$image" \
  --singles 50 "${burst_args[@]}"
kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true; pids=()

echo "== kelp server + kelp agent: the agent's memory =="
target/release/kelp server --data-dir "$work/cp" --https-port 16451 --node-cidr-mask-size 20 >"$work/cp.log" 2>&1 &
pids+=($!)
wait_for "test -f $work/cp/kubeconfig"
target/release/kelp image import "$counter" --name "$image" --data-dir "$work/agent" >/dev/null
target/release/kelp agent --server https://127.0.0.1:16451 --token-file "$work/cp/node-token" \
  --ca-file "$work/cp/tls/ca.crt" --node-name bench-agent --data-dir "$work/agent" \
  --pod-interface kelpbench-ag >"$work/agent.log" 2>&1 &
agent=$!
pids+=("$agent")
wait_for "node_ready $work/cp/kubeconfig bench-agent"
# The agent runs the pods in a Wasm runtime process of its own (`kelp runtime`).
runtime=$(cat "$work/agent/runtime/runtime.pid")
target/release/examples/pod_bench --kubeconfig "$work/cp/kubeconfig" --node bench-agent --image "$image" \
  --singles 0 "${burst_args[@]}" --rss agent="$agent" --rss runtime="$runtime"
