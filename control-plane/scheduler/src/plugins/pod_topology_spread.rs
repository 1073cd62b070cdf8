//! PodTopologySpread: `whenUnsatisfiable: DoNotSchedule` constraints filter (the skew
//! a placement would create must not exceed `maxSkew`); `ScheduleAnyway` ones score
//! (fewer matching pods in a node's domain is better), as upstream's plugin does.

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::TopologySpreadConstraint;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use crate::cache::{Cache, NodeInfo};
use crate::framework::{
    state, FilterPlugin, PreFilter, PreScore, Rejection, ScorePlugin, State, MAX_NODE_SCORE,
};
use crate::labels::{selector_matches, tolerates};
use crate::plugins::node_affinity::required_matches;
use crate::pod_info::PodInfo;

pub const ERR_CONSTRAINTS: &str = "node(s) didn't match pod topology spread constraints";
pub const ERR_MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

pub struct PodTopologySpread;

struct Constraint {
    max_skew: i64,
    key: String,
    /// `None` (no labelSelector) selects no pods, as upstream.
    selector: Option<LabelSelector>,
    min_domains: usize,
    honor_affinity: bool,
    honor_taints: bool,
    self_match: i64,
}

fn constraints(pod: &PodInfo, hard: bool) -> Vec<Constraint> {
    let want = if hard {
        "DoNotSchedule"
    } else {
        "ScheduleAnyway"
    };
    pod.topology_spread
        .iter()
        .filter(|c| c.when_unsatisfiable == want)
        .map(|c: &TopologySpreadConstraint| {
            let mut selector = c.label_selector.clone();
            // matchLabelKeys: the incoming pod's values for those keys join the selector.
            for k in c.match_label_keys.iter().flatten() {
                let Some(selector) = selector.as_mut() else {
                    break;
                };
                if let Some(v) = pod.labels().get(k) {
                    selector
                        .match_expressions
                        .get_or_insert_with(Vec::new)
                        .push(LabelSelectorRequirement {
                            key: k.clone(),
                            operator: "In".into(),
                            values: Some(vec![v.clone()]),
                        });
                }
            }
            let self_match = i64::from(
                selector
                    .as_ref()
                    .is_some_and(|s| selector_matches(s, pod.labels())),
            );
            Constraint {
                max_skew: c.max_skew as i64,
                key: c.topology_key.clone(),
                selector,
                min_domains: c.min_domains.unwrap_or(1).max(1) as usize,
                honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
                honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
                self_match,
            }
        })
        .collect()
}

/// Does this node take part in counting for the constraints (inclusion policies, and
/// it carries every topology key)?
fn node_counts(pod: &PodInfo, cs: &[Constraint], node: &NodeInfo) -> bool {
    let labels = node.labels();
    if !cs.iter().all(|c| labels.contains_key(&c.key)) {
        return false;
    }
    if cs.iter().any(|c| c.honor_affinity) && !required_matches(pod, node) {
        return false;
    }
    if cs.iter().any(|c| c.honor_taints) {
        let untolerated = node.taints.iter().any(|t| {
            (t.effect == "NoSchedule" || t.effect == "NoExecute")
                && !pod.tolerations.iter().any(|tol| tolerates(tol, t))
        });
        if untolerated {
            return false;
        }
    }
    true
}

fn matching_pods(pod: &PodInfo, c: &Constraint, node: &NodeInfo) -> i64 {
    let Some(sel) = &c.selector else {
        return 0;
    };
    node.pods
        .iter()
        .filter(|p| {
            p.namespace == pod.namespace && !p.terminating() && selector_matches(sel, p.labels())
        })
        .count() as i64
}

/// Per constraint: matching pods per domain value.
fn count(pod: &PodInfo, cs: &[Constraint], cache: &Cache) -> Vec<HashMap<String, i64>> {
    let mut counts = vec![HashMap::new(); cs.len()];
    for node in cache.nodes().iter().filter(|n| n.node.is_some()) {
        if !node_counts(pod, cs, node) {
            continue;
        }
        for (i, c) in cs.iter().enumerate() {
            let v = node.labels()[&c.key].clone();
            *counts[i].entry(v).or_insert(0) += matching_pods(pod, c, node);
        }
    }
    counts
}

