//! One pod worker per pod: observe the runtime, decide with
//! [`compute_pod_actions`], act through CRI, write status when it changed. Workers are
//! driven by pod updates from the watch and by their own timer (container exits are
//! found by relisting, the generic PLEG way).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, PodStatus, Secret};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::jiff::Timestamp;
use kelp_cri_api::tonic::Status;
use kelp_cri_api::v1 as cri;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{debug, info, info_span, warn, Instrument};

use super::actions::{
    compute_pod_actions, deadline_exceeded, is_deleting, is_terminal, pull_policy, Actions,
    ContainerPhase, ContainerRecord, KillReason, PodMemory, RuntimeState, SandboxRecord,
    StartContainer, Waiting, DEADLINE_MESSAGE, DEADLINE_REASON,
};
use super::env::{self, PodContext};
use super::events::{EventRecorder, EventType};
use super::probes::ProbeManager;
use super::pull_secrets;
use super::spec;
use super::status::{
    compute_pod_status, differs, status_patch, with_their_conditions, StatusContext,
};
use super::volumes;
use super::KubeletConfig;
use crate::cri::{CriRuntime, ImageKind, RoutedRuntime, RuntimeRouter};

/// The sandbox annotation carrying the pod's address to the runtime.
pub const POD_IP_ANNOTATION: &str = "kelp.dev/pod-ip";

/// What every worker shares.
pub(crate) struct Shared {
    pub client: Client,
    /// Services, for service link variables.
    pub services: env::ServiceCache,
    /// The node's allocatable CPU (cores) and memory (bytes), for `resourceFieldRef`.
    pub allocatable_cpu: f64,
    pub allocatable_memory: f64,
    /// ConfigMaps and Secrets read recently (volume refreshes share them).
    pub objects: env::ObjectCache,
    pub cfg: KubeletConfig,
    pub router: RuntimeRouter,
    pub events: EventRecorder,
    /// Bounds the pod workers' API calls in flight: kube-rs speaks HTTP/1.1, so each
    /// concurrent call is its own TLS connection, and a thousand workers writing
    /// statuses at once starved the API server (handshake timeouts for everyone).
    pub api_calls: tokio::sync::Semaphore,
}

/// Pod workers' API calls in flight at once (the heartbeat does not wait on these).
pub(crate) const API_CALLS_IN_FLIGHT: usize = 16;

/// Runs one pod's worker until the pod is gone from the API (`None` on `rx`) and its
/// runtime state is torn down.
pub(crate) async fn run(shared: Arc<Shared>, mut rx: watch::Receiver<Option<Pod>>) {
    let mut w = PodWorker {
        shared,
        routed: None,
        memory: PodMemory::default(),
        last_written: None,
        pod_failure: None,
        deleted: false,
        backing_off: BTreeMap::new(),
        probes: ProbeManager::default(),
        volumes_synced: None,
        warned: Default::default(),
        sandbox_backoff: None,
    };
    let wake = w.probes.wake.clone();
    let mut last_pod: Option<Pod> = None;
    loop {
        let current = rx.borrow_and_update().clone();
        let Some(pod) = current else {
            if let Some(pod) = &last_pod {
                let span = info_span!("pod_gone", pod = %spec::key(pod));
                w.teardown(pod).instrument(span).await;
            }
            return;
        };
        let span = info_span!("sync_pod", pod = %spec::key(&pod), uid = %spec::uid(&pod));
        let next = w.sync(&pod).instrument(span).await;
        last_pod = Some(pod);
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep(next) => {}
            // A probe result changed.
            _ = wake.notified() => {}
        }
    }
}

struct PodWorker {
    shared: Arc<Shared>,
    routed: Option<RoutedRuntime>,
    memory: PodMemory,
    /// The status this worker last wrote (the watch may not have caught up yet).
    last_written: Option<PodStatus>,
    /// A failure of the whole pod (its runtime handler is not served here).
    pod_failure: Option<Waiting>,
    /// The object's deletion was confirmed; nothing is left to do.
    deleted: bool,
    /// Containers held back in the previous sync, with the reason.
    backing_off: BTreeMap<String, String>,
    probes: ProbeManager,
    /// When projection volumes were last rewritten.
    volumes_synced: Option<Instant>,
    /// Warnings already sent as events (once per pod).
    warned: std::collections::BTreeSet<String>,
    /// After a failed sandbox creation: no new attempt before this instant, and the
    /// delay that got there (doubling, as upstream's pod worker backs off; a node out
    /// of pod addresses otherwise retried every pod every sync).
    sandbox_backoff: Option<(Instant, Duration)>,
}

/// First and longest wait between sandbox creation attempts of one pod.
const SANDBOX_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const SANDBOX_BACKOFF_MAX: Duration = Duration::from_secs(300);

fn cri_error(s: &Status) -> String {
    s.message().to_string()
}

