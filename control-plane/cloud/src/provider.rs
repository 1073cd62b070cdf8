//! The cloud provider interface, in the shape of upstream `k8s.io/cloud-provider`:
//! a provider offers any of InstancesV2, LoadBalancer and Routes (each optional, so a
//! provider without load balancers simply returns `None`), and the
//! cloud-controller-manager's loops are written against these traits only.

use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{LoadBalancerStatus, Node, NodeAddress, Service};

/// What a provider call can fail with. The loops retry every error with back-off and
/// report it as an Event; none of them ends the manager.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// Upstream's `cloudprovider.InstanceNotFound`.
    #[error("instance not found")]
    InstanceNotFound,
    /// Upstream's `cloudprovider.NotImplemented`.
    #[error("not implemented by the {0} provider")]
    NotImplemented(&'static str),
    #[error("cloud-config: {0}")]
    Config(String),
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("no address left in the load-balancer pool {pool} ({size} addresses, all in use)")]
    PoolExhausted { pool: String, size: usize },
    #[error("the provider did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("api: {0}")]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Other(String),
}

/// An instance's facts, as the cloud node controller writes them onto its Node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceMetadata {
    /// `spec.providerID`, `<provider>://<id>`.
    pub provider_id: String,
    /// `node.kubernetes.io/instance-type`.
    pub instance_type: String,
    /// `status.addresses` (empty: leave the kubelet's).
    pub node_addresses: Vec<NodeAddress>,
    /// `topology.kubernetes.io/zone`.
    pub zone: String,
    /// `topology.kubernetes.io/region`.
    pub region: String,
}

/// Upstream `cloudprovider.InstancesV2`: instances looked up by Node (its providerID
/// when set, else its name).
#[async_trait]
pub trait InstancesV2: Send + Sync {
    /// Whether the instance behind `node` still exists.
    async fn instance_exists(&self, node: &Node) -> Result<bool, CloudError>;
    /// Whether the instance is shut down (exists, but powered off).
    async fn instance_shutdown(&self, node: &Node) -> Result<bool, CloudError>;
    /// The instance's metadata; [`CloudError::InstanceNotFound`] when unknown.
    async fn instance_metadata(&self, node: &Node) -> Result<InstanceMetadata, CloudError>;
}

/// Upstream `cloudprovider.LoadBalancer`. `nodes` are the nodes that should receive
/// the Service's traffic.
#[async_trait]
pub trait LoadBalancer: Send + Sync {
    /// The load balancer's status, `None` when it does not exist.
    async fn get_load_balancer(
        &self,
        cluster: &str,
        service: &Service,
    ) -> Result<Option<LoadBalancerStatus>, CloudError>;

    /// Upstream's default name: `a` + the Service UID without dashes, 32 characters.
    fn get_load_balancer_name(&self, _cluster: &str, service: &Service) -> String {
        let uid: String = service
            .metadata
            .uid
            .as_deref()
            .unwrap_or_default()
            .chars()
            .filter(|c| *c != '-')
            .collect();
        let mut name = format!("a{uid}");
        name.truncate(32);
        name
    }

    /// Creates or updates the load balancer; returns its status.
    async fn ensure_load_balancer(
        &self,
        cluster: &str,
        service: &Service,
        nodes: &[Node],
    ) -> Result<LoadBalancerStatus, CloudError>;

    /// The set of nodes changed.
    async fn update_load_balancer(
        &self,
        cluster: &str,
        service: &Service,
        nodes: &[Node],
    ) -> Result<(), CloudError>;

    /// Releases the load balancer; gone already is success.
    async fn ensure_load_balancer_deleted(
        &self,
        cluster: &str,
        service: &Service,
    ) -> Result<(), CloudError>;
}

/// A route to a node's pod CIDR (upstream `cloudprovider.Route`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub name: String,
    pub target_node: String,
    pub destination_cidr: String,
    pub blackhole: bool,
}

/// Upstream `cloudprovider.Routes`.
#[async_trait]
pub trait Routes: Send + Sync {
    async fn list_routes(&self, cluster: &str) -> Result<Vec<Route>, CloudError>;
    /// `name_hint` is unique per node (upstream passes the Node's UID).
    async fn create_route(
        &self,
        cluster: &str,
        name_hint: &str,
        route: &Route,
    ) -> Result<(), CloudError>;
    async fn delete_route(&self, cluster: &str, route: &Route) -> Result<(), CloudError>;
}

/// Upstream `cloudprovider.Interface`, trimmed to what Kelp runs: `Instances` (v1),
/// `Zones` and `Clusters` are deprecated upstream and left out.
#[async_trait]
pub trait CloudProvider: Send + Sync {
    /// The name `--cloud-provider` selects it by, and the providerID scheme.
    fn provider_name(&self) -> &'static str;

    /// Called each time this manager becomes leader, before any loop runs, with a
    /// client of the cluster (upstream `Initialize`): a provider that keeps state in
    /// the cluster (the fleet provider's address allocations) rebuilds it here.
    async fn initialize(&self, _client: kube::Client) -> Result<(), CloudError> {
        Ok(())
    }

    fn instances_v2(&self) -> Option<&dyn InstancesV2> {
        None
    }

    fn load_balancer(&self) -> Option<&dyn LoadBalancer> {
        None
    }

    fn routes(&self) -> Option<&dyn Routes> {
        None
    }
}

/// The providers `--cloud-provider` accepts.
pub const PROVIDERS: &[&str] = &[crate::fleet::PROVIDER_NAME];

/// Builds the provider `name` from its `--cloud-config` file.
pub fn build(
    name: &str,
    config: Option<&std::path::Path>,
) -> Result<Arc<dyn CloudProvider>, CloudError> {
    match name {
        crate::fleet::PROVIDER_NAME => {
            let path = config.ok_or_else(|| {
                CloudError::Config("the fleet provider needs --cloud-config FILE".into())
            })?;
            Ok(Arc::new(crate::fleet::Fleet::from_config_file(path)?))
        }
        other => Err(CloudError::Config(format!(
            "unknown --cloud-provider {other:?}; known: {}",
            PROVIDERS.join(", ")
        ))),
    }
}
