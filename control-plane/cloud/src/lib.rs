//! Kelp's cloud-controller-manager: the [`provider::CloudProvider`] interface in the
//! shape of upstream `k8s.io/cloud-provider`, the `fleet` provider for bare-metal and
//! edge fleets, and the four loops that run over any provider while this process
//! holds the `kube-system/cloud-controller-manager` Lease:
//!
//! | loop | module | upstream |
//! |---|---|---|
//! | cloud node | [`node`] | initialize tainted nodes (providerID, addresses, labels) |
//! | cloud node lifecycle | [`lifecycle`] | delete Nodes of gone instances, taint shut-down ones |
//! | service | [`service`] | LoadBalancer Services: address, finalizer, node set |
//! | route | [`route`] | one route per node pod CIDR, `NetworkUnavailable` |
//!
//! Like every controller it is an API client only, and reuses the controller-manager's
//! runner (informers, work queue), leader election and Event recorder.

pub mod fake;
pub mod fleet;
pub mod lifecycle;
pub mod manager;
pub mod node;
pub mod provider;
pub mod retry;
pub mod route;
pub mod service;

use std::sync::Arc;
use std::time::Duration;

pub use provider::{CloudError, CloudProvider};

/// The loops' tunables (upstream cloud-controller-manager flags and defaults).
#[derive(Debug, Clone)]
pub struct CloudSettings {
    /// `--node-monitor-period`: how often the lifecycle loop looks at nodes (5 s).
    pub node_monitor_period: Duration,
    /// `--node-status-update-frequency`: how often initialized nodes' addresses are
    /// refreshed from the provider (5 min).
    pub node_status_update_frequency: Duration,
    /// `--route-reconciliation-period` (10 s).
    pub route_reconciliation_period: Duration,
    /// `--configure-cloud-routes`: run the route controller.
    pub configure_cloud_routes: bool,
}

impl Default for CloudSettings {
    fn default() -> Self {
        CloudSettings {
            node_monitor_period: Duration::from_secs(5),
            node_status_update_frequency: Duration::from_secs(300),
            route_reconciliation_period: Duration::from_secs(10),
            configure_cloud_routes: true,
        }
    }
}

/// What every loop gets.
#[derive(Clone)]
pub struct CloudContext {
    pub client: kube::Client,
    pub provider: Arc<dyn CloudProvider>,
    /// `--cluster-name`, passed to the provider (upstream default `kubernetes`).
    pub cluster_name: String,
    pub settings: Arc<CloudSettings>,
}
