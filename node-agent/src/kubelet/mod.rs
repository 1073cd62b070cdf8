//! The kubelet: registers the Node and keeps its Lease, watches the pods bound to the
//! node, and runs one worker per pod that turns the pod into sandboxes and containers
//! through CRI and reports their status.
//!
//! Layout: [`node`] (registration, heartbeat), [`actions`] (the pure decision),
//! [`spec`] (pod → CRI configs), [`env`] (env values, the downward API),
//! [`volumes`] (the pod's volumes on disk, the atomic writer, sizeLimit),
//! [`probes`] (liveness/readiness/startup probers and their handlers),
//! [`pull_secrets`] (imagePullSecrets → CRI auth), [`status`] (pure pod status),
//! [`events`], [`dns`] (the pod's resolver config), and `worker` (the executor).

pub mod actions;
pub mod dns;
pub mod env;
pub mod events;
pub mod node;
pub mod probes;
pub mod pull_secrets;
pub mod spec;
pub mod status;
pub mod volumes;
mod worker;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kelp_cri_api::v1 as cri;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::cri::RuntimeRouter;
pub use actions::BackoffPolicy;

/// How a kubelet runs.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// The Node's name (also `kubernetes.io/hostname`).
    pub node_name: String,
    /// The node's InternalIP (pods' `hostIP`).
    pub node_ip: IpAddr,
    /// Pod directories live under `<root_dir>/pods/`.
    pub root_dir: PathBuf,
    /// `capacity.pods`: Wasm pods are cheap, so the default is what the runtime holds,
    /// not upstream's 110.
    pub max_pods: u32,
    /// Extra labels for the Node.
    pub node_labels: BTreeMap<String, String>,
    /// The kubelet server's port on `node_ip` (0: any free port); the Node
    /// advertises the bound one (`daemonEndpoints`).
    pub kubelet_port: u16,
    /// PEM of the CA whose client certificates the kubelet server accepts (the
    /// cluster CA). `None`: only `/healthz` is served.
    pub client_ca_pem: Option<String>,
    pub lease_duration: Duration,
    pub lease_renew_interval: Duration,
    pub node_status_interval: Duration,
    /// How often a busy pod worker relists its containers (exits are found this way).
    pub sync_interval: Duration,
    /// How often a running pod's configMap/secret/downwardAPI/projected volumes are
    /// rewritten from their sources.
    pub volume_sync_interval: Duration,
    pub crash_backoff: BackoffPolicy,
    pub pull_backoff: BackoffPolicy,
    /// Pod addresses from the node's pod CIDR; None leaves the address to the
    /// runtime (the Wasm runtime's default is 127.0.0.1).
    pub network: Option<Arc<crate::network::PodNetwork>>,
    /// The Service reflector, shared with the node's other users (cluster DNS);
    /// None: the kubelet starts its own.
    pub services: Option<env::ServiceCache>,
    /// The cluster DNS servers pods with `dnsPolicy: ClusterFirst` use (upstream's
    /// `--cluster-dns`); empty: such pods get the host's resolvers.
    pub cluster_dns: Vec<std::net::SocketAddr>,
    /// `--cluster-domain`.
    pub cluster_domain: String,
    /// The host's resolver config for `dnsPolicy: Default` (upstream's `--resolv-conf`).
    pub resolv_conf: Option<PathBuf>,
    /// Taints the Node is created with (upstream's `--register-with-taints`).
    pub register_with_taints: Vec<k8s_openapi::api::core::v1::Taint>,
    /// `--cloud-provider external`: register with the
    /// `node.cloudprovider.kubernetes.io/uninitialized` taint for the
    /// cloud-controller-manager to initialize, and leave the Node's addresses to it
    /// once set.
    pub external_cloud_provider: bool,
}

