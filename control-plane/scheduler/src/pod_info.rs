//! A pod parsed once for the plugins: its requests, host ports, affinity terms, and —
//! for the pod being scheduled — its RuntimeClass's scheduling constraints merged in
//! (upstream's RuntimeClass admission merges them into the pod; Kelp's API server does
//! not, so the scheduler applies them itself).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    NodeSelector, Pod, PodAffinityTerm, PreferredSchedulingTerm, Toleration,
    TopologySpreadConstraint,
};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use crate::labels::{labels_of, selector_matches, Labels};
use crate::resources::{pod_requests, PodRequests};

/// A pod affinity/anti-affinity term with its namespaces resolved.
#[derive(Debug, Clone)]
pub struct AffinityTerm {
    /// `None`: the term selects no pods (a nil labelSelector, as upstream).
    pub selector: Option<LabelSelector>,
    pub namespaces: Vec<String>,
    /// `Some(empty)` selects every namespace.
    pub namespace_selector: Option<LabelSelector>,
    pub topology_key: String,
    pub weight: i64,
}

impl AffinityTerm {
    fn new(t: &PodAffinityTerm, owner: &Pod, weight: i64) -> AffinityTerm {
        let own_ns = owner.metadata.namespace.clone().unwrap_or_default();
        let mut namespaces = t.namespaces.clone().unwrap_or_default();
        if namespaces.is_empty() && t.namespace_selector.is_none() {
            namespaces.push(own_ns);
        }
        // matchLabelKeys / mismatchLabelKeys: the owner's values join the selector.
        let mut selector = t.label_selector.clone();
        let owner_labels = labels_of(owner.metadata.labels.as_ref());
        if let Some(sel) = selector.as_mut() {
            for (keys, op) in [
                (&t.match_label_keys, "In"),
                (&t.mismatch_label_keys, "NotIn"),
            ] {
                for k in keys.iter().flatten() {
                    if let Some(v) = owner_labels.get(k) {
                        sel.match_expressions.get_or_insert_with(Vec::new).push(
                            LabelSelectorRequirement {
                                key: k.clone(),
                                operator: op.into(),
                                values: Some(vec![v.clone()]),
                            },
                        );
                    }
                }
            }
        }
        AffinityTerm {
            selector,
            namespaces,
            namespace_selector: t.namespace_selector.clone(),
            topology_key: t.topology_key.clone(),
            weight,
        }
    }

    /// Does the term select `pod` (namespace and labels)?
    pub fn matches(&self, pod: &PodInfo, ns_labels: &BTreeMap<String, Labels>) -> bool {
        let Some(sel) = &self.selector else {
            return false;
        };
        let ns_ok = self.namespaces.contains(&pod.namespace)
            || self
                .namespace_selector
                .as_ref()
                .is_some_and(|s| selector_matches(s, labels_of(ns_labels.get(&pod.namespace))));
        ns_ok && selector_matches(sel, pod.labels())
    }
}

/// A host port a pod takes on its node (protocol, host IP, port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub protocol: String,
    pub ip: String,
    pub port: i32,
}

impl HostPort {
    /// Upstream's `HostPortInfo` conflict: same protocol and port, and the same IP or
    /// either is the wildcard.
    pub fn conflicts(&self, o: &HostPort) -> bool {
        let wild = |ip: &str| ip.is_empty() || ip == "0.0.0.0" || ip == "::";
        self.protocol == o.protocol
            && self.port == o.port
            && (self.ip == o.ip || wild(&self.ip) || wild(&o.ip))
    }
}

