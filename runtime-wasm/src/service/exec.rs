//! ExecSync for Wasm: a Wasm pod has no shell, so "exec" runs another WASI command in
//! the container's context (same env, mounts, hostname and memory limit). `cmd[0]`
//! either names a `.wasm` file visible inside the container (through one of its
//! mounts) or is the program name for the container's own module run again with
//! `cmd` as its argv (the multi-call pattern: `kubectl exec pod -- app --version`).

use std::time::Duration;

use super::containers::ContainerPhase;
use super::{new_id, ServiceError, WasmRuntime};
use crate::container::Artifact;
use crate::container::{ExitReason, StopHandle};

/// What an exec produced.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

impl WasmRuntime {
    /// What an exec of `cmd` in container `id` runs: the program and the spec (the
    /// container's, with `cmd` as argv and a log file of its own under the sandbox).
    async fn exec_plan(
        &self,
        id: &str,
        cmd: &[String],
    ) -> Result<(Artifact, crate::container::ContainerSpec), ServiceError> {
        let c = self.container(id)?;
        if c.state().phase != ContainerPhase::Running {
            return Err(ServiceError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        let Some(program) = cmd.first() else {
            return Err(ServiceError::InvalidArgument("exec needs a command".into()));
        };
        let artifact = if program.ends_with(".wasm") {
            let host = c
                .spec
                .mounts
                .iter()
                .filter_map(|m| {
                    let rest = program.strip_prefix(m.guest_path.trim_end_matches('/'))?;
                    let rest = rest.strip_prefix('/')?;
                    // Only plain relative components: no way out of the mount.
                    let ok = std::path::Path::new(rest)
                        .components()
                        .all(|p| matches!(p, std::path::Component::Normal(_)));
                    ok.then(|| m.host_path.join(rest))
                })
                .next()
                .ok_or_else(|| {
                    ServiceError::InvalidArgument(format!(
                        "{program} is not inside any of the container's mounts"
                    ))
                })?;
            let engine = self.engine().clone();
            tokio::task::spawn_blocking(move || {
                let bytes = std::fs::read(&host).map_err(|source| crate::RuntimeError::Io {
                    path: host.clone(),
                    source,
                })?;
                engine.compile(&bytes)
            })
            .await
            .map_err(|e| ServiceError::Internal(format!("compile task: {e}")))??
        } else {
            c.artifact_for_exec().ok_or_else(|| {
                ServiceError::FailedPrecondition(
                    "this container serves wasi:http and has no command to run again; exec a .wasm file from one of its volumes".into(),
                )
            })?
        };

        let sb = self.sandbox(&c.sandbox_id)?;
        let mut spec = c.spec.clone();
        spec.args = cmd.to_vec();
        spec.log_path = sb.scratch_dir()?.join(format!("exec-{}.log", new_id()));
        spec.stdin = None;
        // The exec's own figures, not the container's.
        spec.memory = Default::default();
        spec.log_reopen = Default::default();
        Ok((artifact, spec))
    }

    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, ServiceError> {
        let (artifact, spec) = self.exec_plan(id, cmd).await?;
        let log_path = spec.log_path.clone();
        let stop = StopHandle::default();
        let engine = self.engine().clone();
        let run = crate::container::run(&engine, &artifact, &spec, &stop);
        let status = match timeout.filter(|t| !t.is_zero()) {
            None => run.await?,
            Some(t) => {
                tokio::pin!(run);
                tokio::select! {
                    r = &mut run => r?,
                    _ = tokio::time::sleep(t) => {
                        stop.stop();
                        let _ = run.await;
                        std::fs::remove_file(&log_path).ok();
                        return Err(ServiceError::Timeout(format!(
                            "command {cmd:?} timed out after {t:?}"
                        )));
                    }
                }
            }
        };
        let log = std::fs::read(&log_path).unwrap_or_default();
        std::fs::remove_file(&log_path).ok();
        let mut out = split_cri_log(&log);
        out.exit_code = status.code;
        if status.reason == ExitReason::Error && status.code != 0 && !status.message.is_empty() {
            out.stderr.extend_from_slice(status.message.as_bytes());
            out.stderr.push(b'\n');
        }
        Ok(out)
    }

    /// Streaming exec: `cmd` in container `id` with the client's stdio; resolves to
    /// the exit code once the command ended (a trap's message goes to stderr, as
    /// with [`WasmRuntime::exec_sync`]). Dropping the future stops the command.
    pub async fn exec_stream(
        &self,
        id: &str,
        cmd: &[String],
        io: kelp_cri_api::streaming::StreamIo,
    ) -> Result<i32, ServiceError> {
        let (artifact, mut spec) = self.exec_plan(id, cmd).await?;
        let stderr = io.stderr.clone();
        spec.pipes = Some(crate::container::Pipes {
            stdin: io
                .stdin
                .map(|r| std::sync::Arc::new(wasmtime_wasi::cli::AsyncStdinStream::new(r))),
            stdout: io.stdout,
            stderr: io.stderr,
        });
        // Nothing is logged (stdio is piped), but the log file is opened: remove it.
        let log_path = spec.log_path.clone();
        let stop = StopHandle::default();
        let engine = self.engine().clone();
        let status = crate::container::run(&engine, &artifact, &spec, &stop).await;
        drop(spec);
        std::fs::remove_file(&log_path).ok();
        let status = status?;
        if status.reason == ExitReason::Error && status.code != 0 && !status.message.is_empty() {
            if let Some(tx) = stderr {
                let _ = tx.send(format!("{}\n", status.message).into()).await;
            }
        }
        Ok(status.code)
    }
}

#[tonic::async_trait]
impl kelp_cri_api::streaming::StreamingRuntime for WasmRuntime {
    async fn exec_stream(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        io: kelp_cri_api::streaming::StreamIo,
    ) -> Result<i32, tonic::Status> {
        Ok(WasmRuntime::exec_stream(self, container_id, &cmd, io).await?)
    }
}

impl super::Container {
    /// The container's own module, when it is a command that can run again.
    fn artifact_for_exec(&self) -> Option<Artifact> {
        if self.http_addr().is_some() {
            return None;
        }
        Some(self.artifact().clone())
    }
}

/// CRI log records back into the two streams (`TS STREAM F|P MESSAGE`).
fn split_cri_log(log: &[u8]) -> ExecOutput {
    let mut out = ExecOutput::default();
    for rec in log.split(|b| *b == b'\n').filter(|r| !r.is_empty()) {
        let mut parts = rec.splitn(4, |b| *b == b' ');
        let (_ts, stream, tag, msg) = (parts.next(), parts.next(), parts.next(), parts.next());
        let buf = match stream {
            Some(b"stderr") => &mut out.stderr,
            _ => &mut out.stdout,
        };
        buf.extend_from_slice(msg.unwrap_or_default());
        if tag != Some(b"P") {
            buf.push(b'\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::split_cri_log;

    #[test]
    fn splits_streams_and_joins_partial_lines() {
        let log = b"2026-01-01T00:00:00Z stdout P hel\n2026-01-01T00:00:00Z stdout F lo\n2026-01-01T00:00:00Z stderr F oops\n";
        let out = split_cri_log(log);
        assert_eq!(out.stdout, b"hello\n");
        assert_eq!(out.stderr, b"oops\n");
    }
}
