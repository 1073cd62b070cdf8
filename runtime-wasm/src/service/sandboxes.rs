//! Pod sandboxes: the pod's identity, address, log directory and scratch space that
//! its containers share. A Wasm sandbox needs no pause process: it is bookkeeping
//! plus a directory, so starting one costs microseconds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tracing::{debug, info};

use super::{lock, new_id, now_nanos, ServiceError, WasmRuntime, POD_IP_ANNOTATION};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMapping {
    pub container_port: u16,
    pub protocol: &'static str,
}

/// What the kubelet asks for (CRI `PodSandboxConfig`).
#[derive(Debug, Clone, Default)]
pub struct SandboxConfig {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
    pub hostname: String,
    pub log_directory: Option<PathBuf>,
    pub port_mappings: Vec<PortMapping>,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    /// The pod's resolver (CRI `dns_config`); None: the system resolver.
    pub dns: Option<Arc<crate::dns::PodResolver>>,
}

#[derive(Debug)]
pub struct Sandbox {
    pub id: String,
    pub config: SandboxConfig,
    pub created_at: i64,
    pub ip: IpAddr,
    /// The sandbox's own scratch directory (removed with it), made on first use:
    /// most pods never need one (their logs go to the kubelet's log directory).
    dir: PathBuf,
    ready: AtomicBool,
}

impl Sandbox {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The scratch directory, created if it is not there yet.
    pub fn scratch_dir(&self) -> Result<&Path, crate::RuntimeError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| crate::RuntimeError::Io {
            path: self.dir.clone(),
            source,
        })?;
        Ok(&self.dir)
    }
}

impl WasmRuntime {
    pub fn run_sandbox(&self, config: SandboxConfig) -> Result<Arc<Sandbox>, ServiceError> {
        if config.name.is_empty() || config.uid.is_empty() {
            return Err(ServiceError::InvalidArgument(
                "sandbox metadata needs a name and a uid".into(),
            ));
        }
        // Same pod and attempt again (a kubelet retrying after a lost reply): reuse it.
        if let Some(existing) = lock(&self.inner.sandboxes).values().find(|s| {
            s.config.uid == config.uid && s.config.attempt == config.attempt && s.is_ready()
        }) {
            return Ok(existing.clone());
        }
        let ip = match config.annotations.get(POD_IP_ANNOTATION) {
            Some(raw) => raw.parse().map_err(|_| {
                ServiceError::InvalidArgument(format!(
                    "annotation {POD_IP_ANNOTATION}={raw:?} is not an IP address"
                ))
            })?,
            None => self.inner.cfg.default_ip,
        };
        let id = new_id();
        let dir = self.inner.cfg.root.join("sandboxes").join(&id);
        if let Some(d) = &config.log_directory {
            std::fs::create_dir_all(d).map_err(|source| crate::RuntimeError::Io {
                path: d.clone(),
                source,
            })?;
        }
        let sb = Arc::new(Sandbox {
            id: id.clone(),
            config,
            created_at: now_nanos(),
            ip,
            dir,
            ready: AtomicBool::new(true),
        });
        info!(sandbox = %id, pod = %format!("{}/{}", sb.config.namespace, sb.config.name), %ip, "sandbox ready");
        lock(&self.inner.sandboxes).insert(id, sb.clone());
        Ok(sb)
    }

    /// Stops every container of the sandbox (force) and marks it not ready. Idempotent.
    pub async fn stop_sandbox(&self, id: &str) -> Result<(), ServiceError> {
        let Ok(sb) = self.sandbox(id) else {
            // CRI: stopping a sandbox that is gone is not an error.
            return Ok(());
        };
        let members: Vec<String> = self
            .list_containers()
            .into_iter()
            .filter(|c| c.sandbox_id == id)
            .map(|c| c.id.clone())
            .collect();
        for c in members {
            self.stop_container(&c, 0).await?;
        }
        sb.ready.store(false, Ordering::Release);
        debug!(sandbox = %id, "sandbox stopped");
        Ok(())
    }

    /// Removes the sandbox, its containers and its scratch directory. Idempotent.
    pub async fn remove_sandbox(&self, id: &str) -> Result<(), ServiceError> {
        if self.sandbox(id).is_err() {
            return Ok(());
        }
        self.stop_sandbox(id).await?;
        let members: Vec<String> = self
            .list_containers()
            .into_iter()
            .filter(|c| c.sandbox_id == id)
            .map(|c| c.id.clone())
            .collect();
        for c in members {
            self.remove_container(&c).await?;
        }
        if let Some(sb) = lock(&self.inner.sandboxes).remove(id) {
            std::fs::remove_dir_all(&sb.dir).ok();
        }
        Ok(())
    }

    pub fn sandbox_status(&self, id: &str) -> Result<Arc<Sandbox>, ServiceError> {
        self.sandbox(id)
    }
}
