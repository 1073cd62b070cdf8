//! The Wasm container runtime: WebAssembly runs in-process on one shared wasmtime
//! [`Engine`](wasmtime::Engine) per node — WASI preview 1 modules and preview 2
//! command components as containers ([`container::run`]), components exporting
//! `wasi:http/incoming-handler` served one instance per request ([`http::serve`]) —
//! each container in its own store with its own memory limit and a stop signal,
//! writing CRI-format logs.
//!
//! A module can never take the node down: traps, exhausted memory and stop requests
//! end that container with an exit status; nothing else is touched.
//!
//! This crate is the execution layer the CRI services (issue 3) build on; it must not
//! depend on the kubelet or the control plane.

pub mod container;
pub mod dns;
pub mod egress;
pub mod engine;
pub mod http;
pub mod image;
pub mod logs;
mod name_lookup;
pub mod outbound;
mod pod_sockets;
pub mod service;

pub use container::{Artifact, ContainerSpec, ExitReason, ExitStatus, Mount, StopHandle};
pub use engine::{Allocation, WasmEngine};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid WebAssembly module: {0}")]
    InvalidModule(String),
    #[error("setting up the container: {0}")]
    Setup(String),
    #[error("i/o on {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}
