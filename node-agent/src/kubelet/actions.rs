//! Decide, don't act: what a pod worker should do next, computed from the pod, what the
//! runtime reports, and what the worker remembers (back-offs, last failures). The
//! kubelet's `computePodActions` in one pure function; [`super::worker`] carries the
//! result out.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};

use super::probes::{ProbeKind, ProbeResults};

/// A container's state as the runtime reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerPhase {
    Created,
    Running,
    Exited,
    Unknown,
}

/// One container (one attempt) in the pod's sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    pub attempt: u32,
    pub phase: ContainerPhase,
    pub exit_code: i32,
    /// The runtime's reason (`Completed`, `Error`, `OOMKilled`) and message.
    pub reason: String,
    pub message: String,
    /// Unix nanoseconds; 0 when not reached.
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub image: String,
    pub image_ref: String,
    /// The spec hash the kubelet put on the container (empty if it put none).
    pub spec_hash: String,
}

/// One pod sandbox of the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRecord {
    pub id: String,
    pub ready: bool,
    pub attempt: u32,
    pub ip: String,
    pub created_at: i64,
}

/// What the runtime holds for one pod: its sandboxes (newest first) and the containers
/// of the newest one (every attempt still present).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeState {
    pub sandboxes: Vec<SandboxRecord>,
    pub containers: Vec<ContainerRecord>,
}

impl RuntimeState {
    /// The sandbox the pod runs in: the newest one.
    pub fn sandbox(&self) -> Option<&SandboxRecord> {
        self.sandboxes.first()
    }

    /// The newest attempt of container `name`.
    pub fn latest(&self, name: &str) -> Option<&ContainerRecord> {
        self.containers
            .iter()
            .filter(|c| c.name == name)
            .max_by_key(|c| (c.attempt, c.created_at))
    }

    /// The attempt before the newest one.
    pub fn previous(&self, name: &str) -> Option<&ContainerRecord> {
        let latest = self.latest(name)?;
        self.containers
            .iter()
            .filter(|c| c.name == name && c.id != latest.id)
            .max_by_key(|c| (c.attempt, c.created_at))
    }
}

/// An exponential back-off entry (CrashLoopBackOff, ImagePullBackOff).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// No new attempt before this instant.
    pub until: Instant,
    /// The current delay (doubles on every attempt up to the maximum).
    pub delay: Duration,
}

/// Back-off bounds: upstream's 10 s doubling to 5 min.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
        }
    }
}

impl BackoffPolicy {
    /// The entry after one more attempt at `now`.
    pub fn next(&self, prev: Option<&Backoff>, now: Instant) -> Backoff {
        let delay = match prev {
            None => self.initial,
            Some(b) => (b.delay * 2).min(self.max),
        };
        Backoff {
            until: now + delay,
            delay,
        }
    }
}

/// Why a container is not running, as shown in `state.waiting`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub reason: String,
    pub message: String,
}

impl Waiting {
    pub fn new(reason: &str, message: impl Into<String>) -> Self {
        Waiting {
            reason: reason.to_string(),
            message: message.into(),
        }
    }
}

/// What a pod worker remembers between syncs (lost on restart, as upstream's).
#[derive(Debug, Clone, Default)]
pub struct PodMemory {
    /// Restart back-off per container name.
    pub crash_backoff: BTreeMap<String, Backoff>,
    /// Pull back-off per image reference.
    pub pull_backoff: BTreeMap<String, Backoff>,
    /// The last failure to start each container (ErrImagePull, CreateContainerError…),
    /// cleared when it starts.
    pub failures: BTreeMap<String, Waiting>,
    /// The settled probe results of the running containers.
    pub probes: ProbeResults,
    /// Containers (ids) killed by a failed liveness/startup probe: they restart
    /// unless the policy is Never, whatever their exit code.
    pub killed_by_probe: std::collections::BTreeSet<String>,
    /// A failure of the whole pod (activeDeadlineSeconds, eviction): every container
    /// is stopped and none started again.
    pub pod_failure: Option<Waiting>,
}

