//! Containers: created from an image in the store (compiled at create time so that
//! start is instantiation only), started as a task on the node's executor, stopped
//! through the epoch interrupt, with a CRI-shaped status.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{
    lock, new_id, now_nanos, Sandbox, ServiceError, WasmRuntime, CONTAINER_PORTS_ANNOTATION,
};
use crate::container::Artifact;
use crate::container::{ContainerSpec, ExitReason, ExitStatus, Mount, StopHandle};
use crate::engine::WasmEngine;
use crate::image::ImageRecord;

/// Sandbox annotation that takes the pod's sockets away (`kelp.dev/network: none`).
pub const NETWORK_ANNOTATION: &str = "kelp.dev/network";
/// Port a wasi:http component listens on when its container declares none.
const DEFAULT_HTTP_PORT: u16 = 8080;

/// What the kubelet asks for (CRI `ContainerConfig`).
#[derive(Debug, Clone, Default)]
pub struct ContainerConfig {
    pub name: String,
    pub attempt: u32,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: Option<String>,
    pub envs: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    /// Relative to the sandbox's log directory.
    pub log_path: Option<String>,
    pub stdin: bool,
    pub memory_limit: Option<u64>,
    /// `resources.limits.cpu` in millicores (CRI quota / period).
    pub cpu_limit_millis: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerPhase {
    Created,
    Running,
    Exited,
}

#[derive(Debug, Clone)]
pub struct ContainerState {
    pub phase: ContainerPhase,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit: Option<ExitStatus>,
}

pub struct Container {
    pub id: String,
    pub sandbox_id: String,
    pub config: ContainerConfig,
    pub image: ImageRecord,
    pub created_at: i64,
    /// Absolute path of the CRI log file, when the kubelet asked for one.
    pub log_path: PathBuf,
    pub spec: ContainerSpec,
    /// The engine the artifact was compiled for (commands or wasi:http).
    engine: WasmEngine,
    artifact: Artifact,
    /// Where a wasi:http component is served; `None` for commands.
    http_addr: Option<SocketAddr>,
    state: Mutex<ContainerState>,
    stop: StopHandle,
    /// A stop with a grace period: reported as SIGTERM's 143, not SIGKILL's 137.
    graceful: AtomicBool,
    /// Nanoseconds the guest spent executing (time inside polls of its task).
    cpu_nanos: Arc<AtomicU64>,
    exited: watch::Sender<bool>,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container")
            .field("id", &self.id)
            .field("sandbox_id", &self.sandbox_id)
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl Container {
    pub fn state(&self) -> ContainerState {
        lock(&self.state).clone()
    }

    /// Bytes of linear memory and tables the container holds now.
    pub fn memory_usage_bytes(&self) -> u64 {
        self.spec.memory.used()
    }

    pub fn cpu_usage_nanos(&self) -> u64 {
        self.cpu_nanos.load(Ordering::Relaxed)
    }

    pub(super) fn artifact(&self) -> &Artifact {
        &self.artifact
    }

    /// The address a wasi:http component serves on, if it is one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Resolves when the container has exited (immediately if it already has).
    pub async fn wait(&self) -> ExitStatus {
        let mut rx = self.exited.subscribe();
        loop {
            if let Some(exit) = self.state().exit {
                return exit;
            }
            if rx.changed().await.is_err() {
                // The sender lives as long as `self`; this is unreachable in practice.
                return ExitStatus {
                    code: 137,
                    reason: ExitReason::Error,
                    message: "container record dropped".into(),
                };
            }
        }
    }

    fn finish(&self, mut exit: ExitStatus) {
        if exit.reason == ExitReason::Killed && self.graceful.load(Ordering::Acquire) {
            // No Wasm guest can handle SIGTERM, so a graceful stop ends it the way the
            // default disposition would: exit 143.
            exit.code = 143;
        }
        {
            let mut st = lock(&self.state);
            st.phase = ContainerPhase::Exited;
            st.finished_at = now_nanos();
            st.exit = Some(exit.clone());
        }
        self.exited.send_replace(true);
        info!(container = %self.id, name = %self.config.name, code = exit.code, reason = exit.reason.as_str(), "container exited");
    }
}

/// argv by the CRI rules: `command` replaces the image's entrypoint, `args` its cmd.
fn argv(cfg: &ContainerConfig, image: &ImageRecord) -> Vec<String> {
    let mut argv: Vec<String> = if cfg.command.is_empty() {
        image.entrypoint.clone()
    } else {
        cfg.command.clone()
    };
    if !cfg.args.is_empty() {
        argv.extend(cfg.args.iter().cloned());
    } else if cfg.command.is_empty() {
        argv.extend(image.cmd.iter().cloned());
    }
    if argv.is_empty() || (cfg.command.is_empty() && image.entrypoint.is_empty()) {
        // WASI programs read their name from argv[0]; an artifact names none.
        argv.insert(0, cfg.name.clone());
    }
    argv
}

/// Image env first, then the container's (later entries win), then HOSTNAME.
fn environment(cfg: &ContainerConfig, image: &ImageRecord, sb: &Sandbox) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: String, v: String| {
        if let Some(e) = env.iter_mut().find(|(ek, _)| *ek == k) {
            e.1 = v;
        } else {
            env.push((k, v));
        }
    };
    for kv in &image.env {
        if let Some((k, v)) = kv.split_once('=') {
            set(k.to_string(), v.to_string());
        }
    }
    for (k, v) in &cfg.envs {
        set(k.clone(), v.clone());
    }
    let hostname = if sb.config.hostname.is_empty() {
        sb.config.name.clone()
    } else {
        sb.config.hostname.clone()
    };
    if !env.iter().any(|(k, _)| k == "HOSTNAME") {
        env.push(("HOSTNAME".into(), hostname));
    }
    env
}

/// The port a wasi:http component serves: its first declared TCP port (the kubelet's
/// ports annotation), else the sandbox's first port mapping, else 8080.
fn http_port(cfg: &ContainerConfig, sb: &Sandbox) -> u16 {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Port {
        container_port: u16,
        #[serde(default)]
        protocol: Option<String>,
    }
    if let Some(raw) = cfg.annotations.get(CONTAINER_PORTS_ANNOTATION) {
        if let Ok(ports) = serde_json::from_str::<Vec<Port>>(raw) {
            if let Some(p) = ports
                .iter()
                .find(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            {
                return p.container_port;
            }
        }
    }
    sb.config
        .port_mappings
        .iter()
        .find(|p| p.protocol == "TCP")
        .map(|p| p.container_port)
        .unwrap_or(DEFAULT_HTTP_PORT)
}

/// Adds the time spent inside each poll of the wrapped future to a counter.
struct Timed<F> {
    inner: Pin<Box<F>>,
    total: Arc<AtomicU64>,
}

impl<F: Future> Future for Timed<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let t = Instant::now();
        let out = self.inner.as_mut().poll(cx);
        self.total
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        out
    }
}

