//! The one-line node checks: NodeName, NodeUnschedulable, NodePorts.

use k8s_openapi::api::core::v1::Taint;

use crate::cache::NodeInfo;
use crate::framework::{FilterPlugin, PreFilter, Rejection, State};
use crate::labels::tolerated;
use crate::pod_info::PodInfo;

/// `spec.nodeName`, when the pod names a node but is not bound yet (kubectl
/// `--overrides`, some controllers): only that node.
pub struct NodeName;

pub const ERR_NODE_NAME: &str = "node(s) didn't match the requested node name";

impl FilterPlugin for NodeName {
    fn name(&self) -> &'static str {
        "NodeName"
    }
    fn pre_filter(&self, pod: &PodInfo, _: &crate::cache::Cache) -> PreFilter {
        match pod.pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            Some(n) if !n.is_empty() => PreFilter::run(),
            _ => PreFilter::Skip,
        }
    }
    fn filter(&self, pod: &PodInfo, _: &State, node: &NodeInfo) -> Option<Rejection> {
        let want = pod.pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        match want {
            Some(n) if !n.is_empty() && n != node.name => {
                Some(Rejection::unresolvable(ERR_NODE_NAME))
            }
            _ => None,
        }
    }
}

/// `spec.unschedulable` (kubectl cordon), unless the pod tolerates the
/// `node.kubernetes.io/unschedulable:NoSchedule` taint that stands for it.
pub struct NodeUnschedulable;

pub const ERR_UNSCHEDULABLE: &str = "node(s) were unschedulable";
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

impl FilterPlugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }
    fn filter(&self, pod: &PodInfo, _: &State, node: &NodeInfo) -> Option<Rejection> {
        if !node.unschedulable {
            return None;
        }
        let taint = Taint {
            key: TAINT_UNSCHEDULABLE.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        (!tolerated(&pod.tolerations, &taint)).then(|| Rejection::unresolvable(ERR_UNSCHEDULABLE))
    }
}

/// Host ports: a pod asking for a host port fits only where no pod holds it.
pub struct NodePorts;

pub const ERR_NODE_PORTS: &str = "node(s) didn't have free ports for the requested pod ports";

impl FilterPlugin for NodePorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }
    fn pre_filter(&self, pod: &PodInfo, _: &crate::cache::Cache) -> PreFilter {
        if pod.host_ports.is_empty() {
            PreFilter::Skip
        } else {
            PreFilter::run()
        }
    }
    fn filter(&self, pod: &PodInfo, _: &State, node: &NodeInfo) -> Option<Rejection> {
        let clash = pod
            .host_ports
            .iter()
            .any(|p| node.used_ports.iter().any(|u| u.conflicts(p)));
        clash.then(|| Rejection::unschedulable(ERR_NODE_PORTS))
    }
}
