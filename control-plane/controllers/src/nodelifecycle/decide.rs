//! Node lifecycle decisions (upstream `pkg/controller/nodelifecycle` and
//! `pkg/controller/tainteviction`), pure: a node's health from how long its
//! heartbeats have been silent, the taints that health implies, and when a pod on a
//! NoExecute-tainted node must be evicted.

use std::time::Duration;

use k8s_openapi::api::core::v1::{NodeCondition, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::scheduling::tolerates;

pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// The node's Ready state as the controller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ready,
    NotReady,
    Unknown,
    /// No Ready condition posted yet, within the grace period: a node registering.
    /// Upstream acts on the Ready condition the node has and, for one that never
    /// posted, waits out a grace period before making it Unknown; tainting it at once
    /// kept pods off a node about to be Ready.
    Registering,
}

/// Health from the kubelet's own Ready condition and the time since the controller
/// last saw a heartbeat (Lease renewal or status update) change.
pub fn health(ready: Option<&NodeCondition>, silent_for: Duration, grace: Duration) -> Health {
    if silent_for > grace {
        return Health::Unknown;
    }
    match ready.map(|c| c.status.as_str()) {
        Some("True") => Health::Ready,
        Some("False") => Health::NotReady,
        Some(_) => Health::Unknown,
        None => Health::Registering,
    }
}

/// The node conditions once the kubelet has gone silent: every condition the
/// kubelet owns becomes Unknown (upstream `tryUpdateNodeHealth`). `None` when they
/// already are.
pub fn unknown_conditions(conds: &[NodeCondition], now: &Time) -> Option<Vec<NodeCondition>> {
    let mut changed = false;
    let mut out = conds.to_vec();
    for c in out.iter_mut() {
        if c.status != "Unknown" {
            c.status = "Unknown".into();
            c.reason = Some("NodeStatusUnknown".into());
            c.message = Some("Kubelet stopped posting node status.".into());
            c.last_transition_time = Some(now.clone());
            changed = true;
        }
    }
    if !out.iter().any(|c| c.type_ == "Ready") {
        out.push(NodeCondition {
            type_: "Ready".into(),
            status: "Unknown".into(),
            reason: Some("NodeStatusNeverUpdated".into()),
            message: Some("Kubelet never posted node status.".into()),
            last_transition_time: Some(now.clone()),
            last_heartbeat_time: None,
        });
        changed = true;
    }
    changed.then_some(out)
}

fn ours(t: &Taint) -> bool {
    (t.key == NOT_READY || t.key == UNREACHABLE)
        && (t.effect == "NoExecute" || t.effect == "NoSchedule")
}

/// The node's taints for `health`: `not-ready` (Ready=False) or `unreachable`
/// (Ready=Unknown), each NoSchedule and NoExecute; none when Ready. Taints already
/// present keep their `timeAdded` (eviction timers count from it). `None` when
/// nothing changes.
pub fn desired_taints(current: &[Taint], health: Health, now: Timestamp) -> Option<Vec<Taint>> {
    let key = match health {
        Health::Registering => return None,
        Health::Ready => None,
        Health::NotReady => Some(NOT_READY),
        Health::Unknown => Some(UNREACHABLE),
    };
    let mut out: Vec<Taint> = current
        .iter()
        .filter(|t| !ours(t) || Some(t.key.as_str()) == key)
        .cloned()
        .collect();
    if let Some(key) = key {
        for effect in ["NoSchedule", "NoExecute"] {
            if !out.iter().any(|t| t.key == key && t.effect == effect) {
                out.push(Taint {
                    key: key.into(),
                    value: None,
                    effect: effect.into(),
                    // Only NoExecute taints carry a time (upstream).
                    time_added: (effect == "NoExecute").then_some(Time(now)),
                });
            }
        }
    }
    (out != current).then_some(out)
}