/// What the runtime holds for the pod with `uid`.
/// The handler for a pod naming no RuntimeClass whose images are of these kinds:
/// `None` (the default, Wasm) unless they are Linux images; both kinds in one pod is
/// a failure.
fn by_kinds<'a>(
    linux: &str,
    kinds: impl Iterator<Item = (&'a str, ImageKind)>,
) -> Result<Option<String>, Waiting> {
    let (wasm, lin): (Vec<_>, Vec<_>) = kinds.partition(|(_, k)| *k == ImageKind::Wasm);
    let wasm: Vec<&str> = wasm.into_iter().map(|(i, _)| i).collect();
    let lin: Vec<&str> = lin.into_iter().map(|(i, _)| i).collect();
    match (wasm.is_empty(), lin.is_empty()) {
        (_, true) => Ok(None),
        (true, false) => Ok(Some(linux.to_string())),
        (false, false) => Err(Waiting::new(
            "MixedRuntimes",
            format!(
                "a pod's containers run on one runtime: Wasm images {wasm:?} and Linux images {lin:?} cannot share a pod; split them into two pods (or name a RuntimeClass)"
            ),
        )),
    }
}

async fn observe(rt: &dyn CriRuntime, uid: &str) -> Result<RuntimeState, Status> {
    let items = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                label_selector: [(spec::POD_UID_LABEL.to_string(), uid.to_string())].into(),
                ..Default::default()
            }),
        })
        .await?
        .items;
    let mut sandboxes: Vec<SandboxRecord> = items
        .iter()
        .map(|s| SandboxRecord {
            id: s.id.clone(),
            ready: s.state == cri::PodSandboxState::SandboxReady as i32,
            attempt: s.metadata.as_ref().map_or(0, |m| m.attempt),
            ip: String::new(),
            created_at: s.created_at,
        })
        .collect();
    sandboxes.sort_by_key(|s| std::cmp::Reverse(s.created_at));
    let mut state = RuntimeState {
        sandboxes,
        containers: vec![],
    };
    let Some(current) = state.sandboxes.first_mut() else {
        return Ok(state);
    };
    if let Ok(st) = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: current.id.clone(),
            verbose: false,
        })
        .await
    {
        current.ip = st
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default();
    }
    let sandbox_id = current.id.clone();
    let listed = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: sandbox_id,
                ..Default::default()
            }),
        })
        .await?
        .containers;
    for c in listed {
        let st = match rt
            .container_status(cri::ContainerStatusRequest {
                container_id: c.id.clone(),
                verbose: false,
            })
            .await
        {
            Ok(r) => r.status,
            Err(s) if s.code() == kelp_cri_api::tonic::Code::NotFound => continue,
            Err(s) => return Err(s),
        };
        let Some(st) = st else { continue };
        let md = st.metadata.clone().unwrap_or_default();
        state.containers.push(ContainerRecord {
            id: st.id.clone(),
            name: md.name,
            attempt: md.attempt,
            phase: match cri::ContainerState::try_from(st.state) {
                Ok(cri::ContainerState::ContainerCreated) => ContainerPhase::Created,
                Ok(cri::ContainerState::ContainerRunning) => ContainerPhase::Running,
                Ok(cri::ContainerState::ContainerExited) => ContainerPhase::Exited,
                _ => ContainerPhase::Unknown,
            },
            exit_code: st.exit_code,
            reason: st.reason.clone(),
            message: st.message.clone(),
            created_at: st.created_at,
            started_at: st.started_at,
            finished_at: st.finished_at,
            image: st.image.map(|i| i.image).unwrap_or_default(),
            image_ref: st.image_ref.clone(),
            spec_hash: st
                .annotations
                .get(spec::CONTAINER_HASH_ANNOTATION)
                .cloned()
                .unwrap_or_default(),
        });
    }
    Ok(state)
}

fn find_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == name)
}

/// The grace period of a deletion: the one set on the object, else the spec's, else 30 s.
fn grace_period(pod: &Pod) -> i64 {
    pod.metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30)
        .max(0)
}

impl PodWorker {
    fn cfg(&self) -> &KubeletConfig {
        &self.shared.cfg
    }

    fn pod_context(&self, pod_ip: String) -> PodContext {
        PodContext {
            pod_ip,
            host_ip: self.cfg().node_ip.to_string(),
            node_name: self.cfg().node_name.clone(),
            allocatable_cpu: self.shared.allocatable_cpu,
            allocatable_memory: self.shared.allocatable_memory,
            service_env: Vec::new(),
        }
    }