/// Why a running container is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    /// Its liveness or startup probe failed: it restarts per `restartPolicy`.
    ProbeFailed(ProbeKind),
    /// Its spec (image) changed: it is recreated at once.
    SpecChanged,
    /// The pod failed as a whole (deadline, eviction).
    PodFailed,
}

/// Stop one running container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillContainer {
    pub id: String,
    pub name: String,
    pub reason: KillReason,
    /// The grace period (probe-level `terminationGracePeriodSeconds`, else the pod's).
    pub grace_seconds: i64,
    /// The `Killing` event's message.
    pub message: String,
}

/// Start (pull, create, start) one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartContainer {
    pub name: String,
    pub init: bool,
    pub attempt: u32,
    /// A restart of an exited container: it moves the crash back-off on.
    pub restart: bool,
}

/// What to do for a pod, in this order: tear down (`terminate`) — or remove stale
/// sandboxes, create the sandbox, start containers, remove dead attempts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actions {
    /// The pod is being deleted: stop everything within the grace period, remove the
    /// sandbox, then confirm the deletion. Nothing else is set.
    pub terminate: bool,
    /// Running containers to stop first (a start of the same name may follow).
    pub kill: Vec<KillContainer>,
    /// Sandboxes to stop and remove (older ones, or a dead current one).
    pub remove_sandboxes: Vec<String>,
    /// Create a sandbox with this attempt number; containers start in it.
    pub create_sandbox: Option<u32>,
    pub start: Vec<StartContainer>,
    /// Exited attempts no longer needed (beyond the newest two of each name).
    pub remove_containers: Vec<String>,
    /// Containers held back by a back-off, with the reason shown in their status.
    pub waiting: BTreeMap<String, Waiting>,
    /// When to look again at the latest (a back-off ends).
    pub requeue_after: Option<Duration>,
}

/// `Always` (the default), `OnFailure` or `Never`.
pub fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

