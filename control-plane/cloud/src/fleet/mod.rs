//! The `fleet` provider: the "cloud" of bare-metal and edge machines is the fleet
//! itself.
//!
//! * Instances come from an inventory YAML file ([`inventory`]), re-read when it
//!   changes.
//! * Load balancers are addresses from a pool in the cloud-config ([`pool`]); the
//!   nodes' userspace proxies accept on each Service's `status.loadBalancer.ingress`
//!   address as they do on its ClusterIP, so no extra daemon runs (the ServiceLB /
//!   MetalLB idea). Which Service holds which address is read back from the Services'
//!   status when this manager becomes leader.
//! * Routes: every node agent already keeps host-gw routes (`podCIDR via InternalIP`)
//!   to the other nodes itself, so the kernel routes are not the provider's to write.
//!   The provider's Routes check that a node's next hop is known (the node is in the
//!   inventory with an InternalIP) and record the route, which lets the route
//!   controller report `NetworkUnavailable=False` as upstream does. The record lives in
//!   memory; after a restart `list_routes` is empty and the routes are re-created
//!   (idempotent).
//!
//! cloud-config:
//! ```yaml
//! inventory: fleet-inventory.yaml   # relative to this file
//! loadBalancer:
//!   addresses: ["192.168.1.240/28", "192.168.1.250-192.168.1.254"]
//! ```

pub mod inventory;
pub mod pool;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, Node, Service};
use kube::api::{Api, ListParams};
use serde::Deserialize;

use crate::provider::{
    CloudError, CloudProvider, InstanceMetadata, InstancesV2, LoadBalancer, Route, Routes,
};
use inventory::{Instance, InventoryFile};
use pool::{AddressPool, Allocations};

pub const PROVIDER_NAME: &str = "fleet";

/// The cloud-config file of the fleet provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FleetConfig {
    /// The inventory file (relative paths are relative to the cloud-config file).
    pub inventory: PathBuf,
    /// Without it the provider offers no load balancers.
    #[serde(default)]
    pub load_balancer: Option<LoadBalancerConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerConfig {
    /// CIDRs, `FIRST-LAST` ranges or single IPv4 addresses.
    pub addresses: Vec<String>,
}

pub struct Fleet {
    inventory: InventoryFile,
    pool: Option<AddressPool>,
    allocations: Mutex<Allocations>,
    /// Recorded routes by node name.
    routes: Mutex<BTreeMap<String, Route>>,
}

