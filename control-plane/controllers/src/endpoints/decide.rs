//! What a Service's endpoints are (upstream `pkg/controller/endpointslice` and
//! `pkg/controller/endpoint`), pure: pods selected by the Service, their target
//! ports resolved (by number, or by container port name), grouped by identical port
//! sets, packed into EndpointSlices of at most 100 endpoints and into the legacy
//! Endpoints' subsets.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, ObjectReference, Pod, Service,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort as SlicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::util::{is_pod_ready, map_selector_matches, phase};

pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
pub const SLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";

/// One service port resolved for one pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResolvedPort {
    pub name: Option<String>,
    pub port: i32,
    pub protocol: String,
    pub app_protocol: Option<String>,
}

/// A selected pod as an endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct PodEndpoint {
    pub ip: String,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<String>,
    pub target: ObjectReference,
}

/// The service's pods grouped by their resolved port set (ordered for stable output).
pub type Groups = BTreeMap<Vec<ResolvedPort>, Vec<PodEndpoint>>;

/// Resolves the service's ports for `pod`; a named target port the pod does not
/// declare leaves that port out (upstream `podutil.FindPort`).
pub fn resolve_ports(svc: &Service, pod: &Pod) -> Vec<ResolvedPort> {
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let mut out = Vec::new();
    for sp in ports {
        let protocol = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
        let number = match sp.target_port.clone() {
            None => Some(sp.port),
            Some(IntOrString::Int(i)) => Some(i),
            Some(IntOrString::String(name)) => match name.parse::<i32>() {
                Ok(n) => Some(n),
                Err(_) => pod
                    .spec
                    .iter()
                    .flat_map(|s| s.containers.iter())
                    .flat_map(|c| c.ports.iter().flatten())
                    .find(|cp| {
                        cp.name.as_deref() == Some(name.as_str())
                            && cp.protocol.as_deref().unwrap_or("TCP") == protocol
                    })
                    .map(|cp| cp.container_port),
            },
        };
        if let Some(port) = number {
            out.push(ResolvedPort {
                name: sp.name.clone(),
                port,
                protocol,
                app_protocol: sp.app_protocol.clone(),
            });
        }
    }
    out.sort();
    out
}

/// The pods a service selects, as endpoints grouped by port set. Services without a
/// selector are not ours (`None`).
pub fn desired(svc: &Service, pods: &[&Pod]) -> Option<Groups> {
    let selector = svc
        .spec
        .as_ref()?
        .selector
        .clone()
        .filter(|s| !s.is_empty())?;
    let publish_not_ready = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let ns = svc.metadata.namespace.clone();
    let mut groups = Groups::new();
    for pod in pods {
        if pod.metadata.namespace != ns {
            continue;
        }
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        if !map_selector_matches(&selector, &labels) {
            continue;
        }
        if matches!(phase(pod), "Succeeded" | "Failed") {
            continue;
        }
        let Some(ip) = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty())
        else {
            continue;
        };
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let serving = is_pod_ready(pod) || publish_not_ready;
        let ep = PodEndpoint {
            ip,
            ready: serving && !terminating,
            serving,
            terminating,
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target: ObjectReference {
                kind: Some("Pod".into()),
                namespace: pod.metadata.namespace.clone(),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            },
        };
        groups.entry(resolve_ports(svc, pod)).or_default().push(ep);
    }
    for eps in groups.values_mut() {
        eps.sort_by(|a, b| a.target.name.cmp(&b.target.name));
    }
    Some(groups)
}

/// The slices' contents: (ports, endpoints), each at most 100 endpoints. A service
/// with no pods still gets one empty slice (upstream keeps a placeholder).
pub fn slices(groups: &Groups) -> Vec<(Vec<SlicePort>, Vec<Endpoint>)> {
    let mut out = Vec::new();
    for (ports, eps) in groups {
        let sports: Vec<SlicePort> = ports
            .iter()
            .map(|p| SlicePort {
                name: Some(p.name.clone().unwrap_or_default()),
                port: Some(p.port),
                protocol: Some(p.protocol.clone()),
                app_protocol: p.app_protocol.clone(),
            })
            .collect();
        for chunk in eps.chunks(MAX_ENDPOINTS_PER_SLICE) {
            let endpoints = chunk
                .iter()
                .map(|e| Endpoint {
                    addresses: vec![e.ip.clone()],
                    conditions: Some(EndpointConditions {
                        ready: Some(e.ready),
                        serving: Some(e.serving),
                        terminating: Some(e.terminating),
                    }),
                    node_name: e.node_name.clone(),
                    target_ref: Some(e.target.clone()),
                    ..Default::default()
                })
                .collect();
            out.push((sports.clone(), endpoints));
        }
    }
    if out.is_empty() {
        out.push((Vec::new(), Vec::new()));
    }
    out
}

/// The legacy Endpoints' subsets: ready pods in `addresses`, the others in
/// `notReadyAddresses`; terminating pods are left out unless the service publishes
/// not-ready addresses.
pub fn subsets(svc: &Service, groups: &Groups) -> Vec<EndpointSubset> {
    let publish_not_ready = svc
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let mut out = Vec::new();
    for (ports, eps) in groups {
        if ports.is_empty() {
            continue;
        }
        let addr = |e: &PodEndpoint| EndpointAddress {
            ip: e.ip.clone(),
            node_name: e.node_name.clone(),
            target_ref: Some(e.target.clone()),
            hostname: None,
        };
        let ready: Vec<EndpointAddress> = eps
            .iter()
            .filter(|e| e.ready || (publish_not_ready && e.serving))
            .map(addr)
            .collect();
        let not_ready: Vec<EndpointAddress> = eps
            .iter()
            .filter(|e| !(e.ready || e.terminating || (publish_not_ready && e.serving)))
            .map(addr)
            .collect();
        if ready.is_empty() && not_ready.is_empty() {
            continue;
        }
        out.push(EndpointSubset {
            addresses: (!ready.is_empty()).then_some(ready),
            not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
            ports: Some(
                ports
                    .iter()
                    .map(|p| EndpointPort {
                        name: p.name.clone(),
                        port: p.port,
                        protocol: Some(p.protocol.clone()),
                        app_protocol: p.app_protocol.clone(),
                    })
                    .collect(),
            ),
        });
    }
    out
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
