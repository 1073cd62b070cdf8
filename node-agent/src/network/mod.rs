//! Pod networking on a node: every pod gets an address from the node's pod CIDR
//! (`spec.podCIDR`, set by the node IPAM controller), recorded on disk so a restarted
//! agent keeps it, and released when the pod is torn down.
//!
//! Wasm pods share the host's network stack, so a pod's address is a local address of
//! the host. Two modes:
//! - **interface** (the agent has CAP_NET_ADMIN): addresses are /32s on a dummy
//!   interface (`kelp0`) managed over netlink; pods and Services get their real
//!   cluster addresses.
//! - **loopback** (no CAP_NET_ADMIN): Linux answers for all of 127.0.0.0/8 on `lo`
//!   without any configuration, so pods get addresses from the pod CIDR moved into
//!   127/8 (10.42.3.0/24 → 127.42.3.0/24). Pods on one machine still have distinct
//!   addresses; ClusterIPs cannot be bound (the proxy serves node ports only).
//!
//! Layout: [`ipam`] (the pure allocator and its file), [`iface`] (netlink),
//! [`routes`] (host-gw routes to the other nodes' pod ranges, interface mode only).

pub mod cni;
pub mod iface;
pub mod ipam;
pub mod routes;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

pub use iface::{IfaceError, PodInterface, DEFAULT_INTERFACE};
pub use ipam::{AllocationFile, Allocations, IpamError};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Iface(#[from] IfaceError),
    #[error("node {node}: podCIDR {cidr:?} is not an IPv4 CIDR")]
    BadPodCidr { node: String, cidr: String },
}

/// Where pod addresses live.
#[derive(Debug, Clone)]
pub enum AddressMode {
    /// /32s on a netlink-managed interface.
    Interface(PodInterface),
    /// 127/8 addresses Linux binds without configuration.
    Loopback,
}

impl AddressMode {
    /// The interface mode when netlink is permitted, else loopback (logged).
    pub async fn detect(interface: &str) -> Result<Self, IfaceError> {
        match PodInterface::ensure(interface).await {
            Ok(i) => Ok(AddressMode::Interface(i)),
            Err(IfaceError::NotPermitted) => {
                warn!(
                    interface,
                    "no CAP_NET_ADMIN: pod addresses come from 127.0.0.0/8 and ClusterIPs are not bound"
                );
                Ok(AddressMode::Loopback)
            }
            Err(e) => Err(e),
        }
    }

    pub fn is_loopback(&self) -> bool {
        matches!(self, AddressMode::Loopback)
    }

    /// Makes `ip` a local address (a no-op in loopback mode).
    pub async fn add(&self, ip: IpAddr) -> Result<(), IfaceError> {
        match self {
            AddressMode::Interface(i) => i.add(ip).await,
            AddressMode::Loopback => Ok(()),
        }
    }

    pub async fn remove(&self, ip: IpAddr) -> Result<(), IfaceError> {
        match self {
            AddressMode::Interface(i) => i.remove(ip).await,
            AddressMode::Loopback => Ok(()),
        }
    }

    /// Makes the node's pod range unreachable but for its local addresses, so a
    /// connect to a released pod address fails at once (the service proxy then tries
    /// another endpoint) instead of leaving through the default route.
    pub async fn fence(&self, range: Ipv4Net) -> Result<(), IfaceError> {
        match self {
            AddressMode::Interface(i) => i.unreachable_route(range).await,
            AddressMode::Loopback => Ok(()),
        }
    }
}

/// The pod CIDR moved into 127.0.0.0/8 (loopback mode): the first octet becomes 127.
pub fn loopback_range(cidr: Ipv4Net) -> Ipv4Net {
    let o = cidr.network().octets();
    let prefix = cidr.prefix_len().max(8);
    Ipv4Net::new(Ipv4Addr::new(127, o[1], o[2], o[3]), prefix)
        .expect("prefix ≤ 32")
        .trunc()
}

/// Until the node IPAM controller runs on main, a node without `spec.podCIDR` takes a
/// /24 from the upper half of 10.42.0.0/16 chosen by a hash of its name (logged).
pub fn fallback_cidr(node_name: &str) -> Ipv4Net {
    // FNV-1a: stable across releases, unlike std's hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in node_name.bytes() {
        h = (h ^ b as u32).wrapping_mul(0x0100_0193);
    }
    let third = 128 + (h % 128) as u8;
    Ipv4Net::new(Ipv4Addr::new(10, 42, third, 0), 24).expect("valid")
}