struct FilterState {
    cs: Vec<Constraint>,
    counts: Vec<HashMap<String, i64>>,
    min: Vec<i64>,
}

impl FilterPlugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }
    fn pre_filter(&self, pod: &PodInfo, cache: &Cache) -> PreFilter {
        let cs = constraints(pod, true);
        if cs.is_empty() {
            return PreFilter::Skip;
        }
        let counts = count(pod, &cs, cache);
        let min = cs
            .iter()
            .zip(&counts)
            .map(|(c, m)| {
                if m.len() < c.min_domains {
                    0
                } else {
                    m.values().copied().min().unwrap_or(0)
                }
            })
            .collect();
        PreFilter::with_state(FilterState { cs, counts, min })
    }
    fn filter(&self, _: &PodInfo, st: &State, node: &NodeInfo) -> Option<Rejection> {
        let st = state::<FilterState>(st)?;
        let labels = node.labels();
        for (i, c) in st.cs.iter().enumerate() {
            let Some(v) = labels.get(&c.key) else {
                return Some(Rejection::unresolvable(ERR_MISSING_LABEL));
            };
            let matched = st.counts[i].get(v).copied().unwrap_or(0);
            if matched + c.self_match - st.min[i] > c.max_skew {
                return Some(Rejection::unschedulable(ERR_CONSTRAINTS));
            }
        }
        None
    }
}

/// A node without every soft constraint's key gets this raw score and 0 after
/// normalization (upstream's IgnoredNodes).
const IGNORED: i64 = i64::MIN;

struct ScoreState {
    cs: Vec<Constraint>,
    counts: Vec<HashMap<String, i64>>,
    weights: Vec<f64>,
}

impl ScorePlugin for PodTopologySpread {
    fn name(&self) -> &'static str {
        "PodTopologySpread"
    }
    fn pre_score(&self, pod: &PodInfo, cache: &Cache, feasible: &[&NodeInfo]) -> PreScore {
        let cs = constraints(pod, false);
        if cs.is_empty() {
            return PreScore::Skip;
        }
        let scored: Vec<&&NodeInfo> = feasible
            .iter()
            .filter(|n| cs.iter().all(|c| n.labels().contains_key(&c.key)))
            .collect();
        let weights = cs
            .iter()
            .map(|c| {
                let size = if c.key == "kubernetes.io/hostname" {
                    scored.len()
                } else {
                    scored
                        .iter()
                        .map(|n| &n.labels()[&c.key])
                        .collect::<HashSet<_>>()
                        .len()
                };
                ((size + 2) as f64).ln()
            })
            .collect();
        let counts = count(pod, &cs, cache);
        PreScore::Run(Some(Box::new(ScoreState {
            cs,
            counts,
            weights,
        })))
    }
    fn score(&self, _: &PodInfo, st: &State, node: &NodeInfo) -> i64 {
        let Some(st) = state::<ScoreState>(st) else {
            return 0;
        };
        let labels = node.labels();
        let mut score = 0.0;
        for (i, c) in st.cs.iter().enumerate() {
            let Some(v) = labels.get(&c.key) else {
                return IGNORED;
            };
            let cnt = st.counts[i].get(v).copied().unwrap_or(0);
            score += cnt as f64 * st.weights[i] + (c.max_skew - 1) as f64;
        }
        score.round() as i64
    }
    fn normalize(&self, _: &State, scores: &mut [i64]) {
        let live = scores.iter().copied().filter(|s| *s != IGNORED);
        let (min, max) = live.fold((i64::MAX, i64::MIN), |(a, b), s| (a.min(s), b.max(s)));
        for s in scores.iter_mut() {
            *s = if *s == IGNORED {
                0
            } else if max == 0 {
                MAX_NODE_SCORE
            } else {
                MAX_NODE_SCORE * (max + min - *s) / max
            };
        }
    }
}