/// Whether an exited container with `exit_code` runs again under `policy`.
pub fn should_restart(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// The phase the pod already reached for good (a terminal pod never runs again).
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

pub fn is_deleting(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// `imagePullPolicy`, defaulted as upstream: `Always` for `:latest` or no tag,
/// `IfNotPresent` otherwise.
pub fn pull_policy(c: &Container) -> &str {
    if let Some(p) = c.image_pull_policy.as_deref().filter(|p| !p.is_empty()) {
        return p;
    }
    let image = c.image.as_deref().unwrap_or("");
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn pod_label(pod: &Pod) -> String {
    format!(
        "{}_{}({})",
        pod.metadata.name.as_deref().unwrap_or(""),
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.uid.as_deref().unwrap_or("")
    )
}

/// The hash of the parts of a container spec that, once changed, need a new container
/// (only `image` can change on a running pod): FNV-1a 32 in hex, as upstream hashes.
pub fn container_hash(c: &Container) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in c.image.as_deref().unwrap_or("").bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// upstream's reason and message for a pod past its `activeDeadlineSeconds`.
pub const DEADLINE_REASON: &str = "DeadlineExceeded";
pub const DEADLINE_MESSAGE: &str = "Pod was active on the node longer than the specified deadline";

/// Whether `pod` has been active longer than its `activeDeadlineSeconds` at `now`
/// (counted from `status.startTime`, as upstream).
pub fn deadline_exceeded(pod: &Pod, now: k8s_openapi::jiff::Timestamp) -> bool {
    let Some(deadline) = pod.spec.as_ref().and_then(|s| s.active_deadline_seconds) else {
        return false;
    };
    let Some(start) = pod.status.as_ref().and_then(|s| s.start_time.as_ref()) else {
        return false;
    };
    now.as_second() - start.0.as_second() >= deadline
}

/// The pod's `terminationGracePeriodSeconds` (30 by default).
pub fn pod_grace_seconds(pod: &Pod) -> i64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30)
        .max(0)
}

/// Whether the running container `r` of spec `c` must be killed, and why.
fn kill_for(
    pod: &Pod,
    c: &Container,
    r: &ContainerRecord,
    memory: &PodMemory,
) -> Option<KillContainer> {
    let (reason, message, grace) = if !r.spec_hash.is_empty() && r.spec_hash != container_hash(c) {
        (
            KillReason::SpecChanged,
            format!("Container {} definition changed, will be restarted", c.name),
            pod_grace_seconds(pod),
        )
    } else if let Some(kind) = memory.probes.failed_restart_probe(&r.id) {
        let probe_grace = kind.of(c).and_then(|p| p.termination_grace_period_seconds);
        (
            KillReason::ProbeFailed(kind),
            format!(
                "Container {} failed {} probe, will be restarted",
                c.name,
                kind.title().to_lowercase()
            ),
            probe_grace.unwrap_or_else(|| pod_grace_seconds(pod)).max(0),
        )
    } else {
        return None;
    };
    Some(KillContainer {
        id: r.id.clone(),
        name: c.name.clone(),
        reason,
        grace_seconds: grace,
        message,
    })
}

/// Decides the next step for `pod` given the runtime's `state` and the worker's
/// `memory` at `now`.
pub fn compute_pod_actions(
    pod: &Pod,
    state: &RuntimeState,
    memory: &PodMemory,
    now: Instant,
) -> Actions {
    let mut a = Actions::default();
    if is_deleting(pod) {
        a.terminate = true;
        return a;
    }
    if is_terminal(pod) {
        return a;
    }
    let Some(spec) = pod.spec.as_ref() else {
        return a;
    };
    if let Some(failure) = &memory.pod_failure {
        // The pod failed as a whole: stop what runs, start nothing. An eviction
        // kills at once, as upstream's eviction manager for local storage limits.
        let grace = if failure.reason == "Evicted" {
            0
        } else {
            pod_grace_seconds(pod)
        };
        a.kill = state
            .containers
            .iter()
            .filter(|r| matches!(r.phase, ContainerPhase::Running | ContainerPhase::Created))
            .map(|r| KillContainer {
                id: r.id.clone(),
                name: r.name.clone(),
                reason: KillReason::PodFailed,
                grace_seconds: grace,
                message: format!("Stopping container {}", r.name),
            })
            .collect();
        return a;
    }
    let policy = restart_policy(pod);

    // The newest sandbox is the pod's; older ones go. A dead newest one is replaced
    // (its containers died with it), unless the pod is done and would not restart.
    let mut fresh = state.clone();
    a.remove_sandboxes = state
        .sandboxes
        .iter()
        .skip(1)
        .map(|s| s.id.clone())
        .collect();
    match state.sandbox() {
        None => {
            a.create_sandbox = Some(0);
            fresh.containers.clear();
        }
        Some(sb) if !sb.ready => {
            let all_done = !state.containers.is_empty()
                && state
                    .containers
                    .iter()
                    .all(|c| c.phase == ContainerPhase::Exited);
            if all_done && policy == "Never" {
                return a;
            }
            a.remove_sandboxes.insert(0, sb.id.clone());
            a.create_sandbox = Some(sb.attempt + 1);
            fresh.containers.clear();
        }
        Some(_) => {}
    }

    let hold = |a: &mut Actions, name: &str, w: Waiting, until: Instant| {
        a.waiting.insert(name.to_string(), w);
        let left = until.saturating_duration_since(now);
        a.requeue_after = Some(a.requeue_after.map_or(left, |r| r.min(left)));
    };
    // Pull back-off: the image failed recently; wait before trying again.
    let pull_held = |a: &mut Actions, c: &Container| -> bool {
        let image = c.image.clone().unwrap_or_default();
        match memory.pull_backoff.get(&image) {
            Some(b) if b.until > now => {
                hold(
                    a,
                    &c.name,
                    Waiting::new(
                        "ImagePullBackOff",
                        format!("Back-off pulling image {image:?}"),
                    ),
                    b.until,
                );
                true
            }
            _ => false,
        }
    };
    // Decide one container: None (nothing to do) or the start to make.
    // Crash back-off: the container restarted recently; wait before the next restart.
    let crash_held = |a: &mut Actions, c: &Container| -> bool {
        let Some(b) = memory.crash_backoff.get(&c.name).filter(|b| b.until > now) else {
            return false;
        };
        hold(
            a,
            &c.name,
            Waiting::new(
                "CrashLoopBackOff",
                format!(
                    "back-off {}s restarting failed container={} pod={}",
                    b.delay.as_secs(),
                    c.name,
                    pod_label(pod)
                ),
            ),
            b.until,
        );
        true
    };
    // Decide one container: None (nothing to do) or the start to make.
    let decide = |a: &mut Actions, c: &Container, init: bool| -> Option<StartContainer> {
        match fresh.latest(&c.name) {
            None => (!pull_held(a, c)).then(|| StartContainer {
                name: c.name.clone(),
                init,
                attempt: 0,
                restart: false,
            }),
            Some(r) if r.phase == ContainerPhase::Running => {
                if init {
                    return None;
                }
                let kill = kill_for(pod, c, r, memory)?;
                let reason = kill.reason;
                a.kill.push(kill);
                let start = |restart: bool| StartContainer {
                    name: c.name.clone(),
                    init,
                    attempt: r.attempt + 1,
                    restart,
                };
                match reason {
                    // A changed spec is recreated at once (no back-off, any policy).
                    KillReason::SpecChanged => (!pull_held(a, c)).then(|| start(false)),
                    // A failed probe restarts the container unless the policy is
                    // Never — whatever its exit code — after the crash back-off, as
                    // upstream (the first restart is immediate).
                    KillReason::ProbeFailed(_) if policy != "Never" => {
                        (!crash_held(a, c) && !pull_held(a, c)).then(|| start(true))
                    }
                    _ => None,
                }
            }
            Some(r) if r.phase == ContainerPhase::Exited => {
                let killed = policy != "Never" && memory.killed_by_probe.contains(&r.id);
                if !(killed || should_restart(policy, r.exit_code)) || (init && r.exit_code == 0) {
                    return None;
                }
                if crash_held(a, c) {
                    return None;
                }
                (!pull_held(a, c)).then(|| StartContainer {
                    name: c.name.clone(),
                    init,
                    attempt: r.attempt + 1,
                    restart: true,
                })
            }
            // Created but never started (a start that failed half-way), or unknown:
            // replace it with a new attempt.
            Some(r) => {
                a.remove_containers.push(r.id.clone());
                (!pull_held(a, c)).then(|| StartContainer {
                    name: c.name.clone(),
                    init,
                    attempt: r.attempt + 1,
                    restart: false,
                })
            }
        }
    };

    // Init containers run one at a time, in order; each must exit 0.
    let mut initialized = true;
    for c in spec.init_containers.iter().flatten() {
        let done = fresh
            .latest(&c.name)
            .is_some_and(|r| r.phase == ContainerPhase::Exited && r.exit_code == 0);
        if done {
            continue;
        }
        initialized = false;
        let failed_for_good = fresh.latest(&c.name).is_some_and(|r| {
            r.phase == ContainerPhase::Exited && r.exit_code != 0 && policy == "Never"
        });
        if !failed_for_good {
            if let Some(s) = decide(&mut a, c, true) {
                a.start.push(s);
            }
        }
        break;
    }
    if initialized {
        for c in &spec.containers {
            if let Some(s) = decide(&mut a, c, false) {
                a.start.push(s);
            }
        }
    }

    // Keep the newest two attempts of each container (the current one and the one
    // `lastState` and `kubectl logs --previous` show); remove older exited ones.
    let mut by_name: BTreeMap<&str, Vec<&ContainerRecord>> = BTreeMap::new();
    for c in &fresh.containers {
        by_name.entry(c.name.as_str()).or_default().push(c);
    }
    for (_, mut cs) in by_name {
        cs.sort_by_key(|c| std::cmp::Reverse((c.attempt, c.created_at)));
        for c in cs.iter().skip(2) {
            if c.phase == ContainerPhase::Exited && !a.remove_containers.contains(&c.id) {
                a.remove_containers.push(c.id.clone());
            }
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    fn container(name: &str) -> Container {
        Container {
            name: name.into(),
            image: Some(format!("reg/{name}:v1")),
            ..Default::default()
        }
    }

    fn pod(policy: &str, init: &[&str], containers: &[&str]) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("p".into());
        p.metadata.namespace = Some("default".into());
        p.metadata.uid = Some("u1".into());
        p.spec = Some(PodSpec {
            restart_policy: Some(policy.into()),
            init_containers: (!init.is_empty())
                .then(|| init.iter().map(|n| container(n)).collect()),
            containers: containers.iter().map(|n| container(n)).collect(),
            ..Default::default()
        });
        p
    }

    fn sandbox(ready: bool) -> SandboxRecord {
        SandboxRecord {
            id: "sb".into(),
            ready,
            attempt: 0,
            ip: "127.0.0.1".into(),
            created_at: 1,
        }
    }

    fn rec(name: &str, attempt: u32, phase: ContainerPhase, code: i32) -> ContainerRecord {
        ContainerRecord {
            id: format!("{name}-{attempt}"),
            name: name.into(),
            attempt,
            phase,
            exit_code: code,
            reason: String::new(),
            message: String::new(),
            created_at: attempt as i64 + 1,
            started_at: 0,
            finished_at: 0,
            image: String::new(),
            image_ref: String::new(),
            spec_hash: String::new(),
        }
    }

    fn state(containers: Vec<ContainerRecord>) -> RuntimeState {
        RuntimeState {
            sandboxes: vec![sandbox(true)],
            containers,
        }
    }

    fn starts(a: &Actions) -> Vec<(String, u32, bool)> {
        a.start
            .iter()
            .map(|s| (s.name.clone(), s.attempt, s.restart))
            .collect()
    }

    fn s(n: &str, attempt: u32, restart: bool) -> (String, u32, bool) {
        (n.to_string(), attempt, restart)
    }

    use ContainerPhase::*;

    #[test]
    fn a_new_pod_gets_a_sandbox_and_its_first_init_container() {
        let now = Instant::now();
        let m = PodMemory::default();
        let a = compute_pod_actions(
            &pod("Always", &[], &["a", "b"]),
            &RuntimeState::default(),
            &m,
            now,
        );
        assert_eq!(a.create_sandbox, Some(0));
        assert_eq!(starts(&a), vec![s("a", 0, false), s("b", 0, false)]);

        let a = compute_pod_actions(
            &pod("Always", &["i1", "i2"], &["a"]),
            &RuntimeState::default(),
            &m,
            now,
        );
        assert_eq!(starts(&a), vec![s("i1", 0, false)]);
    }

    #[test]
    fn init_containers_run_in_order_and_must_succeed() {
        let now = Instant::now();
        let m = PodMemory::default();
        let p = pod("Always", &["i1", "i2"], &["a"]);
        // i1 running: wait.
        let a = compute_pod_actions(&p, &state(vec![rec("i1", 0, Running, 0)]), &m, now);
        assert!(a.start.is_empty() && a.create_sandbox.is_none());
        // i1 done: i2 next.
        let a = compute_pod_actions(&p, &state(vec![rec("i1", 0, Exited, 0)]), &m, now);
        assert_eq!(starts(&a), vec![s("i2", 0, false)]);
        // both done: the app containers.
        let a = compute_pod_actions(
            &p,
            &state(vec![rec("i1", 0, Exited, 0), rec("i2", 0, Exited, 0)]),
            &m,
            now,
        );
        assert_eq!(starts(&a), vec![s("a", 0, false)]);
        // i1 failed: restarted (Always), never with Never.
        let a = compute_pod_actions(&p, &state(vec![rec("i1", 0, Exited, 1)]), &m, now);
        assert_eq!(starts(&a), vec![s("i1", 1, true)]);
        let p = pod("Never", &["i1"], &["a"]);
        let a = compute_pod_actions(&p, &state(vec![rec("i1", 0, Exited, 1)]), &m, now);
        assert!(a.start.is_empty());
    }

    #[test]
    fn restart_policy_decides_which_exits_restart() {
        let now = Instant::now();
        let m = PodMemory::default();
        let st = state(vec![rec("ok", 0, Exited, 0), rec("bad", 0, Exited, 2)]);
        let cases = [
            ("Always", vec![s("ok", 1, true), s("bad", 1, true)]),
            ("OnFailure", vec![s("bad", 1, true)]),
            ("Never", vec![]),
        ];
        for (policy, want) in cases {
            let a = compute_pod_actions(&pod(policy, &[], &["ok", "bad"]), &st, &m, now);
            assert_eq!(starts(&a), want, "{policy}");
        }
    }

    #[test]
    fn crash_back_off_holds_restarts_as_crash_loop_back_off() {
        let now = Instant::now();
        let mut m = PodMemory::default();
        let policy = BackoffPolicy::default();
        m.crash_backoff
            .insert("a".into(), policy.next(None, now - Duration::from_secs(3)));
        let p = pod("Always", &[], &["a"]);
        let st = state(vec![rec("a", 0, Exited, 1)]);
        let a = compute_pod_actions(&p, &st, &m, now);
        assert!(a.start.is_empty());
        assert_eq!(a.waiting["a"].reason, "CrashLoopBackOff");
        assert!(a.waiting["a"].message.contains("back-off 10s"));
        assert_eq!(a.requeue_after, Some(Duration::from_secs(7)));
        // Once the back-off ends, the restart goes ahead.
        let a = compute_pod_actions(&p, &st, &m, now + Duration::from_secs(8));
        assert_eq!(starts(&a), vec![s("a", 1, true)]);
    }

    #[test]
    fn back_off_doubles_up_to_five_minutes() {
        let p = BackoffPolicy::default();
        let now = Instant::now();
        let mut b = p.next(None, now);
        let mut delays = vec![b.delay.as_secs()];
        for _ in 0..6 {
            b = p.next(Some(&b), now);
            delays.push(b.delay.as_secs());
        }
        assert_eq!(delays, vec![10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn pull_back_off_holds_the_container_as_image_pull_back_off() {
        let now = Instant::now();
        let mut m = PodMemory::default();
        m.pull_backoff
            .insert("reg/a:v1".into(), BackoffPolicy::default().next(None, now));
        let a = compute_pod_actions(
            &pod("Always", &[], &["a"]),
            &RuntimeState::default(),
            &m,
            now,
        );
        assert!(a.start.is_empty());
        assert_eq!(a.waiting["a"].reason, "ImagePullBackOff");
    }

    #[test]
    fn deletion_terminates_and_terminal_pods_stay_put() {
        let now = Instant::now();
        let m = PodMemory::default();
        let mut p = pod("Always", &[], &["a"]);
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
        let a = compute_pod_actions(&p, &state(vec![rec("a", 0, Running, 0)]), &m, now);
        assert_eq!(
            a,
            Actions {
                terminate: true,
                ..Default::default()
            }
        );

        let mut p = pod("Always", &[], &["a"]);
        p.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Failed".into()),
            ..Default::default()
        });
        let a = compute_pod_actions(&p, &state(vec![rec("a", 0, Exited, 1)]), &m, now);
        assert_eq!(a, Actions::default());
    }

    #[test]
    fn a_dead_sandbox_is_replaced_and_stale_ones_removed() {
        let now = Instant::now();
        let m = PodMemory::default();
        let mut st = state(vec![rec("a", 0, Exited, 137)]);
        st.sandboxes[0].ready = false;
        st.sandboxes[0].attempt = 2;
        st.sandboxes.push(SandboxRecord {
            id: "old".into(),
            ..sandbox(false)
        });
        let a = compute_pod_actions(&pod("Always", &[], &["a"]), &st, &m, now);
        assert_eq!(
            a.remove_sandboxes,
            vec!["sb".to_string(), "old".to_string()]
        );
        assert_eq!(a.create_sandbox, Some(3));
        assert_eq!(starts(&a), vec![s("a", 0, false)]);
    }

    #[test]
    fn only_the_newest_two_attempts_are_kept() {
        let now = Instant::now();
        let m = PodMemory::default();
        let st = state(vec![
            rec("a", 0, Exited, 1),
            rec("a", 1, Exited, 1),
            rec("a", 2, Exited, 1),
            rec("a", 3, Running, 0),
        ]);
        let a = compute_pod_actions(&pod("Always", &[], &["a"]), &st, &m, now);
        assert!(a.start.is_empty());
        let mut removed = a.remove_containers.clone();
        removed.sort();
        assert_eq!(removed, vec!["a-0".to_string(), "a-1".to_string()]);
    }

    #[test]
    fn pull_policy_defaults_as_upstream() {
        let c = |image: &str, policy: Option<&str>| Container {
            name: "c".into(),
            image: Some(image.into()),
            image_pull_policy: policy.map(str::to_string),
            ..Default::default()
        };
        assert_eq!(pull_policy(&c("reg:5000/a", None)), "Always");
        assert_eq!(pull_policy(&c("reg:5000/a:latest", None)), "Always");
        assert_eq!(pull_policy(&c("reg:5000/a:v1", None)), "IfNotPresent");
        assert_eq!(pull_policy(&c("reg/a@sha256:00", None)), "IfNotPresent");
        assert_eq!(pull_policy(&c("reg/a:v1", Some("Never"))), "Never");
    }

    #[test]
    fn failed_liveness_or_startup_kills_and_the_exit_restarts_per_policy() {
        use crate::kubelet::probes::{ProbeKind, ProbeResult};
        use k8s_openapi::api::core::v1::Probe;
        let now = Instant::now();
        let mut p = pod("Always", &[], &["a", "b"]);
        p.spec.as_mut().unwrap().containers[0].liveness_probe = Some(Probe {
            termination_grace_period_seconds: Some(2),
            ..Default::default()
        });
        let st = state(vec![rec("a", 0, Running, 0), rec("b", 0, Running, 0)]);
        let mut m = PodMemory::default();
        // Healthy: nothing to do.
        m.probes
            .set("a-0", ProbeKind::Liveness, ProbeResult::Success);
        assert!(compute_pod_actions(&p, &st, &m, now).kill.is_empty());
        // Failed liveness: killed with the probe's grace period and restarted at once
        // (no back-off yet).
        m.probes
            .set("a-0", ProbeKind::Liveness, ProbeResult::Failure);
        let a = compute_pod_actions(&p, &st, &m, now);
        assert_eq!(
            a.kill,
            vec![KillContainer {
                id: "a-0".into(),
                name: "a".into(),
                reason: KillReason::ProbeFailed(ProbeKind::Liveness),
                grace_seconds: 2,
                message: "Container a failed liveness probe, will be restarted".into(),
            }]
        );
        assert_eq!(starts(&a), vec![s("a", 1, true)]);
        // In back-off: killed, held as CrashLoopBackOff.
        let mut held = m.clone();
        held.crash_backoff
            .insert("a".into(), BackoffPolicy::default().next(None, now));
        let a = compute_pod_actions(&p, &st, &held, now);
        assert_eq!(a.kill.len(), 1);
        assert!(a.start.is_empty());
        assert_eq!(a.waiting["a"].reason, "CrashLoopBackOff");
        // With restartPolicy Never: killed only.
        let mut never = p.clone();
        never.spec.as_mut().unwrap().restart_policy = Some("Never".into());
        let a = compute_pod_actions(&never, &st, &m, now);
        assert_eq!((a.kill.len(), a.start.len()), (1, 0));
        // Failed startup: the pod's grace period.
        let mut m = PodMemory::default();
        m.probes
            .set("b-0", ProbeKind::Startup, ProbeResult::Failure);
        let a = compute_pod_actions(&p, &st, &m, now);
        assert_eq!(a.kill.len(), 1);
        assert_eq!(a.kill[0].grace_seconds, 30);
        assert_eq!(
            a.kill[0].message,
            "Container b failed startup probe, will be restarted"
        );
        // A probe-killed container that exited 0 still restarts under OnFailure
        // (after its back-off); never under Never.
        let st = state(vec![rec("a", 0, Exited, 0), rec("b", 0, Running, 0)]);
        let mut m = PodMemory::default();
        let mut on_failure = p.clone();
        on_failure.spec.as_mut().unwrap().restart_policy = Some("OnFailure".into());
        assert!(compute_pod_actions(&on_failure, &st, &m, now)
            .start
            .is_empty());
        m.killed_by_probe.insert("a-0".into());
        assert_eq!(
            starts(&compute_pod_actions(&on_failure, &st, &m, now)),
            vec![s("a", 1, true)]
        );
        assert!(compute_pod_actions(&never, &st, &m, now).start.is_empty());
    }

    #[test]
    fn a_changed_image_recreates_the_container_at_once() {
        let now = Instant::now();
        let m = PodMemory::default();
        let p = pod("Never", &[], &["a"]);
        let mut r = rec("a", 0, Running, 0);
        r.spec_hash = container_hash(&p.spec.as_ref().unwrap().containers[0]);
        assert!(compute_pod_actions(&p, &state(vec![r.clone()]), &m, now)
            .kill
            .is_empty());
        let mut changed = p.clone();
        changed.spec.as_mut().unwrap().containers[0].image = Some("reg/a:v2".into());
        let a = compute_pod_actions(&changed, &state(vec![r.clone()]), &m, now);
        assert_eq!(a.kill.len(), 1);
        assert_eq!(a.kill[0].reason, KillReason::SpecChanged);
        assert_eq!(
            a.kill[0].message,
            "Container a definition changed, will be restarted"
        );
        // Recreated in the same sync, even with restartPolicy Never.
        assert_eq!(starts(&a), vec![s("a", 1, false)]);
        // A container without a hash (started by an older kubelet) is left alone.
        r.spec_hash.clear();
        assert!(compute_pod_actions(&changed, &state(vec![r]), &m, now)
            .kill
            .is_empty());
    }

    #[test]
    fn a_failed_pod_stops_everything_and_starts_nothing() {
        let now = Instant::now();
        let m = PodMemory {
            pod_failure: Some(Waiting::new(DEADLINE_REASON, DEADLINE_MESSAGE)),
            ..Default::default()
        };
        let p = pod("Always", &[], &["a", "b"]);
        let a = compute_pod_actions(
            &p,
            &state(vec![rec("a", 0, Running, 0), rec("b", 0, Exited, 1)]),
            &m,
            now,
        );
        assert_eq!(a.kill.len(), 1);
        assert_eq!(a.kill[0].reason, KillReason::PodFailed);
        assert!(a.start.is_empty() && a.create_sandbox.is_none());
    }

    #[test]
    fn active_deadline() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        use k8s_openapi::jiff::Timestamp;
        let t = |s: i64| Timestamp::from_second(s).unwrap();
        let mut p = pod("Always", &[], &["a"]);
        assert!(!deadline_exceeded(&p, t(1_000_000)));
        p.spec.as_mut().unwrap().active_deadline_seconds = Some(5);
        // No start time yet: not running, no deadline.
        assert!(!deadline_exceeded(&p, t(1_000_000)));
        p.status = Some(k8s_openapi::api::core::v1::PodStatus {
            start_time: Some(Time(t(100))),
            ..Default::default()
        });
        let cases = [(100, false), (104, false), (105, true), (200, true)];
        for (now, want) in cases {
            assert_eq!(deadline_exceeded(&p, t(now)), want, "at {now}");
        }
    }
}
