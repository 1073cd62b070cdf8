//! etcd v3 gRPC client code, generated once from `proto/` by `proto/generate.sh` (pure-Rust
//! protox, no `protoc`) and checked in, pruned to the RPCs Kelp calls.
#![allow(dead_code, clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]

pub mod mvccpb {
    include!("mvccpb.rs");
}
pub mod etcdserverpb {
    include!("etcdserverpb.rs");
}
