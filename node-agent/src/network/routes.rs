//! Host-gw pod routes: a route `podCIDR via InternalIP` for every other node, so a
//! packet for a pod on another node leaves straight for that node (which owns the pod
//! address as a local /32 and delivers it). No encapsulation: it works only when the
//! nodes share a layer-2 network (the kernel refuses a gateway that is not on a
//! connected network; such a node is reported and skipped).
//!
//! Routes this agent installs carry their own route protocol number
//! ([`ROUTE_PROTOCOL`], `ip route` shows `proto 77`), so the reconciler only ever
//! removes its own routes and a restarted agent finds and adopts the ones it left.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol,
};
use rtnetlink::{Handle, RouteMessageBuilder};
use tracing::{info, warn};

/// The route protocol marking Kelp's pod routes (unassigned in rtnetlink.h and
/// iproute2's rt_protos, so no routing daemon claims it).
pub const ROUTE_PROTOCOL: u8 = 77;

/// How often routes are re-checked without a Node change (repairs routes deleted by
/// hand and retries gateways that were unreachable).
const RESYNC: Duration = Duration::from_secs(30);

const EPERM: i32 = 1;
const ESRCH: i32 = 3;
const EINVAL: i32 = 22;
const ENETUNREACH: i32 = 101;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("not permitted to manage routes (CAP_NET_ADMIN)")]
    NotPermitted,
    /// The gateway is not on a directly connected network.
    #[error("{gateway} is not on a directly connected network")]
    GatewayUnreachable { gateway: Ipv4Addr },
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("cannot open a netlink socket: {0}")]
    Socket(std::io::Error),
}

use super::iface::errno;

fn nl(e: rtnetlink::Error) -> RouteError {
    if errno(&e) == Some(EPERM) {
        RouteError::NotPermitted
    } else {
        RouteError::Netlink(e.to_string())
    }
}

/// The routes wanted on node `self_name`: every other node's podCIDR via its first
/// IPv4 InternalIP. Nodes without either, and ranges overlapping our own (a conflict
/// the IPAM controller should never make; replacing would clobber our fence route),
/// are left out.
pub fn desired<'a>(
    nodes: impl IntoIterator<Item = &'a Node>,
    self_name: &str,
) -> BTreeMap<Ipv4Net, Ipv4Addr> {
    let nodes: Vec<&Node> = nodes.into_iter().collect();
    let cidr_of = |n: &Node| -> Option<Ipv4Net> {
        n.spec
            .as_ref()?
            .pod_cidr
            .as_deref()?
            .parse::<Ipv4Net>()
            .ok()
            .map(|c| c.trunc())
    };
    let own = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(self_name))
        .and_then(|n| cidr_of(n));
    let mut out = BTreeMap::new();
    for n in nodes {
        if n.metadata.name.as_deref() == Some(self_name) {
            continue;
        }
        let (Some(cidr), Some(ip)) = (cidr_of(n), internal_ipv4(n)) else {
            continue;
        };
        if own.is_some_and(|o| o.contains(&cidr) || cidr.contains(&o)) {
            continue;
        }
        out.insert(cidr, ip);
    }
    out
}

fn internal_ipv4(n: &Node) -> Option<Ipv4Addr> {
    n.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse::<Ipv4Addr>().ok())
}

/// The main routing table, over netlink.
#[derive(Clone)]
pub struct PodRoutes {
    handle: Handle,
}

impl PodRoutes {
    pub fn new() -> Result<Self, RouteError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(RouteError::Socket)?;
        tokio::spawn(conn);
        Ok(PodRoutes { handle })
    }

    /// Our routes in the main table (marked with [`ROUTE_PROTOCOL`]): destination →
    /// (gateway, the kernel's message for deleting it).
    pub async fn installed(
        &self,
    ) -> Result<BTreeMap<Ipv4Net, (Option<Ipv4Addr>, RouteMessage)>, RouteError> {
        let mut out = BTreeMap::new();
        let mut s = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        while let Some(m) = s.try_next().await.map_err(nl)? {
            if m.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL)
                || m.header.table != RouteHeader::RT_TABLE_MAIN
            {
                continue;
            }
            let mut dst = None;
            let mut gw = None;
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gw = Some(*g),
                    _ => {}
                }
            }
            let Some(dst) = dst else { continue };
            if let Ok(net) = Ipv4Net::new(dst, m.header.destination_prefix_length) {
                out.insert(net, (gw, m));
            }
        }
        Ok(out)
    }

    /// Ensures `cidr via gateway` (replace: a route to the same destination is
    /// overwritten, so a node whose IP changed is simply re-pointed).
    pub async fn replace(&self, cidr: Ipv4Net, gateway: Ipv4Addr) -> Result<(), RouteError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(cidr.network(), cidr.prefix_len())
            .gateway(gateway)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
            .build();
        match self.handle.route().add(route).replace().execute().await {
            Ok(()) => Ok(()),
            // No route to the gateway at all (ENETUNREACH), or one only through
            // another gateway ("Nexthop has invalid gateway", EINVAL: the message we
            // build is otherwise well-formed).
            Err(e) if matches!(errno(&e), Some(ENETUNREACH | EINVAL)) => {
                Err(RouteError::GatewayUnreachable { gateway })
            }
            Err(e) => Err(nl(e)),
        }
    }

    /// Deletes one of our routes (already gone is fine).
    pub async fn delete(&self, route: RouteMessage) -> Result<(), RouteError> {
        match self.handle.route().del(route).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(ESRCH) => Ok(()),
            Err(e) => Err(nl(e)),
        }
    }

    /// Makes the table match `want`: stale routes of ours removed, missing or
    /// re-pointed ones replaced. Unreachable gateways are returned, not fatal.
    pub async fn reconcile(
        &self,
        want: &BTreeMap<Ipv4Net, Ipv4Addr>,
    ) -> Result<Vec<(Ipv4Net, RouteError)>, RouteError> {
        let have = self.installed().await?;
        let mut failed = vec![];
        for (net, (gw, msg)) in &have {
            if !want.contains_key(net) {
                self.delete(msg.clone()).await?;
                info!(cidr = %net, gateway = ?gw, "pod route removed");
            }
        }
        for (net, gw) in want {
            if have.get(net).is_some_and(|(g, _)| *g == Some(*gw)) {
                continue;
            }
            match self.replace(*net, *gw).await {
                Ok(()) => info!(cidr = %net, gateway = %gw, "pod route installed"),
                Err(e @ RouteError::NotPermitted) => return Err(e),
                Err(e) => failed.push((*net, e)),
            }
        }
        Ok(failed)
    }
}