struct State {
    alloc: Allocations,
    /// The range came from the Node (not the fallback).
    from_node: bool,
}

/// The node's pod address manager.
pub struct PodNetwork {
    client: Client,
    node_name: String,
    mode: AddressMode,
    file: AllocationFile,
    state: Mutex<Option<State>>,
    /// Set when a Linux container runtime shares the node: its pods get the upper half
    /// of the range through CNI.
    cni: Option<cni::CniSettings>,
    /// Addresses put on the interface ahead of their pod: the one next-fit hands out
    /// next, added after each acquire so the next pod start does not wait for netlink
    /// (~0.15 ms). Free until allocated; a stale member (allocated meanwhile, or
    /// released) is harmless, as release removes it and acquire adds what it lacks.
    warm: std::sync::Mutex<HashSet<Ipv4Addr>>,
}

impl std::fmt::Debug for PodNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodNetwork")
            .field("node_name", &self.node_name)
            .field("mode", &self.mode)
            .field("file", &self.file.path())
            .finish()
    }
}

impl PodNetwork {
    /// Pod addresses recorded under `state_dir`; the range is read from the Node on
    /// first use.
    pub fn new(
        client: Client,
        node_name: impl Into<String>,
        mode: AddressMode,
        state_dir: impl Into<PathBuf>,
    ) -> Self {
        PodNetwork {
            client,
            node_name: node_name.into(),
            mode,
            file: AllocationFile::new(state_dir.into().join("pod-ips.json")),
            state: Mutex::new(None),
            cni: None,
            warm: Default::default(),
        }
    }

    /// Shares the node's range with a CNI-networked runtime (see [`cni`]).
    pub fn with_cni(mut self, settings: cni::CniSettings) -> Self {
        self.cni = Some(settings);
        self
    }

    /// Settles the range now; `true` once it comes from the Node (and the CNI config,
    /// if any, is written). Agents with a Linux runtime call this until it holds, as
    /// their pods need the CNI config before any Wasm pod asks for an address.
    pub async fn prepare(&self) -> Result<bool, NetworkError> {
        let mut g = self.state.lock().await;
        self.settle(&mut g).await?;
        Ok(g.as_ref().is_some_and(|s| s.from_node))
    }

    pub fn mode(&self) -> &AddressMode {
        &self.mode
    }

