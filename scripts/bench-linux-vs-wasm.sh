#!/usr/bin/env bash
# Wasm pod vs Linux container pod on one `kelp up` node in one run (figures in
# docs/benchmarks.md, "Wasm and Linux pods"): pod create → Running seen through a watch,
# one at a time and in a burst, and the memory per running pod (proportional set size
# of kelp, containerd, the shims and the containers' processes), for the same
# tiny HTTP app — examples/wasm/http-hello (wasi:http) on the in-process Wasm runtime,
# and busybox httpd (static, 2 MB image) under runc through containerd.
# Usage: scripts/bench-linux-vs-wasm.sh [SINGLES] [BURST] (default 50 50).
set -euo pipefail
cd "$(dirname "$0")/.."
singles=${1:-50}
burst=${2:-50}
scripts/build-wasm-examples.sh
cargo build --release --bin kelp --example pod_bench -p kelp

work=$(mktemp -d)
pids=()
netns_before=$(ls /var/run/netns 2>/dev/null || true)
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  if [ -f "$work/ctd/containerd.pid" ]; then
    for t in $(ctr --address "$work/ctd/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$work/ctd/containerd.sock" -n k8s.io tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
      ctr --address "$work/ctd/containerd.sock" -n k8s.io tasks delete -f "$t" >/dev/null 2>&1 || true
    done
    kill "$(cat "$work/ctd/containerd.pid")" 2>/dev/null || true
    # Shims (and their containers) of pods still being torn down when the run ended.
    for shim in $(pgrep -f "containerd-shim-runc-v2 .*-address $work/" || true); do
      pkill -9 -P "$shim" 2>/dev/null || true
      kill -9 "$shim" 2>/dev/null || true
    done
  fi
  # The network namespaces CNI made for this run's sandboxes.
  for n in $(ls /var/run/netns 2>/dev/null); do
    grep -qx "$n" <<<"$netns_before" || ip netns del "$n" 2>/dev/null || true
  done
  ip link del kelpbench0 2>/dev/null || true
  ip link del kelpb-pods 2>/dev/null || true
  umount $(mount | awk -v d="$work" '$3 ~ d {print $3}' | sort -r) 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
wait_for() { for _ in $(seq 1 600); do eval "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "timed out: $1"; return 1; }
node_ready() { [ "$(kubectl --kubeconfig "$1" get node "$2" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]; }

scripts/containerd-node.sh "$work/ctd"
wasm_image=bench.local/http-hello:v1
target/release/kelp image import examples/wasm/target/wasm32-wasip2/release/http_hello.wasm \
  --name "$wasm_image" --data-dir "$work/up" >/dev/null
target/release/kelp up --data-dir "$work/up" --https-port 16452 --node-name bench-mixed \
  --pod-interface kelpb-pods --container-runtime-endpoint "unix://$work/ctd/containerd.sock" \
  --cni-conf-dir "$work/ctd/net.d" --cni-bridge kelpbench0 --node-cidr-mask-size 22 \
  >"$work/up.log" 2>&1 &
pids+=($!)
wait_for "node_ready $work/up/kubeconfig bench-mixed"
bench=(target/release/examples/pod_bench --kubeconfig "$work/up/kubeconfig" --node bench-mixed
  --singles "$singles" --burst "$burst" --pss-of kelp,containerd,containerd-shim-runc-v2)
"${bench[@]}" --label wasm --image "$wasm_image"
"${bench[@]}" --label linux --image kelp.local/busybox:1.35 --runtime-class runc \
  --command "httpd -f -p 8080 -h /www"
# The kubelet tears the last pods' sandboxes down (CNI DEL removes their network
# namespaces) after the API objects are gone: wait for it before stopping everything.
wait_for "[ -z \"\$(ctr --address $work/ctd/containerd.sock -n k8s.io containers ls -q)\" ]" || true
