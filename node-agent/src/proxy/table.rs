//! The pure part of the proxy: from Services and EndpointSlices, which listeners
//! should exist and where each forwards. No I/O; table-tested.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

use super::balancer::Backends;

/// The label naming an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Upstream's default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(10_800);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn parse(p: Option<&str>) -> Option<Self> {
        match p.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            _ => None, // SCTP: not proxied
        }
    }
}

/// Where a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenKey {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

/// A listener's purpose and targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `namespace/name:port` for logs and metrics.
    pub service: String,
    pub backends: Backends,
}

/// What the proxy on this node serves.
#[derive(Debug, Clone)]
pub struct NodeView<'a> {
    pub node_name: &'a str,
    /// Where node ports accept (0.0.0.0 or the node IP).
    pub nodeport_ip: IpAddr,
    /// Whether ClusterIPs (and load-balancer addresses) can be made local here (not
    /// in loopback mode; there only 127/8 load-balancer addresses are served, which
    /// Linux binds without configuration).
    pub cluster_ips: bool,
}

/// The load-balancer addresses the proxy accepts on for a `type: LoadBalancer`
/// Service: `status.loadBalancer.ingress[].ip`, except `ipMode: Proxy` ones (there an
/// external balancer forwards to node ports, as upstream kube-proxy assumes).
pub fn load_balancer_ips(svc: &Service) -> Vec<IpAddr> {
    if svc.spec.as_ref().and_then(|s| s.type_.as_deref()) != Some("LoadBalancer") {
        return Vec::new();
    }
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}

/// One endpoint of a service port, as the slices say.
#[derive(Debug, Clone)]
struct Target {
    addr: SocketAddr,
    node: Option<String>,
    ready: bool,
    serving: bool,
    terminating: bool,
}

fn conditions(e: &Endpoint) -> (bool, bool, bool) {
    let c = e.conditions.as_ref();
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    let serving = c.and_then(|c| c.serving).unwrap_or(ready);
    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
    (ready, serving, terminating)
}

/// The endpoints that take new connections: the ready ones (on this node only when
/// `local`); when none is ready, the serving-but-terminating ones (upstream's
/// fallback, so a rolling update never blackholes). Sorted, deduplicated.
fn usable(targets: &[Target], local: Option<&str>) -> Vec<SocketAddr> {
    let here = |t: &&Target| local.is_none_or(|n| t.node.as_deref() == Some(n));
    let mut out: Vec<SocketAddr> = targets
        .iter()
        .filter(here)
        .filter(|t| t.ready)
        .map(|t| t.addr)
        .collect();
    if out.is_empty() {
        out = targets
            .iter()
            .filter(here)
            .filter(|t| t.serving && t.terminating)
            .map(|t| t.addr)
            .collect();
    }
    out.sort();
    out.dedup();
    out
}

fn port_name(p: &ServicePort) -> &str {
    p.name.as_deref().unwrap_or("")
}

