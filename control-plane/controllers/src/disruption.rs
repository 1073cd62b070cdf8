//! The disruption controller (upstream `pkg/controller/disruption`): each
//! PodDisruptionBudget's status — expected pods, desired and current healthy pods,
//! `disruptionsAllowed` and the `DisruptionAllowed` condition — which the API
//! server's eviction subresource consults and decrements.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;

use crate::informer::reflect;
use crate::ops::error_policy;
use crate::util::{controller_of, is_pod_ready, selector_matches};
use crate::{Context, ControllerError, ControllerFuture};

/// How long an eviction recorded in `disruptedPods` counts before the pod's
/// deletion must have been observed (upstream `DeletionTimeout`).
const DELETION_TIMEOUT: Duration = Duration::from_secs(120);

/// What a budget's numbers come out as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub expected: i32,
    pub desired_healthy: i32,
}

fn percent(v: &str) -> Option<i64> {
    v.strip_suffix('%')?.parse().ok()
}

/// Upstream `getExpectedPodCount`: `scale` is the summed replicas of the pods'
/// controllers (needed for maxUnavailable and percentages; `None` if unknown).
pub fn budget(
    pdb: &PodDisruptionBudget,
    pods: usize,
    scale: Option<i32>,
) -> Result<Budget, String> {
    let spec = pdb.spec.clone().unwrap_or_default();
    let need_scale =
        || scale.ok_or_else(|| "found no controllers for the selected pods".to_string());
    if let Some(mu) = spec.max_unavailable {
        let expected = need_scale()?;
        let max = match mu {
            IntOrString::Int(i) => i,
            IntOrString::String(s) => {
                let p = percent(&s).ok_or_else(|| format!("invalid maxUnavailable {s:?}"))?;
                ((p * i64::from(expected) + 99) / 100) as i32
            }
        };
        return Ok(Budget {
            expected,
            desired_healthy: (expected - max).max(0),
        });
    }
    match spec.min_available {
        Some(IntOrString::Int(i)) => Ok(Budget {
            expected: pods as i32,
            desired_healthy: i,
        }),
        Some(IntOrString::String(s)) => {
            let p = percent(&s).ok_or_else(|| format!("invalid minAvailable {s:?}"))?;
            let expected = need_scale()?;
            Ok(Budget {
                expected,
                desired_healthy: ((p * i64::from(expected) + 99) / 100) as i32,
            })
        }
        None => Ok(Budget {
            expected: pods as i32,
            desired_healthy: 0,
        }),
    }
}

struct Disruption {
    client: kube::Client,
    pods: Store<Pod>,
}

pub fn run(ctx: Context) -> ControllerFuture {
    Box::pin(async move {
        let client = ctx.client.clone();
        let (pdbs, pdb_events) = reflect(
            Api::<PodDisruptionBudget>::all(client.clone()),
            watcher::Config::default(),
        );
        let (pods, pod_events) = ctx.pods.reflect();
        let state = Arc::new(Disruption { client, pods });
        let all = pdbs.clone();
        Controller::for_stream(pdb_events, pdbs)
            .watches_stream(pod_events, move |p: Pod| {
                all.state()
                    .iter()
                    .filter(|b| b.metadata.namespace == p.metadata.namespace)
                    .map(|b| ObjectRef::from_obj(b.as_ref()))
                    .collect::<Vec<_>>()
            })
            .run(reconcile, error_policy, state)
            .for_each(|_| async {})
            .await;
        Ok(())
    })
}

/// The summed scale of the pods' controllers (upstream finders for ReplicaSets,
/// Deployments and StatefulSets). `None` when a pod has no known controller.
async fn controllers_scale(
    client: &kube::Client,
    ns: &str,
    pods: &[&Pod],
) -> Result<Option<i32>, ControllerError> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut total = 0;
    for p in pods {
        let Some(r) = controller_of(&p.metadata) else {
            return Ok(None);
        };
        match r.kind.as_str() {
            "ReplicaSet" => {
                let rs = Api::<ReplicaSet>::namespaced(client.clone(), ns)
                    .get(&r.name)
                    .await?;
                match controller_of(&rs.metadata).filter(|o| o.kind == "Deployment") {
                    Some(d) => {
                        if seen.insert(d.uid.clone()) {
                            let dep = Api::<Deployment>::namespaced(client.clone(), ns)
                                .get(&d.name)
                                .await?;
                            total += dep.spec.and_then(|s| s.replicas).unwrap_or(1);
                        }
                    }
                    None => {
                        if seen.insert(r.uid.clone()) {
                            total += rs.spec.and_then(|s| s.replicas).unwrap_or(1);
                        }
                    }
                }
            }
            "StatefulSet" => {
                if seen.insert(r.uid.clone()) {
                    let s = Api::<StatefulSet>::namespaced(client.clone(), ns)
                        .get(&r.name)
                        .await?;
                    total += s.spec.and_then(|s| s.replicas).unwrap_or(1);
                }
            }
            _ => return Ok(None),
        }
    }
    Ok(Some(total))
}

