//! The Kelp API server: a Kubernetes-compatible HTTP API (axum) over a
//! [`kelp_storage::Store`]. Depends on the store trait, never on a concrete backend.

pub mod authn;
pub mod authz;
pub mod metrics;
pub mod serve;
pub mod tls;
