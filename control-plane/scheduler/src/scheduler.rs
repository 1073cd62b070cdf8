//! The scheduler's one loop: informer events update the cache and queue; between
//! them, pods are popped and scheduled one at a time (the cycle is CPU-only, no
//! awaits); bindings run in the background, many at once, so throughput is not bound
//! by API latency. The loop owns the cache, queue and framework: no locks.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{Api, PostParams};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use serde_json::json;
use tokio::sync::{mpsc, Semaphore};

use crate::cache::Cache;
use crate::events::Recorder;
use crate::framework::Framework;
use crate::images::{ImageKind, ImageKinds, ImageRouting, Needs};
use crate::plugins::default_framework;
use crate::pod_info::PodInfo;
use crate::queue::{ClusterEvent, SchedulingQueue};

pub const DEFAULT_SCHEDULER_NAME: &str = "default-scheduler";

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Pods whose `spec.schedulerName` is this are ours; others are left alone.
    pub scheduler_name: String,
    /// Who we are in events and the Lease (`hostname_uuid`, as upstream).
    pub identity: String,
    /// Bindings in flight at once.
    pub parallel_binds: usize,
    /// How pods naming no RuntimeClass find nodes able to run their images (`None`:
    /// anywhere, as upstream).
    pub image_routing: Option<ImageRouting>,
}

impl SchedulerConfig {
    pub fn new() -> SchedulerConfig {
        SchedulerConfig {
            scheduler_name: DEFAULT_SCHEDULER_NAME.into(),
            identity: default_identity(),
            parallel_binds: 128,
            image_routing: None,
        }
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig::new()
    }
}

/// `hostname_<uuid>`.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "kelp".into());
    format!("{host}_{}", uuid::Uuid::new_v4())
}

