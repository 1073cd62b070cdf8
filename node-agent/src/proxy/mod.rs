//! The userspace service proxy (kube-proxy's job without iptables): watches Services
//! and EndpointSlices and, for every service port, accepts on the ClusterIP and on
//! the load-balancer ingress addresses of `type: LoadBalancer` Services (both made
//! local addresses on the pod interface) and on the node port, forwarding TCP and UDP
//! to ready endpoints.
//!
//! Layout: [`table`] (pure: which listeners, which endpoints), [`balancer`]
//! (round-robin and ClientIP affinity over a swappable endpoint set), `forward` (the
//! data path), [`plane`] (the threads the data path runs on), [`metrics`]. Changes
//! swap a listener's endpoint set in place; a listener is only opened or closed when
//! its address, port or protocol appears or disappears, and closing it leaves
//! established connections running.

pub mod balancer;
mod forward;
pub use forward::{listen_tcp, serve_tcp};
pub mod metrics;
pub mod plane;
mod splice;
pub mod table;
#[cfg(test)]
mod testing;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::network::AddressMode;
use balancer::Balancer;
use metrics::Metrics;
pub use plane::DataPlane;
pub use plane::PlaneConfig;
use table::{Entry, ListenKey, NodeView, Protocol};

/// How a proxy runs.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// This node (for `Local` traffic policies).
    pub node_name: String,
    /// Where node ports accept: 0.0.0.0 (every address) or one address.
    pub nodeport_address: IpAddr,
    /// A UDP flow with no datagram for this long ends.
    pub udp_idle_timeout: Duration,
    /// Serve Prometheus metrics here.
    pub metrics_address: Option<SocketAddr>,
    /// Re-try listeners that could not bind this often (a port another process held).
    pub resync_interval: Duration,
    /// The data plane's threads and busy polling.
    pub plane: PlaneConfig,
}

impl ProxyConfig {
    pub fn new(node_name: impl Into<String>) -> Self {
        ProxyConfig {
            node_name: node_name.into(),
            nodeport_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            udp_idle_timeout: Duration::from_secs(30),
            metrics_address: None,
            resync_interval: Duration::from_secs(5),
            plane: PlaneConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the data plane's threads: {0}")]
    Plane(std::io::Error),
}

struct Listener {
    entry: Entry,
    balancer: Arc<Balancer>,
    /// Its accept loops (one per data-plane thread) or its UDP relay.
    tasks: Vec<JoinHandle<()>>,
}

impl Listener {
    fn close(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The proxy's state: open listeners and the ClusterIPs it made local.
struct Proxy {
    cfg: ProxyConfig,
    mode: AddressMode,
    listeners: HashMap<ListenKey, Listener>,
    /// Listeners that failed to bind, with the last error (retried on resync).
    failed: HashMap<ListenKey, String>,
    local_ips: HashSet<IpAddr>,
    metrics: Arc<Metrics>,
    plane: DataPlane,
}

/// Runs the proxy until `shutdown` resolves. Listeners and the connections in flight
/// end on return (with the data plane's threads).
pub async fn run(
    cfg: ProxyConfig,
    client: Client,
    mode: AddressMode,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ProxyError> {
    let plane = DataPlane::start(cfg.plane.clone()).map_err(ProxyError::Plane)?;
    let metrics = Arc::new(Metrics::default());
    let metrics_task = match cfg.metrics_address {
        Some(addr) => {
            // Bind now so a taken port is reported at start.
            let probe = std::net::TcpListener::bind(addr)
                .map_err(|source| ProxyError::Metrics { addr, source })?;
            drop(probe);
            let m = metrics.clone();
            Some(tokio::spawn(async move {
                if let Err(e) = metrics::serve(addr, m).await {
                    warn!(%addr, error = %e, "metrics server stopped");
                }
            }))
        }
        None => None,
    };
    let changed = Arc::new(Notify::new());
    let (services, svc_task) = watch::<Service>(client.clone(), changed.clone());
    let (slices, slice_task) = watch::<EndpointSlice>(client, changed.clone());
    let mut proxy = Proxy {
        cfg,
        mode,
        listeners: HashMap::new(),
        failed: HashMap::new(),
        local_ips: HashSet::new(),
        metrics,
        plane,
    };
    tokio::pin!(shutdown);
    let ready = async {
        let _ = services.wait_until_ready().await;
        let _ = slices.wait_until_ready().await;
    };
    tokio::select! {
        _ = &mut shutdown => {}
        _ = ready => {
            info!(node = %proxy.cfg.node_name, nodeport_address = %proxy.cfg.nodeport_address, "proxy syncing");
            loop {
                proxy.sync(&services.state(), &slices.state()).await;
                let resync = proxy.cfg.resync_interval;
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = changed.notified() => {}
                    _ = tokio::time::sleep(resync), if !proxy.failed.is_empty() => {}
                }
            }
        }
    }
    info!("proxy stopping");
    svc_task.abort();
    slice_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    for (_, l) in proxy.listeners.drain() {
        l.close();
    }
    Ok(())
}

/// A reflector of every `K`, nudging `changed` on each event.
fn watch<K>(client: Client, changed: Arc<Notify>) -> (Store<K>, JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let api: Api<K> = Api::all(client);
    let stream = reflector::reflector(writer, watcher::watcher(api, watcher::Config::default()))
        .default_backoff();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => changed.notify_one(),
                Err(e) => warn!(kind = K::kind(&()).as_ref(), error = %e, "watch failed; retrying"),
            }
        }
    });
    (reader, task)
}