async fn reconcile(
    pdb: Arc<PodDisruptionBudget>,
    st: Arc<Disruption>,
) -> Result<Action, ControllerError> {
    st.pods
        .wait_until_ready()
        .await
        .map_err(|e| ControllerError::Other(e.to_string()))?;
    if pdb.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = pdb.namespace().unwrap_or_default();
    let spec = pdb.spec.clone().unwrap_or_default();
    let all = st.pods.state();
    let pods: Vec<&Pod> = match &spec.selector {
        // A null selector selects nothing (policy/v1); `{}` selects every pod.
        None => Vec::new(),
        Some(sel) => all
            .iter()
            .map(|p| p.as_ref())
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
            .filter(|p| selector_matches(sel, &p.metadata.labels.clone().unwrap_or_default()))
            .collect(),
    };
    let now = Timestamp::now();
    let old = pdb.status.clone().unwrap_or_default();
    // Evictions still in flight: the pod exists, is not yet being deleted, recently.
    let mut disrupted: BTreeMap<String, Time> = BTreeMap::new();
    let mut next_expiry: Option<Duration> = None;
    for (name, t) in old.disrupted_pods.clone().unwrap_or_default() {
        let pod = pods
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name.as_str()));
        let age =
            Duration::from_millis((now.as_millisecond() - t.0.as_millisecond()).max(0) as u64);
        if pod.is_some_and(|p| p.metadata.deletion_timestamp.is_none()) && age < DELETION_TIMEOUT {
            let left = DELETION_TIMEOUT - age;
            next_expiry = Some(next_expiry.map_or(left, |n| n.min(left)));
            disrupted.insert(name, t);
        }
    }
    let healthy = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && is_pod_ready(p))
        .filter(|p| !disrupted.contains_key(p.metadata.name.as_deref().unwrap_or("")))
        .count() as i32;
    let needs_scale = spec.max_unavailable.is_some()
        || matches!(spec.min_available, Some(IntOrString::String(_)));
    let scale = if needs_scale {
        controllers_scale(&st.client, &ns, &pods).await?
    } else {
        None
    };
    let (status, cond_status, reason) = match budget(&pdb, pods.len(), scale) {
        Ok(b) => {
            let allowed = (healthy - b.desired_healthy).max(0);
            let (cs, reason) = if allowed > 0 {
                ("True", "SufficientPods")
            } else {
                ("False", "InsufficientPods")
            };
            (
                PodDisruptionBudgetStatus {
                    current_healthy: healthy,
                    desired_healthy: b.desired_healthy,
                    expected_pods: b.expected,
                    disruptions_allowed: allowed,
                    disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
                    observed_generation: pdb.metadata.generation,
                    conditions: None,
                },
                cs,
                reason.to_string(),
            )
        }
        Err(msg) => {
            tracing::debug!(pdb = %pdb.name_any(), error = %msg, "budget not computable");
            (
                PodDisruptionBudgetStatus {
                    current_healthy: healthy,
                    desired_healthy: 0,
                    expected_pods: 0,
                    disruptions_allowed: 0,
                    disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
                    observed_generation: pdb.metadata.generation,
                    conditions: None,
                },
                "False",
                "SyncFailed".to_string(),
            )
        }
    };
    let mut status = status;
    let prev = old.conditions.clone().unwrap_or_default();
    let mut conds: Vec<Condition> = prev
        .iter()
        .filter(|c| c.type_ != "DisruptionAllowed")
        .cloned()
        .collect();
    let existing = prev.iter().find(|c| c.type_ == "DisruptionAllowed");
    conds.push(Condition {
        type_: "DisruptionAllowed".into(),
        status: cond_status.into(),
        reason: reason.clone(),
        message: String::new(),
        observed_generation: pdb.metadata.generation,
        last_transition_time: match existing {
            Some(c) if c.status == cond_status => c.last_transition_time.clone(),
            _ => Time(now),
        },
    });
    status.conditions = Some(conds);
    if pdb.status.as_ref() != Some(&status) {
        let mut next = (*pdb).clone();
        next.status = Some(status);
        Api::<PodDisruptionBudget>::namespaced(st.client.clone(), &ns)
            .replace_status(&pdb.name_any(), &PostParams::default(), &next)
            .await?;
    }
    Ok(match next_expiry {
        Some(d) => Action::requeue(d + Duration::from_millis(100)),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::policy::v1::PodDisruptionBudgetSpec;

    fn pdb(min: Option<IntOrString>, max: Option<IntOrString>) -> PodDisruptionBudget {
        PodDisruptionBudget {
            spec: Some(PodDisruptionBudgetSpec {
                min_available: min,
                max_unavailable: max,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn budgets_from_min_available_and_max_unavailable() {
        let b = budget(&pdb(Some(IntOrString::Int(2)), None), 3, None).unwrap();
        assert_eq!(
            b,
            Budget {
                expected: 3,
                desired_healthy: 2
            }
        );
        let b = budget(
            &pdb(Some(IntOrString::String("50%".into())), None),
            3,
            Some(5),
        )
        .unwrap();
        assert_eq!(
            b,
            Budget {
                expected: 5,
                desired_healthy: 3
            }
        );
        let b = budget(&pdb(None, Some(IntOrString::Int(1))), 3, Some(4)).unwrap();
        assert_eq!(
            b,
            Budget {
                expected: 4,
                desired_healthy: 3
            }
        );
        let b = budget(
            &pdb(None, Some(IntOrString::String("30%".into()))),
            3,
            Some(10),
        )
        .unwrap();
        assert_eq!(
            b,
            Budget {
                expected: 10,
                desired_healthy: 7
            }
        );
        assert!(budget(&pdb(None, Some(IntOrString::Int(1))), 3, None).is_err());
    }
}
