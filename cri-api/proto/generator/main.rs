//! One-off generator for `src/generated/runtime.v1.rs` (run by `../generate.sh`).
//!
//! Compiles the CRI `runtime/v1/api.proto` with protox (a pure-Rust protobuf compiler, so
//! no `protoc`) and writes every message plus the client and server code of
//! `RuntimeService` and `ImageService` with tonic-prost-build.
//!
//! Usage: `crigen PROTO_DIR OUT_DIR`

use prost_types::FileDescriptorSet;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (proto_dir, out_dir) = match args.as_slice() {
        [_, p, o] => (p.clone(), o.clone()),
        _ => panic!("usage: crigen PROTO_DIR OUT_DIR"),
    };
    let mut fds: FileDescriptorSet =
        protox::compile(["runtime/v1/api.proto"], [proto_dir]).expect("protox");
    let names: Vec<&str> = fds.file.iter().map(|f| f.name()).collect();
    assert_eq!(
        names,
        ["runtime/v1/api.proto"],
        "api.proto must stand alone"
    );
    // `go_package` and friends mean nothing to Rust.
    for f in &mut fds.file {
        f.options = None;
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        .out_dir(out_dir)
        .compile_fds(fds)
        .expect("generate");
}
