//! The scheduling queue (upstream's `PriorityQueue`): an active set ordered by
//! priority then arrival, a backoff set (1 s doubling per attempt up to 10 s), and an
//! unschedulable set whose pods return when a cluster event might help them (or after
//! five minutes). Time is passed in, so the queue is a pure data structure.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Upstream's `podMaxInUnschedulablePodsDuration`.
pub const MAX_UNSCHEDULABLE: Duration = Duration::from_secs(300);

/// A change in the cluster that may make unschedulable pods fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterEvent {
    NodeAdded,
    NodeUpdated,
    /// An assigned pod went away (frees resources, ports, spread and anti-affinity).
    AssignedPodDeleted,
    /// A pod was placed or relabelled (affinity and spread may now be met).
    AssignedPodChanged,
    RuntimeClassChanged,
    NamespaceChanged,
}

impl ClusterEvent {
    /// Could this event help a pod that these plugins rejected?
    fn may_help(self, plugin: &str) -> bool {
        match self {
            ClusterEvent::NodeAdded | ClusterEvent::NodeUpdated => {
                plugin != "NodeName" || self == ClusterEvent::NodeAdded
            }
            ClusterEvent::AssignedPodDeleted => matches!(
                plugin,
                "NodeResourcesFit" | "NodePorts" | "PodTopologySpread" | "InterPodAffinity"
            ),
            ClusterEvent::AssignedPodChanged => {
                matches!(plugin, "PodTopologySpread" | "InterPodAffinity")
            }
            ClusterEvent::RuntimeClassChanged => plugin == "RuntimeClass",
            ClusterEvent::NamespaceChanged => plugin == "InterPodAffinity",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Where {
    Active,
    Backoff,
    Unschedulable,
    InFlight,
}

/// A pod in the queue and its scheduling history.
#[derive(Debug, Clone)]
pub struct QueuedPod {
    pub pod: Arc<Pod>,
    pub uid: String,
    pub priority: i32,
    /// Scheduling attempts so far (drives backoff).
    pub attempts: u32,
    /// Plugins that rejected it last time.
    pub unschedulable_plugins: HashSet<&'static str>,
    /// The scheduling cycle in which it was popped.
    pub cycle: u64,
    /// When it was first seen by the queue (for latency figures).
    pub first_seen: Instant,
    seq: u64,
    backoff_until: Instant,
    since: Instant,
    state: Where,
}

#[derive(Default)]
pub struct SchedulingQueue {
    pods: HashMap<String, QueuedPod>,
    /// (-priority, seq, uid): highest priority first, then first in.
    active: BTreeSet<(i64, u64, String)>,
    /// (ready at, seq, uid).
    backoff: BTreeSet<(Instant, u64, String)>,
    unschedulable: HashSet<String>,
    seq: u64,
    cycle: u64,
    /// The last cycle in which a move request happened: a pod that fails in a cycle
    /// that saw a move goes to backoff, not unschedulable (the event may help it).
    move_request_cycle: u64,
}

fn backoff_for(attempts: u32) -> Duration {
    let mut d = INITIAL_BACKOFF;
    for _ in 1..attempts {
        d *= 2;
        if d >= MAX_BACKOFF {
            return MAX_BACKOFF;
        }
    }
    d
}

impl SchedulingQueue {
    pub fn new() -> SchedulingQueue {
        SchedulingQueue::default()
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    pub fn contains(&self, uid: &str) -> bool {
        self.pods.contains_key(uid)
    }

    /// (active, backoff, unschedulable) sizes.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (
            self.active.len(),
            self.backoff.len(),
            self.unschedulable.len(),
        )
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn push_active(&mut self, uid: &str) {
        let seq = self.next_seq();
        let Some(p) = self.pods.get_mut(uid) else {
            return;
        };
        p.state = Where::Active;
        p.seq = seq;
        self.active
            .insert((-(p.priority as i64), seq, uid.to_string()));
    }

    fn push_backoff(&mut self, uid: &str) {
        let seq = self.next_seq();
        let Some(p) = self.pods.get_mut(uid) else {
            return;
        };
        p.state = Where::Backoff;
        p.seq = seq;
        self.backoff.insert((p.backoff_until, seq, uid.to_string()));
    }

    fn detach(&mut self, uid: &str) {
        let Some(p) = self.pods.get(uid) else {
            return;
        };
        match p.state {
            Where::Active => {
                self.active
                    .remove(&(-(p.priority as i64), p.seq, uid.to_string()));
            }
            Where::Backoff => {
                self.backoff
                    .remove(&(p.backoff_until, p.seq, uid.to_string()));
            }
            Where::Unschedulable => {
                self.unschedulable.remove(uid);
            }
            Where::InFlight => {}
        }
    }

    /// A new pending pod (or one seen again after a relist): straight to active.
    pub fn add(&mut self, pod: Arc<Pod>, now: Instant) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if self.pods.contains_key(&uid) {
            self.update(pod, now);
            return;
        }
        let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        self.pods.insert(
            uid.clone(),
            QueuedPod {
                pod,
                uid: uid.clone(),
                priority,
                attempts: 0,
                unschedulable_plugins: HashSet::new(),
                cycle: 0,
                first_seen: now,
                seq: 0,
                backoff_until: now,
                since: now,
                state: Where::Active,
            },
        );
        self.push_active(&uid);
    }

    /// The pod object changed. An unschedulable pod whose spec or labels changed may
    /// fit now: it moves on (to backoff while backing off).
    pub fn update(&mut self, pod: Arc<Pod>, now: Instant) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let Some(p) = self.pods.get_mut(&uid) else {
            self.add(pod, now);
            return;
        };
        let changed = p.pod.spec != pod.spec || p.pod.metadata.labels != pod.metadata.labels;
        p.pod = pod;
        if changed && p.state == Where::Unschedulable {
            self.detach(&uid);
            self.requeue(&uid, now);
        }
    }

    pub fn delete(&mut self, uid: &str) {
        self.detach(uid);
        self.pods.remove(uid);
    }

    /// Active → (takes it out, marks it in flight and counts an attempt).
    pub fn pop(&mut self) -> Option<QueuedPod> {
        let (_, _, uid) = self.active.pop_first()?;
        self.cycle += 1;
        let cycle = self.cycle;
        let p = self.pods.get_mut(&uid)?;
        p.state = Where::InFlight;
        p.attempts += 1;
        p.cycle = cycle;
        Some(p.clone())
    }

    /// The pod was assumed onto a node: the queue forgets it.
    pub fn done(&mut self, uid: &str) {
        if self
            .pods
            .get(uid)
            .is_some_and(|p| p.state == Where::InFlight)
        {
            self.pods.remove(uid);
        }
    }

    /// Scheduling failed because no node fits. Goes to unschedulable unless a move
    /// request happened during its cycle (then backoff).
    pub fn unschedulable(&mut self, uid: &str, plugins: HashSet<&'static str>, now: Instant) {
        let move_cycle = self.move_request_cycle;
        let Some(p) = self.pods.get_mut(uid) else {
            return; // deleted meanwhile
        };
        p.unschedulable_plugins = plugins;
        p.backoff_until = now + backoff_for(p.attempts);
        p.since = now;
        if move_cycle >= p.cycle {
            self.push_backoff(uid);
        } else {
            p.state = Where::Unschedulable;
            self.unschedulable.insert(uid.to_string());
        }
    }

    /// Scheduling or binding failed with an error: retry after backoff. `pod` re-adds
    /// a pod the queue already forgot (a failed binding).
    pub fn error(&mut self, pod: Arc<Pod>, attempts: u32, now: Instant) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if !self.pods.contains_key(&uid) {
            self.add(pod, now);
            self.detach(&uid);
        }
        if let Some(p) = self.pods.get_mut(&uid) {
            p.attempts = p.attempts.max(attempts);
            p.backoff_until = now + backoff_for(p.attempts);
        }
        self.push_backoff(&uid);
    }