impl WasmRuntime {
    /// Compiles (or loads from the compile cache) an image's module for the engine
    /// that will run it: components go to the wasi:http engine first and come back to
    /// the command engine when they turn out to be commands. Also says whether the
    /// artifact serves wasi:http.
    async fn compile_image(
        &self,
        image: &ImageRecord,
    ) -> Result<(WasmEngine, Artifact, bool), ServiceError> {
        if let Some(hit) = self.compiled_image(image) {
            return Ok(hit);
        }
        let path = image.wasm_path.clone();
        let is_component = image.kind == crate::image::WasmKind::Component;
        let (commands, http) = (self.engine().clone(), self.http_engine().clone());
        tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&path).map_err(|source| crate::RuntimeError::Io {
                path: path.clone(),
                source,
            })?;
            if is_component {
                let artifact = http.compile(&bytes)?;
                if let Artifact::Component(c) = &artifact {
                    if crate::http::exports_http_handler(c, &http) {
                        return Ok((http, artifact, true));
                    }
                }
            }
            let artifact = commands.compile(&bytes)?;
            Ok((commands, artifact, false))
        })
        .await
        .map_err(|e| ServiceError::Internal(format!("compile task: {e}")))?
    }

    /// What [`compile_image`](Self::compile_image) returned for `image` before, found
    /// by the image's Wasm digest in the engines' caches: every container after an
    /// image's first skips reading and hashing its module (~0.2 ms of a pod start,
    /// with the hop to a blocking thread). None: ask `compile_image`'s slow path.
    fn compiled_image(&self, image: &ImageRecord) -> Option<(WasmEngine, Artifact, bool)> {
        let digest = sha256_bytes(&image.wasm_digest)?;
        let (commands, http) = (self.engine(), self.http_engine());
        if image.kind == crate::image::WasmKind::Component {
            // Components are compiled for the wasi:http engine first; one that exports
            // no handler also goes to the command engine.
            let artifact = http.cached(&digest)?;
            if let Artifact::Component(c) = &artifact {
                if crate::http::exports_http_handler(c, http) {
                    return Some((http.clone(), artifact, true));
                }
            }
        }
        commands
            .cached(&digest)
            .map(|artifact| (commands.clone(), artifact, false))
    }

    /// Compiles `image` for the engine that will run it and keeps the result in the
    /// compile cache, so the first container of an image pulled or imported ahead
    /// of time starts without compiling. Returns whether it serves wasi:http.
    pub async fn precompile(&self, image: &ImageRecord) -> Result<bool, ServiceError> {
        self.compile_image(image).await.map(|(_, _, http)| http)
    }

    pub async fn create_container(
        &self,
        sandbox_id: &str,
        cfg: ContainerConfig,
    ) -> Result<Arc<Container>, ServiceError> {
        let sb = self.sandbox(sandbox_id)?;
        if !sb.is_ready() {
            return Err(ServiceError::FailedPrecondition(format!(
                "pod sandbox {sandbox_id} is not ready"
            )));
        }
        if cfg.name.is_empty() {
            return Err(ServiceError::InvalidArgument(
                "container metadata needs a name".into(),
            ));
        }
        let image = self
            .images()
            .get(&cfg.image)
            .ok_or_else(|| ServiceError::NotFound {
                kind: "image",
                id: cfg.image.clone(),
            })?;
        let (engine, artifact, serves_http) = self.compile_image(&image).await?;

        let id = new_id();
        let log_path = match (&sb.config.log_directory, &cfg.log_path) {
            (Some(dir), Some(rel)) if !rel.is_empty() => dir.join(rel),
            _ => sb
                .scratch_dir()?
                .join(format!("{}_{}.log", cfg.name, cfg.attempt)),
        };
        let allow_network = sb
            .config
            .annotations
            .get(NETWORK_ANNOTATION)
            .is_none_or(|v| v != "none");
        let egress = crate::egress::EgressPolicy::from_annotations(|k| {
            sb.config.annotations.get(k).map(String::as_str)
        })
        .map_err(ServiceError::InvalidArgument)?
        .map(Arc::new);
        let spec = ContainerSpec {
            args: argv(&cfg, &image),
            env: environment(&cfg, &image, &sb),
            mounts: cfg.mounts.clone(),
            memory_limit: cfg.memory_limit.map(|m| m as usize),
            log_path: log_path.clone(),
            working_dir: cfg
                .working_dir
                .clone()
                .or_else(|| image.working_dir.clone()),
            stdin: None,
            allow_network,
            egress,
            hostname: Some(sb.config.hostname.clone()).filter(|h| !h.is_empty()),
            resolver: sb.config.dns.clone(),
            origin: Some(crate::outbound::Origin {
                ip: sb.ip,
                cluster: self.inner.cfg.cluster_networks.clone(),
            }),
            cpu_limit_millis: cfg.cpu_limit_millis,
            ..Default::default()
        };
        let http_addr = serves_http.then(|| SocketAddr::new(sb.ip, http_port(&cfg, &sb)));
        let (exited, _) = watch::channel(false);
        let c = Arc::new(Container {
            id: id.clone(),
            sandbox_id: sandbox_id.to_string(),
            config: cfg,
            image,
            created_at: now_nanos(),
            log_path,
            spec,
            engine,
            artifact,
            http_addr,
            state: Mutex::new(ContainerState {
                phase: ContainerPhase::Created,
                started_at: 0,
                finished_at: 0,
                exit: None,
            }),
            stop: StopHandle::default(),
            graceful: AtomicBool::new(false),
            cpu_nanos: Arc::new(AtomicU64::new(0)),
            exited,
        });
        debug!(container = %id, name = %c.config.name, "container created");
        lock(&self.inner.containers).insert(id, c.clone());
        Ok(c)
    }

    pub fn start_container(&self, id: &str) -> Result<(), ServiceError> {
        let c = self.container(id)?;
        {
            let mut st = lock(&c.state);
            if st.phase != ContainerPhase::Created {
                return Err(ServiceError::FailedPrecondition(format!(
                    "container {id} is {:?}, not created",
                    st.phase
                )));
            }
            st.phase = ContainerPhase::Running;
            st.started_at = now_nanos();
        }
        let engine = c.engine.clone();
        let task_c = c.clone();
        let run = async move {
            let c = task_c;
            match (&c.artifact, c.http_addr) {
                (Artifact::Component(comp), Some(addr)) => {
                    crate::http::serve(&engine, comp.clone(), addr, &c.spec, c.stop.clone()).await
                }
                (artifact, _) => crate::container::run(&engine, artifact, &c.spec, &c.stop).await,
            }
        };
        let timed = Timed {
            inner: Box::pin(run),
            total: c.cpu_nanos.clone(),
        };
        let handle = tokio::spawn(timed);
        tokio::spawn(async move {
            let exit = match handle.await {
                Ok(Ok(exit)) => exit,
                Ok(Err(e)) => ExitStatus {
                    code: 128,
                    reason: ExitReason::Error,
                    message: e.to_string(),
                },
                Err(e) => {
                    // A host bug, never a guest's doing: the container ends, the node stays.
                    warn!(container = %c.id, error = %e, "container task failed");
                    ExitStatus {
                        code: 255,
                        reason: ExitReason::Error,
                        message: format!("runtime error: {e}"),
                    }
                }
            };
            c.finish(exit);
        });
        Ok(())
    }

    /// Stops a container: at once when `timeout_secs` is 0, otherwise as a graceful
    /// stop (a Wasm guest cannot catch SIGTERM, so it ends now with exit code 143).
    pub async fn stop_container(&self, id: &str, timeout_secs: i64) -> Result<(), ServiceError> {
        let c = self.container(id)?;
        let phase = c.state().phase;
        match phase {
            ContainerPhase::Exited => return Ok(()),
            ContainerPhase::Created => {
                c.finish(ExitStatus {
                    code: 0,
                    reason: ExitReason::Completed,
                    message: "stopped before it started".into(),
                });
                return Ok(());
            }
            ContainerPhase::Running => {}
        }
        if timeout_secs > 0 {
            c.graceful.store(true, Ordering::Release);
        }
        c.stop.stop();
        c.wait().await;
        Ok(())
    }

    pub async fn remove_container(&self, id: &str) -> Result<(), ServiceError> {
        if self.container(id).is_err() {
            return Ok(());
        }
        self.stop_container(id, 0).await?;
        lock(&self.inner.containers).remove(id);
        Ok(())
    }

    pub fn container_status(&self, id: &str) -> Result<Arc<Container>, ServiceError> {
        self.container(id)
    }

    /// CRI `UpdateContainerResources`: a new memory limit, effective for the next growth.
    pub fn update_memory_limit(&self, id: &str, limit: Option<u64>) -> Result<(), ServiceError> {
        self.container(id)?.spec.memory.set_limit(limit);
        Ok(())
    }

    /// CRI `ReopenContainerLog`: the log file was rotated away; write a fresh one.
    pub fn reopen_log(&self, id: &str) -> Result<(), ServiceError> {
        let c = self.container(id)?;
        if c.state().phase != ContainerPhase::Running {
            return Err(ServiceError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        c.spec.log_reopen.request();
        Ok(())
    }

    /// Waits for a container to exit (tests and the exec path).
    pub async fn wait_container(&self, id: &str) -> Result<ExitStatus, ServiceError> {
        Ok(self.container(id)?.wait().await)
    }
}

/// The 32 bytes of a `sha256:<64 hex digits>` digest.
fn sha256_bytes(digest: &str) -> Option<[u8; 32]> {
    let hex = digest.strip_prefix("sha256:")?.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::sha256_bytes;

    #[test]
    fn digests_parse_to_their_bytes() {
        let d = format!("sha256:00ff10{}", "ab".repeat(29));
        let b = sha256_bytes(&d).unwrap();
        assert_eq!(&b[..3], &[0x00, 0xff, 0x10]);
        assert!(b[3..].iter().all(|x| *x == 0xab));
        assert_eq!(
            sha256_bytes(&d.to_uppercase().replace("SHA256", "sha256")),
            Some(b)
        );
        for bad in [
            "sha512:00",
            "sha256:0",
            &format!("sha256:{}zz", "0".repeat(62)),
        ] {
            assert_eq!(sha256_bytes(bad), None, "{bad}");
        }
    }
}