/// The listeners this node should have.
pub fn desired(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    node: &NodeView<'_>,
) -> BTreeMap<ListenKey, Entry> {
    // (namespace, service) → its slices.
    let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for s in slices {
        let ns = s.metadata.namespace.as_deref().unwrap_or("");
        if let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        {
            by_service.entry((ns, svc.as_str())).or_default().push(s);
        }
    }
    let mut out = BTreeMap::new();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        let ns = svc.metadata.namespace.as_deref().unwrap_or("");
        let name = svc.metadata.name.as_deref().unwrap_or("");
        let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
        if ty == "ExternalName" {
            continue;
        }
        let cluster_ips: Vec<IpAddr> = match &spec.cluster_ips {
            Some(ips) if !ips.is_empty() => ips.iter().filter_map(|i| i.parse().ok()).collect(),
            _ => spec
                .cluster_ip
                .iter()
                .filter_map(|i| i.parse().ok())
                .collect(),
        };
        let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .map(|s| Duration::from_secs(s.max(1) as u64))
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
        });
        let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
        let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
        let lb_ips: Vec<IpAddr> = load_balancer_ips(svc)
            .into_iter()
            .filter(|ip| node.cluster_ips || ip.is_loopback())
            .collect();
        let svc_slices = by_service
            .get(&(ns, name))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for sp in spec.ports.iter().flatten() {
            let Some(protocol) = Protocol::parse(sp.protocol.as_deref()) else {
                continue;
            };
            let targets: Vec<Target> = svc_slices
                .iter()
                .flat_map(|slice| {
                    let port = slice.ports.iter().flatten().find(|p| {
                        p.name.as_deref().unwrap_or("") == port_name(sp)
                            && Protocol::parse(p.protocol.as_deref()) == Some(protocol)
                    });
                    let port = port
                        .and_then(|p| p.port)
                        .and_then(|p| u16::try_from(p).ok());
                    slice.endpoints.iter().filter_map(move |e| {
                        let port = port?;
                        let (ready, serving, terminating) = conditions(e);
                        // One address per endpoint is what proxies use upstream too.
                        let ip: IpAddr = e.addresses.first()?.parse().ok()?;
                        Some(Target {
                            addr: SocketAddr::new(ip, port),
                            node: e.node_name.clone(),
                            ready,
                            serving,
                            terminating,
                        })
                    })
                })
                .collect();
            let label = format!("{ns}/{name}:{}", {
                let n = port_name(sp);
                if n.is_empty() {
                    sp.port.to_string()
                } else {
                    n.to_string()
                }
            });
            let Ok(port) = u16::try_from(sp.port) else {
                continue;
            };
            if node.cluster_ips {
                let local = internal_local.then_some(node.node_name);
                for ip in &cluster_ips {
                    out.insert(
                        ListenKey {
                            ip: *ip,
                            port,
                            protocol,
                        },
                        Entry {
                            service: label.clone(),
                            backends: Backends {
                                addrs: usable(&targets, local),
                                affinity,
                            },
                        },
                    );
                }
            }
            // Load-balancer addresses take outside traffic: the external policy
            // applies, as upstream.
            for ip in &lb_ips {
                out.insert(
                    ListenKey {
                        ip: *ip,
                        port,
                        protocol,
                    },
                    Entry {
                        service: label.clone(),
                        backends: Backends {
                            addrs: usable(&targets, external_local.then_some(node.node_name)),
                            affinity,
                        },
                    },
                );
            }
            let node_port = sp.node_port.and_then(|p| u16::try_from(p).ok());
            if let (Some(np), "NodePort" | "LoadBalancer") = (node_port, ty) {
                let local = external_local.then_some(node.node_name);
                out.insert(
                    ListenKey {
                        ip: node.nodeport_ip,
                        port: np,
                        protocol,
                    },
                    Entry {
                        service: label.clone(),
                        backends: Backends {
                            addrs: usable(&targets, local),
                            affinity,
                        },
                    },
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Arc<Service> {
        Arc::new(serde_json::from_value(v).unwrap())
    }
    fn slice(v: serde_json::Value) -> Arc<EndpointSlice> {
        Arc::new(serde_json::from_value(v).unwrap())
    }
    fn ep(ip: &str, node: &str, ready: bool, terminating: bool) -> serde_json::Value {
        json!({"addresses": [ip], "nodeName": node,
               "conditions": {"ready": ready, "serving": ready || terminating, "terminating": terminating}})
    }
    const ANY: NodeView<'static> = NodeView {
        node_name: "n1",
        nodeport_ip: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        cluster_ips: true,
    };
    fn key(ip: &str, port: u16, protocol: Protocol) -> ListenKey {
        ListenKey {
            ip: ip.parse().unwrap(),
            port,
            protocol,
        }
    }
    fn addrs(e: &Entry) -> Vec<String> {
        e.backends.addrs.iter().map(|a| a.to_string()).collect()
    }

    fn web() -> Arc<Service> {
        svc(json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "NodePort", "clusterIP": "10.43.0.10", "clusterIPs": ["10.43.0.10"],
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080},
                               {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]}}))
    }
    fn web_slice(endpoints: Vec<serde_json::Value>) -> Arc<EndpointSlice> {
        slice(
            json!({"metadata": {"name": "web-abc", "namespace": "default",
                                  "labels": {"kubernetes.io/service-name": "web"}},
                     "addressType": "IPv4",
                     "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                               {"name": "dns", "port": 5353, "protocol": "UDP"}],
                     "endpoints": endpoints}),
        )
    }

    #[test]
    fn cluster_ip_and_node_port_for_each_protocol() {
        let t = desired(
            &[web()],
            &[web_slice(vec![
                ep("10.42.0.3", "n1", true, false),
                ep("10.42.0.2", "n2", true, false),
            ])],
            &ANY,
        );
        assert_eq!(t.len(), 4);
        let c = &t[&key("10.43.0.10", 80, Protocol::Tcp)];
        assert_eq!(c.service, "default/web:http");
        assert_eq!(addrs(c), ["10.42.0.2:8080", "10.42.0.3:8080"]);
        assert_eq!(
            addrs(&t[&key("0.0.0.0", 30053, Protocol::Udp)]),
            ["10.42.0.2:5353", "10.42.0.3:5353"]
        );
    }

    #[test]
    fn unready_endpoints_are_left_out_terminating_ones_only_as_a_last_resort() {
        let t = desired(
            &[web()],
            &[web_slice(vec![
                ep("10.42.0.2", "n1", true, false),
                ep("10.42.0.3", "n1", false, false),
                ep("10.42.0.4", "n1", false, true),
            ])],
            &ANY,
        );
        assert_eq!(
            addrs(&t[&key("10.43.0.10", 80, Protocol::Tcp)]),
            ["10.42.0.2:8080"]
        );
        let t = desired(
            &[web()],
            &[web_slice(vec![
                ep("10.42.0.3", "n1", false, false),
                ep("10.42.0.4", "n1", false, true),
            ])],
            &ANY,
        );
        assert_eq!(
            addrs(&t[&key("10.43.0.10", 80, Protocol::Tcp)]),
            ["10.42.0.4:8080"]
        );
    }

    #[test]
    fn local_traffic_policies_keep_this_nodes_endpoints() {
        let mut s = (*web()).clone();
        let spec = s.spec.as_mut().unwrap();
        spec.internal_traffic_policy = Some("Local".into());
        spec.external_traffic_policy = Some("Local".into());
        let eps = vec![
            ep("10.42.0.2", "n1", true, false),
            ep("10.42.1.2", "n2", true, false),
        ];
        let t = desired(&[Arc::new(s.clone())], &[web_slice(eps.clone())], &ANY);
        assert_eq!(
            addrs(&t[&key("10.43.0.10", 80, Protocol::Tcp)]),
            ["10.42.0.2:8080"]
        );
        assert_eq!(
            addrs(&t[&key("0.0.0.0", 30080, Protocol::Tcp)]),
            ["10.42.0.2:8080"]
        );
        // Only external Local: the ClusterIP still spreads over the cluster.
        s.spec.as_mut().unwrap().internal_traffic_policy = Some("Cluster".into());
        let t = desired(&[Arc::new(s)], &[web_slice(eps)], &ANY);
        assert_eq!(addrs(&t[&key("10.43.0.10", 80, Protocol::Tcp)]).len(), 2);
        assert_eq!(addrs(&t[&key("0.0.0.0", 30080, Protocol::Tcp)]).len(), 1);
    }

    #[test]
    fn affinity_timeout_defaults_and_overrides() {
        let mut s = (*web()).clone();
        s.spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
        let t = desired(&[Arc::new(s.clone())], &[], &ANY);
        let e = &t[&key("10.43.0.10", 80, Protocol::Tcp)];
        assert_eq!(e.backends.affinity, Some(DEFAULT_AFFINITY_TIMEOUT));
        assert!(e.backends.addrs.is_empty());
        s.spec.as_mut().unwrap().session_affinity_config =
            serde_json::from_value(json!({"clientIP": {"timeoutSeconds": 60}})).unwrap();
        let t = desired(&[Arc::new(s)], &[], &ANY);
        assert_eq!(
            t[&key("10.43.0.10", 80, Protocol::Tcp)].backends.affinity,
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn headless_external_name_and_loopback_mode() {
        let headless = svc(json!({"metadata": {"name": "h", "namespace": "default"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}));
        let ext = svc(json!({"metadata": {"name": "x", "namespace": "default"},
            "spec": {"type": "ExternalName", "externalName": "example.com"}}));
        assert!(desired(&[headless, ext], &[], &ANY).is_empty());
        let no_cluster_ips = NodeView {
            cluster_ips: false,
            ..ANY
        };
        let t = desired(&[web()], &[], &no_cluster_ips);
        assert_eq!(
            t.keys().copied().collect::<Vec<_>>(),
            [
                key("0.0.0.0", 30053, Protocol::Udp),
                key("0.0.0.0", 30080, Protocol::Tcp)
            ]
        );
    }

    #[test]
    fn load_balancer_addresses_forward_like_the_cluster_ip() {
        let mut s = (*web()).clone();
        s.spec.as_mut().unwrap().type_ = Some("LoadBalancer".into());
        s.status = serde_json::from_value(json!({"loadBalancer": {"ingress": [
            {"ip": "198.18.0.10", "ipMode": "VIP"},
            {"ip": "198.18.0.11", "ipMode": "Proxy"},
            {"hostname": "lb.example.com"},
            {"ip": "127.200.0.1"}]}}))
        .unwrap();
        let eps = vec![
            ep("10.42.0.2", "n1", true, false),
            ep("10.42.1.2", "n2", true, false),
        ];
        let t = desired(&[Arc::new(s.clone())], &[web_slice(eps.clone())], &ANY);
        let lb = &t[&key("198.18.0.10", 80, Protocol::Tcp)];
        assert_eq!(lb, &t[&key("10.43.0.10", 80, Protocol::Tcp)]);
        assert!(t.contains_key(&key("198.18.0.10", 53, Protocol::Udp)));
        assert!(t.contains_key(&key("127.200.0.1", 80, Protocol::Tcp)));
        assert!(
            !t.contains_key(&key("198.18.0.11", 80, Protocol::Tcp)),
            "ipMode Proxy"
        );
        // externalTrafficPolicy Local: this node's endpoints only.
        s.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
        let t = desired(&[Arc::new(s.clone())], &[web_slice(eps.clone())], &ANY);
        assert_eq!(
            addrs(&t[&key("198.18.0.10", 80, Protocol::Tcp)]),
            ["10.42.0.2:8080"]
        );
        // Loopback mode: only 127/8 addresses can be served.
        let lo = NodeView {
            cluster_ips: false,
            ..ANY
        };
        let t = desired(&[Arc::new(s.clone())], &[web_slice(eps.clone())], &lo);
        assert!(t.contains_key(&key("127.200.0.1", 80, Protocol::Tcp)));
        assert!(!t.contains_key(&key("198.18.0.10", 80, Protocol::Tcp)));
        // Not a LoadBalancer any more: a leftover status is not served.
        s.spec.as_mut().unwrap().type_ = Some("NodePort".into());
        let t = desired(&[Arc::new(s)], &[web_slice(eps)], &ANY);
        assert!(!t.contains_key(&key("198.18.0.10", 80, Protocol::Tcp)));
    }

    #[test]
    fn slices_of_other_services_or_namespaces_do_not_count() {
        let mut other = (*web_slice(vec![ep("10.42.0.9", "n1", true, false)])).clone();
        other.metadata.namespace = Some("prod".into());
        let t = desired(&[web()], &[Arc::new(other)], &ANY);
        assert!(t[&key("10.43.0.10", 80, Protocol::Tcp)]
            .backends
            .addrs
            .is_empty());
    }
}
