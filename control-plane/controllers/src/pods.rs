//! Pure pod helpers shared by the workload controllers (upstream
//! pkg/controller/controller_utils.go and pkg/api/v1/pod): which pods count, which are
//! ready or available, the order in which surplus pods are deleted, and the pod a
//! template stamps out.

use std::cmp::Ordering;
use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;

/// Counts toward a controller's replicas: not finished and not being deleted
/// (upstream `IsPodActive`).
pub fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded") | Some("Failed"))
        && pod.metadata.deletion_timestamp.is_none()
}

/// When the pod's Ready condition became True, if it is True.
pub fn ready_since(pod: &Pod) -> Option<Option<Timestamp>> {
    let conds = pod.status.as_ref()?.conditions.as_ref()?;
    let c = conds.iter().find(|c| c.type_ == "Ready")?;
    (c.status == "True").then(|| c.last_transition_time.as_ref().map(|t| t.0))
}

pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Ready for at least `min_ready_seconds` at `now` (upstream `IsPodAvailable`).
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(None) => false,
        Some(Some(since)) => {
            now.as_millisecond() - since.as_millisecond() >= i64::from(min_ready_seconds) * 1000
        }
    }
}

/// How long until a ready pod becomes available (None: never, or already is).
pub fn until_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> Option<i64> {
    let since = ready_since(pod)??;
    let left = since.as_millisecond() + i64::from(min_ready_seconds) * 1000 - now.as_millisecond();
    (left > 0).then_some(left)
}

fn phase_rank(pod: &Pod) -> u8 {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 3,
    }
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).max().unwrap_or(0))
        .unwrap_or(0)
}

