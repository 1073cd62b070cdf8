//! The node's Wasm runtime as a process of its own (`kelp runtime`), started and
//! watched by `kelp agent` / `kelp kubelet`: its pods outlive the agent, so an agent
//! that crashed and restarts adopts the runtime, and with it the pods, as a kubelet
//! does containerd's.
//!
//! - Start: a runtime already answering on `DATA_DIR/runtime/cri.sock` is adopted;
//!   otherwise one is started there (same executable, same process group, output to
//!   `DATA_DIR/runtime/runtime.log`, moved aside to `runtime.log.1` at a start once past 16 MiB).
//! - Watch: the runtime's pid (the socket's peer credentials) through a pidfd; a
//!   runtime that dies is started again (its pods are then recreated by the kubelet).
//! - Stop: with the agent's orderly shutdown (SIGTERM, then SIGKILL after 10 s). A
//!   killed agent stops nothing.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use kelp_node_agent::RemoteRuntime;
use rustix::process::{Pid, Signal};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tracing::{info, warn};

/// How long a starting runtime may take to answer on its socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the runtime gets to stop before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What `kelp runtime` is started with.
#[derive(Clone, Debug)]
pub struct RuntimeLaunch {
    pub data_dir: PathBuf,
    pub insecure_registries: Vec<String>,
    pub cluster_cidr: Vec<ipnet::IpNet>,
}

impl RuntimeLaunch {
    fn socket(&self) -> PathBuf {
        self.data_dir.join("runtime").join("cri.sock")
    }

    /// Where the running runtime's pid is recorded (for operators and tests: the
    /// runtime is not stopped by killing the agent).
    fn pid_file(&self) -> PathBuf {
        self.data_dir.join("runtime").join("runtime.pid")
    }

    fn record(&self, pid: Option<Pid>) {
        let path = self.pid_file();
        let r = match pid {
            Some(pid) => std::fs::write(&path, format!("{}\n", pid.as_raw_nonzero())),
            None => std::fs::remove_file(&path),
        };
        if let Err(e) = r {
            warn!(path = %path.display(), error = %e, "cannot record the Wasm runtime's pid");
        }
    }

    /// The CRI endpoint (`unix:///…`).
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }
}

/// A runtime process the agent started or adopted, and its watcher.
pub struct RuntimeProcess {
    stop: watch::Sender<bool>,
    watcher: tokio::task::JoinHandle<()>,
}

impl RuntimeProcess {
    /// Adopts the runtime serving at the data directory's socket, or starts one; then
    /// keeps one running until [`RuntimeProcess::stop`].
    pub async fn ensure(launch: RuntimeLaunch) -> anyhow::Result<Self> {
        let pid = match running_pid(&launch.socket()).await {
            Some(pid) => {
                info!(pid = pid.as_raw_nonzero().get(), socket = %launch.socket().display(),
                    "adopting the Wasm runtime already running, with its pods");
                println!(
                    "kelp kubelet: adopted the Wasm runtime (pid {}) at {}",
                    pid.as_raw_nonzero(),
                    launch.endpoint()
                );
                pid
            }
            None => start(&launch).await?,
        };
        launch.record(Some(pid));
        let (stop, rx) = watch::channel(false);
        let watcher = tokio::spawn(watch_runtime(launch, pid, rx));
        Ok(RuntimeProcess { stop, watcher })
    }

    /// Stops the runtime (its pods end) and waits for it.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.watcher.await;
    }
}

/// The pid of the runtime answering on `socket`, if one does.
async fn running_pid(socket: &Path) -> Option<Pid> {
    let stream = tokio::net::UnixStream::connect(socket).await.ok()?;
    let cred = rustix::net::sockopt::socket_peercred(&stream).ok()?;
    drop(stream);
    // A socket file can outlive its server; only a runtime that answers CRI counts.
    let endpoint = format!("unix://{}", socket.display());
    let rt = RemoteRuntime::connect(&endpoint).await.ok()?;
    let version = kelp_node_agent::CriRuntime::version(
        &rt,
        kelp_cri_api::v1::VersionRequest {
            version: "v1".into(),
        },
    )
    .await
    .ok()?;
    (version.runtime_name == kelp_runtime_wasm::service::RUNTIME_NAME).then_some(cred.pid)
}

/// The size past which a start moves the runtime's log aside (one old log is kept).
const LOG_ROTATE_BYTES: u64 = 16 << 20;

/// Moves `path` to `path.1` when it has grown past [`LOG_ROTATE_BYTES`], so the logs of
/// a runtime restarted many times do not fill the disk.
fn rotate_log(path: &Path) {
    let big = std::fs::metadata(path).is_ok_and(|m| m.len() > LOG_ROTATE_BYTES);
    if big {
        let old = path.with_extension("log.1");
        if let Err(e) = std::fs::rename(path, &old) {
            warn!(path = %path.display(), error = %e, "cannot move the runtime log aside");
        }
    }
}