fn listener_label(k: &ListenKey) -> String {
    let p = match k.protocol {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    };
    format!("{}/{p}", SocketAddr::new(k.ip, k.port))
}

impl Proxy {
    /// A ClusterIP or load-balancer address (made local), as opposed to a node port.
    fn is_cluster_ip(&self, k: &ListenKey) -> bool {
        k.ip != self.cfg.nodeport_address
    }

    /// Brings listeners in line with the Services and EndpointSlices.
    async fn sync(&mut self, services: &[Arc<Service>], slices: &[Arc<EndpointSlice>]) {
        let view = NodeView {
            node_name: &self.cfg.node_name,
            nodeport_ip: self.cfg.nodeport_address,
            cluster_ips: !self.mode.is_loopback(),
        };
        let want: BTreeMap<ListenKey, Entry> = table::desired(services, slices, &view);

        // Gone: close the listener (its connections go on) and drop unused ClusterIPs.
        let gone: Vec<ListenKey> = self
            .listeners
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();
        for k in gone {
            if let Some(l) = self.listeners.remove(&k) {
                l.close();
                info!(service = %l.entry.service, listener = %listener_label(&k), "listener closed");
            }
        }
        self.failed.retain(|k, _| want.contains_key(k));
        let wanted_ips: HashSet<IpAddr> = want
            .keys()
            .filter(|k| self.is_cluster_ip(k))
            .map(|k| k.ip)
            .collect();
        let unused: Vec<IpAddr> = self.local_ips.difference(&wanted_ips).copied().collect();
        for ip in unused {
            if let Err(e) = self.mode.remove(ip).await {
                warn!(%ip, error = %e, "cannot remove a ClusterIP from the interface");
            }
            self.local_ips.remove(&ip);
        }

        for (k, entry) in want {
            if let Some(l) = self.listeners.get_mut(&k) {
                if l.balancer.update(entry.backends.clone()) {
                    debug!(service = %entry.service, endpoints = ?entry.backends.addrs, "endpoints changed");
                }
                l.entry = entry;
                continue;
            }
            if self.is_cluster_ip(&k) && !self.local_ips.contains(&k.ip) {
                if let Err(e) = self.mode.add(k.ip).await {
                    warn!(ip = %k.ip, error = %e, "cannot add a ClusterIP to the interface");
                    continue;
                }
                self.local_ips.insert(k.ip);
            }
            match self.open(&k, &entry) {
                Ok(l) => {
                    info!(service = %entry.service, listener = %listener_label(&k), endpoints = entry.backends.addrs.len(), "listening");
                    self.failed.remove(&k);
                    self.listeners.insert(k, l);
                }
                Err(e) => {
                    let msg = e.to_string();
                    if self.failed.get(&k) != Some(&msg) {
                        warn!(service = %entry.service, listener = %listener_label(&k), error = %msg, "cannot listen; retrying");
                    }
                    self.failed.insert(k, msg);
                }
            }
        }
    }

    fn open(&self, k: &ListenKey, entry: &Entry) -> std::io::Result<Listener> {
        let addr = SocketAddr::new(k.ip, k.port);
        let balancer = Arc::new(Balancer::new(entry.backends.clone()));
        let m = self.metrics.port(&entry.service, &listener_label(k));
        let tasks = match k.protocol {
            Protocol::Tcp => forward::listen_tcp(&self.plane, addr, &balancer, &m)?.1,
            Protocol::Udp => {
                let s = std::net::UdpSocket::bind(addr)?;
                s.set_nonblocking(true)?;
                let rt = self.plane.next();
                let _on = rt.enter();
                let s = UdpSocket::from_std(s)?;
                vec![rt.spawn(forward::serve_udp(
                    s,
                    balancer.clone(),
                    m,
                    self.cfg.udp_idle_timeout,
                ))]
            }
        };
        Ok(Listener {
            entry: entry.clone(),
            balancer,
            tasks,
        })
    }
}
