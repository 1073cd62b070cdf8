//! Kelp control plane: opens the datastore, starts the API server on it, and (later)
//! the scheduler and controllers. `kelp up`, `kelp server` and `kelp apiserver` all
//! start here.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

pub use kelp_api as api;
pub use kelp_apiserver as apiserver;
pub use kelp_cloud as cloud;
pub use kelp_controllers as controllers;
pub use kelp_storage as storage;

use kelp_apiserver::app::App;
use kelp_apiserver::authn::{Authenticator, UserInfo, AUTHENTICATED_GROUP};
use kelp_apiserver::authz::AlwaysAllow;
use kelp_apiserver::tls::{self, ADMIN_GROUP};
use kelp_storage::Store;

/// Where the cluster's state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datastore {
    /// The embedded default: a SQLite file.
    Sqlite(PathBuf),
    /// A real etcd cluster (`host:port` endpoints).
    Etcd(Vec<String>),
}

impl Datastore {
    /// Parses `sqlite://PATH` or `etcd://HOST:PORT[,HOST:PORT…]`.
    pub fn parse(url: &str) -> Result<Self, ControlPlaneError> {
        if let Some(p) = url.strip_prefix("sqlite://") {
            if p.is_empty() {
                return Err(ControlPlaneError::Config("sqlite:// needs a path".into()));
            }
            return Ok(Datastore::Sqlite(PathBuf::from(p)));
        }
        if let Some(e) = url.strip_prefix("etcd://") {
            let eps: Vec<String> = e
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            if eps.is_empty() {
                return Err(ControlPlaneError::Config(
                    "etcd:// needs at least one HOST:PORT".into(),
                ));
            }
            return Ok(Datastore::Etcd(eps));
        }
        Err(ControlPlaneError::Config(format!(
            "unsupported datastore {url:?}: use sqlite://PATH or etcd://HOST:PORT[,HOST:PORT]"
        )))
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// `None`: SQLite under the data dir.
    pub datastore: Option<Datastore>,
    pub bind_address: IpAddr,
    pub https_port: u16,
    /// Where to write the admin kubeconfig (`None`: DATA_DIR/kubeconfig).
    pub kubeconfig: Option<PathBuf>,
    /// Extra names/addresses for the serving certificate.
    pub tls_sans: Vec<String>,
    /// Run the controller-manager in-process once the API serves (`kelp up`,
    /// `kelp server`); `None` for the API server alone.
    pub controllers: Option<kelp_controllers::manager::ManagerOptions>,
    /// Where Service ClusterIPs and NodePorts come from.
    pub service_ranges: kelp_apiserver::service_alloc::ServiceRanges,
    /// Run the scheduler in this process (leader-elected) with this configuration once
    /// the API serves.
    pub scheduler: Option<kelp_scheduler::SchedulerConfig>,
    /// Run the cloud-controller-manager in this process (leader-elected) with this
    /// provider once the API serves (`--cloud-provider`).
    pub cloud: Option<kelp_cloud::manager::CloudOptions>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("datastore: {0}")]
    Store(#[from] kelp_storage::StoreError),
    #[error("tls: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("serving: {0}")]
    Serve(#[from] kelp_apiserver::serve::ServeError),
    #[error("{0}")]
    Api(#[from] kelp_apiserver::error::ApiError),
    #[error("i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ControlPlaneError + '_ {
    move |source| ControlPlaneError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a started control plane tells its caller.
#[derive(Debug, Clone)]
pub struct Started {
    pub url: String,
    pub kubeconfig: PathBuf,
    pub token_file: PathBuf,
    pub addr: SocketAddr,
    /// API clients for components in this process.
    pub loopback: Loopback,
}

/// Makes API clients for components running in the server's process: they call the
/// router directly (`kelp_apiserver::loopback`) instead of dialing the HTTPS port.
#[derive(Clone)]
pub struct Loopback {
    app: Arc<App>,
}

impl std::fmt::Debug for Loopback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Loopback")
    }
}

impl Loopback {
    /// A client acting as `user`.
    pub fn client(&self, user: UserInfo) -> kube::Client {
        kube::Client::new(
            kelp_apiserver::loopback::service(self.app.router(), user),
            "default",
        )
    }

    /// A client in the administrators' group (what the admin kubeconfig is).
    pub fn admin(&self) -> kube::Client {
        self.client(UserInfo {
            username: "kelp-loopback".into(),
            uid: String::new(),
            groups: vec![ADMIN_GROUP.into(), AUTHENTICATED_GROUP.into()],
        })
    }

    /// A client with the identity the node join token gives.
    pub fn node(&self) -> kube::Client {
        self.client(node_user())
    }
}

fn node_user() -> UserInfo {
    UserInfo {
        username: "kelp-node".into(),
        uid: String::new(),
        groups: vec!["system:nodes".into(), AUTHENTICATED_GROUP.into()],
    }
}

async fn open_store(cfg: &Config) -> Result<Arc<dyn Store>, ControlPlaneError> {
    let ds = cfg
        .datastore
        .clone()
        .unwrap_or_else(|| Datastore::Sqlite(cfg.data_dir.join("db").join("state.db")));
    Ok(match ds {
        Datastore::Sqlite(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            }
            info!(path = %path.display(), "datastore: embedded sqlite");
            Arc::new(kelp_storage::sqlite::SqliteStore::open(&path)?)
        }
        Datastore::Etcd(eps) => {
            info!(endpoints = ?eps, "datastore: etcd");
            Arc::new(kelp_storage::etcd::EtcdStore::connect(&eps).await?)
        }
    })
}

/// Keeps history bounded as kube-apiserver does: every interval, compact to the
/// revision seen one interval earlier.
fn spawn_compactor(store: Arc<dyn Store>, every: Duration) {
    tokio::spawn(async move {
        let mut previous: Option<i64> = None;
        loop {
            tokio::time::sleep(every).await;
            if let Some(rev) = previous {
                if let Err(e) = store.compact(rev).await {
                    warn!(error = %e, revision = rev, "compaction failed");
                }
            }
            previous = store.current_revision().await.ok();
        }
    });
}

/// The controller-manager in-process, an administrator's API client on the loopback
/// transport (otherwise exactly what `kelp controller-manager` does in its own process).
fn spawn_controller_manager(
    client: kube::Client,
    opts: kelp_controllers::manager::ManagerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = kelp_controllers::manager::run_manager(client, opts, shutdown).await {
            tracing::error!(error = %e, "the in-process controller-manager stopped");
        }
    })
}