    fn requeue(&mut self, uid: &str, now: Instant) {
        let Some(p) = self.pods.get(uid) else {
            return;
        };
        if p.backoff_until > now {
            self.push_backoff(uid);
        } else {
            self.push_active(uid);
        }
    }

    /// Moves unschedulable pods the event may help to backoff/active.
    pub fn on_event(&mut self, ev: ClusterEvent, now: Instant) {
        self.move_request_cycle = self.cycle;
        let movers: Vec<String> = self
            .unschedulable
            .iter()
            .filter(|uid| {
                self.pods.get(*uid).is_some_and(|p| {
                    p.unschedulable_plugins.is_empty()
                        || p.unschedulable_plugins.iter().any(|pl| ev.may_help(pl))
                })
            })
            .cloned()
            .collect();
        for uid in movers {
            self.unschedulable.remove(&uid);
            self.requeue(&uid, now);
        }
    }

    /// Backoff expired → active; unschedulable for five minutes → retried.
    pub fn flush(&mut self, now: Instant) {
        while let Some((t, _, _)) = self.backoff.first() {
            if *t > now {
                break;
            }
            let (_, _, uid) = self.backoff.pop_first().expect("first exists");
            self.push_active(&uid);
        }
        let stale: Vec<String> = self
            .unschedulable
            .iter()
            .filter(|uid| {
                self.pods
                    .get(*uid)
                    .is_some_and(|p| now.duration_since(p.since) >= MAX_UNSCHEDULABLE)
            })
            .cloned()
            .collect();
        for uid in stale {
            self.unschedulable.remove(&uid);
            self.requeue(&uid, now);
        }
    }

