//! Running one Wasm container: a WASI preview 1 command module ([`p1`]) or a WASI
//! preview 2 command component ([`component`]) in its own store, with args, env, a
//! working directory and preopened mounts from its spec, its memory (and optionally
//! CPU) limit, no network unless allowed, and a stop signal.
//!
//! Both kinds share the semantics defined here: the exit status mapping (exit code,
//! trap → 1, memory limit → 137 `OOMKilled`, stop → 137), the resource limiter and
//! the epoch callback.

pub mod component;
pub mod p1;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::debug;
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use crate::engine::{WasmEngine, EPOCH_TICK};
use crate::logs::{CriLog, Stream};
use crate::RuntimeError;

/// A compiled workload: a core module (WASI preview 1) or a component (WASI
/// preview 2 command, or a wasi:http proxy for [`crate::http::serve`]).
#[derive(Clone)]
pub enum Artifact {
    Module(wasmtime::Module),
    Component(wasmtime::component::Component),
}

impl Artifact {
    pub fn is_component(&self) -> bool {
        matches!(self, Artifact::Component(_))
    }
}

impl std::fmt::Debug for Artifact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Artifact::Module(_) => "Artifact::Module",
            Artifact::Component(_) => "Artifact::Component",
        })
    }
}

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
    /// `workingDir`: the initial cwd of preview 2 components (`wasi:cli/environment
    /// .initial-cwd`) and `PWD` for both kinds unless the env sets it. Preview 1 has
    /// no cwd of its own: relative paths resolve against the preopens.
    pub working_dir: Option<String>,
    /// The pod's hostname, given as env `HOSTNAME` unless the env sets it (as CRI
    /// runtimes do).
    pub hostname: Option<String>,
    /// Bytes to read on stdin (`stdin: true` with attached input); `None` is a
    /// closed stdin (reads see end of file).
    pub stdin: Option<Vec<u8>>,
    /// Sockets (TCP, UDP, name lookup) and outgoing wasi:http requests. Denied
    /// unless true.
    pub allow_network: bool,
    /// Deny-by-default outbound policy (`None`: any destination).
    pub egress: Option<Arc<crate::egress::EgressPolicy>>,
    /// The pod's resolver for outgoing wasi:http requests (the sandbox's DNS
    /// config); None: the system resolver.
    pub resolver: Option<Arc<crate::dns::PodResolver>>,
    /// Where outgoing wasi:http connections come from (`None`: the node's address).
    pub origin: Option<crate::outbound::Origin>,
    /// `resources.limits.memory` in bytes: all linear memories and tables of the
    /// container's store together.
    pub memory_limit: Option<usize>,
    /// `resources.limits.cpu` in millicores: the guest is paused at epoch ticks
    /// so that it runs at most this share of one core. `None` (or ≥ 1000) is no
    /// throttling.
    pub cpu_limit_millis: Option<u32>,
    /// wasi:http serving only: the longest one request may run before it is
    /// interrupted (answered 500). `None` is [`crate::http::DEFAULT_REQUEST_TIMEOUT`].
    pub request_timeout: Option<Duration>,
    /// The CRI log file.
    pub log_path: PathBuf,
    /// Live memory figures shared with the runtime (stats, limit updates).
    pub memory: MemoryGauge,
    /// Lets the runtime reopen the log file after the kubelet rotated it.
    pub log_reopen: crate::logs::LogReopen,
    /// Streamed stdio (a streaming exec) in place of `stdin` and the CRI log.
    pub pipes: Option<Pipes>,
}

/// A streamed command's stdio: stdin from the client, stdout/stderr to channels.
/// Clones share the stdin reader (taken once, by the container that runs).
#[derive(Clone)]
pub struct Pipes {
    pub stdin: Option<Arc<wasmtime_wasi::cli::AsyncStdinStream>>,
    pub stdout: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
    pub stderr: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
}

impl std::fmt::Debug for Pipes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipes")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .finish()
    }
}

/// A streamed output: writes go into a bounded channel; a full channel makes the
/// guest wait (its `check-write` reports no room until the client has read), and a
/// closed one (the client went away) discards output.
struct PipeOutput(Option<tokio::sync::mpsc::Sender<bytes::Bytes>>);

impl wasmtime_wasi::cli::IsTerminal for PipeOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for PipeOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(tokio::io::sink())
    }

    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(PipeOutput(self.0.clone()))
    }
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for PipeOutput {
    async fn ready(&mut self) {
        if let Some(tx) = &self.0 {
            // Wait for room; the permit is given back at once (we are the only writer
            // of this stream, so the room stays until our write).
            let _ = tx.reserve().await;
        }
    }
}

