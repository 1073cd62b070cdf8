//! etcd v3 gRPC client code, generated once from `proto/` (see `proto/README.md`).
#![allow(dead_code, clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]

pub mod authpb {
    include!("authpb.rs");
}
pub mod mvccpb {
    include!("mvccpb.rs");
}
pub mod etcdserverpb {
    include!("etcdserverpb.rs");
}
