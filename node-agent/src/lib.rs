//! Kelp node agent: the kubelet and its runtime boundary (CRI routing).
//!
//! May depend on: the Kubernetes API (kube-rs, k8s-openapi) and the CRI bindings
//! (`kelp-cri-api`). Must not depend on: the control plane crates (a node knows the
//! API, not the server), wasmtime or `kelp-runtime-wasm` (the binary wires the Wasm
//! runtime in through [`cri::CriRuntime`]).

#![forbid(unsafe_code)]

pub mod client;
pub mod cri;
pub mod dns;
pub mod kubelet;
pub mod network;
pub mod proxy;
pub mod server;

pub use cri::{CriRuntime, RemoteRuntime, RuntimeRouter};
pub use kubelet::{Kubelet, KubeletConfig, KubeletError};

// The binary builds clients through these without depending on kube-rs itself.
pub use k8s_openapi;
pub use kube;