/// The cloud-controller-manager in-process, an administrator's loopback client, like
/// `kelp cloud-controller-manager` in its own process.
fn spawn_cloud_controller_manager(
    client: kube::Client,
    opts: kelp_cloud::manager::CloudOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let run = async {
            let provider = opts.build_provider()?;
            kelp_cloud::manager::run(client, provider, opts, shutdown).await
        };
        if let Err(e) = run.await {
            tracing::error!(error = %e, "the in-process cloud-controller-manager stopped");
        }
    })
}

/// The in-process scheduler: an API client on the admin kubeconfig, like any other,
/// leader-elected so several servers can share one datastore.
async fn run_scheduler(
    client: kube::Client,
    cfg: kelp_scheduler::SchedulerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let r = kelp_scheduler::run_leader_elected(
        client,
        cfg,
        kelp_scheduler::LeaderElection::default(),
        Default::default(),
        shutdown,
    )
    .await;
    if let Err(e) = r {
        warn!(error = %e, "scheduler stopped");
    }
}

/// How long the server waits for its in-process components to stop (and release
/// their leases) before it stops serving.
const COMPONENT_STOP: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the control plane until `shutdown` resolves. `on_ready` is called once the
/// API server is serving.
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&Started) + Send,
) -> Result<(), ControlPlaneError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(io_err(&cfg.data_dir))?;
    let store = open_store(&cfg).await?;
    // Clients dial the address we bind, so the serving cert must name it.
    let mut sans = cfg.tls_sans.clone();
    if !cfg.bind_address.is_unspecified() {
        sans.push(cfg.bind_address.to_string());
    }
    let pki = tls::Pki::load_or_create(&cfg.data_dir, &sans)?;
    let token_file = cfg.data_dir.join("node-token");
    let token = tls::load_or_create_token(&token_file)?;

    let addr = SocketAddr::new(cfg.bind_address, cfg.https_port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ControlPlaneError::Config(format!("cannot listen on {addr}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ControlPlaneError::Config(e.to_string()))?;
    let host = if cfg.bind_address.is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        cfg.bind_address.to_string()
    };
    let url = format!("https://{host}:{}", addr.port());

    let app = App::with_service_ranges(
        store.clone(),
        Arc::new(AlwaysAllow),
        format!("{host}:{}", addr.port()),
        cfg.service_ranges.clone(),
    )
    .await?;
    let _ = app
        .kubelet
        .set(kelp_apiserver::node_proxy::KubeletDialer::new(
            tls::kubelet_client_config(&pki)?,
        ));
    app.bootstrap().await?;
    spawn_compactor(store, Duration::from_secs(300));

    let kubeconfig = cfg
        .kubeconfig
        .clone()
        .unwrap_or_else(|| cfg.data_dir.join("kubeconfig"));
    if let Some(dir) = kubeconfig.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    tls::write_kubeconfig(&kubeconfig, &url, &pki, "kelp")?;

    let mut authn = Authenticator::new();
    authn.add_token(&token, node_user());
    let router = app.router();
    let started = Started {
        url,
        kubeconfig,
        token_file,
        addr,
        loopback: Loopback { app: app.clone() },
    };
    on_ready(&started);
    // One shutdown for the server and the in-process components. The components stop
    // first, while the server still answers, so they give their leases up: a
    // restarted `kelp up` (or another server) takes over at once instead of after the
    // leases expire.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut components = Vec::new();
    if let Some(opts) = cfg.controllers.clone() {
        components.push(spawn_controller_manager(
            started.loopback.admin(),
            opts,
            stopped(stop_rx.clone()),
        ));
    }
    if let Some(opts) = cfg.cloud.clone() {
        components.push(spawn_cloud_controller_manager(
            started.loopback.admin(),
            opts,
            stopped(stop_rx.clone()),
        ));
    }
    if let Some(sched) = cfg.scheduler.clone() {
        components.push(tokio::spawn(run_scheduler(
            started.loopback.admin(),
            sched,
            stopped(stop_rx.clone()),
        )));
    }
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
        let all = async {
            for c in components {
                let _ = c.await;
            }
        };
        if tokio::time::timeout(COMPONENT_STOP, all).await.is_err() {
            warn!("in-process components still stopping; stopping the server anyway");
        }
    };
    kelp_apiserver::serve::serve_https(
        listener,
        tls::server_config(&pki)?,
        Arc::new(authn),
        router,
        shutdown,
    )
    .await?;
    info!("control plane stopped");
    Ok(())
}