/// Starts `kelp runtime` and waits until it answers on its socket.
async fn start(launch: &RuntimeLaunch) -> anyhow::Result<Pid> {
    let dir = launch.data_dir.join("runtime");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let socket = launch.socket();
    // Nothing answers there (checked by the caller): a stale file.
    let _ = std::fs::remove_file(&socket);
    let log_path = dir.join("runtime.log");
    rotate_log(&log_path);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let exe = std::env::current_exe().context("locating the kelp executable")?;
    let cidrs = launch
        .cluster_cidr
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("runtime")
        .arg("--listen")
        .arg(launch.endpoint())
        .arg("--data-dir")
        .arg(&launch.data_dir)
        .arg("--cluster-cidr")
        .arg(cidrs);
    for r in &launch.insecure_registries {
        cmd.arg("--insecure-registry").arg(r);
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().context("runtime log")?)
        .stderr(log)
        // The agent going away (even killed) must not take the runtime with it.
        .kill_on_drop(false);
    let mut child = cmd.spawn().context("starting kelp runtime")?;
    let pid = child
        .id()
        .and_then(|id| Pid::from_raw(id as i32))
        .context("kelp runtime has no pid")?;
    // The child is reaped by its watcher's pidfd wait; tokio reaps it too once it
    // exits (the handle is moved into a task that waits).
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().context("kelp runtime")? {
            anyhow::bail!(
                "kelp runtime exited while starting ({status}); see {}",
                log_path.display()
            );
        }
        if running_pid(&socket).await == Some(pid) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.start_kill();
            anyhow::bail!(
                "kelp runtime did not answer on {} within {START_TIMEOUT:?}; see {}",
                socket.display(),
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    info!(pid = pid.as_raw_nonzero().get(), socket = %socket.display(), "started the Wasm runtime");
    println!(
        "kelp kubelet: started the Wasm runtime (pid {}) at {}",
        pid.as_raw_nonzero(),
        launch.endpoint()
    );
    Ok(pid)
}

/// Resolves when process `pid` has exited (immediately if it is already gone).
async fn exited(pidfd: &Option<AsyncFd<OwnedFd>>) {
    if let Some(fd) = pidfd {
        let _ = fd.readable().await;
    }
}

// tokio's registration is `unsafe` only because an arbitrary `AsRawFd` could hand
// out different descriptors over time; an `OwnedFd` owned by the `AsyncFd` cannot.
#[allow(unsafe_code)]
fn open_pidfd(pid: Pid) -> Option<AsyncFd<OwnedFd>> {
    let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::NONBLOCK).ok()?;
    // SAFETY: the descriptor is owned by the AsyncFd and stays open, unchanged, until
    // it is dropped.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()
}

async fn stop_asked(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Keeps a runtime running: restarts one that died (backing off while it keeps
/// dying), and stops it when asked.
async fn watch_runtime(launch: RuntimeLaunch, mut pid: Pid, mut stop: watch::Receiver<bool>) {
    const FIRST_BACKOFF: Duration = Duration::from_millis(500);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let since = tokio::time::Instant::now();
        let fd = open_pidfd(pid);
        tokio::select! {
            _ = exited(&fd) => {}
            _ = stop_asked(&mut stop) => {
                terminate(pid, &fd).await;
                launch.record(None);
                return;
            }
        }
        warn!(
            pid = pid.as_raw_nonzero().get(),
            "the Wasm runtime exited; its pods ended; starting it again"
        );
        if since.elapsed() > Duration::from_secs(60) {
            backoff = FIRST_BACKOFF;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop_asked(&mut stop) => {
                    launch.record(None);
                    return;
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
            match start(&launch).await {
                Ok(p) => {
                    pid = p;
                    launch.record(Some(pid));
                    break;
                }
                Err(e) => warn!(error = %format!("{e:#}"), "the Wasm runtime did not start"),
            }
        }
    }
}

/// SIGTERM, then SIGKILL if the runtime has not ended within [`STOP_GRACE`].
async fn terminate(pid: Pid, fd: &Option<AsyncFd<OwnedFd>>) {
    if fd.is_none() {
        return;
    }
    let _ = rustix::process::kill_process(pid, Signal::TERM);
    if tokio::time::timeout(STOP_GRACE, exited(fd)).await.is_err() {
        warn!(
            pid = pid.as_raw_nonzero().get(),
            "the Wasm runtime did not stop in time; killing it"
        );
        let _ = rustix::process::kill_process(pid, Signal::KILL);
        exited(fd).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_log_is_moved_aside_at_start_a_small_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("runtime.log");
        std::fs::write(&log, b"small").unwrap();
        rotate_log(&log);
        assert_eq!(std::fs::read(&log).unwrap(), b"small");

        let f = std::fs::File::create(&log).unwrap();
        f.set_len(LOG_ROTATE_BYTES + 1).unwrap();
        rotate_log(&log);
        assert!(!log.exists());
        let old = dir.path().join("runtime.log.1");
        assert_eq!(std::fs::metadata(old).unwrap().len(), LOG_ROTATE_BYTES + 1);
    }
}
