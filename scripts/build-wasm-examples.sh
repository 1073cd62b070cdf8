#!/usr/bin/env bash
# Builds the example Wasm workloads in examples/wasm (a cargo workspace of its own)
# in release, installing the rustup targets first if missing:
#   examples/wasm/target/wasm32-wasip1/release/{hello,counter}.wasm   (preview 1 modules)
#   examples/wasm/target/wasm32-wasip2/release/hello.wasm             (preview 2 command component)
#   examples/wasm/target/wasm32-wasip2/release/http_hello.wasm        (wasi:http component)
# runtime-wasm's tests and benchmarks load them from there.
set -euo pipefail
cd "$(dirname "$0")/../examples/wasm"

installed=$(rustup target list --installed)
missing=()
for t in wasm32-wasip1 wasm32-wasip2; do
  grep -qx "$t" <<<"$installed" || missing+=("$t")
done
if [ ${#missing[@]} -gt 0 ]; then
  rustup target add "${missing[@]}"
fi

# Always into examples/wasm/target, where tests look, whatever CARGO_TARGET_DIR says.
cargo build --release --target-dir target --target wasm32-wasip1 -p hello -p counter
cargo build --release --target-dir target --target wasm32-wasip2 -p hello -p counter -p http-hello
ls -l target/wasm32-wasip1/release/*.wasm target/wasm32-wasip2/release/*.wasm