/// When a pod on a node with these taints must be evicted (upstream taint
/// manager): now if a NoExecute taint is not tolerated; after the smallest
/// `tolerationSeconds` of the tolerations in use (counted from the taint's
/// `timeAdded`); never if they tolerate forever. `None`: never.
pub fn eviction_delay(taints: &[Taint], tols: &[Toleration], now: Timestamp) -> Option<Duration> {
    let mut delay: Option<Duration> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let used: Vec<&Toleration> = tols
            .iter()
            .filter(|t| {
                t.effect
                    .as_deref()
                    .is_none_or(|e| e.is_empty() || e == "NoExecute")
            })
            .filter(|t| tolerates(t, taint))
            .collect();
        if used.is_empty() {
            return Some(Duration::ZERO);
        }
        // Upstream `getMinTolerationTime`: the smallest limit among the tolerations
        // in use; tolerations without one only count when none has a limit.
        let added = taint.time_added.as_ref().map(|t| t.0).unwrap_or(now);
        for secs in used.iter().filter_map(|t| t.toleration_seconds) {
            let due_ms = added.as_millisecond() + secs.max(0) * 1000;
            let left = Duration::from_millis((due_ms - now.as_millisecond()).max(0) as u64);
            delay = Some(delay.map_or(left, |d| d.min(left)));
        }
    }
    delay
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(status: &str) -> NodeCondition {
        NodeCondition {
            type_: "Ready".into(),
            status: status.into(),
            ..Default::default()
        }
    }

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn health_from_heartbeats() {
        let g = Duration::from_secs(40);
        assert_eq!(
            health(Some(&ready("True")), Duration::from_secs(5), g),
            Health::Ready
        );
        assert_eq!(
            health(Some(&ready("True")), Duration::from_secs(41), g),
            Health::Unknown
        );
        assert_eq!(
            health(Some(&ready("False")), Duration::ZERO, g),
            Health::NotReady
        );
        assert_eq!(health(None, Duration::ZERO, g), Health::Registering);
        assert_eq!(health(None, Duration::from_secs(41), g), Health::Unknown);
        assert!(desired_taints(&[], Health::Registering, ts(1000)).is_none());
    }

    #[test]
    fn taints_follow_health_and_keep_their_time() {
        let t0 = ts(1000);
        let unreachable = desired_taints(&[], Health::Unknown, t0).unwrap();
        assert_eq!(unreachable.len(), 2);
        assert!(unreachable.iter().all(|t| t.key == UNREACHABLE));
        // Unchanged health: nothing to write.
        assert!(desired_taints(&unreachable, Health::Unknown, ts(2000)).is_none());
        // Not ready replaces unreachable.
        let nr = desired_taints(&unreachable, Health::NotReady, t0).unwrap();
        assert!(nr.iter().all(|t| t.key == NOT_READY));
        // Ready removes ours, keeps others.
        let mut with_other = nr.clone();
        with_other.push(Taint {
            key: "dedicated".into(),
            value: Some("x".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        });
        let back = desired_taints(&with_other, Health::Ready, t0).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].key, "dedicated");
    }

    #[test]
    fn unknown_conditions_once() {
        let now = Time(ts(5));
        let conds = vec![ready("True")];
        let u = unknown_conditions(&conds, &now).unwrap();
        assert_eq!(u[0].status, "Unknown");
        assert_eq!(u[0].reason.as_deref(), Some("NodeStatusUnknown"));
        assert!(unknown_conditions(&u, &now).is_none());
    }

    #[test]
    fn eviction_honours_toleration_seconds() {
        let taint = Taint {
            key: UNREACHABLE.into(),
            value: None,
            effect: "NoExecute".into(),
            time_added: Some(Time(ts(100))),
        };
        let tol = |secs: Option<i64>| Toleration {
            key: Some(UNREACHABLE.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: secs,
            value: None,
        };
        let taints = [taint];
        assert_eq!(eviction_delay(&taints, &[], ts(100)), Some(Duration::ZERO));
        assert_eq!(
            eviction_delay(&taints, &[tol(Some(5))], ts(102)),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            eviction_delay(&taints, &[tol(Some(5))], ts(200)),
            Some(Duration::ZERO)
        );
        assert_eq!(eviction_delay(&taints, &[tol(None)], ts(200)), None);
        assert_eq!(
            eviction_delay(&taints, &[tol(Some(300)), tol(Some(5))], ts(100)),
            Some(Duration::from_secs(5))
        );
        assert_eq!(eviction_delay(&[], &[], ts(100)), None);
    }
}
