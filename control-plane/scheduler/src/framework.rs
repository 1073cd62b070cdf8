//! The scheduling framework: small Filter and Score plugins run over the node cache
//! for one pod (upstream's `framework/interface.go` and `schedule_one.go`).
//!
//! Contracts:
//! * `FilterPlugin::pre_filter` runs once per pod. `Skip` means its `filter` cannot
//!   reject this pod; `Run` carries per-pod state (and may narrow the nodes worth
//!   looking at); `Reject` makes the pod unschedulable on every node.
//! * `FilterPlugin::filter` is a pure verdict for one node: `None` (fits) or a
//!   [`Rejection`] whose reasons appear verbatim in the `FailedScheduling` event.
//! * `ScorePlugin::score` returns a raw score for a feasible node; `normalize` maps
//!   the raw scores of all feasible nodes into `0..=MAX_NODE_SCORE`; the framework then
//!   multiplies by the plugin's weight and sums.

use std::any::Any;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use rand::Rng;

use crate::cache::{Cache, NodeInfo};
use crate::pod_info::PodInfo;

pub const MAX_NODE_SCORE: i64 = 100;

/// Per-pod plugin state, computed in `pre_filter`/`pre_score`.
pub type State = Option<Box<dyn Any + Send + Sync>>;

/// Downcasts a plugin's own state.
pub fn state<T: 'static>(s: &State) -> Option<&T> {
    s.as_ref().and_then(|b| b.downcast_ref::<T>())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Might fit after other pods are removed (preemption could help).
    Unschedulable,
    /// Cannot fit on this node whatever else happens on it.
    UnschedulableAndUnresolvable,
}

/// Why a node (or, from `pre_filter`, every node) cannot take the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: Code,
    pub reasons: Vec<String>,
}

impl Rejection {
    pub fn unschedulable(reason: impl Into<String>) -> Rejection {
        Rejection {
            code: Code::Unschedulable,
            reasons: vec![reason.into()],
        }
    }

    pub fn unresolvable(reason: impl Into<String>) -> Rejection {
        Rejection {
            code: Code::UnschedulableAndUnresolvable,
            reasons: vec![reason.into()],
        }
    }
}

pub enum PreFilter {
    Skip,
    Run {
        state: State,
        /// Only these nodes can fit (e.g. `matchFields metadata.name`).
        nodes: Option<HashSet<String>>,
    },
    Reject(Rejection),
}

impl PreFilter {
    pub fn run() -> PreFilter {
        PreFilter::Run {
            state: None,
            nodes: None,
        }
    }

    pub fn with_state<T: Any + Send + Sync>(s: T) -> PreFilter {
        PreFilter::Run {
            state: Some(Box::new(s)),
            nodes: None,
        }
    }
}

pub trait FilterPlugin: Send + Sync {
    fn name(&self) -> &'static str;
    fn pre_filter(&self, _pod: &PodInfo, _cache: &Cache) -> PreFilter {
        PreFilter::run()
    }
    fn filter(&self, pod: &PodInfo, state: &State, node: &NodeInfo) -> Option<Rejection>;
}

pub enum PreScore {
    Skip,
    Run(State),
}

pub trait ScorePlugin: Send + Sync {
    fn name(&self) -> &'static str;
    fn pre_score(&self, _pod: &PodInfo, _cache: &Cache, _feasible: &[&NodeInfo]) -> PreScore {
        PreScore::Run(None)
    }
    fn score(&self, pod: &PodInfo, state: &State, node: &NodeInfo) -> i64;
    fn normalize(&self, _state: &State, _scores: &mut [i64]) {}
}

/// Upstream's `DefaultNormalizeScore`: scale so the best raw score becomes
/// `max_priority` (or, `reverse`, the lowest does).
pub fn default_normalize(max_priority: i64, reverse: bool, scores: &mut [i64]) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = max_priority);
        }
        return;
    }
    for s in scores.iter_mut() {
        *s = max_priority * *s / max;
        if reverse {
            *s = max_priority - *s;
        }
    }
}

/// How many feasible nodes to find before scoring (upstream's adaptive
/// `percentageOfNodesToScore`): all below 100 nodes, else `50 - n/125` percent
/// (at least 5 %), and never fewer than 100.
pub fn num_feasible_nodes_to_find(num_all: usize) -> usize {
    const MIN: usize = 100;
    if num_all < MIN {
        return num_all;
    }
    let pct = (50 - (num_all / 125) as i64).max(5) as usize;
    (num_all * pct / 100).max(MIN)
}

/// Why a pod fits no node, phrased as upstream's `FitError`.
#[derive(Debug, Clone, Default)]
pub struct FitError {
    pub num_all_nodes: usize,
    /// Set when a PreFilter rejected the pod outright.
    pub pre_filter_msg: Option<String>,
    /// reason → number of nodes.
    pub reasons: BTreeMap<String, usize>,
    pub unresolvable_nodes: usize,
    pub resolvable_nodes: usize,
    /// Plugins that rejected the pod somewhere (which cluster events may help).
    pub plugins: HashSet<&'static str>,
    pub preemption_never: bool,
}

