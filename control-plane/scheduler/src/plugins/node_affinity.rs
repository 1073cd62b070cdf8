//! NodeAffinity: `spec.nodeSelector` and required node affinity filter (including
//! `matchFields` on `metadata.name`, which narrows the search to the named nodes as
//! DaemonSet pods need); preferred terms score by their weights.

use std::collections::HashSet;

use crate::cache::{Cache, NodeInfo};
use crate::framework::{
    default_normalize, FilterPlugin, PreFilter, PreScore, Rejection, ScorePlugin, State,
    MAX_NODE_SCORE,
};
use crate::labels::{node_selector_matches, term_matches};
use crate::pod_info::PodInfo;

pub struct NodeAffinity;

pub const ERR_NODE_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";

/// Does the node satisfy the pod's nodeSelector and required node affinity?
pub fn required_matches(pod: &PodInfo, node: &NodeInfo) -> bool {
    let labels = node.labels();
    pod.node_selector
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
        && pod
            .required_node_affinity
            .as_ref()
            .is_none_or(|s| node_selector_matches(s, &node.name, labels))
}

/// Node names a required affinity restricts the pod to: when every term has a
/// `metadata.name In` field requirement, only those names can match.
fn named_nodes(pod: &PodInfo) -> Option<HashSet<String>> {
    let terms = &pod.required_node_affinity.as_ref()?.node_selector_terms;
    let mut names = HashSet::new();
    for t in terms {
        let r = t
            .match_fields
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .find(|r| r.key == "metadata.name" && r.operator == "In")?;
        names.extend(r.values.iter().flatten().cloned());
    }
    (!terms.is_empty()).then_some(names)
}

impl FilterPlugin for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }
    fn pre_filter(&self, pod: &PodInfo, _: &Cache) -> PreFilter {
        if pod.node_selector.is_empty() && pod.required_node_affinity.is_none() {
            return PreFilter::Skip;
        }
        PreFilter::Run {
            state: None,
            nodes: named_nodes(pod),
        }
    }
    fn filter(&self, pod: &PodInfo, _: &State, node: &NodeInfo) -> Option<Rejection> {
        (!required_matches(pod, node)).then(|| Rejection::unresolvable(ERR_NODE_AFFINITY))
    }
}

impl ScorePlugin for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }
    fn pre_score(&self, pod: &PodInfo, _: &Cache, _: &[&NodeInfo]) -> PreScore {
        if pod.preferred_node_affinity.is_empty() {
            PreScore::Skip
        } else {
            PreScore::Run(None)
        }
    }
    fn score(&self, pod: &PodInfo, _: &State, node: &NodeInfo) -> i64 {
        pod.preferred_node_affinity
            .iter()
            .filter(|p| p.weight != 0 && term_matches(&p.preference, &node.name, node.labels()))
            .map(|p| p.weight as i64)
            .sum()
    }
    fn normalize(&self, _: &State, scores: &mut [i64]) {
        default_normalize(MAX_NODE_SCORE, false, scores);
    }
}
