#!/usr/bin/env bash
# Regenerates src/etcd/generated/{etcdserverpb,mvccpb}.rs from the protos in this folder.
# Needs only cargo and crates.io (protox is a pure-Rust protobuf compiler: no protoc).
# Building Kelp never runs this; the generated code is checked in.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/../src/etcd/generated"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$here/generator/main.rs" "$work/main.rs"
cp "$here/generator/Cargo.toml.in" "$work/Cargo.toml"
mkdir -p "$work/out"
(cd "$work" && CARGO_TARGET_DIR="$work/target" cargo run --quiet --release -- "$here" "$work/out")
for f in etcdserverpb mvccpb; do
  {
    echo "// @generated from control-plane/storage/proto/etcd/api (etcd v3 API, Apache-2.0) by"
    echo "// control-plane/storage/proto/generate.sh: protox + tonic-prost-build 0.14, client only,"
    echo "// pruned to KV (Range, Put, DeleteRange, Txn, Compact), Watch and Maintenance.Status."
    echo "// Do not edit by hand; rerun the script."
    cat "$work/out/$f.rs"
  } >"$out/$f.rs"
done
rustfmt --edition 2021 "$out/etcdserverpb.rs" "$out/mvccpb.rs"
echo "wrote $out/etcdserverpb.rs and $out/mvccpb.rs"