    /// While the pod runs: projection volumes follow their sources (every
    /// `volume_sync_interval`), and emptyDirs over their `sizeLimit` evict the pod.
    async fn watch_volumes(&mut self, pod: &Pod, state: &RuntimeState) {
        let running = state
            .containers
            .iter()
            .any(|c| c.phase == ContainerPhase::Running);
        if !running || is_terminal(pod) || is_deleting(pod) || self.memory.pod_failure.is_some() {
            return;
        }
        let pod_dir = spec::pod_dir(&self.cfg().root_dir, pod);
        if let Some(message) = volumes::over_limit(pod, &pod_dir) {
            warn!(message = %message, "evicting the pod");
            self.events()
                .pod(pod, None, EventType::Warning, "Evicted", message.clone());
            self.memory.pod_failure = Some(Waiting::new("Evicted", message));
            return;
        }
        if !volumes::has_projections(pod)
            || self
                .volumes_synced
                .is_some_and(|t| t.elapsed() < self.cfg().volume_sync_interval)
        {
            return;
        }
        self.volumes_synced = Some(Instant::now());
        let ip = state.sandbox().map(|s| s.ip.clone()).unwrap_or_default();
        let ctx = self.pod_context(ip);
        let changed = volumes::refresh(
            &self.shared.client,
            &self.shared.objects,
            self.cfg().volume_sync_interval,
            pod,
            &pod_dir,
            &ctx,
        )
        .await;
        if !changed.is_empty() {
            info!(volumes = ?changed, "volumes updated");
        }
    }

    fn events(&self) -> &EventRecorder {
        &self.shared.events
    }

    /// The runtime for the pod's RuntimeClass (looked up once per pod).
    async fn route(&mut self, pod: &Pod) -> Result<RoutedRuntime, Waiting> {
        if let Some(r) = &self.routed {
            return Ok(r.clone());
        }
        let class = pod
            .spec
            .as_ref()
            .and_then(|s| s.runtime_class_name.clone())
            .filter(|c| !c.is_empty());
        let handler = match &class {
            None => None,
            Some(c) => {
                let api: Api<RuntimeClass> = Api::all(self.shared.client.clone());
                match api.get_opt(c).await {
                    Ok(Some(rc)) => Some(rc.handler),
                    Ok(None) => {
                        return Err(Waiting::new(
                            "RuntimeClassNotFound",
                            format!("RuntimeClass {c:?} not found"),
                        ))
                    }
                    Err(e) => {
                        // Transient: retried on the next sync, not a pod failure.
                        warn!(error = %e, runtime_class = %c, "cannot read RuntimeClass");
                        return Err(Waiting::new("", ""));
                    }
                }
            }
        };
        let handler = match handler {
            Some(h) => Some(h),
            None => self.handler_by_image(pod).await?,
        };
        match self.shared.router.route(handler.as_deref()) {
            Ok(r) => {
                self.routed = Some(r.clone());
                Ok(r.clone())
            }
            Err(e) => Err(Waiting::new("UnknownRuntimeHandler", e.to_string())),
        }
    }

    /// For a pod naming no RuntimeClass on a node that also runs Linux containers: the
    /// runtime already holding its sandbox (a restarted kubelet adopts it there), else
    /// the Linux handler when its images are Linux images. `None`: the default handler.
    async fn handler_by_image(&mut self, pod: &Pod) -> Result<Option<String>, Waiting> {
        let Some((linux, classifier)) = self
            .shared
            .router
            .linux_handler()
            .map(|(h, c)| (h.to_string(), c.clone()))
        else {
            return Ok(None);
        };
        let images: Vec<String> = pod
            .spec
            .iter()
            .flat_map(|s| {
                s.init_containers
                    .iter()
                    .flatten()
                    .chain(s.containers.iter())
            })
            .filter_map(|c| c.image.clone())
            .collect();
        // Images this kubelet has classified are routed as it routed them before (a
        // sandbox it made for the pod is in that runtime): no runtime is asked, which
        // spares each new Wasm pod a sandbox listing in containerd.
        let known: Option<Vec<ImageKind>> = images.iter().map(|i| classifier.known(i)).collect();
        if let Some(kinds) = known {
            return by_kinds(&linux, images.iter().map(String::as_str).zip(kinds));
        }
        let uid = spec::uid(pod).to_string();
        for r in self.shared.router.runtimes() {
            let filter = cri::PodSandboxFilter {
                label_selector: [(spec::POD_UID_LABEL.to_string(), uid.clone())].into(),
                ..Default::default()
            };
            if let Ok(l) = r
                .runtime
                .list_pod_sandbox(cri::ListPodSandboxRequest {
                    filter: Some(filter),
                })
                .await
            {
                if !l.items.is_empty() {
                    return Ok(Some(r.handler.clone()));
                }
            }
        }
        let mut kinds = Vec::new();
        for image in &images {
            let auth = self.pull_credentials(pod, image).await.into_iter().next();
            match classifier.classify(image, auth).await {
                Ok(k) => kinds.push((image.as_str(), k)),
                Err(msg) => {
                    let msg = format!(
                        "cannot tell whether image {image:?} is a Wasm or a Linux image: {msg}"
                    );
                    if self.warned.insert(msg.clone()) {
                        self.events()
                            .pod(pod, None, EventType::Warning, "Failed", msg.clone());
                    }
                    // Transient (registry down, credentials missing): tried again.
                    warn!(error = %msg, "pod not routed yet");
                    return Err(Waiting::new("", ""));
                }
            }
        }
        by_kinds(&linux, kinds.into_iter())
    }

