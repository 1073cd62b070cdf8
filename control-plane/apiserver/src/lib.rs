//! The Kelp API server: a Kubernetes-compatible HTTP API (axum) over a
//! [`kelp_storage::Store`]. Depends on the store trait, never on a concrete backend.

pub mod authn;
pub mod authz;
pub mod metrics;
pub mod node_proxy;
pub mod serve;
pub mod tls;

pub mod app;
pub mod discovery;
pub mod error;
pub mod eviction;
pub mod filter;
pub mod kubernetes_service;
pub mod loopback;
pub mod metrics_api;
pub mod objects;
pub mod request;
pub mod rest;
pub mod reviews;
pub mod service_alloc;
pub mod strategy;
pub mod subresources;
pub mod table;
pub mod watch;
pub mod watch_cache;
