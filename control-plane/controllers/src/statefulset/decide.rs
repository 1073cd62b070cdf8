//! The StatefulSet decision (upstream `pkg/controller/statefulset`
//! `updateStatefulSet`), pure: pods are `NAME-ORDINAL`; OrderedReady creates them one
//! at a time in ordinal order (each waiting for the previous to be Running and
//! Ready) and removes them from the highest ordinal down; Parallel does both at
//! once; RollingUpdate replaces pods at or above the partition from the highest
//! ordinal down, one at a time, each after the others are healthy.

use k8s_openapi::api::core::v1::Pod;

use crate::util::{is_pod_ready, is_terminating, phase};

/// A pod of the set as the decision sees it.
#[derive(Debug, Clone)]
pub struct Member<'a> {
    pub ordinal: i32,
    pub pod: &'a Pod,
    /// The revision (ControllerRevision name) in its `controller-revision-hash` label.
    pub revision: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create the pod of this ordinal from the current (false) or update (true) revision.
    Create {
        ordinal: i32,
        update_revision: bool,
    },
    Delete {
        name: String,
    },
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub replicas: i32,
    pub start_ordinal: i32,
    /// OrderedReady (true) or Parallel.
    pub ordered: bool,
    /// RollingUpdate's partition; `None` for OnDelete.
    pub partition: Option<i32>,
    pub update_revision: String,
}

/// Running and Ready, not being deleted (upstream `isHealthy`).
pub fn is_healthy(pod: &Pod) -> bool {
    phase(pod) == "Running" && is_pod_ready(pod) && !is_terminating(pod)
}

fn name(p: &Pod) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