impl Fleet {
    pub fn new(config: FleetConfig, base: &Path) -> Result<Fleet, CloudError> {
        let pool = config
            .load_balancer
            .map(|lb| AddressPool::parse(&lb.addresses))
            .transpose()
            .map_err(|e| CloudError::Config(format!("loadBalancer.addresses: {e}")))?;
        Ok(Fleet {
            inventory: InventoryFile::new(base.join(config.inventory)),
            pool,
            allocations: Mutex::new(Allocations::default()),
            routes: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn from_config_file(path: &Path) -> Result<Fleet, CloudError> {
        let text = std::fs::read_to_string(path).map_err(|e| CloudError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let config: FleetConfig = serde_yaml::from_str(&text).map_err(|e| CloudError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let fleet = Fleet::new(config, base)?;
        // A broken inventory at start is worth saying, but not fatal: it may be fixed
        // while the manager runs, and every call re-reads it.
        if let Err(e) = fleet.inventory.current() {
            tracing::warn!(error = %e, "fleet inventory unreadable at start");
        }
        Ok(fleet)
    }

    fn lock_allocations(&self) -> std::sync::MutexGuard<'_, Allocations> {
        self.allocations.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn instance_of(&self, node: &Node) -> Result<Option<Instance>, CloudError> {
        let inv = self.inventory.current()?;
        let provider_id = node.spec.as_ref().and_then(|s| s.provider_id.as_deref());
        let name = node.metadata.name.as_deref().unwrap_or_default();
        Ok(inv.find(provider_id, name).cloned())
    }
}

/// The allocation owner of a Service: its UID (a re-created Service with the same
/// name is a new owner), or `namespace/name` for objects without one (tests).
fn owner(service: &Service) -> String {
    match service.metadata.uid.as_deref() {
        Some(uid) if !uid.is_empty() => uid.to_string(),
        _ => format!(
            "{}/{}",
            service.metadata.namespace.as_deref().unwrap_or_default(),
            service.metadata.name.as_deref().unwrap_or_default()
        ),
    }
}

/// The IPv4 addresses a Service's status shows.
fn status_ips(service: &Service) -> Vec<Ipv4Addr> {
    service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

fn lb_status(ip: Ipv4Addr) -> LoadBalancerStatus {
    LoadBalancerStatus {
        ingress: Some(vec![LoadBalancerIngress {
            ip: Some(ip.to_string()),
            // The proxy on every node accepts on the address itself (not via node
            // ports from an external balancer), which is what `VIP` says.
            ip_mode: Some("VIP".into()),
            ..Default::default()
        }]),
    }
}

#[async_trait]
impl CloudProvider for Fleet {
    fn provider_name(&self) -> &'static str {
        PROVIDER_NAME
    }

    async fn initialize(&self, client: kube::Client) -> Result<(), CloudError> {
        let Some(pool) = &self.pool else {
            return Ok(());
        };
        let services = Api::<Service>::all(client)
            .list(&ListParams::default())
            .await?;
        let mut fresh = Allocations::default();
        for svc in &services.items {
            for ip in status_ips(svc) {
                if !fresh.reserve(pool, &owner(svc), ip) && pool.contains(ip) {
                    tracing::warn!(service = ?svc.metadata.name, %ip, "two Services show the same pool address; the first keeps it");
                }
            }
        }
        tracing::info!(
            in_use = fresh.len(),
            pool = pool.label(),
            "fleet load-balancer addresses read back from Services"
        );
        *self.lock_allocations() = fresh;
        Ok(())
    }

    fn instances_v2(&self) -> Option<&dyn InstancesV2> {
        Some(self)
    }

    fn load_balancer(&self) -> Option<&dyn LoadBalancer> {
        self.pool.is_some().then_some(self as &dyn LoadBalancer)
    }

    fn routes(&self) -> Option<&dyn Routes> {
        Some(self)
    }
}

#[async_trait]
impl InstancesV2 for Fleet {
    async fn instance_exists(&self, node: &Node) -> Result<bool, CloudError> {
        Ok(self.instance_of(node)?.is_some())
    }

    async fn instance_shutdown(&self, node: &Node) -> Result<bool, CloudError> {
        Ok(self.instance_of(node)?.is_some_and(|i| i.shutdown))
    }

    async fn instance_metadata(&self, node: &Node) -> Result<InstanceMetadata, CloudError> {
        let i = self
            .instance_of(node)?
            .ok_or(CloudError::InstanceNotFound)?;
        Ok(InstanceMetadata {
            provider_id: i.provider_id(),
            instance_type: i.instance_type.clone(),
            node_addresses: i.addresses.iter().map(|a| a.to_node_address()).collect(),
            zone: i.zone.clone(),
            region: i.region.clone(),
        })
    }
}

#[async_trait]
impl LoadBalancer for Fleet {
    async fn get_load_balancer(
        &self,
        _cluster: &str,
        service: &Service,
    ) -> Result<Option<LoadBalancerStatus>, CloudError> {
        Ok(self.lock_allocations().of(&owner(service)).map(lb_status))
    }

    async fn ensure_load_balancer(
        &self,
        _cluster: &str,
        service: &Service,
        _nodes: &[Node],
    ) -> Result<LoadBalancerStatus, CloudError> {
        let pool = self
            .pool
            .as_ref()
            .ok_or(CloudError::NotImplemented(PROVIDER_NAME))?;
        let spec = service.spec.as_ref();
        let requested: Option<Ipv4Addr> = spec
            .and_then(|s| s.load_balancer_ip.as_deref())
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse()
                    .map_err(|_| CloudError::Other(format!("loadBalancerIP {s:?} is not IPv4")))
            })
            .transpose()?;
        if let Some(ip) = requested {
            if !pool.contains(ip) {
                return Err(CloudError::Other(format!(
                    "loadBalancerIP {ip} is not in the pool {}",
                    pool.label()
                )));
            }
        }
        let mut preferred: Vec<Ipv4Addr> = requested.into_iter().collect();
        preferred.extend(status_ips(service));
        let mut alloc = self.lock_allocations();
        let owner = owner(service);
        // A changed loadBalancerIP moves the Service to the requested address.
        if let (Some(want), Some(held)) = (requested, alloc.of(&owner)) {
            if want != held {
                alloc.release(&owner);
            }
        }
        let ip =
            alloc
                .allocate(pool, &owner, &preferred)
                .ok_or_else(|| CloudError::PoolExhausted {
                    pool: pool.label().to_string(),
                    size: pool.size(),
                })?;
        if requested.is_some_and(|r| r != ip) {
            alloc.release(&owner);
            return Err(CloudError::Other(format!(
                "loadBalancerIP {} is held by another Service",
                requested.unwrap_or(ip)
            )));
        }
        Ok(lb_status(ip))
    }

    async fn update_load_balancer(
        &self,
        _cluster: &str,
        _service: &Service,
        _nodes: &[Node],
    ) -> Result<(), CloudError> {
        // Every node's proxy serves every address: nothing to move when nodes change.
        Ok(())
    }

    async fn ensure_load_balancer_deleted(
        &self,
        _cluster: &str,
        service: &Service,
    ) -> Result<(), CloudError> {
        if let Some(ip) = self.lock_allocations().release(&owner(service)) {
            tracing::info!(service = ?service.metadata.name, %ip, "load-balancer address released");
        }
        Ok(())
    }
}

#[async_trait]
impl Routes for Fleet {
    async fn list_routes(&self, _cluster: &str) -> Result<Vec<Route>, CloudError> {
        Ok(self
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect())
    }

    async fn create_route(
        &self,
        _cluster: &str,
        name_hint: &str,
        route: &Route,
    ) -> Result<(), CloudError> {
        let inv = self.inventory.current()?;
        let instance = inv
            .find(None, &route.target_node)
            .ok_or(CloudError::InstanceNotFound)?;
        let has_next_hop = instance
            .addresses
            .iter()
            .any(|a| a.to_node_address().type_ == "InternalIP");
        if !has_next_hop {
            return Err(CloudError::Other(format!(
                "instance {} has no InternalIP in the inventory: the agents have no next hop for {}",
                route.target_node, route.destination_cidr
            )));
        }
        let mut r = route.clone();
        r.name = format!("{}-{name_hint}", route.target_node);
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(route.target_node.clone(), r);
        Ok(())
    }

    async fn delete_route(&self, _cluster: &str, route: &Route) -> Result<(), CloudError> {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&route.target_node);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fleet(dir: &Path, inventory: &str, pool: &[&str]) -> Fleet {
        std::fs::write(dir.join("inv.yaml"), inventory).unwrap();
        let cfg = format!(
            "inventory: inv.yaml\nloadBalancer:\n  addresses: {}\n",
            serde_json::to_string(pool).unwrap()
        );
        std::fs::write(dir.join("cloud.yaml"), cfg).unwrap();
        Fleet::from_config_file(&dir.join("cloud.yaml")).unwrap()
    }
    fn node(name: &str, provider_id: Option<&str>) -> Node {
        serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": {"providerID": provider_id}}),
        )
        .unwrap()
    }
    fn svc(uid: &str, lb_ip: Option<&str>, status_ip: Option<&str>) -> Service {
        let ingress: Vec<_> = status_ip.into_iter().map(|i| json!({"ip": i})).collect();
        serde_json::from_value(json!({
            "metadata": {"name": uid, "namespace": "default", "uid": uid},
            "spec": {"type": "LoadBalancer", "loadBalancerIP": lb_ip},
            "status": {"loadBalancer": {"ingress": ingress}}}))
        .unwrap()
    }
    fn ip_of(s: &LoadBalancerStatus) -> String {
        s.ingress.as_ref().unwrap()[0].ip.clone().unwrap()
    }

    #[tokio::test]
    async fn instances_follow_the_inventory_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = fleet(
            dir.path(),
            "instances: [{name: a, zone: z1, region: r1, type: t1, addresses: [10.0.0.1]}]",
            &["10.9.0.1"],
        );
        let a = node("a", None);
        assert!(f.instance_exists(&a).await.unwrap());
        let m = f.instance_metadata(&a).await.unwrap();
        assert_eq!(m.provider_id, "fleet://a");
        assert_eq!((m.zone.as_str(), m.region.as_str()), ("z1", "r1"));
        assert_eq!(m.instance_type, "t1");
        assert_eq!(m.node_addresses[0].address, "10.0.0.1");
        // Once initialized the Node is found by its providerID.
        assert!(f
            .instance_exists(&node("a", Some("fleet://a")))
            .await
            .unwrap());
        std::fs::write(
            dir.path().join("inv.yaml"),
            "instances: [{name: a, shutdown: true}, {name: b}]",
        )
        .unwrap();
        assert!(f.instance_shutdown(&a).await.unwrap());
        std::fs::write(dir.path().join("inv.yaml"), "instances: [{name: b}]").unwrap();
        assert!(!f.instance_exists(&a).await.unwrap());
        assert!(matches!(
            f.instance_metadata(&a).await,
            Err(CloudError::InstanceNotFound)
        ));
        std::fs::write(dir.path().join("inv.yaml"), "instances: [").unwrap();
        assert!(
            f.instance_exists(&a).await.is_err(),
            "broken file: an error, not gone"
        );
    }

    #[tokio::test]
    async fn load_balancers_take_pool_addresses_and_give_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let f = fleet(dir.path(), "", &["10.9.0.1-10.9.0.2"]);
        let lb = f.load_balancer().unwrap();
        let a = lb
            .ensure_load_balancer("k", &svc("a", None, None), &[])
            .await
            .unwrap();
        assert_eq!(ip_of(&a), "10.9.0.1");
        assert_eq!(
            a.ingress.as_ref().unwrap()[0].ip_mode.as_deref(),
            Some("VIP")
        );
        // A requested address from the pool.
        let b = lb
            .ensure_load_balancer("k", &svc("b", Some("10.9.0.2"), None), &[])
            .await
            .unwrap();
        assert_eq!(ip_of(&b), "10.9.0.2");
        let c = lb
            .ensure_load_balancer("k", &svc("c", None, None), &[])
            .await;
        assert!(
            matches!(c, Err(CloudError::PoolExhausted { size: 2, .. })),
            "{c:?}"
        );
        lb.ensure_load_balancer_deleted("k", &svc("a", None, None))
            .await
            .unwrap();
        let c = lb
            .ensure_load_balancer("k", &svc("c", None, None), &[])
            .await
            .unwrap();
        assert_eq!(ip_of(&c), "10.9.0.1");
        // Outside the pool: refused.
        assert!(lb
            .ensure_load_balancer("k", &svc("d", Some("192.0.2.1"), None), &[])
            .await
            .is_err());
        // A Service whose status already shows an address keeps it (a new manager
        // that has not read the Services back yet still does not move it).
        let g = fleet(dir.path(), "", &["10.9.0.1-10.9.0.2"]);
        let lb = g.load_balancer().unwrap();
        let e = lb
            .ensure_load_balancer("k", &svc("e", None, Some("10.9.0.2")), &[])
            .await
            .unwrap();
        assert_eq!(ip_of(&e), "10.9.0.2");
    }

    #[tokio::test]
    async fn routes_need_a_next_hop_in_the_inventory() {
        let dir = tempfile::tempdir().unwrap();
        let f = fleet(
            dir.path(),
            "instances: [{name: a, addresses: [10.0.0.1]}, {name: b, addresses: [{type: Hostname, address: b}]}]",
            &["10.9.0.1"],
        );
        let routes = f.routes().unwrap();
        let r = |n: &str| Route {
            name: String::new(),
            target_node: n.into(),
            destination_cidr: "10.42.1.0/24".into(),
            blackhole: false,
        };
        routes.create_route("k", "uid-a", &r("a")).await.unwrap();
        assert!(routes.create_route("k", "uid-b", &r("b")).await.is_err());
        assert!(routes.create_route("k", "uid-x", &r("x")).await.is_err());
        let listed = routes.list_routes("k").await.unwrap();
        assert_eq!(listed.len(), 1);
        routes.delete_route("k", &listed[0]).await.unwrap();
        assert!(routes.list_routes("k").await.unwrap().is_empty());
    }
}
