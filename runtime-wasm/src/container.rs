//! Running one Wasm container: a WASI preview 1 command module in its own store, with
//! args, env and preopened mounts from its spec, its memory limit, and a stop signal.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tracing::debug;
use wasmtime::{Linker, Module, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use crate::engine::WasmEngine;
use crate::logs::{CriLog, Stream};
use crate::RuntimeError;

/// A host directory the container sees at `guest_path`.
#[derive(Debug, Clone)]
pub struct Mount {
    pub host_path: PathBuf,
    pub guest_path: String,
    pub read_only: bool,
}

/// What a container runs with (from the pod spec).
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    /// `argv`, program name first.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    /// `resources.limits.memory` in bytes: linear memories and tables together.
    pub memory_limit: Option<usize>,
    /// The CRI log file.
    pub log_path: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// Ran to the end (exit code 0) or called `proc_exit`.
    Completed,
    /// Non-zero exit or a trap.
    Error,
    /// Exceeded its memory limit (exit code 137, as the kernel's OOM kill).
    OomKilled,
    /// Stopped on request (exit code 137, as SIGKILL).
    Killed,
}

impl ExitReason {
    /// The CRI/Kubernetes reason string.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Completed => "Completed",
            ExitReason::Error => "Error",
            ExitReason::OomKilled => "OOMKilled",
            ExitReason::Killed => "Error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitStatus {
    pub code: i32,
    pub reason: ExitReason,
    pub message: String,
}

/// Asks a running container to stop; it is interrupted at the next epoch tick.
#[derive(Debug, Clone, Default)]
pub struct StopHandle(Arc<AtomicBool>);

impl StopHandle {
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Enforces the memory limit and remembers that it did.
struct MemoryLimit {
    limit: Option<usize>,
    exceeded: bool,
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if let Some(limit) = self.limit {
            if desired > limit {
                self.exceeded = true;
                // An error (not `false`) so the module cannot carry on after being refused.
                return Err(wasmtime::Error::msg(format!(
                    "memory limit of {limit} bytes exceeded (growing from {current} to {desired} bytes)"
                )));
            }
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables count against the limit too: 8 bytes an element is what they cost.
        if let Some(limit) = self.limit {
            if desired.saturating_mul(8) > limit {
                self.exceeded = true;
                return Err(wasmtime::Error::msg(
                    "table growth exceeds the memory limit",
                ));
            }
        }
        Ok(true)
    }
}

struct Host {
    wasi: WasiP1Ctx,
    limits: MemoryLimit,
}

/// Runs the module's `_start` to completion, a trap, the memory limit or a stop.
pub async fn run(
    engine: &WasmEngine,
    module: &Module,
    spec: &ContainerSpec,
    stop: &StopHandle,
) -> Result<ExitStatus, RuntimeError> {
    let log = CriLog::open(&spec.log_path).map_err(|source| RuntimeError::Io {
        path: spec.log_path.clone(),
        source,
    })?;
    let mut b = WasiCtxBuilder::new();
    b.args(&spec.args)
        .envs(&spec.env)
        .stdout(log.stream(Stream::Stdout))
        .stderr(log.stream(Stream::Stderr));
    for m in &spec.mounts {
        let perms = if m.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        b.preopened_dir(&m.host_path, &m.guest_path, perms)
            .map_err(|e| {
                RuntimeError::Setup(format!(
                    "mount {} at {}: {e}",
                    m.host_path.display(),
                    m.guest_path
                ))
            })?;
    }
    let host = Host {
        wasi: b.build_p1(),
        limits: MemoryLimit {
            limit: spec.memory_limit,
            exceeded: false,
        },
    };
    let mut store = Store::new(engine.engine(), host);
    store.limiter(|h| &mut h.limits);
    store.set_epoch_deadline(1);
    let stopper = stop.clone();
    store.epoch_deadline_callback(move |_| {
        if stopper.is_stopped() {
            Ok(UpdateDeadline::Interrupt)
        } else {
            // Yield each tick so one container never holds an executor thread.
            Ok(UpdateDeadline::Yield(1))
        }
    });
    let mut linker: Linker<Host> = Linker::new(engine.engine());
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |h: &mut Host| &mut h.wasi)
        .map_err(|e| RuntimeError::Setup(e.to_string()))?;

    let result = async {
        let instance = linker.instantiate_async(&mut store, module).await?;
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
        start.call_async(&mut store, ()).await
    }
    .await;
    let _ = log.finish();
    let status = match result {
        Ok(()) => ExitStatus {
            code: 0,
            reason: ExitReason::Completed,
            message: String::new(),
        },
        Err(e) => {
            if let Some(exit) = e.downcast_ref::<I32Exit>() {
                let reason = if exit.0 == 0 {
                    ExitReason::Completed
                } else {
                    ExitReason::Error
                };
                ExitStatus {
                    code: exit.0,
                    reason,
                    message: String::new(),
                }
            } else if store.data().limits.exceeded {
                ExitStatus {
                    code: 137,
                    reason: ExitReason::OomKilled,
                    message: format!("{e:#}"),
                }
            } else if stop.is_stopped() {
                ExitStatus {
                    code: 137,
                    reason: ExitReason::Killed,
                    message: "stopped".into(),
                }
            } else {
                ExitStatus {
                    code: 1,
                    reason: ExitReason::Error,
                    message: format!("{e:#}"),
                }
            }
        }
    };
    debug!(
        code = status.code,
        reason = status.reason.as_str(),
        "wasm container exited"
    );
    Ok(status)
}