/// Counters a caller (the benchmark, tests) can read while the scheduler runs.
#[derive(Debug, Default)]
pub struct Stats {
    pub scheduled: AtomicU64,
    pub unschedulable: AtomicU64,
    pub bind_errors: AtomicU64,
    /// Scheduling cycles run, and the time spent in the algorithm (filter + score).
    pub cycles: AtomicU64,
    pub algorithm_nanos: AtomicU64,
    /// Per bound pod: from the start of its successful attempt to the binding's
    /// success (algorithm, assume, queueing for a bind slot and the API call).
    pub latencies: Mutex<Vec<Duration>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("api: {0}")]
    Api(#[from] kube::Error),
    #[error("the {0} informer ended")]
    InformerEnded(&'static str),
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
}

/// A client from a kubeconfig file (its current context) and nothing else.
pub async fn client_from_kubeconfig(path: &std::path::Path) -> Result<Client, SchedulerError> {
    let kc = kube::config::Kubeconfig::read_from(path)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await?;
    Ok(Client::try_from(cfg)?)
}

enum Msg {
    Pod(Box<Event<Pod>>),
    Node(Box<Event<Node>>),
    RuntimeClass(Box<Event<RuntimeClass>>),
    Namespace(Box<Event<Namespace>>),
    Bound {
        pod: Arc<Pod>,
        node: String,
        attempts: u32,
        started: Instant,
        result: Result<(), kube::Error>,
    },
    ImageKind {
        image: String,
        kind: Result<ImageKind, String>,
    },
}

fn spawn_informer<K, F>(
    stream: impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
    tx: mpsc::UnboundedSender<Msg>,
    wrap: F,
    what: &'static str,
) where
    K: Send + 'static,
    F: Fn(Event<K>) -> Msg + Send + 'static,
{
    tokio::spawn(async move {
        let mut s = std::pin::pin!(stream);
        while let Some(ev) = s.next().await {
            match ev {
                Ok(ev) => {
                    if tx.send(wrap(ev)).is_err() {
                        return;
                    }
                }
                // The watcher retries with backoff; a failed list or watch is logged.
                Err(e) => tracing::warn!(informer = what, error = %e, "watch failed; retrying"),
            }
        }
    });
}

/// Relist bookkeeping for one informer.
#[derive(Default)]
struct Relist {
    seen: Option<HashSet<String>>,
    synced: bool,
}

struct Loop {
    cfg: SchedulerConfig,
    client: Client,
    cache: Cache,
    queue: SchedulingQueue,
    fw: Framework,
    rng: rand::rngs::StdRng,
    recorder: Recorder,
    tx: mpsc::UnboundedSender<Msg>,
    binds: Arc<Semaphore>,
    /// Bindings and registry questions in flight.
    tasks: tokio::task::JoinSet<()>,
    pods: Relist,
    nodes: Relist,
    stats: Arc<Stats>,
    images: ImageKinds,
    /// [`Loop::image_kinds_matter`] since the last node change.
    image_kinds_matter: Option<bool>,
}

fn uid_of(meta: &kube::api::ObjectMeta) -> String {
    meta.uid.clone().unwrap_or_default()
}

fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// Whether a node change could make a pod fit (upstream's queueing hints, roughly):
/// scheduling-relevant fields only, not heartbeats.
fn node_changed(old: &Node, new: &Node) -> bool {
    let (os, ns) = (old.status.as_ref(), new.status.as_ref());
    old.spec != new.spec
        || old.metadata.labels != new.metadata.labels
        || os.map(|s| &s.allocatable) != ns.map(|s| &s.allocatable)
        || os.map(|s| &s.runtime_handlers) != ns.map(|s| &s.runtime_handlers)
        || os.map(|s| &s.images) != ns.map(|s| &s.images)
}

impl Loop {
    fn ours(&self, pod: &Pod) -> bool {
        let name = pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.as_deref())
            .unwrap_or(DEFAULT_SCHEDULER_NAME);
        name == self.cfg.scheduler_name
    }

    fn on_pod(&mut self, pod: Pod, now: Instant) {
        let uid = uid_of(&pod.metadata);
        if let Some(seen) = self.pods.seen.as_mut() {
            seen.insert(uid.clone());
        }
        let pod = Arc::new(pod);
        self.images.forget_pod(&uid);
        if node_name(&pod).is_some() {
            self.queue.delete(&uid);
            let known = self.cache.has_pod(&uid) && !self.cache.is_assumed(&uid);
            self.cache.upsert_assigned_pod(pod);
            if !known {
                self.queue.on_event(ClusterEvent::AssignedPodChanged, now);
            }
            return;
        }
        if pod.metadata.deletion_timestamp.is_some() || !self.ours(&pod) {
            self.queue.delete(&uid);
            return;
        }
        // Binding in flight: the informer has not caught up yet.
        if self.cache.is_assumed(&uid) {
            return;
        }
        self.queue.add(pod, now);
    }

    fn on_pod_deleted(&mut self, pod: &Pod, now: Instant) {
        let uid = uid_of(&pod.metadata);
        self.queue.delete(&uid);
        self.images.forget_pod(&uid);
        if self.cache.has_pod(&uid) {
            self.cache.remove_pod(&uid);
            self.queue.on_event(ClusterEvent::AssignedPodDeleted, now);
        }
    }

    fn handle(&mut self, m: Msg) {
        let now = Instant::now();
        match m {
            Msg::Pod(ev) => match *ev {
                Event::Init => self.pods.seen = Some(HashSet::new()),
                Event::InitApply(p) | Event::Apply(p) => self.on_pod(p, now),
                Event::Delete(p) => self.on_pod_deleted(&p, now),
                Event::InitDone => {
                    if let Some(seen) = self.pods.seen.take() {
                        self.cache.retain_pods(&seen);
                        self.queue.retain(&seen);
                    }
                    self.pods.synced = true;
                }
            },
            Msg::Node(ev) => {
                self.image_kinds_matter = None;
                match *ev {
                    Event::Init => self.nodes.seen = Some(HashSet::new()),
                    Event::InitApply(n) | Event::Apply(n) => {
                        let name = n.metadata.name.clone().unwrap_or_default();
                        if let Some(seen) = self.nodes.seen.as_mut() {
                            seen.insert(name.clone());
                        }
                        let ev = match self.cache.node(&name).and_then(|i| i.node.as_ref()) {
                            None => Some(ClusterEvent::NodeAdded),
                            Some(old) => node_changed(old, &n).then_some(ClusterEvent::NodeUpdated),
                        };
                        self.cache.upsert_node(n);
                        if let Some(ev) = ev {
                            self.queue.on_event(ev, now);
                        }
                    }
                    Event::Delete(n) => self
                        .cache
                        .remove_node(n.metadata.name.as_deref().unwrap_or_default()),
                    Event::InitDone => {
                        if let Some(seen) = self.nodes.seen.take() {
                            self.cache.retain_nodes(&seen);
                        }
                        self.nodes.synced = true;
                    }
                }
            }
            Msg::RuntimeClass(ev) => {
                match *ev {
                    Event::Init => self.cache.runtime_classes.clear(),
                    Event::InitApply(rc) | Event::Apply(rc) => {
                        let name = rc.metadata.name.clone().unwrap_or_default();
                        self.cache.runtime_classes.insert(name, rc);
                    }
                    Event::Delete(rc) => {
                        self.cache
                            .runtime_classes
                            .remove(rc.metadata.name.as_deref().unwrap_or_default());
                    }
                    Event::InitDone => {}
                }
                self.queue.on_event(ClusterEvent::RuntimeClassChanged, now);
            }
            Msg::Namespace(ev) => {
                match *ev {
                    Event::Init => self.cache.namespace_labels.clear(),
                    Event::InitApply(ns) | Event::Apply(ns) => {
                        let name = ns.metadata.name.clone().unwrap_or_default();
                        self.cache
                            .namespace_labels
                            .insert(name, ns.metadata.labels.unwrap_or_default());
                    }
                    Event::Delete(ns) => {
                        self.cache
                            .namespace_labels
                            .remove(ns.metadata.name.as_deref().unwrap_or_default());
                    }
                    Event::InitDone => {}
                }
                self.queue.on_event(ClusterEvent::NamespaceChanged, now);
            }
            Msg::Bound {
                pod,
                node,
                attempts,
                started,
                result,
            } => self.on_bound(pod, node, attempts, started, result, now),
            Msg::ImageKind { image, kind } => {
                if let Err(e) = &kind {
                    tracing::warn!(%image, error = %e, "cannot tell whether the image is a Wasm or a Linux image; its pods are placed as if it did not matter");
                }
                for pod in self.images.answered(image, kind, now) {
                    self.queue.add(pod, now);
                }
            }
        }
    }

    fn on_bound(
        &mut self,
        pod: Arc<Pod>,
        node: String,
        attempts: u32,
        started: Instant,
        result: Result<(), kube::Error>,
        now: Instant,
    ) {
        let uid = uid_of(&pod.metadata);
        match result {
            Ok(()) => {
                self.stats.scheduled.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut l) = self.stats.latencies.lock() {
                    l.push(now.duration_since(started));
                }
                self.recorder.scheduled(pod, &node);
            }
            // Gone, or bound by someone else: the informer tells the rest.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
                self.cache.forget(&uid);
            }
            Err(e) => {
                self.stats.bind_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(pod = %format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or(""), pod.metadata.name.as_deref().unwrap_or("")), node = %node, error = %e, "binding failed");
                if self.cache.is_assumed(&uid) {
                    self.cache.forget(&uid);
                    self.recorder.failed(
                        pod.clone(),
                        format!("running Bind plugin \"DefaultBinder\": {e}"),
                        false,
                    );
                    self.queue.error(pod, attempts, now);
                }
            }
        }
    }

    fn schedule_one(&mut self) -> bool {
        let Some(qp) = self.queue.pop() else {
            return false;
        };
        let pod = qp.pod.clone();
        if node_name(&pod).is_some() || pod.metadata.deletion_timestamp.is_some() {
            self.queue.delete(&qp.uid);
            return true;
        }
        let started = Instant::now();
        let mut info = PodInfo::new(pod.clone(), Some(&self.cache.runtime_classes));
        if info.runtime_class.is_none() && self.image_kinds_matter() {
            let routing = self.cfg.image_routing.as_ref().expect("checked above");
            match self.images.needs(&pod, routing, started) {
                Needs::Handlers(h) => info.image_handlers = h,
                needs => {
                    if let Needs::Ask(images) = needs {
                        let routing = routing.clone();
                        for image in images {
                            self.ask_image_kind(&routing, image, pod.clone());
                        }
                    }
                    self.queue.done(&qp.uid);
                    self.images.wait(qp.uid, pod);
                    return true;
                }
            }
        }
        let result = self.fw.schedule(&info, &self.cache, &mut self.rng);
        self.stats.cycles.fetch_add(1, Ordering::Relaxed);
        self.stats
            .algorithm_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        match result {
            Ok(r) => {
                tracing::debug!(pod = %info.key(), node = %r.node, evaluated = r.evaluated_nodes, feasible = r.feasible_nodes, "scheduled");
                self.cache.assume(Arc::new(info), &r.node);
                self.queue.done(&qp.uid);
                self.bind(pod, r.node, qp.attempts, started);
            }
            Err(fit) => {
                let message = fit.message();
                tracing::debug!(pod = %info.key(), %message, "unschedulable");
                self.stats.unschedulable.fetch_add(1, Ordering::Relaxed);
                self.queue
                    .unschedulable(&qp.uid, fit.plugins, Instant::now());
                self.recorder.failed(pod, message, true);
            }
        }
        true
    }

    fn bind(&mut self, pod: Arc<Pod>, node: String, attempts: u32, started: Instant) {
        let client = self.client.clone();
        let tx = self.tx.clone();
        let limit = self.binds.clone();
        self.tasks.spawn(async move {
            let Ok(_permit) = limit.acquire_owned().await else {
                return;
            };
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(client, &ns);
            let binding = json!({
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node},
            });
            let result = api
                .create_subresource::<_, serde_json::Value>(
                    "binding",
                    &name,
                    &PostParams::default(),
                    &binding,
                )
                .await
                .map(|_| ());
            let _ = tx.send(Msg::Bound {
                pod,
                node,
                attempts,
                started,
                result,
            });
        });
    }

    /// Whether pods naming no RuntimeClass must be matched to handlers by their images:
    /// an image router is configured and some node lacks one of its handlers. Worked
    /// out again only after a node change, not once per pod.
    fn image_kinds_matter(&mut self) -> bool {
        let Some(routing) = &self.cfg.image_routing else {
            return false;
        };
        *self
            .image_kinds_matter
            .get_or_insert_with(|| routing.matters(&self.cache))
    }

    /// Asks the registry in the background; the answer comes back as a message.
    fn ask_image_kind(&mut self, routing: &ImageRouting, image: String, pod: Arc<Pod>) {
        let inspector = routing.inspector.clone();
        let tx = self.tx.clone();
        let client = self.client.clone();
        self.tasks.spawn(async move {
            let kind = inspector.kind(&client, &image, &pod).await;
            let _ = tx.send(Msg::ImageKind { image, kind });
        });
    }

    fn reap_tasks(&mut self) {
        while self.tasks.try_join_next().is_some() {}
    }
}

