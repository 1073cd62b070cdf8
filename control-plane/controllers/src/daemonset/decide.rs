//! The DaemonSet decision (upstream `pkg/controller/daemon`: `manage`,
//! `rollingUpdate`, `updateDaemonSetStatus`), pure: which nodes need a pod, which
//! pods must go, and the status.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, Toleration,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

use crate::history::HASH_LABEL;
use crate::scheduling::{node_matches_pod, node_taints, untolerated};
use crate::util::{is_pod_active, is_pod_available, is_pod_ready, phase};

/// The tolerations every daemon pod gets (upstream `AddOrUpdateDaemonPodTolerations`).
pub fn add_default_tolerations(spec: &mut PodSpec) {
    let mut add = |key: &str, effect: &str| {
        let tols = spec.tolerations.get_or_insert_with(Vec::new);
        if !tols
            .iter()
            .any(|t| t.key.as_deref() == Some(key) && t.effect.as_deref() == Some(effect))
        {
            tols.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some(effect.into()),
                value: None,
                toleration_seconds: None,
            });
        }
    };
    add("node.kubernetes.io/not-ready", "NoExecute");
    add("node.kubernetes.io/unreachable", "NoExecute");
    add("node.kubernetes.io/disk-pressure", "NoSchedule");
    add("node.kubernetes.io/memory-pressure", "NoSchedule");
    add("node.kubernetes.io/pid-pressure", "NoSchedule");
    add("node.kubernetes.io/unschedulable", "NoSchedule");
    if spec.host_network == Some(true) {
        add("node.kubernetes.io/network-unavailable", "NoSchedule");
    }
}

/// Pins a pod to `node` the upstream way: required node affinity whose terms all
/// carry `matchFields: metadata.name In [node]` (the scheduler then binds it).
pub fn pin_to_node(spec: &mut PodSpec, node: &str) {
    let req = NodeSelectorRequirement {
        key: "metadata.name".into(),
        operator: "In".into(),
        values: Some(vec![node.into()]),
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let na = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    let sel = na
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(|| NodeSelector {
            node_selector_terms: vec![],
        });
    if sel.node_selector_terms.is_empty() {
        sel.node_selector_terms.push(NodeSelectorTerm::default());
    }
    for t in sel.node_selector_terms.iter_mut() {
        t.match_fields = Some(vec![req.clone()]);
    }
}

/// Whether a daemon pod should be started on `node`, and whether one already there
/// may keep running (upstream `NodeShouldRunDaemonPod`).
pub fn node_should_run(template: &PodSpec, node: &Node) -> (bool, bool) {
    let mut spec = template.clone();
    add_default_tolerations(&mut spec);
    if !node_matches_pod(&spec, node) {
        return (false, false);
    }
    let tols = spec.tolerations.as_deref().unwrap_or_default();
    let taints = node_taints(node);
    let run = untolerated(taints, tols, &["NoSchedule", "NoExecute"]).is_empty();
    let keep = untolerated(taints, tols, &["NoExecute"]).is_empty();
    (run, keep)
}

/// Upstream `GetScaledValueFromIntOrPercent`, rounding up.
pub fn scaled(v: Option<&IntOrString>, total: i32) -> i32 {
    match v {
        None => 0,
        Some(IntOrString::Int(i)) => *i,
        Some(IntOrString::String(s)) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            ((pct * i64::from(total) + 99) / 100) as i32
        }
    }
}

#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    /// Nodes to create a daemon pod on.
    pub create_on: Vec<String>,
    /// Pods (by name) to delete.
    pub delete: Vec<String>,
    pub status: DaemonSetStatus,
}

fn name(p: &Pod) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

fn hash_of(p: &Pod) -> Option<&str> {
    p.metadata
        .labels
        .as_ref()?
        .get(HASH_LABEL)
        .map(String::as_str)
}

