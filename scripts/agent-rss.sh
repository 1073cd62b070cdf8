#!/usr/bin/env bash
# The idle agent's memory (docs/benchmarks.md, "Pods"): a `kelp server` and a
# `kelp agent` joined to it, the smaps_rollup of the agent and of the Wasm runtime
# process it starts (`kelp runtime`; with `--wasm-runtime in-process` there is none)
# read over three idle minutes
# (the agent drops its start-up pages once Ready; its periodic work — leases, node
# status every minute, relists — maps what it uses again, so the later figures are
# the steady state).
# Usage: [PROFILE=edge] scripts/agent-rss.sh [ENV=VALUE...]  (extra environment for the
# agent; PROFILE is the cargo profile built and measured, default release)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-release}
cargo build --profile "$profile" --bin kelp
kelp=target/$profile/kelp
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; ip link del kelprss0 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
"$kelp" server --data-dir "$work/cp" --https-port 16471 >"$work/cp.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do [ -f "$work/cp/node-token" ] && break; sleep 0.1; done
env "$@" "$kelp" agent --server https://127.0.0.1:16471 --token-file "$work/cp/node-token" \
  --ca-file "$work/cp/tls/ca.crt" --node-name rss --data-dir "$work/agent" --pod-interface kelprss0 \
  --kubelet-port 0 >"$work/agent.log" 2>&1 &
agent=$!
pids+=("$agent")
mem() { grep -E '^(Rss|Pss_Anon|Pss_File):' "/proc/$1/smaps_rollup" | tr -s ' ' | tr '\n' ' '; }
elapsed=0
for at in 10 60 120 180; do
  sleep $((at - elapsed)) # idle time is what is measured
  elapsed=$at
  echo "after ${at} s: agent $(mem "$agent")"
  if [ -f "$work/agent/runtime/runtime.pid" ]; then
    echo "after ${at} s: runtime $(mem "$(cat "$work/agent/runtime/runtime.pid")")"
  fi
done
