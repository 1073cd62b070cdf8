//! Cluster DNS on the node: a small DNS server (UDP and TCP) answering
//! `SERVICE.NAMESPACE.svc.DOMAIN` and the other names of the Kubernetes DNS
//! specification from the node's Service and EndpointSlice reflectors, and relaying
//! every other name to the host's resolvers (`/etc/resolv.conf`), as CoreDNS's
//! `forward . /etc/resolv.conf` does. Pods get its address as their nameserver
//! (the kubelet's `dnsPolicy: ClusterFirst`).
//!
//! Layout: [`records`] (the pure answer logic), `forward` (the relay), this file
//! (sockets, the catalog over the reflectors). Only the wire format comes from
//! hickory-proto; there is no resolver or server framework underneath.

mod forward;
pub mod records;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::Name;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tracing::{debug, info, warn};

use crate::kubelet::env::{reflect, ServiceCache};
pub use records::{Catalog, Outcome};

/// The address node-local DNS caches use (a link-local address on a dummy interface,
/// in no cluster range): cluster DNS listens there when the agent may add addresses.
pub const DEFAULT_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 20, 10);
/// Without CAP_NET_ADMIN: a loopback address Linux answers for without configuration.
pub const DEFAULT_LOOPBACK_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 10);

/// A TCP client that sends nothing for this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// How cluster DNS runs.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Where to listen (UDP and TCP on the same port; port 0: any free port).
    pub listen: SocketAddr,
    /// When `listen` is the default address on port 53 and that port cannot be had
    /// (taken by another agent on this machine, or no privilege), listen on a free
    /// port of the same address instead of failing.
    pub fallback_to_free_port: bool,
    /// The cluster domain, `cluster.local`.
    pub domain: String,
    /// Where names outside the cluster domain are relayed (the host's nameservers);
    /// empty: such names are REFUSED.
    pub upstreams: Vec<SocketAddr>,
    /// How long a relayed query may take.
    pub forward_timeout: Duration,
}

impl DnsConfig {
    pub fn new(listen: SocketAddr) -> Self {
        DnsConfig {
            listen,
            fallback_to_free_port: false,
            domain: "cluster.local".into(),
            upstreams: vec![],
            forward_timeout: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cluster domain {0:?} is not a valid DNS name")]
    BadDomain(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The nameservers of a resolv.conf (`nameserver ADDR` lines), on port 53.
pub fn resolv_conf_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some("nameserver")).then(|| f.next())?
        })
        // `fe80::1%eth0`: the scope is dropped (tokio cannot parse it).
        .filter_map(|a| a.split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Services (shared with the kubelet) and EndpointSlices, from reflectors.
#[derive(Clone)]
pub struct KubeCatalog {
    services: ServiceCache,
    slices: Store<EndpointSlice>,
}

impl KubeCatalog {
    /// Reuses `services`; starts an EndpointSlice reflector (for headless Services).
    pub fn start(services: ServiceCache, client: Client) -> Self {
        KubeCatalog {
            services,
            slices: reflect(client),
        }
    }
}

impl Catalog for KubeCatalog {
    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.services
            .store()
            .get(&ObjectRef::new(name).within(namespace))
    }

    fn endpoint_slices(&self, namespace: &str, service: &str) -> Vec<Arc<EndpointSlice>> {
        self.slices.state_filter(|s| {
            s.metadata.namespace.as_deref() == Some(namespace)
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(records::SERVICE_NAME_LABEL))
                    .is_some_and(|n| n == service)
        })
    }

    fn services_with_cluster_ip(&self, ip: IpAddr) -> Vec<Arc<Service>> {
        self.services
            .store()
            .state_filter(|s| records::has_cluster_ip(s, ip))
    }

    fn slices_with_address(&self, ip: IpAddr) -> Vec<Arc<EndpointSlice>> {
        self.slices.state_filter(|s| records::lists_address(s, ip))
    }
}

/// A bound cluster DNS server.
pub struct DnsServer {
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    zone: Name,
    cfg: DnsConfig,
}

impl DnsServer {
    /// Binds UDP and TCP on `cfg.listen` (the same port for both).
    pub async fn bind(cfg: DnsConfig) -> Result<Self, DnsError> {
        let mut zone =
            Name::from_ascii(&cfg.domain).map_err(|_| DnsError::BadDomain(cfg.domain.clone()))?;
        zone.set_fqdn(true);
        let zone = zone.to_lowercase();
        let (udp, tcp) = match bind_pair(cfg.listen).await {
            Ok(p) => p,
            Err(e) if cfg.fallback_to_free_port && cfg.listen.port() != 0 => {
                let free = SocketAddr::new(cfg.listen.ip(), 0);
                warn!(addr = %cfg.listen, error = %e, "cluster DNS cannot have its port; listening on a free port (only the Wasm runtime's resolver can use it)");
                bind_pair(free).await?
            }
            Err(e) => return Err(e),
        };
        Ok(DnsServer {
            udp: Arc::new(udp),
            tcp,
            zone,
            cfg,
        })
    }