/// Keeps the host-gw routes of node `node_name` in step with the Nodes until
/// `shutdown`. Errors are logged and retried; routes stay when the agent stops (a
/// restarted agent adopts them, and a node that is gone for good is removed by the
/// other agents).
pub async fn run(
    client: Client,
    node_name: String,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), RouteError> {
    let routes = PodRoutes::new()?;
    let (store, writer) = reflector::store::<Node>();
    let mut events = reflector::reflector(
        writer,
        watcher::watcher(Api::<Node>::all(client), watcher::Config::default()),
    )
    .default_backoff()
    .boxed();
    // Nothing is acted on before the first full list: an empty store would remove
    // every route a restarted agent left.
    let mut listed = false;
    let mut tick = tokio::time::interval(RESYNC);
    // Warn once per (range, gateway) until it works, not every resync.
    let mut warned: HashSet<(Ipv4Net, Ipv4Addr)> = HashSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            ev = events.next() => match ev {
                Some(Ok(watcher::Event::InitDone)) => listed = true,
                Some(Ok(_)) => {}
                Some(Err(e)) => { warn!(error = %e, "node watch (pod routes)"); continue; }
                None => return Ok(()),
            },
            _ = tick.tick() => {}
        }
        if !listed {
            continue;
        }
        let nodes = store.state();
        let want = desired(nodes.iter().map(|n| n.as_ref()), &node_name);
        match routes.reconcile(&want).await {
            Ok(failed) => {
                // Forget what works now, so a later failure is reported again.
                warned.retain(|(net, gw)| {
                    want.get(net) == Some(gw) && failed.iter().any(|(n, _)| n == net)
                });
                for (net, e) in failed {
                    let gw = want[&net];
                    if warned.insert((net, gw)) {
                        warn!(cidr = %net, gateway = %gw, error = %e, "cannot route to this node's pods; skipped (host-gw needs the nodes on one network)");
                    }
                }
            }
            Err(RouteError::NotPermitted) => {
                warn!("no CAP_NET_ADMIN: pod routes to other nodes are not managed");
                return Err(RouteError::NotPermitted);
            }
            Err(e) => warn!(error = %e, "reconciling pod routes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, NodeStatus};

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.spec = Some(NodeSpec {
            pod_cidr: cidr.map(Into::into),
            ..Default::default()
        });
        n.status = Some(NodeStatus {
            addresses: ip.map(|ip| {
                vec![
                    NodeAddress {
                        type_: "Hostname".into(),
                        address: name.into(),
                    },
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: ip.into(),
                    },
                ]
            }),
            ..Default::default()
        });
        n
    }

    #[test]
    fn other_nodes_with_cidr_and_ip_only() {
        let nodes = [
            node("a", Some("10.42.0.0/24"), Some("10.0.0.1")),
            node("b", Some("10.42.1.0/24"), Some("10.0.0.2")),
            node("c", None, Some("10.0.0.3")),
            node("d", Some("10.42.3.0/24"), None),
            node("e", Some("10.42.0.0/25"), Some("10.0.0.5")),
            node("f", Some("10.42.6.7/24"), Some("fd00::6")),
        ];
        let want = desired(&nodes, "a");
        let got: Vec<String> = want.iter().map(|(n, g)| format!("{n} via {g}")).collect();
        assert_eq!(got, ["10.42.1.0/24 via 10.0.0.2"]);
    }

    /// Needs CAP_NET_ADMIN (CI runs as root). Uses documentation ranges nothing
    /// routes, and calls `replace` only: `reconcile` would remove the routes of an
    /// agent running in this network namespace.
    #[tokio::test]
    async fn unreachable_gateway_is_reported_not_fatal() {
        let r = PodRoutes::new().unwrap();
        let net: Ipv4Net = "198.51.100.0/28".parse().unwrap();
        match r.replace(net, Ipv4Addr::new(203, 0, 113, 250)).await {
            Err(RouteError::NotPermitted) => eprintln!("skipped: no CAP_NET_ADMIN"),
            Err(RouteError::GatewayUnreachable { .. }) => {}
            other => panic!("expected GatewayUnreachable, got {other:?}"),
        }
        assert!(!r.installed().await.unwrap().contains_key(&net));
    }
}
