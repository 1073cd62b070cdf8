//! The default profile's plugins, each a small module, and the profile itself.

pub mod image_locality;
pub mod inter_pod_affinity;
pub mod node_affinity;
pub mod node_basics;
pub mod node_resources;
pub mod pod_topology_spread;
pub mod runtime_class;
pub mod taint_toleration;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use crate::framework::{FilterPlugin, Framework, ScorePlugin};

/// Upstream's default plugin order and score weights (plus Kelp's RuntimeClass filter).
pub fn default_framework() -> Framework {
    let filters: Vec<Arc<dyn FilterPlugin>> = vec![
        Arc::new(node_basics::NodeUnschedulable),
        Arc::new(node_basics::NodeName),
        Arc::new(taint_toleration::TaintToleration),
        Arc::new(node_affinity::NodeAffinity),
        Arc::new(runtime_class::RuntimeClassFilter),
        Arc::new(node_basics::NodePorts),
        Arc::new(node_resources::NodeResourcesFit),
        Arc::new(pod_topology_spread::PodTopologySpread),
        Arc::new(inter_pod_affinity::InterPodAffinity),
    ];
    let scores: Vec<(Arc<dyn ScorePlugin>, i64)> = vec![
        (Arc::new(taint_toleration::TaintToleration), 3),
        (Arc::new(node_affinity::NodeAffinity), 2),
        (Arc::new(node_resources::LeastAllocated), 1),
        (Arc::new(pod_topology_spread::PodTopologySpread), 2),
        (Arc::new(inter_pod_affinity::InterPodAffinity), 2),
        (Arc::new(node_resources::BalancedAllocation), 1),
        (Arc::new(image_locality::ImageLocality), 1),
    ];
    Framework::new(filters, scores)
}
