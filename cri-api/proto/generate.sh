#!/usr/bin/env bash
# Regenerates ../src/generated/runtime.v1.rs from runtime/v1/api.proto (Kubernetes CRI v1).
# Needs only cargo and crates.io (protox is a pure-Rust protobuf compiler: no protoc).
# Building Kelp never runs this; the generated code is checked in.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/../src/generated"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$here/generator/main.rs" "$work/main.rs"
cp "$here/generator/Cargo.toml.in" "$work/Cargo.toml"
mkdir -p "$work/out" "$out"
(cd "$work" && CARGO_TARGET_DIR="$work/target" cargo run --quiet --release -- "$here" "$work/out")
{
  echo "// @generated from cri-api/proto/runtime/v1/api.proto (Kubernetes CRI v1, Apache-2.0) by"
  echo "// cri-api/proto/generate.sh: protox + tonic-prost-build 0.14, all messages, client and"
  echo "// server for RuntimeService and ImageService."
  echo "// Do not edit by hand; rerun the script."
  cat "$work/out/runtime.v1.rs"
} >"$out/runtime.v1.rs"
rustfmt --edition 2021 "$out/runtime.v1.rs"
echo "wrote $out/runtime.v1.rs"