impl KubeletConfig {
    /// Upstream's defaults for node `node_name` with state under `root_dir`.
    pub fn new(node_name: impl Into<String>, root_dir: impl Into<PathBuf>) -> Self {
        KubeletConfig {
            node_name: node_name.into(),
            node_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            root_dir: root_dir.into(),
            max_pods: 10_000,
            node_labels: BTreeMap::new(),
            kubelet_port: 10250,
            client_ca_pem: None,
            lease_duration: Duration::from_secs(40),
            lease_renew_interval: Duration::from_secs(10),
            node_status_interval: Duration::from_secs(60),
            sync_interval: Duration::from_secs(1),
            volume_sync_interval: Duration::from_secs(5),
            crash_backoff: BackoffPolicy::default(),
            pull_backoff: BackoffPolicy::default(),
            network: None,
            services: None,
            cluster_dns: vec![],
            cluster_domain: "cluster.local".into(),
            resolv_conf: Some(PathBuf::from("/etc/resolv.conf")),
            register_with_taints: Vec::new(),
            external_cloud_provider: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// The router serves no runtime for its default handler.
    #[error("no runtime serves the default handler {0:?}")]
    NoDefaultRuntime(String),
    #[error("kubelet server: {0}")]
    Server(#[from] crate::server::ServerError),
    #[error("cannot create {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The kubelet of one node.
pub struct Kubelet;

struct WorkerHandle {
    tx: watch::Sender<Option<Pod>>,
    task: JoinHandle<()>,
}

impl Kubelet {
    /// Runs the kubelet until `shutdown` resolves: registers the node, heartbeats, and
    /// runs the pods bound to it. Running pods are left alone on shutdown (as
    /// upstream's kubelet does); an in-process runtime ends them with the process.
    pub async fn run(
        mut config: KubeletConfig,
        client: Client,
        runtimes: RuntimeRouter,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), KubeletError> {
        let default = runtimes
            .route(None)
            .map_err(|_| KubeletError::NoDefaultRuntime(runtimes.default_handler().into()))?
            .clone();
        std::fs::create_dir_all(config.root_dir.join("pods")).map_err(|source| {
            KubeletError::Io {
                path: config.root_dir.join("pods"),
                source,
            }
        })?;
        let runtime_version = match default
            .runtime
            .version(cri::VersionRequest {
                version: "v1".into(),
            })
            .await
        {
            Ok(v) => format!("{}://{}", v.runtime_name, v.runtime_version),
            Err(e) => {
                warn!(error = %e.message(), "runtime version unknown");
                "unknown://unknown".into()
            }
        };
        info!(node = %config.node_name, runtime = %runtime_version, handlers = ?runtimes.handlers(), "kubelet starting");

        let pod_store = crate::server::PodStore::default();
        let server = start_server(&config, pod_store.clone(), runtimes.clone()).await?;
        if let Some(addr) = server.local_addr() {
            config.kubelet_port = addr.port();
        }
        let (server_stop, server_stopped) = tokio::sync::oneshot::channel::<()>();
        let server_task = tokio::spawn(server.serve(async {
            let _ = server_stopped.await;
        }));

        let node = node::NodeAgent::new(
            client.clone(),
            config.clone(),
            runtimes.handlers(),
            runtime_version,
        );
        let heartbeat = tokio::spawn(node.run());
        let facts = node::HostFacts::detect();
        let services = config
            .services
            .clone()
            .unwrap_or_else(|| env::ServiceCache::start(client.clone()));
        let shared = Arc::new(worker::Shared {
            services,
            client: client.clone(),
            allocatable_cpu: facts.cpus as f64,
            allocatable_memory: facts.memory_bytes as f64,
            objects: Default::default(),
            events: events::EventRecorder::start(client.clone(), config.node_name.clone()),
            cfg: config.clone(),
            router: runtimes,
            api_calls: tokio::sync::Semaphore::new(worker::API_CALLS_IN_FLIGHT),
        });

        let pods: Api<Pod> = Api::all(client);
        let wc = watcher::Config::default().fields(&format!("spec.nodeName={}", config.node_name));
        let mut stream = watcher::watcher(pods, wc).default_backoff().boxed();
        let mut workers: HashMap<String, WorkerHandle> = HashMap::new();
        let mut listed: Option<HashSet<String>> = None;
        tokio::pin!(shutdown);
        loop {
            let ev = tokio::select! {
                _ = &mut shutdown => break,
                ev = stream.next() => ev,
            };
            let Some(ev) = ev else { break };
            match ev {
                Ok(Event::Apply(pod)) => {
                    pod_store.apply(&pod);
                    dispatch(&shared, &mut workers, pod)
                }
                Ok(Event::InitApply(pod)) => {
                    if let Some(l) = listed.as_mut() {
                        l.insert(spec::uid(&pod).to_string());
                    }
                    pod_store.apply(&pod);
                    dispatch(&shared, &mut workers, pod)
                }
                Ok(Event::Delete(pod)) => {
                    pod_store.remove(&pod);
                    if let Some(w) = workers.get(spec::uid(&pod)) {
                        w.tx.send_replace(None);
                    }
                }
                Ok(Event::Init) => listed = Some(HashSet::new()),
                Ok(Event::InitDone) => {
                    // Pods deleted while the watch was down.
                    if let Some(l) = listed.take() {
                        pod_store.retain_uids(&l);
                        for (uid, w) in &workers {
                            if !l.contains(uid) {
                                w.tx.send_replace(None);
                            }
                        }
                        let known: HashSet<String> =
                            l.into_iter().chain(workers.keys().cloned()).collect();
                        if let Some(net) = shared.cfg.network.clone() {
                            let known = known.clone();
                            tokio::spawn(async move {
                                if let Err(e) = net.retain(&known).await {
                                    warn!(error = %e, "cannot release the addresses of pods that are gone");
                                }
                            });
                        }
                        tokio::spawn(remove_orphans(shared.clone(), known));
                    }
                }
                Err(e) => warn!(error = %e, "pod watch failed; retrying"),
            }
            workers.retain(|_, w| !w.task.is_finished());
        }
        info!(node = %config.node_name, "kubelet stopping");
        heartbeat.abort();
        let _ = server_stop.send(());
        server_task.abort();
        for (_, w) in workers {
            w.task.abort();
        }
        Ok(())
    }
}

/// Binds the kubelet server on the node IP with a fresh self-signed certificate
/// (written under `<root>/pki/`).
async fn start_server(
    config: &KubeletConfig,
    pods: crate::server::PodStore,
    router: RuntimeRouter,
) -> Result<crate::server::KubeletServer, KubeletError> {
    use crate::server::{tls, KubeletServer, ServerState};
    let cert = tls::self_signed(config.node_ip, &node::hostname())?;
    tls::write(&config.root_dir.join("pki"), &cert)?;
    if config.client_ca_pem.is_none() {
        warn!("no client CA: the kubelet server authenticates no one (only /healthz is served)");
    }
    let tls_cfg = tls::server_config(&cert, config.client_ca_pem.as_deref())?;
    let state = Arc::new(ServerState {
        node_name: config.node_name.clone(),
        pods,
        router,
        started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        cpu_rates: Default::default(),
        requests: Default::default(),
    });
    let addr = std::net::SocketAddr::new(config.node_ip, config.kubelet_port);
    Ok(KubeletServer::bind(addr, tls_cfg, state).await?)
}

fn dispatch(shared: &Arc<worker::Shared>, workers: &mut HashMap<String, WorkerHandle>, pod: Pod) {
    let uid = spec::uid(&pod).to_string();
    if let Some(w) = workers.get(&uid) {
        if !w.task.is_finished() {
            w.tx.send_replace(Some(pod));
            return;
        }
    }
    let (tx, rx) = watch::channel(Some(pod));
    let task = tokio::spawn(worker::run(shared.clone(), rx));
    workers.insert(uid, WorkerHandle { tx, task });
}

/// Removes sandboxes of pods this node no longer has (deleted while no kubelet ran):
/// found by the pod UID label the kubelet puts on every sandbox.
async fn remove_orphans(shared: Arc<worker::Shared>, known: HashSet<String>) {
    for routed in shared.router.runtimes() {
        let rt = routed.runtime.as_ref();
        let Ok(list) = rt
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
        else {
            continue;
        };
        for sb in list.items {
            let Some(uid) = sb.labels.get(spec::POD_UID_LABEL) else {
                continue;
            };
            if known.contains(uid) {
                continue;
            }
            info!(sandbox = %sb.id, pod_uid = %uid, "removing the sandbox of a pod that is gone");
            let _ = rt
                .stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: sb.id.clone(),
                })
                .await;
            let _ = rt
                .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: sb.id.clone(),
                })
                .await;
        }
    }
}