/// Runs the scheduler until `shutdown` resolves (or an informer's stream ends).
pub async fn run(
    client: Client,
    cfg: SchedulerConfig,
    stats: Arc<Stats>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), SchedulerError> {
    use rand::SeedableRng;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let wcfg = watcher::Config::default().any_semantic();
    spawn_informer(
        watcher(
            Api::<Pod>::all(client.clone()),
            wcfg.clone()
                .fields("status.phase!=Succeeded,status.phase!=Failed"),
        )
        .default_backoff(),
        tx.clone(),
        |e| Msg::Pod(Box::new(e)),
        "pods",
    );
    spawn_informer(
        watcher(Api::<Node>::all(client.clone()), wcfg.clone()).default_backoff(),
        tx.clone(),
        |e| Msg::Node(Box::new(e)),
        "nodes",
    );
    spawn_informer(
        watcher(Api::<RuntimeClass>::all(client.clone()), wcfg.clone()).default_backoff(),
        tx.clone(),
        |e| Msg::RuntimeClass(Box::new(e)),
        "runtimeclasses",
    );
    spawn_informer(
        watcher(Api::<Namespace>::all(client.clone()), wcfg).default_backoff(),
        tx.clone(),
        |e| Msg::Namespace(Box::new(e)),
        "namespaces",
    );
    let recorder = Recorder::start(
        client.clone(),
        cfg.scheduler_name.clone(),
        cfg.identity.clone(),
    );
    let binds = Arc::new(Semaphore::new(cfg.parallel_binds.max(1)));
    let mut lp = Loop {
        cfg,
        client,
        cache: Cache::new(),
        queue: SchedulingQueue::new(),
        fw: default_framework(),
        rng: rand::rngs::StdRng::from_os_rng(),
        recorder,
        tx,
        binds,
        tasks: tokio::task::JoinSet::new(),
        pods: Relist::default(),
        nodes: Relist::default(),
        stats,
        images: ImageKinds::default(),
        image_kinds_matter: None,
    };
    tracing::info!(identity = %lp.cfg.identity, name = %lp.cfg.scheduler_name, "scheduler started");
    tokio::pin!(shutdown);
    let mut since_yield = 0u32;
    loop {
        while let Ok(m) = rx.try_recv() {
            lp.handle(m);
        }
        let synced = lp.pods.synced && lp.nodes.synced;
        if synced {
            lp.queue.flush(Instant::now());
            if lp.schedule_one() {
                since_yield += 1;
                // Let the binding tasks and informers run between bursts of cycles.
                if since_yield >= 16 {
                    since_yield = 0;
                    lp.reap_tasks();
                    tokio::task::yield_now().await;
                }
                continue;
            }
        }
        lp.reap_tasks();
        let wake = lp
            .queue
            .next_wakeup()
            .filter(|_| synced)
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = &mut shutdown => break,
            m = rx.recv() => match m {
                Some(m) => lp.handle(m),
                None => return Err(SchedulerError::InformerEnded("all")),
            },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    tracing::info!("scheduler stopped");
    Ok(())
}

/// Leader election settings (upstream's `--leader-elect-*` flags).
#[derive(Debug, Clone)]
pub struct LeaderElection {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for LeaderElection {
    fn default() -> Self {
        LeaderElection {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Runs the scheduler only while holding the `kube-system/kube-scheduler` Lease:
/// started on winning it, stopped (bindings in flight aborted) on losing it.
pub async fn run_leader_elected(
    client: Client,
    cfg: SchedulerConfig,
    le: LeaderElection,
    stats: Arc<Stats>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), SchedulerError> {
    let mut lc = kelp_controllers::leader::LeaderConfig::new("kube-scheduler", &cfg.identity);
    lc.lease_duration = le.lease_duration;
    lc.renew_deadline = le.renew_deadline;
    lc.retry_period = le.retry_period;
    let (mut leading, campaign) =
        kelp_controllers::leader::campaign_with_handle(client.clone(), lc.clone());
    // Stops campaigning and gives the lease up (another scheduler takes over at once).
    let release = |campaign: tokio::task::JoinHandle<()>| {
        let (client, lc) = (client.clone(), lc.clone());
        async move {
            campaign.abort();
            let _ = campaign.await;
            kelp_controllers::leader::release(&client, &lc).await;
        }
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                release(campaign).await;
                return Ok(());
            }
            ok = async { leading.wait_for(|l| *l).await.is_ok() } => if !ok { return Ok(()) },
        }
        tracing::info!(identity = %cfg.identity, "leading: scheduling");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut task = tokio::spawn(run(
            client.clone(),
            cfg.clone(),
            stats.clone(),
            async move {
                let _ = stop_rx.await;
            },
        ));
        tokio::select! {
            _ = &mut shutdown => {
                let _ = stop_tx.send(());
                let _ = task.await;
                release(campaign).await;
                return Ok(());
            }
            _ = async { leading.wait_for(|l| !*l).await.is_ok() } => {
                tracing::warn!(identity = %cfg.identity, "lost the lease: stopping");
                task.abort();
                let _ = task.await;
            }
            r = &mut task => {
                return match r {
                    Ok(r) => r,
                    Err(e) => { tracing::error!(error = %e, "scheduler task failed"); Ok(()) }
                };
            }
        }
    }
}
