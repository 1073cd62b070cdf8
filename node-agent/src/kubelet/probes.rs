//! Container probes (liveness, readiness, startup) the upstream way: one prober task
//! per running container and probe kind, probing every `periodSeconds` after
//! `initialDelaySeconds`, turning raw outcomes into a settled result only after
//! `successThreshold`/`failureThreshold` consecutive ones, and waking the pod worker
//! when a result changes. The worker reads the results: readiness drives `ready`,
//! startup drives `started` and gates the other two, and a liveness or startup
//! failure makes [`super::actions::compute_pod_actions`] kill the container.
//!
//! The counting ([`ProbeCounter`]) and gating ([`gate`]) are pure and table-tested;
//! the probe mechanics live in [`handlers`].

pub mod handlers;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::jiff::Timestamp;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::debug;

use super::actions::{ContainerPhase, RuntimeState};
use super::events::{EventRecorder, EventType};
use crate::cri::CriRuntime;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
}

impl ProbeKind {
    /// As upstream words it in events ("Liveness probe failed: …").
    pub fn title(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Startup => "Startup",
        }
    }

    pub fn of(self, c: &Container) -> Option<&Probe> {
        match self {
            ProbeKind::Liveness => c.liveness_probe.as_ref(),
            ProbeKind::Readiness => c.readiness_probe.as_ref(),
            ProbeKind::Startup => c.startup_probe.as_ref(),
        }
    }

    /// The result before the first probe settles: a container is alive until shown
    /// otherwise, not ready until shown ready, not started until shown started.
    pub fn initial(self) -> ProbeResult {
        match self {
            ProbeKind::Liveness => ProbeResult::Success,
            ProbeKind::Readiness => ProbeResult::Failure,
            ProbeKind::Startup => ProbeResult::Unknown,
        }
    }

    const ALL: [ProbeKind; 3] = [
        ProbeKind::Startup,
        ProbeKind::Liveness,
        ProbeKind::Readiness,
    ];
}

/// A settled probe result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeResult {
    Success,
    Failure,
    Unknown,
}

/// The settled results of one pod's probes, by container id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeResults {
    pub results: BTreeMap<(String, ProbeKind), ProbeResult>,
}

impl ProbeResults {
    pub fn get(&self, container_id: &str, kind: ProbeKind) -> Option<ProbeResult> {
        self.results.get(&(container_id.to_string(), kind)).copied()
    }

    pub fn set(&mut self, container_id: &str, kind: ProbeKind, r: ProbeResult) {
        self.results.insert((container_id.to_string(), kind), r);
    }

    /// Whether container `c` (running as `id`) has started: its startup probe (if
    /// any) succeeded.
    pub fn started(&self, c: &Container, id: &str) -> bool {
        c.startup_probe.is_none() || self.get(id, ProbeKind::Startup) == Some(ProbeResult::Success)
    }

    /// Whether container `c` (running as `id`) is ready: started, and its readiness
    /// probe (if any) succeeded.
    pub fn ready(&self, c: &Container, id: &str) -> bool {
        self.started(c, id)
            && (c.readiness_probe.is_none()
                || self.get(id, ProbeKind::Readiness) == Some(ProbeResult::Success))
    }

    /// The probe whose failure means the container must be restarted, if any.
    pub fn failed_restart_probe(&self, id: &str) -> Option<ProbeKind> {
        [ProbeKind::Startup, ProbeKind::Liveness]
            .into_iter()
            .find(|k| self.get(id, *k) == Some(ProbeResult::Failure))
    }
}

/// A probe's timing fields with upstream's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTiming {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl ProbeTiming {
    pub fn of(p: &Probe) -> Self {
        let secs =
            |v: Option<i32>, d: i32, min: i32| Duration::from_secs(v.unwrap_or(d).max(min) as u64);
        ProbeTiming {
            initial_delay: secs(p.initial_delay_seconds, 0, 0),
            period: secs(p.period_seconds, 10, 1),
            timeout: secs(p.timeout_seconds, 1, 1),
            success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
        }
    }
}

/// Consecutive outcomes → settled result (upstream's `resultRun`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeCounter {
    pub result: ProbeResult,
    last: Option<bool>,
    run: u32,
}

impl ProbeCounter {
    pub fn new(kind: ProbeKind) -> Self {
        ProbeCounter {
            result: kind.initial(),
            last: None,
            run: 0,
        }
    }

    /// Records one outcome; returns the new settled result when it changed.
    pub fn observe(&mut self, ok: bool, t: &ProbeTiming) -> Option<ProbeResult> {
        if self.last == Some(ok) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(ok);
            self.run = 1;
        }
        let needed = if ok {
            t.success_threshold
        } else {
            t.failure_threshold
        };
        if self.run < needed {
            return None;
        }
        let r = if ok {
            ProbeResult::Success
        } else {
            ProbeResult::Failure
        };
        (r != self.result).then(|| {
            self.result = r;
            r
        })
    }
}