/// What a RuntimeClass demands of a node.
#[derive(Debug, Clone, Default)]
pub struct RuntimeClassInfo {
    pub name: String,
    pub handler: String,
    pub node_selector: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct PodInfo {
    pub pod: Arc<Pod>,
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub requests: PodRequests,
    pub host_ports: Vec<HostPort>,
    pub required_affinity: Vec<AffinityTerm>,
    pub required_anti_affinity: Vec<AffinityTerm>,
    pub preferred_affinity: Vec<AffinityTerm>,
    pub preferred_anti_affinity: Vec<AffinityTerm>,
    /// The pod's tolerations plus its RuntimeClass's.
    pub tolerations: Vec<Toleration>,
    /// `spec.nodeSelector` (plus the RuntimeClass's node selector).
    pub node_selector: BTreeMap<String, String>,
    pub required_node_affinity: Option<NodeSelector>,
    pub preferred_node_affinity: Vec<PreferredSchedulingTerm>,
    pub topology_spread: Vec<TopologySpreadConstraint>,
    /// The RuntimeClass it names, `Err(name)` when that RuntimeClass does not exist.
    pub runtime_class: Option<Result<RuntimeClassInfo, String>>,
    /// For a pod naming no RuntimeClass: the runtime handlers its images need (see
    /// `images`); empty when that is unknown or does not matter.
    pub image_handlers: Vec<String>,
    pub priority: i32,
}

impl PodInfo {
    /// `runtime_classes` resolves `spec.runtimeClassName` (only needed for the pod
    /// being scheduled; pass `None` for pods already on nodes).
    pub fn new(pod: Arc<Pod>, runtime_classes: Option<&BTreeMap<String, RuntimeClass>>) -> Self {
        static NO_SPEC: std::sync::OnceLock<k8s_openapi::api::core::v1::PodSpec> =
            std::sync::OnceLock::new();
        let spec = pod
            .spec
            .as_ref()
            .unwrap_or_else(|| NO_SPEC.get_or_init(Default::default));
        let mut host_ports = Vec::new();
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            for p in c.ports.iter().flatten() {
                if let Some(hp) = p.host_port.filter(|p| *p > 0) {
                    host_ports.push(HostPort {
                        protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                        ip: p.host_ip.clone().unwrap_or_default(),
                        port: hp,
                    });
                }
            }
        }
        let aff = spec.affinity.as_ref();
        let pa = aff.and_then(|a| a.pod_affinity.as_ref());
        let paa = aff.and_then(|a| a.pod_anti_affinity.as_ref());
        let na = aff.and_then(|a| a.node_affinity.as_ref());
        let required = |ts: Option<&Vec<PodAffinityTerm>>| {
            ts.into_iter()
                .flatten()
                .map(|t| AffinityTerm::new(t, &pod, 1))
                .collect::<Vec<_>>()
        };
        let preferred = |ts: Option<&Vec<k8s_openapi::api::core::v1::WeightedPodAffinityTerm>>| {
            ts.into_iter()
                .flatten()
                .map(|w| AffinityTerm::new(&w.pod_affinity_term, &pod, w.weight as i64))
                .collect::<Vec<_>>()
        };
        let required_affinity = required(pa.and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        }));
        let required_anti_affinity = required(paa.and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        }));
        let preferred_affinity = preferred(pa.and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        }));
        let preferred_anti_affinity = preferred(paa.and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        }));
        let mut tolerations = spec.tolerations.clone().unwrap_or_default();
        let mut node_selector = spec.node_selector.clone().unwrap_or_default();
        let runtime_class = match (spec.runtime_class_name.as_deref(), runtime_classes) {
            (Some(name), Some(rcs)) if !name.is_empty() => Some(match rcs.get(name) {
                Some(rc) => {
                    let sched = rc.scheduling.clone().unwrap_or_default();
                    let rc_selector = sched.node_selector.unwrap_or_default();
                    for (k, v) in &rc_selector {
                        node_selector.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                    tolerations.extend(sched.tolerations.unwrap_or_default());
                    Ok(RuntimeClassInfo {
                        name: name.to_string(),
                        handler: rc.handler.clone(),
                        node_selector: rc_selector,
                    })
                }
                None => Err(name.to_string()),
            }),
            _ => None,
        };
        let required_node_affinity = na.and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .clone()
        });
        let preferred_node_affinity = na
            .and_then(|n| {
                n.preferred_during_scheduling_ignored_during_execution
                    .clone()
            })
            .unwrap_or_default();
        let topology_spread = spec.topology_spread_constraints.clone().unwrap_or_default();
        let priority = spec.priority.unwrap_or(0);
        let requests = pod_requests(&pod);
        PodInfo {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            requests,
            host_ports,
            required_affinity,
            required_anti_affinity,
            preferred_affinity,
            preferred_anti_affinity,
            tolerations,
            node_selector,
            required_node_affinity,
            preferred_node_affinity,
            topology_spread,
            runtime_class,
            image_handlers: Vec::new(),
            priority,
            pod,
        }
    }

    pub fn labels(&self) -> &Labels {
        labels_of(self.pod.metadata.labels.as_ref())
    }

    pub fn has_affinity(&self) -> bool {
        !(self.required_affinity.is_empty()
            && self.required_anti_affinity.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti_affinity.is_empty())
    }

    pub fn terminating(&self) -> bool {
        self.pod.metadata.deletion_timestamp.is_some()
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}