impl wasmtime_wasi::p2::OutputStream for PipeOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> wasmtime_wasi::p2::StreamResult<()> {
        if let Some(tx) = &self.0 {
            if let Err(tokio::sync::mpsc::error::TrySendError::Full(b)) = tx.try_send(bytes) {
                // Only a guest that ignored `check-write` gets here; its bytes are
                // still delivered, later.
                let tx = tx.clone();
                tokio::spawn(async move { tx.send(b).await });
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> wasmtime_wasi::p2::StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> wasmtime_wasi::p2::StreamResult<usize> {
        Ok(match &self.0 {
            Some(tx) if !tx.is_closed() && tx.capacity() == 0 => 0,
            _ => 1 << 20,
        })
    }
}

/// Memory a running container holds, and a limit that can change while it runs
/// (CRI `UpdateContainerResources`). Clones share the same figures.
#[derive(Debug, Clone, Default)]
pub struct MemoryGauge(Arc<GaugeInner>);

#[derive(Debug, Default)]
struct GaugeInner {
    used: std::sync::atomic::AtomicU64,
    /// 0: the spec's limit applies; otherwise the limit set since, in bytes.
    limit: std::sync::atomic::AtomicU64,
    unlimited: AtomicBool,
}

impl MemoryGauge {
    /// Bytes of linear memory and tables the container's live stores hold now (a
    /// wasi:http container has one store per in-flight request; the sum is reported).
    pub fn used(&self) -> u64 {
        self.0.used.load(Ordering::Relaxed)
    }

    /// Replaces the limit for further growth (`None`: no limit). Memory already
    /// granted stays; the next growth past the new limit ends the container.
    pub fn set_limit(&self, limit: Option<u64>) {
        self.0.unlimited.store(limit.is_none(), Ordering::Relaxed);
        self.0.limit.store(limit.unwrap_or(0), Ordering::Relaxed);
    }

    fn effective(&self, spec_limit: Option<usize>) -> Option<usize> {
        if self.0.unlimited.load(Ordering::Relaxed) {
            return None;
        }
        match self.0.limit.load(Ordering::Relaxed) {
            0 => spec_limit,
            l => Some(usize::try_from(l).unwrap_or(usize::MAX)),
        }
    }
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

impl ExitStatus {
    pub(crate) fn completed() -> Self {
        ExitStatus {
            code: 0,
            reason: ExitReason::Completed,
            message: String::new(),
        }
    }
}

#[derive(Debug, Default)]
struct StopInner {
    stopped: AtomicBool,
    notify: tokio::sync::Notify,
}

/// Asks a running container to stop; it is interrupted at the next epoch tick (and
/// a wasi:http server stops accepting at once).
#[derive(Debug, Clone, Default)]
pub struct StopHandle(Arc<StopInner>);

impl StopHandle {
    pub fn stop(&self) {
        self.0.stopped.store(true, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    pub fn is_stopped(&self) -> bool {
        self.0.stopped.load(Ordering::SeqCst)
    }

    /// Completes once [`stop`](Self::stop) has been called.
    pub async fn stopped(&self) {
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_stopped() {
                return;
            }
            notified.await;
        }
    }
}

/// Runs the workload to completion, a trap, the memory limit or a stop: `_start` of
/// a preview 1 module, `wasi:cli/run.run` of a preview 2 command component.
///
/// A component that only exports `wasi:http/incoming-handler` is not a command;
/// serve it with [`crate::http::serve`] instead (this returns a setup error).
pub async fn run(
    engine: &WasmEngine,
    artifact: &Artifact,
    spec: &ContainerSpec,
    stop: &StopHandle,
) -> Result<ExitStatus, RuntimeError> {
    let status = match artifact {
        Artifact::Module(m) => p1::run(engine, m, spec, stop).await?,
        Artifact::Component(c) => component::run(engine, c, spec, stop).await?,
    };
    debug!(
        code = status.code,
        reason = status.reason.as_str(),
        "wasm container exited"
    );
    Ok(status)
}

/// Enforces the memory limit over everything the store allocates — all linear
/// memories and tables together — and remembers that it did.
pub(crate) struct MemoryLimit {
    limit: Option<usize>,
    gauge: MemoryGauge,
    /// Bytes granted so far across the store's memories and tables.
    used: usize,
    /// The last grant, returned when wasmtime reports that the growth then failed.
    last_grant: usize,
    exceeded: bool,
}

/// What a table element is counted as (a pointer-sized reference).
const TABLE_ELEMENT_BYTES: usize = 8;

impl MemoryLimit {
    pub(crate) fn for_spec(spec: &ContainerSpec) -> Self {
        Self::with_gauge(spec.memory_limit, spec.memory.clone())
    }

    fn with_gauge(limit: Option<usize>, gauge: MemoryGauge) -> Self {
        MemoryLimit {
            limit,
            gauge,
            used: 0,
            last_grant: 0,
            exceeded: false,
        }
    }

    pub(crate) fn exceeded(&self) -> bool {
        self.exceeded
    }

    fn grow(&mut self, what: &str, delta: usize) -> wasmtime::Result<bool> {
        let total = self.used.saturating_add(delta);
        if let Some(limit) = self.gauge.effective(self.limit) {
            if total > limit {
                self.exceeded = true;
                // An error (not `false`) so the module cannot carry on after being refused.
                return Err(wasmtime::Error::msg(format!(
                    "memory limit of {limit} bytes exceeded ({what} growth to {total} bytes in all)"
                )));
            }
        }
        self.used = total;
        self.last_grant = delta;
        self.gauge.0.used.fetch_add(delta as u64, Ordering::Relaxed);
        Ok(true)
    }

    fn grow_failed(&mut self) {
        self.used = self.used.saturating_sub(self.last_grant);
        self.gauge
            .0
            .used
            .fetch_sub(self.last_grant as u64, Ordering::Relaxed);
        self.last_grant = 0;
    }
}

impl Drop for MemoryLimit {
    /// The store is gone with its memories: its share leaves the container's gauge.
    fn drop(&mut self) {
        self.gauge
            .0
            .used
            .fetch_sub(self.used as u64, Ordering::Relaxed);
    }
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow("memory", desired.saturating_sub(current))
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.grow_failed();
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(
            "table",
            desired
                .saturating_sub(current)
                .saturating_mul(TABLE_ELEMENT_BYTES),
        )
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.grow_failed();
        Ok(())
    }
}

/// The store data every kind of container has: its limiter.
pub(crate) trait Limited: Send + 'static {
    fn limits(&mut self) -> &mut MemoryLimit;
}

/// The CPU share a container may use, enforced at epoch ticks: each tick the guest
/// ran (one epoch callback) is followed by a pause so it runs `millis`/1000 of the
/// time. A callback after a long host wait counts as one tick, so sleeping guests
/// are not charged for their sleep.
fn throttle_pause(cpu_limit_millis: Option<u32>) -> Option<Duration> {
    let m = cpu_limit_millis?;
    if m >= 1000 {
        return None;
    }
    let m = m.max(1);
    Some(EPOCH_TICK * (1000 - m) / m)
}

/// Limiter, epoch deadline and callback: yield every tick, pause for the CPU limit,
/// interrupt on stop or once `deadline_ticks` have passed.
pub(crate) fn configure_store<T: Limited>(
    store: &mut Store<T>,
    spec: &ContainerSpec,
    stop: &StopHandle,
    deadline_ticks: Option<u64>,
) {
    store.limiter(|h| h.limits());
    store.set_epoch_deadline(1);
    let stopper = stop.clone();
    let pause = throttle_pause(spec.cpu_limit_millis);
    let started = std::time::Instant::now();
    let deadline = deadline_ticks.map(|t| EPOCH_TICK * t.min(u32::MAX as u64) as u32);
    store.epoch_deadline_callback(move |_| {
        if stopper.is_stopped() {
            return Ok(UpdateDeadline::Interrupt);
        }
        if let Some(d) = deadline {
            if started.elapsed() >= d {
                return Ok(UpdateDeadline::Interrupt);
            }
        }
        Ok(match pause {
            // Yield each tick so one container never holds an executor thread.
            None => UpdateDeadline::Yield(1),
            Some(p) => UpdateDeadline::YieldCustom(1, Box::pin(tokio::time::sleep(p))),
        })
    });
}

/// The WASI context every kind of container starts from: args, env (with
/// `HOSTNAME` and `PWD`), stdio into the CRI log, stdin, mounts, network policy.
pub(crate) fn wasi_builder(
    spec: &ContainerSpec,
    log: &CriLog,
) -> Result<WasiCtxBuilder, RuntimeError> {
    let mut b = WasiCtxBuilder::new();
    b.args(&spec.args).envs(&spec.env);
    match &spec.pipes {
        Some(p) => {
            b.stdout(PipeOutput(p.stdout.clone()))
                .stderr(PipeOutput(p.stderr.clone()));
            if let Some(stdin) = &p.stdin {
                b.stdin(stdin.clone());
            }
        }
        None => {
            b.stdout(LogOutput::new(log, Stream::Stdout))
                .stderr(LogOutput::new(log, Stream::Stderr));
        }
    }
    let has = |k: &str| spec.env.iter().any(|(n, _)| n == k);
    if let Some(h) = &spec.hostname {
        if !has("HOSTNAME") {
            b.env("HOSTNAME", h);
        }
    }
    if let Some(d) = &spec.working_dir {
        b.initial_cwd(d);
        if !has("PWD") {
            b.env("PWD", d);
        }
    }
    if let Some(input) = &spec.stdin {
        b.stdin(wasmtime_wasi::p2::pipe::MemoryInputPipe::new(input.clone()));
    }
    if spec.allow_network {
        b.inherit_network()
            .allow_tcp(true)
            .allow_udp(true)
            .allow_ip_name_lookup(true);
        if let Some(policy) = spec.egress.clone() {
            use wasmtime_wasi::sockets::SocketAddrUse;
            b.socket_addr_check(move |addr, use_| {
                let ok = match use_ {
                    SocketAddrUse::TcpConnect | SocketAddrUse::UdpSend => policy.allows_addr(addr),
                    _ => true,
                };
                Box::pin(async move { ok })
            });
        }
    } else {
        b.socket_addr_check(|_, _| Box::pin(async { false }))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
    }
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
    Ok(b)
}

/// stdout/stderr into the CRI log, written synchronously from the guest's write
/// call. (wasmtime-wasi's default adapter for an `AsyncWrite` hands every write to a
/// background task, a cross-thread wake-up per write that cost more than the whole
/// instantiation of a small command — see docs/benchmarks.md, "Wasm runtime".) The
/// log appends small records to a local file, as [`crate::logs::LogStream`] does.
struct LogOutput {
    log: CriLog,
    stream: Stream,
}

impl LogOutput {
    fn new(log: &CriLog, stream: Stream) -> Self {
        LogOutput {
            log: log.clone(),
            stream,
        }
    }
}

impl wasmtime_wasi::cli::IsTerminal for LogOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for LogOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.log.stream(self.stream))
    }

    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(LogOutput::new(&self.log, self.stream))
    }
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for LogOutput {
    async fn ready(&mut self) {}
}