/// What a prober does at one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Probe now.
    Run,
    /// Not yet (startup not done, initial delay not over): keep the current result.
    Skip,
    /// This prober is done for this container (startup succeeded; liveness or startup
    /// failed — the container is restarted and gets new probers).
    Stop,
}

/// Whether a `kind` prober probes now: `started` (the container's startup probe, if
/// any, succeeded), `since_start` (how long the container runs), its `current`
/// settled result.
pub fn gate(
    kind: ProbeKind,
    started: bool,
    since_start: Duration,
    t: &ProbeTiming,
    current: ProbeResult,
) -> Gate {
    match (kind, current) {
        (ProbeKind::Startup, ProbeResult::Success) => return Gate::Stop,
        (ProbeKind::Startup | ProbeKind::Liveness, ProbeResult::Failure) => return Gate::Stop,
        _ => {}
    }
    if kind != ProbeKind::Startup && !started {
        return Gate::Skip;
    }
    if since_start < t.initial_delay {
        return Gate::Skip;
    }
    Gate::Run
}

/// Everything one prober task needs.
struct Prober {
    kind: ProbeKind,
    probe: Probe,
    container: Container,
    container_id: String,
    /// When the container started (unix nanoseconds).
    started_at: i64,
    pod: Pod,
    pod_ip: String,
    runtime: Arc<dyn CriRuntime>,
    events: EventRecorder,
    results: Arc<Mutex<ProbeResults>>,
    wake: Arc<Notify>,
}

fn lock(m: &Mutex<ProbeResults>) -> std::sync::MutexGuard<'_, ProbeResults> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Prober {
    async fn run(self) {
        let t = ProbeTiming::of(&self.probe);
        let mut counter = ProbeCounter::new(self.kind);
        lock(&self.results).set(&self.container_id, self.kind, counter.result);
        let mut tick = tokio::time::interval(t.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let started = {
                let r = lock(&self.results);
                r.started(&self.container, &self.container_id)
            };
            let since_start = Duration::from_nanos(
                (Timestamp::now().as_nanosecond() as i64 - self.started_at).max(0) as u64,
            );
            match gate(self.kind, started, since_start, &t, counter.result) {
                Gate::Stop => return,
                Gate::Skip => continue,
                Gate::Run => {}
            }
            let target = handlers::Target {
                pod_ip: &self.pod_ip,
                container: &self.container,
                container_id: &self.container_id,
                runtime: self.runtime.as_ref(),
            };
            let outcome = handlers::run(&self.probe, &target, t.timeout).await;
            debug!(container = %self.container.name, kind = ?self.kind, ok = outcome.ok, message = %outcome.message, "probe");
            if !outcome.ok {
                self.events.pod(
                    &self.pod,
                    Some(&self.container.name),
                    EventType::Warning,
                    "Unhealthy",
                    format!("{} probe failed: {}", self.kind.title(), outcome.message),
                );
            }
            if let Some(r) = counter.observe(outcome.ok, &t) {
                lock(&self.results).set(&self.container_id, self.kind, r);
                self.wake.notify_one();
            }
        }
    }
}

/// The probers of one pod.
pub(crate) struct ProbeManager {
    results: Arc<Mutex<ProbeResults>>,
    tasks: HashMap<(String, ProbeKind), JoinHandle<()>>,
    /// Notified when a settled result changes: the pod worker syncs.
    pub wake: Arc<Notify>,
}

impl Default for ProbeManager {
    fn default() -> Self {
        ProbeManager {
            results: Arc::default(),
            tasks: HashMap::new(),
            wake: Arc::new(Notify::new()),
        }
    }
}

impl ProbeManager {
    /// Starts probers for running containers that have probes, stops those of
    /// containers no longer running, and returns the current results.
    pub fn sync(
        &mut self,
        pod: &Pod,
        state: &RuntimeState,
        pod_ip: &str,
        runtime: &Arc<dyn CriRuntime>,
        events: &EventRecorder,
    ) -> ProbeResults {
        let mut wanted: Vec<(String, ProbeKind)> = Vec::new();
        let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
        for c in containers {
            let Some(r) = state.latest(&c.name) else {
                continue;
            };
            if r.phase != ContainerPhase::Running {
                continue;
            }
            for kind in ProbeKind::ALL {
                let Some(probe) = kind.of(c) else { continue };
                let key = (r.id.clone(), kind);
                wanted.push(key.clone());
                if self.tasks.contains_key(&key) {
                    continue;
                }
                let prober = Prober {
                    kind,
                    probe: probe.clone(),
                    container: c.clone(),
                    container_id: r.id.clone(),
                    started_at: r.started_at,
                    pod: pod.clone(),
                    pod_ip: pod_ip.to_string(),
                    runtime: runtime.clone(),
                    events: events.clone(),
                    results: self.results.clone(),
                    wake: self.wake.clone(),
                };
                // Seed the initial result now, so this sync already sees it.
                lock(&self.results).set(&r.id, kind, kind.initial());
                self.tasks.insert(key, tokio::spawn(prober.run()));
            }
        }
        self.tasks.retain(|k, task| {
            let keep = wanted.contains(k);
            if !keep {
                task.abort();
            }
            keep
        });
        let mut results = lock(&self.results);
        results.results.retain(|k, _| wanted.contains(k));
        results.clone()
    }

