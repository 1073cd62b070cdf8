//! The example workloads of examples/wasm, built by scripts/build-wasm-examples.sh.

use std::path::PathBuf;

/// `examples/wasm/target/<target>/release/<name>.wasm`, or a panic telling how to
/// build it.
pub fn path(target: &str, name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/wasm/target")
        .join(target)
        .join("release")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-wasm-examples.sh",
        p.display()
    );
    p
}

pub fn bytes(target: &str, name: &str) -> Vec<u8> {
    std::fs::read(path(target, name)).expect("reading an example")
}
