//! NodeResourcesFit (requests vs. allocatable, including the pod count) and the two
//! resource scores: LeastAllocated (prefer emptier nodes) and BalancedAllocation
//! (prefer nodes whose cpu and memory use stay even).

use crate::cache::{Cache, NodeInfo};
use crate::framework::{
    Code, FilterPlugin, PreScore, Rejection, ScorePlugin, State, MAX_NODE_SCORE,
};
use crate::pod_info::PodInfo;

pub struct NodeResourcesFit;

impl FilterPlugin for NodeResourcesFit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }
    fn filter(&self, pod: &PodInfo, _: &State, node: &NodeInfo) -> Option<Rejection> {
        let req = &pod.requests.requested;
        let alloc = &node.allocatable;
        let used = &node.requested;
        let mut reasons = Vec::new();
        // Unresolvable when even an empty node is too small: preemption cannot help.
        let mut unresolvable = false;
        if node.pods.len() as i64 + 1 > alloc.pods {
            reasons.push("Too many pods".to_string());
        }
        let mut check = |name: &str, want: i64, have: i64, used: i64| {
            if want > 0 && want > have - used {
                reasons.push(format!("Insufficient {name}"));
                unresolvable |= want > have;
            }
        };
        check("cpu", req.milli_cpu, alloc.milli_cpu, used.milli_cpu);
        check("memory", req.memory, alloc.memory, used.memory);
        check(
            "ephemeral-storage",
            req.ephemeral_storage,
            alloc.ephemeral_storage,
            used.ephemeral_storage,
        );
        for (name, want) in &req.scalar {
            let have = alloc.scalar.get(name).copied().unwrap_or(0);
            let u = used.scalar.get(name).copied().unwrap_or(0);
            check(name, *want, have, u);
        }
        if reasons.is_empty() {
            return None;
        }
        Some(Rejection {
            code: if unresolvable {
                Code::UnschedulableAndUnresolvable
            } else {
                Code::Unschedulable
            },
            reasons,
        })
    }
}

/// `(capacity - requested) * 100 / capacity`, 0 when over capacity.
fn least_requested(requested: i64, capacity: i64) -> i64 {
    if capacity == 0 || requested > capacity {
        return 0;
    }
    (capacity - requested) * MAX_NODE_SCORE / capacity
}

/// NodeResourcesFit's default scoring strategy (LeastAllocated, cpu and memory
/// weighted 1:1), on requests where empty ones count as 100m / 200Mi.
pub struct LeastAllocated;

impl ScorePlugin for LeastAllocated {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }
    fn score(&self, pod: &PodInfo, _: &State, node: &NodeInfo) -> i64 {
        let p = &pod.requests.non_zero;
        let n = &node.non_zero_requested;
        let a = &node.allocatable;
        (least_requested(n.milli_cpu + p.milli_cpu, a.milli_cpu)
            + least_requested(n.memory + p.memory, a.memory))
            / 2
    }
}

/// NodeResourcesBalancedAllocation: `(1 - std(cpu fraction, memory fraction)) * 100`.
pub struct BalancedAllocation;

impl ScorePlugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        "NodeResourcesBalancedAllocation"
    }
    fn pre_score(&self, pod: &PodInfo, _: &Cache, _: &[&NodeInfo]) -> PreScore {
        let r = &pod.requests.requested;
        if r.milli_cpu == 0 && r.memory == 0 {
            PreScore::Skip
        } else {
            PreScore::Run(None)
        }
    }
    fn score(&self, pod: &PodInfo, _: &State, node: &NodeInfo) -> i64 {
        let p = &pod.requests.requested;
        let n = &node.requested;
        let a = &node.allocatable;
        let frac = |req: i64, cap: i64| {
            if cap == 0 {
                None
            } else {
                Some((req as f64 / cap as f64).min(1.0))
            }
        };
        let fs: Vec<f64> = [
            frac(n.milli_cpu + p.milli_cpu, a.milli_cpu),
            frac(n.memory + p.memory, a.memory),
        ]
        .into_iter()
        .flatten()
        .collect();
        let std = match fs.as_slice() {
            [a, b] => ((a - b) / 2.0).abs(),
            _ => 0.0,
        };
        ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
    }
}