    /// Stops every prober.
    pub fn stop(&mut self) {
        for (_, t) in self.tasks.drain() {
            t.abort();
        }
    }
}

impl Drop for ProbeManager {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(success: u32, failure: u32, delay: u64) -> ProbeTiming {
        ProbeTiming {
            initial_delay: Duration::from_secs(delay),
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn defaults_are_upstreams() {
        let t = ProbeTiming::of(&Probe::default());
        assert_eq!(t, timing(1, 3, 0).with_period(10));
    }

    impl ProbeTiming {
        fn with_period(mut self, s: u64) -> Self {
            self.period = Duration::from_secs(s);
            self
        }
    }

    /// (kind, success threshold, failure threshold, outcomes, settled after each)
    type Case = (ProbeKind, u32, u32, Vec<bool>, Vec<ProbeResult>);

    #[test]
    fn thresholds_settle_results() {
        use ProbeResult::*;
        let cases: Vec<Case> = vec![
            // Readiness starts failed; one success makes it ready.
            (
                ProbeKind::Readiness,
                1,
                3,
                vec![true, false, false, false, true],
                vec![Success, Success, Success, Failure, Success],
            ),
            // successThreshold 2: two successes in a row needed.
            (
                ProbeKind::Readiness,
                2,
                1,
                vec![true, false, true, true],
                vec![Failure, Failure, Failure, Success],
            ),
            // Liveness starts healthy; three failures in a row fail it.
            (
                ProbeKind::Liveness,
                1,
                3,
                vec![false, false, true, false, false, false],
                vec![Success, Success, Success, Success, Success, Failure],
            ),
            // Startup is unknown until it settles.
            (
                ProbeKind::Startup,
                1,
                2,
                vec![false, false],
                vec![Unknown, Failure],
            ),
        ];
        for (kind, s, f, outcomes, want) in cases {
            let t = timing(s, f, 0);
            let mut c = ProbeCounter::new(kind);
            let got: Vec<ProbeResult> = outcomes
                .iter()
                .map(|ok| {
                    c.observe(*ok, &t);
                    c.result
                })
                .collect();
            assert_eq!(got, want, "{kind:?} s={s} f={f} {outcomes:?}");
        }
    }

    #[test]
    fn observe_reports_only_changes() {
        let t = timing(1, 1, 0);
        let mut c = ProbeCounter::new(ProbeKind::Readiness);
        assert_eq!(c.observe(true, &t), Some(ProbeResult::Success));
        assert_eq!(c.observe(true, &t), None);
        assert_eq!(c.observe(false, &t), Some(ProbeResult::Failure));
    }

    #[test]
    fn gating() {
        use Gate::*;
        use ProbeKind::*;
        use ProbeResult::*;
        let t = timing(1, 3, 5);
        let s = Duration::from_secs;
        let cases = [
            // (kind, started, since start, current, gate)
            (Readiness, true, s(6), Failure, Run),
            (Readiness, true, s(4), Failure, Skip), // initial delay
            (Readiness, false, s(60), Failure, Skip), // startup gates readiness
            (Liveness, false, s(60), Success, Skip), // … and liveness
            (Liveness, true, s(60), Success, Run),
            (Liveness, true, s(60), Failure, Stop), // restarted, new probers
            (Startup, false, s(6), Unknown, Run),
            (Startup, true, s(60), Success, Stop), // startup probes until success
            (Startup, false, s(60), Failure, Stop),
            (Readiness, true, s(60), Success, Run), // readiness keeps probing
        ];
        for (kind, started, since, current, want) in cases {
            assert_eq!(
                gate(kind, started, since, &t, current),
                want,
                "{kind:?} started={started} {since:?} {current:?}"
            );
        }
    }

    #[test]
    fn ready_and_started_follow_the_probes() {
        let mut c = Container::default();
        let mut r = ProbeResults::default();
        assert!(r.ready(&c, "id") && r.started(&c, "id"));
        c.readiness_probe = Some(Probe::default());
        assert!(!r.ready(&c, "id"));
        r.set("id", ProbeKind::Readiness, ProbeResult::Success);
        assert!(r.ready(&c, "id"));
        c.startup_probe = Some(Probe::default());
        r.set("id", ProbeKind::Startup, ProbeResult::Unknown);
        assert!(!r.started(&c, "id") && !r.ready(&c, "id"));
        r.set("id", ProbeKind::Startup, ProbeResult::Success);
        assert!(r.started(&c, "id") && r.ready(&c, "id"));
        assert_eq!(r.failed_restart_probe("id"), None);
        r.set("id", ProbeKind::Liveness, ProbeResult::Failure);
        assert_eq!(r.failed_restart_probe("id"), Some(ProbeKind::Liveness));
    }
}