/// Upstream's `sortReasonsHistogram`: "COUNT REASON" strings, sorted as strings.
fn histogram<'a>(items: impl Iterator<Item = (&'a str, usize)>) -> String {
    let mut v: Vec<String> = items
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| format!("{n} {r}"))
        .collect();
    v.sort();
    v.join(", ")
}

impl FitError {
    /// `0/3 nodes are available: 1 node(s) had untolerated taint {k: v}, 2 Insufficient
    /// cpu. preemption: 0/3 nodes are available: …`
    pub fn message(&self) -> String {
        if self.num_all_nodes == 0 {
            return "no nodes available to schedule pods".into();
        }
        let n = self.num_all_nodes;
        let mut msg = format!("0/{n} nodes are available:");
        match &self.pre_filter_msg {
            Some(m) => msg.push_str(&format!(" {m}.")),
            None => msg.push_str(&format!(
                " {}.",
                histogram(self.reasons.iter().map(|(r, c)| (r.as_str(), *c)))
            )),
        }
        // Kelp does not preempt; the PostFilter verdict is what upstream's default
        // preemption reports when it finds no victims.
        if self.preemption_never {
            msg.push_str(" preemption: not eligible due to preemptionPolicy=Never.");
        } else {
            msg.push_str(&format!(
                " preemption: 0/{n} nodes are available: {}.",
                histogram(
                    [
                        (
                            "Preemption is not helpful for scheduling",
                            self.unresolvable_nodes
                        ),
                        (
                            "No preemption victims found for incoming pod",
                            self.resolvable_nodes
                        ),
                    ]
                    .into_iter()
                )
            ));
        }
        msg
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleResult {
    pub node: String,
    pub evaluated_nodes: usize,
    pub feasible_nodes: usize,
}

/// The configured plugins of one profile.
pub struct Framework {
    pub filters: Vec<Arc<dyn FilterPlugin>>,
    pub scores: Vec<(Arc<dyn ScorePlugin>, i64)>,
    /// Where the next search starts, so consecutive pods look at different nodes
    /// when only a sample is filtered.
    next_start: usize,
    /// Filter every node (tests, small clusters) instead of a sample.
    pub score_all_nodes: bool,
}

impl Framework {
    pub fn new(
        filters: Vec<Arc<dyn FilterPlugin>>,
        scores: Vec<(Arc<dyn ScorePlugin>, i64)>,
    ) -> Framework {
        Framework {
            filters,
            scores,
            next_start: 0,
            score_all_nodes: false,
        }
    }

    /// Picks a node for `pod`, or says why none fits.
    pub fn schedule(
        &mut self,
        pod: &PodInfo,
        cache: &Cache,
        rng: &mut impl Rng,
    ) -> Result<ScheduleResult, FitError> {
        let all = cache.node_count();
        let mut err = FitError {
            num_all_nodes: all,
            preemption_never: pod
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.preemption_policy.as_deref())
                == Some("Never"),
            ..Default::default()
        };
        if all == 0 {
            return Err(err);
        }

        // PreFilter.
        let mut active: Vec<(&Arc<dyn FilterPlugin>, State)> =
            Vec::with_capacity(self.filters.len());
        let mut only: Option<(HashSet<String>, &'static str)> = None;
        for f in &self.filters {
            match f.pre_filter(pod, cache) {
                PreFilter::Skip => {}
                PreFilter::Run { state, nodes } => {
                    if let Some(n) = nodes {
                        only = Some(match only {
                            None => (n, f.name()),
                            Some((prev, name)) => (prev.intersection(&n).cloned().collect(), name),
                        });
                    }
                    active.push((f, state));
                }
                PreFilter::Reject(r) => {
                    err.pre_filter_msg = Some(r.reasons.join(", "));
                    err.plugins.insert(f.name());
                    match r.code {
                        Code::Unschedulable => err.resolvable_nodes = all,
                        Code::UnschedulableAndUnresolvable => err.unresolvable_nodes = all,
                    }
                    return Err(err);
                }
            }
        }

        // Filter, over a rotating window of nodes.
        let want = if self.score_all_nodes || only.is_some() {
            all
        } else {
            num_feasible_nodes_to_find(all)
        };
        let nodes = cache.nodes();
        let n = nodes.len();
        let start = self.next_start % n.max(1);
        let mut feasible: Vec<&NodeInfo> = Vec::with_capacity(want.min(n));
        let mut processed = 0;
        let mut evaluated = 0;
        for k in 0..n {
            if feasible.len() >= want {
                break;
            }
            processed += 1;
            let node = &nodes[(start + k) % n];
            if node.node.is_none() {
                continue;
            }
            if let Some((set, _)) = &only {
                if !set.contains(&node.name) {
                    continue;
                }
            }
            evaluated += 1;
            let mut ok = true;
            for (f, st) in &active {
                if let Some(r) = f.filter(pod, st, node) {
                    for reason in r.reasons {
                        *err.reasons.entry(reason).or_default() += 1;
                    }
                    match r.code {
                        Code::Unschedulable => err.resolvable_nodes += 1,
                        Code::UnschedulableAndUnresolvable => err.unresolvable_nodes += 1,
                    }
                    err.plugins.insert(f.name());
                    ok = false;
                    break;
                }
            }
            if ok {
                feasible.push(node);
            }
        }
        self.next_start = (start + processed) % n.max(1);
        if feasible.is_empty() {
            if let Some((_, name)) = &only {
                let skipped = all - evaluated;
                if skipped > 0 {
                    *err.reasons
                        .entry(format!("node(s) didn't satisfy plugin(s) [{name}]"))
                        .or_default() += skipped;
                    err.unresolvable_nodes += skipped;
                    err.plugins.insert(name);
                }
            }
            return Err(err);
        }
        if feasible.len() == 1 {
            return Ok(ScheduleResult {
                node: feasible[0].name.clone(),
                evaluated_nodes: evaluated,
                feasible_nodes: 1,
            });
        }

        // Score, normalize, weigh.
        let mut total = vec![0i64; feasible.len()];
        let mut scores = vec![0i64; feasible.len()];
        for (p, weight) in &self.scores {
            let st = match p.pre_score(pod, cache, &feasible) {
                PreScore::Skip => continue,
                PreScore::Run(st) => st,
            };
            for (s, node) in scores.iter_mut().zip(&feasible) {
                *s = p.score(pod, &st, node);
            }
            p.normalize(&st, &mut scores);
            for (t, s) in total.iter_mut().zip(&scores) {
                *t += s * weight;
            }
        }
        Ok(ScheduleResult {
            node: feasible[select_host(&total, rng)].name.clone(),
            evaluated_nodes: evaluated,
            feasible_nodes: feasible.len(),
        })
    }
}

/// The index of the highest score; ties are broken uniformly at random (reservoir
/// sampling, as upstream's `selectHost`).
pub fn select_host(scores: &[i64], rng: &mut impl Rng) -> usize {
    let mut best = 0;
    let mut ties = 0u32;
    for (i, &s) in scores.iter().enumerate() {
        if i == 0 || s > scores[best] {
            best = i;
            ties = 1;
        } else if s == scores[best] {
            ties += 1;
            if rng.random_range(0..ties) == 0 {
                best = i;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_error_messages_read_as_upstream() {
        let mut e = FitError {
            num_all_nodes: 3,
            unresolvable_nodes: 1,
            resolvable_nodes: 2,
            ..Default::default()
        };
        e.reasons.insert(
            "node(s) had untolerated taint {node.kubernetes.io/not-ready: }".into(),
            1,
        );
        e.reasons.insert("Insufficient cpu".into(), 2);
        assert_eq!(
            e.message(),
            "0/3 nodes are available: 1 node(s) had untolerated taint \
             {node.kubernetes.io/not-ready: }, 2 Insufficient cpu. preemption: 0/3 nodes are \
             available: 1 Preemption is not helpful for scheduling, 2 No preemption victims \
             found for incoming pod."
        );
        let e = FitError {
            num_all_nodes: 3,
            unresolvable_nodes: 3,
            pre_filter_msg: Some("pod rejected: RuntimeClass \"x\" not found".into()),
            ..Default::default()
        };
        assert_eq!(
            e.message(),
            "0/3 nodes are available: pod rejected: RuntimeClass \"x\" not found. preemption: \
             0/3 nodes are available: 3 Preemption is not helpful for scheduling."
        );
        assert_eq!(
            FitError::default().message(),
            "no nodes available to schedule pods"
        );
    }

    #[test]
    fn sample_sizes_follow_percentage_of_nodes_to_score() {
        for (n, want) in [
            (0, 0),
            (50, 50),
            (100, 100),
            (250, 120),
            (1000, 420),
            (5000, 500),
            (10_000, 500),
            (20_000, 1000),
        ] {
            assert_eq!(num_feasible_nodes_to_find(n), want, "{n}");
        }
    }

    #[test]
    fn normalize_and_select_host() {
        let mut s = vec![0, 5, 10];
        default_normalize(100, false, &mut s);
        assert_eq!(s, vec![0, 50, 100]);
        let mut s = vec![0, 5, 10];
        default_normalize(100, true, &mut s);
        assert_eq!(s, vec![100, 50, 0]);
        let mut s = vec![0, 0];
        default_normalize(100, true, &mut s);
        assert_eq!(s, vec![100, 100]);
        let mut rng = rand::rng();
        assert_eq!(select_host(&[1, 9, 3], &mut rng), 1);
        // Ties are broken at random: both best nodes get picked over many draws.
        let mut seen = [false; 3];
        for _ in 0..200 {
            seen[select_host(&[7, 2, 7], &mut rng)] = true;
        }
        assert_eq!(seen, [true, false, true]);
    }
}