    /// Where it listens (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.tcp.local_addr().unwrap_or(self.cfg.listen)
    }

    /// Serves until `shutdown` resolves.
    pub async fn run(
        self,
        catalog: Arc<dyn Catalog + Send + Sync>,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) {
        let addr = self.local_addr();
        info!(%addr, domain = %self.cfg.domain, upstreams = ?self.cfg.upstreams, "cluster DNS listening");
        let shared = Arc::new(Shared {
            catalog,
            zone: self.zone,
            upstreams: self
                .cfg
                .upstreams
                .iter()
                .copied()
                .filter(|u| *u != addr)
                .collect(),
            forward_timeout: self.cfg.forward_timeout,
        });
        let udp = tokio::spawn(serve_udp(self.udp, shared.clone()));
        let tcp = tokio::spawn(serve_tcp(self.tcp, shared));
        shutdown.await;
        info!(%addr, "cluster DNS stopping");
        udp.abort();
        tcp.abort();
    }
}

/// UDP and TCP on one port: with port 0, TCP takes the port UDP was given (retried
/// when another process holds that TCP port).
async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let err = |addr, source| DnsError::Bind { addr, source };
    let mut last = None;
    for _ in 0..16 {
        let udp = UdpSocket::bind(addr).await.map_err(|e| err(addr, e))?;
        let bound = udp.local_addr().map_err(|e| err(addr, e))?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => return Err(err(bound, e)),
        }
    }
    Err(err(
        addr,
        last.unwrap_or_else(|| std::io::Error::other("no free port")),
    ))
}

struct Shared {
    catalog: Arc<dyn Catalog + Send + Sync>,
    zone: Name,
    upstreams: Vec<SocketAddr>,
    forward_timeout: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// The largest UDP response a client without EDNS accepts (RFC 1035).
const UDP_PLAIN_MAX: usize = 512;

impl Shared {
    /// The wire response to the wire query `raw`; None: drop it (not even a header).
    async fn handle(&self, raw: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let request = match Message::from_vec(raw) {
            Ok(m) => m,
            Err(e) => {
                debug!(error = %e, "undecodable DNS query");
                // Answer FORMERR when at least the header (the id) is there.
                if raw.len() < 12 || raw[2] & 0x80 != 0 {
                    return None;
                }
                let mut m = Message::response(
                    u16::from_be_bytes([raw[0], raw[1]]),
                    hickory_proto::op::OpCode::Query,
                );
                m.metadata.response_code = ResponseCode::FormErr;
                return m.to_vec().ok();
            }
        };
        if request.metadata.message_type == hickory_proto::op::MessageType::Response {
            return None;
        }
        let response = match records::answer(self.catalog.as_ref(), &self.zone, &request) {
            Outcome::Answer(m) => m,
            Outcome::Forward if self.upstreams.is_empty() => {
                records::error_response(&request, ResponseCode::Refused)
            }
            Outcome::Forward => {
                match forward::relay(
                    raw,
                    &self.upstreams,
                    transport == Transport::Tcp,
                    self.forward_timeout,
                )
                .await
                {
                    Ok(bytes) => return Some(bytes),
                    Err(e) => {
                        debug!(error = %e, "relaying a query failed");
                        records::error_response(&request, ResponseCode::ServFail)
                    }
                }
            }
        };
        let wire = response.to_vec().ok()?;
        if transport == Transport::Udp {
            let max = request
                .edns
                .as_ref()
                .map(|e| usize::from(e.max_payload()).max(UDP_PLAIN_MAX))
                .unwrap_or(UDP_PLAIN_MAX);
            if wire.len() > max {
                // The client retries over TCP.
                return response.truncate().to_vec().ok();
            }
        }
        Some(wire)
    }
}

async fn serve_udp(sock: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors from earlier replies surface here on some systems.
                debug!(error = %e, "cluster DNS UDP receive");
                continue;
            }
        };
        let raw = buf[..n].to_vec();
        let (sock, shared) = (sock.clone(), shared.clone());
        // One task per query: a relayed one may wait on an upstream.
        tokio::spawn(async move {
            if let Some(resp) = shared.handle(&raw, Transport::Udp).await {
                let _ = sock.send_to(&resp, peer).await;
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_tcp_conn(stream, shared.clone()));
            }
            Err(e) => {
                warn!(error = %e, "cluster DNS TCP accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Length-prefixed messages (RFC 1035 4.2.2), answered in order.
async fn serve_tcp_conn(mut stream: TcpStream, shared: Arc<Shared>) {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut raw = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut raw).await.is_err() {
            return;
        }
        let Some(resp) = shared.handle(&raw, Transport::Tcp).await else {
            return;
        };
        let Ok(n) = u16::try_from(resp.len()) else {
            return;
        };
        let mut out = n.to_be_bytes().to_vec();
        out.extend_from_slice(&resp);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_of_a_resolv_conf() {
        let text = "# generated\nsearch example.com\nnameserver 10.0.0.2\nnameserver  fe80::1%eth0\nnameserver bogus\noptions ndots:2\n";
        assert_eq!(
            resolv_conf_nameservers(text),
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }
}