fn node_of(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

/// Upstream `ActivePodsWithRanks.Less`: `Less` means "delete first". `rank` is the
/// number of related pods on the same node (more colocated first).
fn delete_first(a: &Pod, rank_a: usize, b: &Pod, rank_b: usize) -> Ordering {
    // 1. Unassigned before assigned.
    let (na, nb) = (node_of(a).is_empty(), node_of(b).is_empty());
    if na != nb {
        return if na {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    // 2. Pending < Unknown < Running.
    let (pa, pb) = (phase_rank(a), phase_rank(b));
    if pa != pb {
        return pa.cmp(&pb);
    }
    // 3. Not ready before ready.
    let (ra, rb) = (is_ready(a), is_ready(b));
    if ra != rb {
        return if !ra {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    // 4. More colocated related pods first.
    if rank_a != rank_b {
        return rank_b.cmp(&rank_a);
    }
    // 5. Ready for less time first.
    if ra && rb {
        let ta = ready_since(a).flatten();
        let tb = ready_since(b).flatten();
        if ta != tb {
            return match (ta, tb) {
                (Some(x), Some(y)) => y.cmp(&x),
                (None, _) => Ordering::Less,
                (_, None) => Ordering::Greater,
            };
        }
    }
    // 6. More restarts first.
    let (ca, cb) = (restarts(a), restarts(b));
    if ca != cb {
        return cb.cmp(&ca);
    }
    // 7. Newer first (no timestamp counts as newest).
    let t = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    match (t(a), t(b)) {
        (Some(x), Some(y)) => y.cmp(&x),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// Picks `count` pods of `pods` to delete, in upstream's preference order; `related`
/// (all active pods of the owner's family, e.g. every ReplicaSet of a Deployment)
/// gives each node its colocation rank.
pub fn pods_to_delete<'a>(pods: &[&'a Pod], related: &[&Pod], count: usize) -> Vec<&'a Pod> {
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for p in related {
        let n = node_of(p);
        if !n.is_empty() {
            *per_node.entry(n).or_default() += 1;
        }
    }
    let rank = |p: &Pod| -> usize {
        let n = node_of(p);
        if n.is_empty() {
            0
        } else {
            per_node.get(n).copied().unwrap_or(0)
        }
    };
    let mut ranked: Vec<(&'a Pod, usize)> = pods.iter().map(|p| (*p, rank(p))).collect();
    ranked.sort_by(|(a, ra), (b, rb)| delete_first(a, *ra, b, *rb));
    ranked.into_iter().take(count).map(|(p, _)| p).collect()
}

/// The pod a controller creates from `template` (upstream `GetPodFromTemplate`):
/// template labels, annotations and finalizers, `generateName` from the owner, the
/// owner as controller.
pub fn pod_from_template(
    template: &PodTemplateSpec,
    namespace: &str,
    generate_name: &str,
    owner: OwnerReference,
) -> Pod {
    let tm = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: tm.labels,
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// A `controller: true, blockOwnerDeletion: true` reference to an owner.
pub fn controller_ref(api_version: &str, kind: &str, meta: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerStatus, PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn pod(name: &str, node: &str, phase: &str, ready_at: Option<i64>, created: i64) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(ts(created))),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: (!node.is_empty()).then(|| node.to_string()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: ready_at.map(|t| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(Time(ts(t))),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        }
    }

    fn names(ps: &[&Pod]) -> Vec<String> {
        ps.iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect()
    }

    #[test]
    fn deletion_prefers_unscheduled_then_pending_then_not_ready_then_newer() {
        let unscheduled = pod("unscheduled", "", "Pending", None, 0);
        let pending = pod("pending", "n1", "Pending", None, 0);
        let running_not_ready = pod("not-ready", "n1", "Running", None, 0);
        let old_ready = pod("old-ready", "n1", "Running", Some(10), 0);
        let new_ready = pod("new-ready", "n1", "Running", Some(50), 0);
        let all = [
            &old_ready,
            &new_ready,
            &running_not_ready,
            &pending,
            &unscheduled,
        ];
        let picked = pods_to_delete(&all, &all, 5);
        assert_eq!(
            names(&picked),
            [
                "unscheduled",
                "pending",
                "not-ready",
                "new-ready",
                "old-ready"
            ]
        );
        assert_eq!(
            names(&pods_to_delete(&all, &all, 2)),
            ["unscheduled", "pending"]
        );
    }

    #[test]
    fn deletion_prefers_crowded_nodes_then_restarts_then_newer() {
        let a = pod("a-on-crowded", "n1", "Running", Some(5), 0);
        let b = pod("b-on-crowded", "n1", "Running", Some(5), 0);
        let c = pod("c-alone", "n2", "Running", Some(5), 0);
        let all = [&c, &a, &b];
        let first = pods_to_delete(&all, &all, 1);
        assert_ne!(names(&first), ["c-alone"]);

        let mut restarted = pod("restarted", "n3", "Running", Some(5), 0);
        restarted.status.as_mut().unwrap().container_statuses = Some(vec![ContainerStatus {
            restart_count: 3,
            ..Default::default()
        }]);
        let older = pod("older", "n4", "Running", Some(5), 0);
        let newer = pod("newer", "n5", "Running", Some(5), 100);
        let all = [&older, &newer, &restarted];
        assert_eq!(
            names(&pods_to_delete(&all, &all, 3)),
            ["restarted", "newer", "older"]
        );
    }

    #[test]
    fn availability_waits_min_ready_seconds() {
        let p = pod("p", "n", "Running", Some(0), 0);
        assert!(is_available(&p, 0, ts(0)));
        assert!(!is_available(&p, 10, ts(5)));
        assert!(is_available(&p, 10, ts(10)));
        assert_eq!(until_available(&p, 10, ts(4)), Some(6000));
        let not_ready = pod("q", "n", "Running", None, 0);
        assert!(!is_available(&not_ready, 0, ts(0)));
        let mut done = pod("d", "n", "Succeeded", None, 0);
        assert!(!is_active(&done));
        done.status.as_mut().unwrap().phase = Some("Running".into());
        assert!(is_active(&done));
    }
}