    /// One sync; returns when to sync again if nothing changes.
    async fn sync(&mut self, pod: &Pod) -> Duration {
        let idle = self.cfg().sync_interval * 10;
        if self.deleted {
            return idle;
        }
        if self.pod_failure.is_some() {
            // Nothing runs; the Failed status is written (again if it was lost).
            self.write_status(pod, &RuntimeState::default(), &BTreeMap::new(), "")
                .await;
            return idle;
        }
        let routed = match self.route(pod).await {
            Ok(r) => r,
            Err(w) if w.reason.is_empty() => return self.cfg().sync_interval,
            Err(w) => {
                warn!(reason = %w.reason, message = %w.message, "pod cannot run on this node");
                self.events()
                    .pod(pod, None, EventType::Warning, "Failed", w.message.clone());
                self.pod_failure = Some(w);
                self.write_status(pod, &RuntimeState::default(), &BTreeMap::new(), "")
                    .await;
                return idle;
            }
        };
        let rt = routed.runtime.clone();
        let uid = spec::uid(pod).to_string();
        let state = match observe(rt.as_ref(), &uid).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %cri_error(&e), "cannot list the pod's sandboxes");
                return self.cfg().sync_interval;
            }
        };
        if self.memory.pod_failure.is_none() && !is_terminal(pod) && !is_deleting(pod) {
            let mut known = pod.clone();
            if let (Some(w), None) = (
                &self.last_written,
                pod.status.as_ref().and_then(|s| s.start_time.as_ref()),
            ) {
                known.status = Some(w.clone());
            }
            if deadline_exceeded(&known, Timestamp::now()) {
                info!("pod exceeded its activeDeadlineSeconds");
                self.events().pod(
                    pod,
                    None,
                    EventType::Normal,
                    DEADLINE_REASON,
                    DEADLINE_MESSAGE.to_string(),
                );
                self.memory.pod_failure = Some(Waiting::new(DEADLINE_REASON, DEADLINE_MESSAGE));
            }
        }
        self.memory
            .killed_by_probe
            .retain(|id| state.containers.iter().any(|c| &c.id == id));
        self.watch_volumes(pod, &state).await;
        let pod_ip = state.sandbox().map(|s| s.ip.clone()).unwrap_or_default();
        // No probing of a pod that is done or on its way out.
        self.memory.probes =
            if is_terminal(pod) || is_deleting(pod) || self.memory.pod_failure.is_some() {
                self.probes.stop();
                Default::default()
            } else {
                let events = self.shared.events.clone();
                self.probes.sync(pod, &state, &pod_ip, &rt, &events)
            };
        let actions = compute_pod_actions(pod, &state, &self.memory, Instant::now());
        debug!(?actions, "pod actions");
        if actions.terminate {
            self.terminate(pod, rt.as_ref(), &state).await;
            return idle;
        }
        self.act(pod, &routed, &state, &actions).await;

        let state = observe(rt.as_ref(), &uid).await.unwrap_or(state);
        let mut waiting = actions.waiting.clone();
        for (k, v) in &self.memory.failures {
            waiting.entry(k.clone()).or_insert_with(|| v.clone());
        }
        // One BackOff event per back-off episode (not one per sync).
        for (name, w) in &actions.waiting {
            if self.backing_off.get(name) == Some(&w.reason) {
                continue;
            }
            let what = if w.reason == "CrashLoopBackOff" {
                format!(
                    "Back-off restarting failed container {name} in pod {}",
                    spec::key(pod)
                )
            } else {
                format!("Back-off pulling image {:?}", self.image_of(pod, name))
            };
            self.events()
                .pod(pod, Some(name), EventType::Warning, "BackOff", what);
        }
        self.backing_off = actions
            .waiting
            .iter()
            .map(|(k, v)| (k.clone(), v.reason.clone()))
            .collect();
        self.write_status(pod, &state, &waiting, &routed.id_scheme)
            .await;

        let busy = state
            .containers
            .iter()
            .any(|c| c.phase == ContainerPhase::Running);
        let init_running = pod.spec.as_ref().is_some_and(|s| {
            s.init_containers.iter().flatten().any(|c| {
                state
                    .latest(&c.name)
                    .is_some_and(|r| r.phase == ContainerPhase::Running)
            })
        });
        let mut next = if init_running {
            // The next init container (or the app) waits on this one: look sooner.
            Duration::from_millis(100)
        } else if busy || !actions.start.is_empty() || !self.memory.failures.is_empty() {
            self.cfg().sync_interval
        } else {
            // Nothing runs: the next step is a back-off ending, or a pod update.
            idle
        };
        if let Some(r) = actions.requeue_after {
            next = next.min(r + Duration::from_millis(10));
        }
        if let Some((at, _)) = self.sandbox_backoff {
            if state.sandbox().is_none() {
                next = at.saturating_duration_since(Instant::now()) + Duration::from_millis(10);
            }
        }
        if let Some(left) = self.deadline_left(pod) {
            next = next.min(left + Duration::from_millis(10));
        }
        next
    }

    /// How long until the pod's `activeDeadlineSeconds` runs out (None: no deadline
    /// or already handled).
    fn deadline_left(&self, pod: &Pod) -> Option<Duration> {
        if self.memory.pod_failure.is_some() || is_terminal(pod) {
            return None;
        }
        let deadline = pod.spec.as_ref()?.active_deadline_seconds?;
        let start = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.clone())
            .or_else(|| self.last_written.as_ref()?.start_time.clone())?;
        let end = start.0.as_second() + deadline;
        let now = Timestamp::now();
        let left_ms = (end * 1000 - now.as_millisecond()).max(0);
        Some(Duration::from_millis(left_ms as u64))
    }

    fn image_of(&self, pod: &Pod, name: &str) -> String {
        find_container(pod, name)
            .and_then(|c| c.image.clone())
            .unwrap_or_default()
    }

    async fn act(&mut self, pod: &Pod, routed: &RoutedRuntime, state: &RuntimeState, a: &Actions) {
        let rt = routed.runtime.as_ref();
        for k in &a.kill {
            if matches!(k.reason, KillReason::ProbeFailed(_)) {
                self.memory.killed_by_probe.insert(k.id.clone());
            }
            info!(container = %k.name, id = %k.id, reason = ?k.reason, grace = k.grace_seconds, "killing container");
            self.events().pod(
                pod,
                Some(&k.name),
                EventType::Normal,
                "Killing",
                k.message.clone(),
            );
            if let Err(e) = rt
                .stop_container(cri::StopContainerRequest {
                    container_id: k.id.clone(),
                    timeout: k.grace_seconds,
                })
                .await
            {
                warn!(container = %k.name, error = %cri_error(&e), "cannot stop container");
            }
        }
        for id in &a.remove_sandboxes {
            let _ = rt
                .stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await;
            if let Err(e) = rt
                .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await
            {
                warn!(sandbox = %id, error = %cri_error(&e), "cannot remove sandbox");
            }
        }
        let pod_dir = spec::pod_dir(&self.cfg().root_dir, pod);
        let sandbox_config;
        let (sandbox_id, pod_ip) = match a.create_sandbox {
            Some(_)
                if self
                    .sandbox_backoff
                    .is_some_and(|(at, _)| Instant::now() < at) =>
            {
                return
            }
            Some(attempt) => {
                if let Err(e) = std::fs::create_dir_all(&pod_dir) {
                    warn!(dir = %pod_dir.display(), error = %e, "cannot create the pod directory");
                }
                let mut config = spec::sandbox_config(pod, attempt, &pod_dir);
                config.dns_config = Some(self.dns_config(pod));
                sandbox_config = match self.with_pod_ip(pod, routed.kubelet_network, config).await {
                    Some(c) => c,
                    None => return self.sandbox_failed(),
                };
                let created = rt
                    .run_pod_sandbox(cri::RunPodSandboxRequest {
                        config: Some(sandbox_config.clone()),
                        runtime_handler: routed.handler.clone(),
                    })
                    .await;
                let id = match created {
                    Ok(r) => r.pod_sandbox_id,
                    Err(e) => {
                        let msg = format!("Failed to create pod sandbox: {}", cri_error(&e));
                        warn!(error = %msg);
                        self.events().pod(
                            pod,
                            None,
                            EventType::Warning,
                            "FailedCreatePodSandBox",
                            msg,
                        );
                        return self.sandbox_failed();
                    }
                };
                self.sandbox_backoff = None;
                info!(sandbox = %id, "sandbox created");
                let ip = rt
                    .pod_sandbox_status(cri::PodSandboxStatusRequest {
                        pod_sandbox_id: id.clone(),
                        verbose: false,
                    })
                    .await
                    .ok()
                    .and_then(|s| s.status)
                    .and_then(|s| s.network)
                    .map(|n| n.ip)
                    .unwrap_or_default();
                (id, ip)
            }
            None => {
                let Some(sb) = state.sandbox() else { return };
                sandbox_config = spec::sandbox_config(pod, sb.attempt, &pod_dir);
                (sb.id.clone(), sb.ip.clone())
            }
        };

        if !a.start.is_empty() {
            let mut ctx = self.pod_context(pod_ip);
            ctx.service_env = self.shared.services.env_for(pod);
            let volumes = volumes::prepare(
                &self.shared.client,
                Some(&self.shared.objects),
                pod,
                &pod_dir,
                &ctx,
            )
            .await
            .map(|p| {
                for w in p.warnings {
                    if self.warned.insert(w.clone()) {
                        self.events()
                            .pod(pod, None, EventType::Warning, "FailedMount", w);
                    }
                }
                p.dirs
            });
            for s in &a.start {
                self.start_container(
                    pod,
                    rt,
                    &sandbox_id,
                    &sandbox_config,
                    s,
                    &ctx,
                    &volumes,
                    state,
                )
                .await;
            }
        }
        for id in &a.remove_containers {
            if let Err(e) = rt
                .remove_container(cri::RemoveContainerRequest {
                    container_id: id.clone(),
                })
                .await
            {
                debug!(container = %id, error = %cri_error(&e), "cannot remove container");
            }
        }
    }

    /// The pod's resolver config (the host's resolv.conf is read each time, as
    /// upstream's kubelet does, so a changed host config reaches new pods).
    fn dns_config(&self, pod: &Pod) -> cri::DnsConfig {
        let cfg = self.cfg();
        let node = super::dns::NodeDns {
            cluster_dns: cfg.cluster_dns.clone(),
            cluster_domain: cfg.cluster_domain.clone(),
            host: cfg
                .resolv_conf
                .as_deref()
                .map(super::dns::ResolvConf::read)
                .unwrap_or_default(),
        };
        super::dns::pod_dns_config(pod, &node)
    }

    /// The sandbox config carrying the pod's address from the node's pod network
    /// (`kelp.dev/pod-ip`), or None (event written) when no address can be had.
    async fn with_pod_ip(
        &mut self,
        pod: &Pod,
        kubelet_network: bool,
        mut config: cri::PodSandboxConfig,
    ) -> Option<cri::PodSandboxConfig> {
        let Some(net) = self.cfg().network.clone() else {
            return Some(config);
        };
        if !kubelet_network {
            // The runtime networks the pod through the CNI config the agent writes
            // once the node's range is known: settle it before the first sandbox.
            if let Err(e) = net.prepare().await {
                warn!(error = %e, "pod network not ready");
            }
            return Some(config);
        }
        match net.acquire(spec::uid(pod)).await {
            Ok(ip) => {
                config
                    .annotations
                    .insert(POD_IP_ANNOTATION.into(), ip.to_string());
                Some(config)
            }
            Err(e) => {
                let msg = format!("Failed to create pod sandbox: no pod address: {e}");
                warn!(error = %msg);
                self.events()
                    .pod(pod, None, EventType::Warning, "FailedCreatePodSandBox", msg);
                None
            }
        }
    }

    /// Backs off the pod's next sandbox creation attempt.
    fn sandbox_failed(&mut self) {
        let delay = match self.sandbox_backoff {
            Some((_, d)) => (d * 2).min(SANDBOX_BACKOFF_MAX),
            None => SANDBOX_BACKOFF_INITIAL,
        };
        self.sandbox_backoff = Some((Instant::now() + delay, delay));
    }

    /// Records a failure to start `name`: its waiting reason and a Warning event.
    fn fail(&mut self, pod: &Pod, name: &str, reason: &str, message: String) {
        warn!(container = %name, reason, message = %message, "container not started");
        // Pull failures already said why (upstream's "Failed to pull image" event);
        // the second event names the state, as upstream's does.
        let event = if reason == "ErrImagePull" {
            format!("Error: {reason}")
        } else {
            format!("Error: {message}")
        };
        self.events()
            .pod(pod, Some(name), EventType::Warning, "Failed", event);
        self.memory
            .failures
            .insert(name.to_string(), Waiting::new(reason, message));
    }

    /// Makes sure the container's image is present per `imagePullPolicy`.
    async fn ensure_image(&mut self, pod: &Pod, rt: &dyn CriRuntime, c: &Container) -> bool {
        let image = c.image.clone().unwrap_or_default();
        let policy = pull_policy(c).to_string();
        let present = match rt
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
        {
            Ok(r) => r.image.is_some(),
            Err(_) => false,
        };
        if policy != "Always" && present {
            self.events().pod(
                pod,
                Some(&c.name),
                EventType::Normal,
                "Pulled",
                format!("Container image {image:?} already present on machine"),
            );
            return true;
        }
        if policy == "Never" {
            self.fail(
                pod,
                &c.name,
                "ErrImageNeverPull",
                format!("Container image {image:?} is not present with pull policy of Never"),
            );
            return false;
        }
        self.events().pod(
            pod,
            Some(&c.name),
            EventType::Normal,
            "Pulling",
            format!("Pulling image {image:?}"),
        );
        let started = Instant::now();
        let creds = self.pull_credentials(pod, &image).await;
        // Each matching credential in turn (upstream's keyring order), else anonymous.
        let attempts: Vec<Option<cri::AuthConfig>> = if creds.is_empty() {
            vec![None]
        } else {
            creds.into_iter().map(Some).collect()
        };
        let mut result = Err(Status::unknown("no pull attempted"));
        for auth in attempts {
            result = rt
                .pull_image(cri::PullImageRequest {
                    image: Some(cri::ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                    auth,
                    sandbox_config: None,
                })
                .await;
            if result.is_ok() {
                break;
            }
        }
        match result {
            Ok(_) => {
                self.memory.pull_backoff.remove(&image);
                self.events().pod(
                    pod,
                    Some(&c.name),
                    EventType::Normal,
                    "Pulled",
                    format!(
                        "Successfully pulled image {image:?} in {}ms",
                        started.elapsed().as_millis()
                    ),
                );
                true
            }
            Err(e) => {
                let msg = format!("Failed to pull image {image:?}: {}", cri_error(&e));
                let next = self
                    .cfg()
                    .pull_backoff
                    .next(self.memory.pull_backoff.get(&image), Instant::now());
                self.memory.pull_backoff.insert(image, next);
                self.events().pod(
                    pod,
                    Some(&c.name),
                    EventType::Warning,
                    "Failed",
                    msg.clone(),
                );
                self.fail(pod, &c.name, "ErrImagePull", msg);
                false
            }
        }
    }

    /// Registry credentials for `image` from the pod's `imagePullSecrets`.
    async fn pull_credentials(&mut self, pod: &Pod, image: &str) -> Vec<cri::AuthConfig> {
        let names: Vec<String> = pod
            .spec
            .iter()
            .flat_map(|s| s.image_pull_secrets.iter().flatten())
            .map(|r| r.name.clone())
            .filter(|n| !n.is_empty())
            .collect();
        if names.is_empty() {
            return vec![];
        }
        let api: Api<Secret> = Api::namespaced(self.shared.client.clone(), spec::namespace(pod));
        let mut secrets = Vec::new();
        let mut missing = Vec::new();
        for n in names {
            match api.get_opt(&n).await {
                Ok(Some(s)) => secrets.push(pull_secrets::secret_data(s)),
                Ok(None) => missing.push(n),
                Err(e) => {
                    warn!(secret = %n, error = %e, "cannot read image pull secret");
                    missing.push(n)
                }
            }
        }
        if !missing.is_empty() {
            self.events().pod(
                pod,
                None,
                EventType::Warning,
                "FailedToRetrieveImagePullSecret",
                format!(
                    "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
                    missing.join(", ")
                ),
            );
        }
        pull_secrets::credentials_for(image, &secrets)
    }

    #[allow(clippy::too_many_arguments)] // one start needs all of the sync's context
    async fn start_container(
        &mut self,
        pod: &Pod,
        rt: &dyn CriRuntime,
        sandbox_id: &str,
        sandbox_config: &cri::PodSandboxConfig,
        s: &StartContainer,
        ctx: &PodContext,
        volumes: &Result<BTreeMap<String, PathBuf>, String>,
        state: &RuntimeState,
    ) {
        let Some(c) = find_container(pod, &s.name).cloned() else {
            return;
        };
        if !self.ensure_image(pod, rt, &c).await {
            return;
        }
        let envs = match env::resolve_env(
            &self.shared.client,
            Some(&self.shared.objects),
            pod,
            &c,
            ctx,
        )
        .await
        {
            Ok(e) => e,
            Err(m) => return self.fail(pod, &c.name, "CreateContainerConfigError", m),
        };
        let mounts = match volumes
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|v| volumes::mounts(&c, v))
        {
            Ok(m) => m,
            Err(m) => return self.fail(pod, &c.name, "CreateContainerConfigError", m),
        };
        let config = spec::container_config(pod, &c, s.attempt, envs, mounts);
        let id = match rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sandbox_id.to_string(),
                config: Some(config),
                sandbox_config: Some(sandbox_config.clone()),
            })
            .await
        {
            Ok(r) => r.container_id,
            Err(e) => return self.fail(pod, &c.name, "CreateContainerError", cri_error(&e)),
        };
        self.events().pod(
            pod,
            Some(&c.name),
            EventType::Normal,
            "Created",
            format!("Created container {}", c.name),
        );
        if let Err(e) = rt
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
        {
            return self.fail(pod, &c.name, "RunContainerError", cri_error(&e));
        }
        self.events().pod(
            pod,
            Some(&c.name),
            EventType::Normal,
            "Started",
            format!("Started container {}", c.name),
        );
        info!(container = %c.name, id = %id, attempt = s.attempt, "container started");
        self.memory.failures.remove(&c.name);
        if s.restart {
            // A container that ran long enough (twice the maximum back-off) starts
            // over from the initial delay, as upstream's.
            let ran_long = state.latest(&c.name).is_some_and(|r| {
                r.started_at > 0
                    && r.finished_at > r.started_at
                    && Duration::from_nanos((r.finished_at - r.started_at) as u64)
                        > self.cfg().crash_backoff.max * 2
            });
            let prev = if ran_long {
                None
            } else {
                self.memory.crash_backoff.get(&c.name).copied()
            };
            let next = self.cfg().crash_backoff.next(prev.as_ref(), Instant::now());
            self.memory.crash_backoff.insert(c.name.clone(), next);
        }
    }

    /// Writes the pod's status if it differs from what the API (or our last write) has.
    async fn write_status(
        &mut self,
        pod: &Pod,
        state: &RuntimeState,
        waiting: &BTreeMap<String, Waiting>,
        id_scheme: &str,
    ) {
        // Build on the newest status we know of: ours if the watch has not caught up.
        let mut base = pod.clone();
        if let Some(w) = &self.last_written {
            if !is_terminal(pod) {
                base.status = Some(with_their_conditions(w.clone(), pod.status.as_ref()));
            }
        }
        let host_ip = self.cfg().node_ip.to_string();
        let new = compute_pod_status(
            &base,
            state,
            &StatusContext {
                host_ip: &host_ip,
                id_scheme,
                waiting,
                pod_failure: self
                    .pod_failure
                    .as_ref()
                    .or(self.memory.pod_failure.as_ref()),
                probes: &self.memory.probes,
                now: Timestamp::now(),
            },
        );
        let api_has = pod.status.as_ref();
        if !differs(api_has, &new) || !differs(self.last_written.as_ref(), &new) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), spec::namespace(pod));
        let patch = status_patch(api_has, &new);
        let _permit = self.shared.api_calls.acquire().await;
        match api
            .patch_status(
                spec::name(pod),
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            Ok(_) => {
                debug!(phase = ?new.phase, "pod status written");
                self.last_written = Some(new);
            }
            Err(e) => warn!(error = %e, "cannot write pod status"),
        }
    }

    /// Graceful deletion: stop the containers within the grace period, remove the
    /// sandboxes, then confirm the deletion (grace 0, UID precondition).
    async fn terminate(&mut self, pod: &Pod, rt: &dyn CriRuntime, state: &RuntimeState) {
        let grace = grace_period(pod);
        let running: Vec<&ContainerRecord> = state
            .containers
            .iter()
            .filter(|c| matches!(c.phase, ContainerPhase::Running | ContainerPhase::Created))
            .collect();
        let stops = running.iter().map(|c| {
            self.events().pod(
                pod,
                Some(&c.name),
                EventType::Normal,
                "Killing",
                format!("Stopping container {}", c.name),
            );
            rt.stop_container(cri::StopContainerRequest {
                container_id: c.id.clone(),
                timeout: grace,
            })
        });
        for r in futures::future::join_all(stops).await {
            if let Err(e) = r {
                warn!(error = %cri_error(&e), "cannot stop container");
            }
        }
        self.remove_runtime_state(pod, rt, state).await;
        let api: Api<Pod> = Api::namespaced(self.shared.client.clone(), spec::namespace(pod));
        let dp = DeleteParams::default()
            .grace_period(0)
            .preconditions(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            });
        let _permit = self.shared.api_calls.acquire().await;
        match api.delete(spec::name(pod), &dp).await {
            Ok(_) => {
                info!(grace, "pod terminated and deleted");
                self.deleted = true;
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => self.deleted = true,
            Err(e) => warn!(error = %e, "cannot confirm the pod's deletion"),
        }
    }

    async fn remove_runtime_state(&self, pod: &Pod, rt: &dyn CriRuntime, state: &RuntimeState) {
        for sb in &state.sandboxes {
            let _ = rt
                .stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: sb.id.clone(),
                })
                .await;
            if let Err(e) = rt
                .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: sb.id.clone(),
                })
                .await
            {
                warn!(sandbox = %sb.id, error = %cri_error(&e), "cannot remove sandbox");
            }
        }
        if let Some(net) = &self.cfg().network {
            if let Err(e) = net.release(spec::uid(pod)).await {
                warn!(error = %e, "cannot release the pod's address");
            }
        }
        let dir = spec::pod_dir(&self.cfg().root_dir, pod);
        volumes::unmount_all(&dir);
        if dir.exists() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                debug!(dir = %dir.display(), error = %e, "cannot remove the pod directory");
            }
        }
    }

    /// The pod is gone from the API: remove whatever the runtime still holds.
    async fn teardown(&mut self, pod: &Pod) {
        let Some(routed) = self.routed.clone() else {
            return;
        };
        let rt = routed.runtime.as_ref();
        if let Ok(state) = observe(rt, spec::uid(pod)).await {
            self.remove_runtime_state(pod, rt, &state).await;
        }
        info!("pod removed from the node");
    }
}