/// The steps to take now, in order.
pub fn decide(plan: &Plan, members: &[Member<'_>]) -> Vec<Step> {
    let range = plan.start_ordinal..plan.start_ordinal + plan.replicas.max(0);
    let mut steps = Vec::new();
    let mut replicas: Vec<Option<&Member>> = range
        .clone()
        .map(|o| members.iter().find(|m| m.ordinal == o))
        .collect();
    let mut condemned: Vec<&Member> = members
        .iter()
        .filter(|m| !range.contains(&m.ordinal))
        .collect();
    condemned.sort_by_key(|m| std::cmp::Reverse(m.ordinal));

    // Failed pods are deleted; the next pass recreates them.
    for slot in replicas.iter_mut() {
        if let Some(m) = slot {
            if phase(m.pod) == "Failed" && !is_terminating(m.pod) {
                steps.push(Step::Delete { name: name(m.pod) });
                *slot = None;
                if plan.ordered {
                    return steps;
                }
            }
        }
    }

    for (i, slot) in replicas.iter().enumerate() {
        let ordinal = plan.start_ordinal + i as i32;
        match slot {
            None => {
                let update_revision = plan
                    .partition
                    .is_none_or(|p| ordinal >= plan.start_ordinal + p);
                steps.push(Step::Create {
                    ordinal,
                    update_revision,
                });
                if plan.ordered {
                    return steps;
                }
            }
            Some(m) if plan.ordered && !is_healthy(m.pod) => return steps,
            Some(_) => {}
        }
    }

    // Scale down: highest ordinal first; ordered waits for the rest to be healthy.
    let all_healthy = replicas
        .iter()
        .all(|s| s.is_some_and(|m| is_healthy(m.pod)));
    for m in &condemned {
        if is_terminating(m.pod) {
            if plan.ordered {
                return steps;
            }
            continue;
        }
        if plan.ordered && !all_healthy {
            return steps;
        }
        steps.push(Step::Delete { name: name(m.pod) });
        if plan.ordered {
            return steps;
        }
    }
    if !condemned.is_empty() && plan.ordered {
        return steps;
    }

    // Rolling update: one pod at a time, highest ordinal first, down to the partition.
    if let Some(partition) = plan.partition {
        if !all_healthy {
            return steps;
        }
        for (i, slot) in replicas.iter().enumerate().rev() {
            let ordinal = plan.start_ordinal + i as i32;
            if ordinal < plan.start_ordinal + partition {
                break;
            }
            if let Some(m) = slot {
                if m.revision != plan.update_revision {
                    steps.push(Step::Delete { name: name(m.pod) });
                    break;
                }
            }
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(name: &str, healthy: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some(if healthy { "Running" } else { "Pending" }.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if healthy { "True" } else { "False" }.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn plan(replicas: i32, ordered: bool, partition: Option<i32>) -> Plan {
        Plan {
            replicas,
            start_ordinal: 0,
            ordered,
            partition,
            update_revision: "new".into(),
        }
    }

    fn members<'a>(pods: &'a [(i32, Pod, &str)]) -> Vec<Member<'a>> {
        pods.iter()
            .map(|(o, p, r)| Member {
                ordinal: *o,
                pod: p,
                revision: r.to_string(),
            })
            .collect()
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time() {
        assert_eq!(
            decide(&plan(3, true, Some(0)), &[]),
            vec![Step::Create {
                ordinal: 0,
                update_revision: true
            }]
        );
        // web-0 not ready yet: wait.
        let pods = [(0, pod("web-0", false), "new")];
        assert!(decide(&plan(3, true, Some(0)), &members(&pods)).is_empty());
        let pods = [(0, pod("web-0", true), "new")];
        assert_eq!(
            decide(&plan(3, true, Some(0)), &members(&pods)),
            vec![Step::Create {
                ordinal: 1,
                update_revision: true
            }]
        );
    }

    #[test]
    fn parallel_creates_and_deletes_at_once() {
        let steps = decide(&plan(3, false, Some(0)), &[]);
        assert_eq!(steps.len(), 3);
        let pods = [
            (0, pod("web-0", true), "new"),
            (3, pod("web-3", true), "new"),
            (4, pod("web-4", false), "new"),
        ];
        let steps = decide(&plan(1, false, Some(0)), &members(&pods));
        assert_eq!(
            steps,
            vec![
                Step::Delete {
                    name: "web-4".into()
                },
                Step::Delete {
                    name: "web-3".into()
                }
            ]
        );
    }

    #[test]
    fn ordered_scale_down_highest_first_when_healthy() {
        let pods = [
            (0, pod("web-0", true), "new"),
            (1, pod("web-1", true), "new"),
            (2, pod("web-2", true), "new"),
        ];
        assert_eq!(
            decide(&plan(1, true, Some(0)), &members(&pods)),
            vec![Step::Delete {
                name: "web-2".into()
            }]
        );
        let pods = [
            (0, pod("web-0", false), "new"),
            (1, pod("web-1", true), "new"),
        ];
        assert!(decide(&plan(1, true, Some(0)), &members(&pods)).is_empty());
    }

    #[test]
    fn rolling_update_honours_the_partition() {
        let pods = [
            (0, pod("web-0", true), "old"),
            (1, pod("web-1", true), "old"),
            (2, pod("web-2", true), "new"),
        ];
        // Highest not-updated ordinal at or above the partition goes first.
        assert_eq!(
            decide(&plan(3, true, Some(0)), &members(&pods)),
            vec![Step::Delete {
                name: "web-1".into()
            }]
        );
        // Partition 2: ordinals 0 and 1 stay on the old revision.
        assert!(decide(&plan(3, true, Some(2)), &members(&pods)).is_empty());
        // A missing pod below the partition is recreated from the current revision.
        let pods = [
            (1, pod("web-1", true), "old"),
            (2, pod("web-2", true), "new"),
        ];
        assert_eq!(
            decide(&plan(3, true, Some(2)), &members(&pods)),
            vec![Step::Create {
                ordinal: 0,
                update_revision: false
            }]
        );
        // OnDelete: nothing is replaced by the controller.
        let pods = [(0, pod("web-0", true), "old")];
        assert!(decide(&plan(1, true, None), &members(&pods)).is_empty());
    }
}