/// `pods_by_node`: the DaemonSet's pods, grouped by `spec.nodeName` or, for pods not
/// bound yet, by the node their affinity pins them to.
pub fn decide(
    ds: &DaemonSet,
    nodes: &[&Node],
    pods_by_node: &BTreeMap<String, Vec<&Pod>>,
    hash: &str,
    now: Timestamp,
) -> Decision {
    let spec = ds.spec.clone().unwrap_or_default();
    let tpl = spec.template.spec.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let mut d = Decision::default();
    let mut desired = 0;
    let (mut current, mut misscheduled, mut ready, mut available, mut updated) = (0, 0, 0, 0, 0);
    // Per node that should run: (node, old active pods, new active pods).
    let mut running: Vec<(String, Vec<&Pod>, Vec<&Pod>)> = Vec::new();
    let empty = Vec::new();

    for node in nodes {
        let nname = node.metadata.name.clone().unwrap_or_default();
        let pods = pods_by_node.get(&nname).unwrap_or(&empty);
        let (run, keep) = node_should_run(&tpl, node);
        // Failed daemon pods are deleted and replaced (upstream, minus its back-off).
        for p in pods
            .iter()
            .filter(|p| phase(p) == "Failed" && p.metadata.deletion_timestamp.is_none())
        {
            d.delete.push(name(p));
        }
        let active: Vec<&Pod> = pods.iter().copied().filter(|p| is_pod_active(p)).collect();
        if run {
            desired += 1;
        }
        if !active.is_empty() {
            if run {
                current += 1;
            } else {
                misscheduled += 1;
            }
        }
        if !keep {
            d.delete.extend(active.iter().map(|p| name(p)));
            continue;
        }
        if !run {
            // May keep running (tolerated NoExecute), but is not scheduled anew.
            continue;
        }
        if active.is_empty() {
            d.create_on.push(nname);
            continue;
        }
        if active.iter().any(|p| is_pod_ready(p)) {
            ready += 1;
        }
        if active.iter().any(|p| is_pod_available(p, min_ready, now)) {
            available += 1;
        }
        let (new, old): (Vec<&Pod>, Vec<&Pod>) = active
            .iter()
            .copied()
            .partition(|p| hash_of(p) == Some(hash));
        if !new.is_empty() {
            updated += 1;
        }
        running.push((nname, old, new));
    }

    // Duplicates: keep the oldest of each kind on a node.
    let by_age =
        |v: &mut Vec<&Pod>| v.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
    for (_, old, new) in running.iter_mut() {
        by_age(old);
        by_age(new);
        if new.len() > 1 {
            d.delete.extend(new.drain(1..).map(name));
        }
        if old.len() > 1 {
            d.delete.extend(old.drain(1..).map(name));
        }
    }

    let strategy = spec.update_strategy.clone().unwrap_or_default();
    if strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate" {
        let ru = strategy.rolling_update.clone().unwrap_or_default();
        let surge = scaled(ru.max_surge.as_ref(), desired);
        let mut max_unavailable = scaled(
            ru.max_unavailable.as_ref().or(Some(&IntOrString::Int(1))),
            desired,
        );
        if surge == 0 && max_unavailable == 0 {
            max_unavailable = 1;
        }
        // Nodes that should run but have no available pod count as unavailable.
        let mut unavailable = desired - available;
        if surge == 0 {
            for (_, old, new) in &running {
                let Some(o) = old.first() else { continue };
                if !new.is_empty() {
                    d.delete.push(name(o));
                    continue;
                }
                if !is_pod_available(o, min_ready, now) {
                    // Already unavailable: replacing it costs nothing.
                    d.delete.push(name(o));
                } else if unavailable < max_unavailable {
                    d.delete.push(name(o));
                    unavailable += 1;
                }
            }
        } else {
            let mut surging = running
                .iter()
                .filter(|(_, o, n)| !o.is_empty() && !n.is_empty())
                .count() as i32;
            for (nname, old, new) in &running {
                let Some(o) = old.first() else { continue };
                match new.first() {
                    Some(n) if is_pod_available(n, min_ready, now) => d.delete.push(name(o)),
                    Some(_) => {}
                    None if !is_pod_available(o, min_ready, now) => d.delete.push(name(o)),
                    None if surging < surge => {
                        d.create_on.push(nname.clone());
                        surging += 1;
                    }
                    None => {}
                }
            }
        }
    }
    d.delete.sort();
    d.delete.dedup();

    d.status = DaemonSetStatus {
        current_number_scheduled: current,
        desired_number_scheduled: desired,
        number_misscheduled: misscheduled,
        number_ready: ready,
        number_available: Some(available),
        number_unavailable: Some(desired - available),
        updated_number_scheduled: Some(updated),
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
    };
    d
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