impl wasmtime_wasi::p2::OutputStream for LogOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> wasmtime_wasi::p2::StreamResult<()> {
        self.log
            .write(self.stream, &bytes)
            .map_err(|e| wasmtime_wasi::p2::StreamError::LastOperationFailed(e.into()))
    }

    fn flush(&mut self) -> wasmtime_wasi::p2::StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> wasmtime_wasi::p2::StreamResult<usize> {
        // Any size: a write is a few appends to a local file.
        Ok(1 << 20)
    }
}

pub(crate) fn open_log(spec: &ContainerSpec) -> Result<CriLog, RuntimeError> {
    CriLog::open_reopenable(
        &spec.log_path,
        crate::logs::LogLimits::default(),
        spec.log_reopen.clone(),
    )
    .map_err(|source| RuntimeError::Io {
        path: spec.log_path.clone(),
        source,
    })
}

/// The exit status for how the guest's entry point ended.
pub(crate) fn exit_status(
    result: wasmtime::Result<()>,
    oom: bool,
    stop: &StopHandle,
) -> ExitStatus {
    match result {
        Ok(()) => ExitStatus::completed(),
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
            } else if oom {
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
    }
}

/// Linkers built once per engine: WASI is the same for every container.
pub(crate) struct Linkers {
    pub(crate) p1: wasmtime::Linker<p1::Host>,
    pub(crate) p2: wasmtime::component::Linker<component::Host>,
    pub(crate) http: wasmtime::component::Linker<crate::http::Host>,
}

impl Linkers {
    pub(crate) fn new(engine: &wasmtime::Engine) -> Result<Self, RuntimeError> {
        Ok(Linkers {
            p1: p1::linker(engine).map_err(|e| RuntimeError::Setup(format!("{e:#}")))?,
            p2: component::linker(engine).map_err(|e| RuntimeError::Setup(format!("{e:#}")))?,
            http: crate::http::linker(engine).map_err(|e| RuntimeError::Setup(format!("{e:#}")))?,
        })
    }
}
