//! InterPodAffinity: required pod affinity/anti-affinity of the incoming pod, and the
//! required anti-affinity of pods already placed, filter; preferred terms (both ways)
//! and existing pods' required affinity (hard weight 1) score, per topology domain.

use std::collections::HashMap;

use crate::cache::{Cache, NodeInfo};
use crate::framework::{
    state, FilterPlugin, PreFilter, PreScore, Rejection, ScorePlugin, State, MAX_NODE_SCORE,
};
use crate::pod_info::PodInfo;

pub const ERR_AFFINITY: &str = "node(s) didn't match pod affinity rules";
pub const ERR_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
pub const ERR_EXISTING_ANTI_AFFINITY: &str =
    "node(s) didn't satisfy existing pods anti-affinity rules";
/// Weight of an existing pod's required affinity term in scoring (upstream's
/// default `hardPodAffinityWeight`).
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

pub struct InterPodAffinity;

type Pair = (String, String);

#[derive(Default)]
struct FilterState {
    existing_anti: HashMap<Pair, i64>,
    affinity: HashMap<Pair, i64>,
    anti: HashMap<Pair, i64>,
}

fn live_nodes(cache: &Cache) -> impl Iterator<Item = &NodeInfo> {
    cache.nodes().iter().filter(|n| n.node.is_some())
}

impl FilterPlugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
    }
    fn pre_filter(&self, pod: &PodInfo, cache: &Cache) -> PreFilter {
        let incoming = !pod.required_affinity.is_empty() || !pod.required_anti_affinity.is_empty();
        if !incoming && cache.pods_with_required_anti_affinity == 0 {
            return PreFilter::Skip;
        }
        let ns = &cache.namespace_labels;
        let mut st = FilterState::default();
        for node in live_nodes(cache) {
            let labels = node.labels();
            if node.pods_with_required_anti_affinity > 0 {
                for p in node
                    .pods
                    .iter()
                    .filter(|p| !p.required_anti_affinity.is_empty())
                {
                    for t in &p.required_anti_affinity {
                        if let Some(v) = labels.get(&t.topology_key) {
                            if t.matches(pod, ns) {
                                *st.existing_anti
                                    .entry((t.topology_key.clone(), v.clone()))
                                    .or_default() += 1;
                            }
                        }
                    }
                }
            }
            if !incoming {
                continue;
            }
            for p in &node.pods {
                // Affinity counts only pods matching every term (upstream).
                if !pod.required_affinity.is_empty()
                    && pod.required_affinity.iter().all(|t| t.matches(p, ns))
                {
                    for t in &pod.required_affinity {
                        if let Some(v) = labels.get(&t.topology_key) {
                            *st.affinity
                                .entry((t.topology_key.clone(), v.clone()))
                                .or_default() += 1;
                        }
                    }
                }
                for t in &pod.required_anti_affinity {
                    if let Some(v) = labels.get(&t.topology_key) {
                        if t.matches(p, ns) {
                            *st.anti
                                .entry((t.topology_key.clone(), v.clone()))
                                .or_default() += 1;
                        }
                    }
                }
            }
        }
        // The first pod of a group that selects itself may go anywhere its terms'
        // topology keys exist.
        let self_match = !pod.required_affinity.is_empty()
            && pod.required_affinity.iter().all(|t| t.matches(pod, ns));
        PreFilter::with_state((st, self_match))
    }
    fn filter(&self, pod: &PodInfo, st: &State, node: &NodeInfo) -> Option<Rejection> {
        let (st, self_match) = state::<(FilterState, bool)>(st)?;
        let labels = node.labels();
        if !pod.required_affinity.is_empty() {
            let mut pods_exist = true;
            let mut labels_exist = true;
            for t in &pod.required_affinity {
                match labels.get(&t.topology_key) {
                    Some(v) => {
                        if st
                            .affinity
                            .get(&(t.topology_key.clone(), v.clone()))
                            .copied()
                            .unwrap_or(0)
                            <= 0
                        {
                            pods_exist = false;
                        }
                    }
                    None => labels_exist = false,
                }
            }
            let ok = labels_exist && (pods_exist || (st.affinity.is_empty() && *self_match));
            if !ok {
                return Some(Rejection::unresolvable(ERR_AFFINITY));
            }
        }
        for t in &pod.required_anti_affinity {
            if let Some(v) = labels.get(&t.topology_key) {
                if st
                    .anti
                    .get(&(t.topology_key.clone(), v.clone()))
                    .copied()
                    .unwrap_or(0)
                    > 0
                {
                    return Some(Rejection::unschedulable(ERR_ANTI_AFFINITY));
                }
            }
        }
        if !st.existing_anti.is_empty() {
            for (k, v) in labels {
                if st
                    .existing_anti
                    .get(&(k.clone(), v.clone()))
                    .copied()
                    .unwrap_or(0)
                    > 0
                {
                    return Some(Rejection::unschedulable(ERR_EXISTING_ANTI_AFFINITY));
                }
            }
        }
        None
    }
}

impl ScorePlugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        "InterPodAffinity"
    }
    fn pre_score(&self, pod: &PodInfo, cache: &Cache, _: &[&NodeInfo]) -> PreScore {
        let incoming =
            !pod.preferred_affinity.is_empty() || !pod.preferred_anti_affinity.is_empty();
        let any_existing = live_nodes(cache).any(|n| n.pods_with_affinity > 0);
        if !incoming && !any_existing {
            return PreScore::Skip;
        }
        let ns = &cache.namespace_labels;
        let mut topo: HashMap<Pair, i64> = HashMap::new();
        for node in live_nodes(cache) {
            if !incoming && node.pods_with_affinity == 0 {
                continue;
            }
            let labels = node.labels();
            let mut add = |key: &str, w: i64| {
                if let Some(v) = labels.get(key) {
                    *topo.entry((key.to_string(), v.clone())).or_default() += w;
                }
            };
            for p in &node.pods {
                for t in &pod.preferred_affinity {
                    if t.matches(p, ns) {
                        add(&t.topology_key, t.weight);
                    }
                }
                for t in &pod.preferred_anti_affinity {
                    if t.matches(p, ns) {
                        add(&t.topology_key, -t.weight);
                    }
                }
                for t in &p.required_affinity {
                    if t.matches(pod, ns) {
                        add(&t.topology_key, HARD_POD_AFFINITY_WEIGHT);
                    }
                }
                for t in &p.preferred_affinity {
                    if t.matches(pod, ns) {
                        add(&t.topology_key, t.weight);
                    }
                }
                for t in &p.preferred_anti_affinity {
                    if t.matches(pod, ns) {
                        add(&t.topology_key, -t.weight);
                    }
                }
            }
        }
        if topo.is_empty() {
            return PreScore::Skip;
        }
        PreScore::Run(Some(Box::new(topo)))
    }
    fn score(&self, _: &PodInfo, st: &State, node: &NodeInfo) -> i64 {
        let Some(topo) = state::<HashMap<Pair, i64>>(st) else {
            return 0;
        };
        let labels = node.labels();
        topo.iter()
            .filter(|((k, v), _)| labels.get(k) == Some(v))
            .map(|(_, w)| *w)
            .sum()
    }
    fn normalize(&self, _: &State, scores: &mut [i64]) {
        let min = scores.iter().copied().min().unwrap_or(0);
        let max = scores.iter().copied().max().unwrap_or(0);
        let diff = max - min;
        for s in scores.iter_mut() {
            *s = if diff > 0 {
                (MAX_NODE_SCORE as f64 * ((*s - min) as f64 / diff as f64)) as i64
            } else {
                0
            };
        }
    }
}