    /// When `flush` next has something to do.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let b = self.backoff.first().map(|(t, _, _)| *t);
        let u = self
            .unschedulable
            .iter()
            .filter_map(|uid| self.pods.get(uid))
            .map(|p| p.since + MAX_UNSCHEDULABLE)
            .min();
        match (b, u) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// After a relist: pods not listed any more are gone (in-flight ones stay).
    pub fn retain(&mut self, keep: &HashSet<String>) {
        let gone: Vec<String> = self
            .pods
            .iter()
            .filter(|(uid, p)| p.state != Where::InFlight && !keep.contains(*uid))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            self.delete(&uid);
        }
    }

    pub fn has_active(&self) -> bool {
        !self.active.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(uid: &str, priority: i32) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": uid, "namespace": "default", "uid": uid},
                "spec": {"priority": priority, "containers": [{"name": "c"}]}
            }))
            .unwrap(),
        )
    }

    fn uids(q: &mut SchedulingQueue) -> Vec<String> {
        std::iter::from_fn(|| q.pop()).map(|p| p.uid).collect()
    }

    #[test]
    fn active_is_priority_then_fifo() {
        let now = Instant::now();
        let mut q = SchedulingQueue::new();
        q.add(pod("a", 0), now);
        q.add(pod("b", 10), now);
        q.add(pod("c", 0), now);
        q.add(pod("d", 10), now);
        assert_eq!(uids(&mut q), ["b", "d", "a", "c"]);
    }

    #[test]
    fn backoff_doubles_from_one_second_to_ten() {
        let want = [1, 2, 4, 8, 10, 10];
        for (attempts, secs) in (1..).zip(want) {
            assert_eq!(
                backoff_for(attempts),
                Duration::from_secs(secs),
                "{attempts}"
            );
        }
        let t0 = Instant::now();
        let mut q = SchedulingQueue::new();
        q.add(pod("a", 0), t0);
        let p = q.pop().unwrap();
        q.error(p.pod, p.attempts, t0);
        assert!(q.pop().is_none());
        q.flush(t0 + Duration::from_millis(999));
        assert!(q.pop().is_none());
        assert_eq!(q.next_wakeup(), Some(t0 + Duration::from_secs(1)));
        q.flush(t0 + Duration::from_secs(1));
        let p = q.pop().unwrap();
        assert_eq!(p.attempts, 2);
        q.error(p.pod, p.attempts, t0);
        q.flush(t0 + Duration::from_millis(1999));
        assert!(q.pop().is_none());
        q.flush(t0 + Duration::from_secs(2));
        assert!(q.pop().is_some());
    }

    #[test]
    fn unschedulable_pods_move_on_relevant_events_only() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::new();
        q.add(pod("cpu", 0), t0);
        q.add(pod("taint", 0), t0);
        let a = q.pop().unwrap();
        let b = q.pop().unwrap();
        q.unschedulable(&a.uid, ["NodeResourcesFit"].into(), t0);
        q.unschedulable(&b.uid, ["TaintToleration"].into(), t0);
        assert_eq!(q.sizes(), (0, 0, 2));
        // A deleted pod frees cpu, but does not remove taints.
        let t1 = t0 + Duration::from_secs(5);
        q.on_event(ClusterEvent::AssignedPodDeleted, t1);
        assert_eq!(q.sizes(), (1, 0, 1));
        assert_eq!(q.pop().unwrap().uid, "cpu");
        // A node update may: the taint pod moves (its 1 s backoff is over).
        q.on_event(ClusterEvent::NodeUpdated, t1);
        assert_eq!(q.pop().unwrap().uid, "taint");
    }

    #[test]
    fn a_pod_still_backing_off_moves_to_backoff_and_a_move_during_its_cycle_counts() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::new();
        q.add(pod("a", 0), t0);
        let a = q.pop().unwrap();
        // A node was added while `a` was being scheduled: it must not be parked.
        q.on_event(ClusterEvent::NodeAdded, t0);
        q.unschedulable(&a.uid, ["NodeResourcesFit"].into(), t0);
        assert_eq!(q.sizes(), (0, 1, 0));
        q.flush(t0 + Duration::from_secs(1));
        let a = q.pop().unwrap();
        q.unschedulable(&a.uid, ["NodeResourcesFit"].into(), t0);
        assert_eq!(q.sizes(), (0, 0, 1));
        q.on_event(ClusterEvent::NodeAdded, t0 + Duration::from_millis(500));
        assert_eq!(q.sizes(), (0, 1, 0), "still within its 2 s backoff");
    }

    #[test]
    fn unschedulable_pods_retry_after_five_minutes_and_on_spec_changes() {
        let t0 = Instant::now();
        let mut q = SchedulingQueue::new();
        q.add(pod("a", 0), t0);
        let a = q.pop().unwrap();
        q.unschedulable(&a.uid, ["TaintToleration"].into(), t0);
        assert_eq!(q.next_wakeup(), Some(t0 + MAX_UNSCHEDULABLE));
        q.flush(t0 + Duration::from_secs(299));
        assert_eq!(q.sizes(), (0, 0, 1));
        q.flush(t0 + MAX_UNSCHEDULABLE);
        assert_eq!(q.sizes(), (1, 0, 0));
        let a = q.pop().unwrap();
        q.unschedulable(&a.uid, ["TaintToleration"].into(), t0);
        // Same object again: stays; a changed spec (a new toleration): moves.
        q.update(pod("a", 0), t0 + Duration::from_secs(20));
        assert_eq!(q.sizes(), (0, 0, 1));
        let mut changed = (*pod("a", 0)).clone();
        changed.spec.as_mut().unwrap().tolerations = Some(vec![Default::default()]);
        q.update(Arc::new(changed), t0 + Duration::from_secs(20));
        assert_eq!(q.sizes(), (1, 0, 0));
        q.delete("a");
        assert!(q.is_empty());
        assert!(q.pop().is_none());
    }
}
