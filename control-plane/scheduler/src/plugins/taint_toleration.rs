//! TaintToleration: NoSchedule/NoExecute taints the pod does not tolerate keep it off
//! a node; untolerated PreferNoSchedule taints lower a node's score.

use crate::cache::NodeInfo;
use crate::framework::{
    default_normalize, FilterPlugin, Rejection, ScorePlugin, State, MAX_NODE_SCORE,
};
use crate::labels::tolerates;
use crate::pod_info::PodInfo;

pub struct TaintToleration;

impl FilterPlugin for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }
    fn filter(&self, pod: &PodInfo, _: &State, node: &NodeInfo) -> Option<Rejection> {
        let t = node.taints.iter().find(|t| {
            (t.effect == "NoSchedule" || t.effect == "NoExecute")
                && !pod.tolerations.iter().any(|tol| tolerates(tol, t))
        })?;
        Some(Rejection::unresolvable(format!(
            "node(s) had untolerated taint {{{}: {}}}",
            t.key,
            t.value.as_deref().unwrap_or("")
        )))
    }
}

impl ScorePlugin for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }
    /// The number of PreferNoSchedule taints not tolerated by a toleration whose
    /// effect is PreferNoSchedule or empty.
    fn score(&self, pod: &PodInfo, _: &State, node: &NodeInfo) -> i64 {
        node.taints
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule")
            .filter(|t| {
                !pod.tolerations.iter().any(|tol| {
                    matches!(
                        tol.effect.as_deref(),
                        None | Some("") | Some("PreferNoSchedule")
                    ) && tolerates(tol, t)
                })
            })
            .count() as i64
    }
    fn normalize(&self, _: &State, scores: &mut [i64]) {
        default_normalize(MAX_NODE_SCORE, true, scores);
    }
}
