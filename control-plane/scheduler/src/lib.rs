//! Kelp's scheduler, modelled on kube-scheduler: informers feed a node [`cache`] and a
//! scheduling [`queue`]; each pod runs through the [`framework`]'s Filter and Score
//! [`plugins`]; the chosen node is assumed in the cache and bound through the
//! `pods/binding` subresource in the background. It is an API client only (kube-rs):
//! it must not depend on storage or the API server.

pub mod cache;
pub mod events;
pub mod framework;
pub mod images;
pub mod labels;
pub mod plugins;
pub mod pod_info;
pub mod queue;
pub mod resources;
pub mod scheduler;

pub use images::{ImageInspector, ImageKind, ImageRouting};
pub use scheduler::{
    client_from_kubeconfig, default_identity, run, run_leader_elected, LeaderElection,
    SchedulerConfig, SchedulerError, Stats, DEFAULT_SCHEDULER_NAME,
};
