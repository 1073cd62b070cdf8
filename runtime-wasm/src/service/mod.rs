//! The CRI model on top of the engine, the image store and containers: pod sandboxes
//! and containers with their lifecycle and status, held in memory by one
//! [`WasmRuntime`] per node. The kubelet calls it in-process through the CRI traits
//! (`cri_runtime`, `cri_images`); `kelp runtime` serves the same traits over gRPC.
//!
//! State lives in memory: a node process that restarts has lost its Wasm instances
//! anyway (they run in-process), and the kubelet recreates its pods' sandboxes.

mod containers;
mod cri_images;
mod cri_runtime;
mod exec;
mod sandboxes;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub use containers::{Container, ContainerConfig, ContainerPhase, ContainerState};
pub use cri_images::registry_auth;
pub use exec::ExecOutput;
pub use sandboxes::{PortMapping, Sandbox, SandboxConfig};

use crate::engine::{Allocation, WasmEngine};
use crate::image::ImageStore;

/// The CRI runtime handler this runtime serves (a RuntimeClass names it).
pub const HANDLER: &str = "wasm";
/// The `runtime_name` CRI `Version` reports (how the kubelet tells this runtime served
/// remotely by `kelp runtime` from containerd).
pub const RUNTIME_NAME: &str = "kelp-wasm";
/// Sandbox annotation through which the node's network module assigns the pod IP.
pub const POD_IP_ANNOTATION: &str = "kelp.dev/pod-ip";
/// Container annotation the kubelet sets with the container's declared ports (JSON).
pub const CONTAINER_PORTS_ANNOTATION: &str = "io.kubernetes.container.ports";

#[derive(Clone)]
pub struct RuntimeConfig {
    /// State directory: `images/` (content store), `compiled/` (compile cache),
    /// `sandboxes/` (per-pod scratch space).
    pub root: PathBuf,
    /// `HOST:PORT` registries reached over plain http although not on loopback.
    pub insecure_registries: Vec<String>,
    /// The sandbox address when the kubelet assigned none.
    pub default_ip: IpAddr,
    /// The cluster's pod networks: a Wasm pod's outgoing wasi:http connections to them
    /// (and to this host's own addresses) leave from the pod's address.
    pub cluster_networks: Arc<[ipnet::IpNet]>,
    /// The streaming server CRI `Exec`/`PortForward` hand out URLs of, when this
    /// runtime serves CRI in its own process (`None`: in the kubelet's process, which
    /// streams through [`kelp_cri_api::streaming::StreamingRuntime`] instead).
    pub stream_urls: Option<Arc<dyn kelp_cri_api::streaming::StreamUrls>>,
}

impl std::fmt::Debug for RuntimeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeConfig")
            .field("root", &self.root)
            .field("insecure_registries", &self.insecure_registries)
            .field("default_ip", &self.default_ip)
            .field("cluster_networks", &self.cluster_networks)
            .field("stream_urls", &self.stream_urls.is_some())
            .finish()
    }
}

impl RuntimeConfig {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RuntimeConfig {
            root: root.into(),
            insecure_registries: Vec::new(),
            default_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            cluster_networks: Arc::from([]),
            stream_urls: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    Runtime(#[from] crate::RuntimeError),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    fn not_found(kind: &'static str, id: &str) -> Self {
        ServiceError::NotFound {
            kind,
            id: id.to_string(),
        }
    }
}

/// One node's Wasm runtime: sandboxes, containers and images.
#[derive(Clone)]
pub struct WasmRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: RuntimeConfig,
    /// Commands (preview 1 modules, preview 2 command components): instances allocated
    /// on demand, so the number of running containers is bounded by memory alone.
    engine: WasmEngine,
    /// wasi:http components: the pooling allocator, which makes the per-request
    /// instance ~1.6× cheaper but caps concurrent instances (docs/benchmarks.md).
    http_engine: WasmEngine,
    images: ImageStore,
    sandboxes: Mutex<HashMap<String, Arc<Sandbox>>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
}

impl WasmRuntime {
    pub fn new(cfg: RuntimeConfig) -> Result<Self, ServiceError> {
        let compiled = cfg.root.join("compiled");
        let engine =
            WasmEngine::with_allocation(Some(&compiled.join("commands")), Allocation::OnDemand)?;
        let http_engine = WasmEngine::new(Some(&compiled.join("http")))?;
        let images = ImageStore::open(&cfg.root.join("images"))?;
        Ok(WasmRuntime {
            inner: Arc::new(Inner {
                cfg,
                engine,
                http_engine,
                images,
                sandboxes: Mutex::new(HashMap::new()),
                containers: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.cfg
    }

    /// The engine commands run on.
    pub fn engine(&self) -> &WasmEngine {
        &self.inner.engine
    }

    /// The engine wasi:http components are served from.
    pub fn http_engine(&self) -> &WasmEngine {
        &self.inner.http_engine
    }

    pub fn images(&self) -> &ImageStore {
        &self.inner.images
    }

    fn sandbox(&self, id: &str) -> Result<Arc<Sandbox>, ServiceError> {
        lock(&self.inner.sandboxes)
            .get(id)
            .cloned()
            .ok_or_else(|| ServiceError::not_found("pod sandbox", id))
    }

    fn container(&self, id: &str) -> Result<Arc<Container>, ServiceError> {
        lock(&self.inner.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| ServiceError::not_found("container", id))
    }

    pub fn list_sandboxes(&self) -> Vec<Arc<Sandbox>> {
        lock(&self.inner.sandboxes).values().cloned().collect()
    }

    pub fn list_containers(&self) -> Vec<Arc<Container>> {
        lock(&self.inner.containers).values().cloned().collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A random 64-hex-digit id, as containerd gives sandboxes and containers.
fn new_id() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