    async fn node_cidr(&self) -> Result<Option<Ipv4Net>, NetworkError> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node = match nodes.get_opt(&self.node_name).await {
            Ok(n) => n,
            Err(e) => {
                warn!(node = %self.node_name, error = %e, "cannot read the node's podCIDR");
                None
            }
        };
        let Some(cidr) = node.and_then(|n| n.spec).and_then(|s| s.pod_cidr) else {
            return Ok(None);
        };
        cidr.parse::<Ipv4Net>()
            .map(|n| Some(n.trunc()))
            .map_err(|_| NetworkError::BadPodCidr {
                node: self.node_name.clone(),
                cidr,
            })
    }

    fn effective(&self, cidr: Ipv4Net) -> Ipv4Net {
        if self.mode.is_loopback() {
            loopback_range(cidr)
        } else if self.cni.is_some() {
            cni::split(cidr).0
        } else {
            cidr
        }
    }

    /// Loads the record and settles the range (the Node's podCIDR, else the fallback
    /// until the Node has one).
    async fn settle(&self, slot: &mut Option<State>) -> Result<(), NetworkError> {
        if slot.as_ref().is_some_and(|s| s.from_node) {
            return Ok(());
        }
        let node_cidr = self.node_cidr().await?;
        let (range, from_node) = match node_cidr {
            Some(c) => (self.effective(c), true),
            None => {
                let c = fallback_cidr(&self.node_name);
                if slot.is_none() {
                    warn!(node = %self.node_name, fallback = %c, "node has no spec.podCIDR yet; using a derived range");
                }
                (self.effective(c), false)
            }
        };
        if from_node {
            if let Err(e) = self.mode.fence(range).await {
                warn!(%range, error = %e, "cannot fence the pod range with an unreachable route");
            }
            if let (Some(settings), Some(linux)) =
                (&self.cni, node_cidr.and_then(|c| cni::split(c).1))
            {
                match cni::write(settings, linux) {
                    Ok(path) => {
                        info!(range = %linux, path = %path.display(), "CNI config for Linux pods written")
                    }
                    Err(e) => {
                        warn!(dir = %settings.conf_dir.display(), error = %e, "cannot write the CNI config")
                    }
                }
            }
        }
        match slot {
            Some(s) => {
                s.alloc.set_range(range);
                s.from_node = from_node;
            }
            None => {
                let mut alloc = self.file.load()?.unwrap_or_else(|| Allocations::new(range));
                alloc.set_range(range);
                info!(node = %self.node_name, range = %range, pods = alloc.pods.len(), mode = if self.mode.is_loopback() { "loopback" } else { "interface" }, "pod network ready");
                // Re-add what a restarted agent had (the interface may be new).
                for ip in alloc.pods.values() {
                    self.mode.add(IpAddr::V4(*ip)).await?;
                }
                *slot = Some(State { alloc, from_node });
            }
        }
        Ok(())
    }

    /// The address of pod `uid`: the one it holds, else a new one, made local.
    pub async fn acquire(self: &Arc<Self>, uid: &str) -> Result<IpAddr, NetworkError> {
        let mut g = self.state.lock().await;
        self.settle(&mut g).await?;
        let st = g.as_mut().expect("settled");
        let before = st.alloc.clone();
        let ip = st.alloc.allocate(uid)?;
        if st.alloc != before {
            self.file.save(&st.alloc)?;
        }
        let warm = self.warm_lock().remove(&ip);
        if !warm {
            self.mode.add(IpAddr::V4(ip)).await?;
        }
        if let (Some(next), AddressMode::Interface(_)) = (st.alloc.next_free(), &self.mode) {
            if !self.warm_lock().contains(&next) {
                let net = self.clone();
                tokio::spawn(async move {
                    match net.mode.add(IpAddr::V4(next)).await {
                        Ok(()) => {
                            net.warm_lock().insert(next);
                        }
                        Err(e) => {
                            debug!(ip = %next, error = %e, "cannot add the next pod address ahead")
                        }
                    }
                });
            }
        }
        Ok(IpAddr::V4(ip))
    }

    fn warm_lock(&self) -> std::sync::MutexGuard<'_, HashSet<Ipv4Addr>> {
        self.warm.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Frees pod `uid`'s address and removes it from the interface.
    pub async fn release(&self, uid: &str) -> Result<(), NetworkError> {
        let mut g = self.state.lock().await;
        if g.is_none() {
            self.settle(&mut g).await?;
        }
        let st = g.as_mut().expect("settled");
        if let Some(ip) = st.alloc.release(uid) {
            self.file.save(&st.alloc)?;
            self.warm_lock().remove(&ip);
            self.mode.remove(IpAddr::V4(ip)).await?;
            info!(pod_uid = %uid, %ip, "pod address released");
        }
        Ok(())
    }

    /// Frees the addresses of pods not in `known` (deleted while no agent ran).
    pub async fn retain(&self, known: &HashSet<String>) -> Result<(), NetworkError> {
        let mut g = self.state.lock().await;
        self.settle(&mut g).await?;
        let st = g.as_mut().expect("settled");
        let freed = st.alloc.retain(|u| known.contains(u));
        if !freed.is_empty() {
            self.file.save(&st.alloc)?;
            for ip in freed {
                self.warm_lock().remove(&ip);
                self.mode.remove(IpAddr::V4(ip)).await?;
                info!(%ip, "address of a pod that is gone released");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_range_keeps_the_low_octets() {
        let n: Ipv4Net = "10.42.3.0/24".parse().unwrap();
        assert_eq!(loopback_range(n).to_string(), "127.42.3.0/24");
        let wide: Ipv4Net = "10.0.0.0/7".parse().unwrap();
        assert_eq!(loopback_range(wide).prefix_len(), 8);
    }

    #[test]
    fn fallback_is_stable_and_in_the_upper_half() {
        let a = fallback_cidr("node-a");
        assert_eq!(a, fallback_cidr("node-a"));
        assert!(a.network().octets()[2] >= 128);
        assert_eq!(a.prefix_len(), 24);
    }
}
