//! Streaming exec for runtimes that run containers inside the kubelet's process (the
//! Wasm runtime): the kubelet hands the runtime its client's stdio as async streams
//! and gets the exit code back, with no streaming server in between.
//!
//! Remote CRI runtimes (containerd, CRI-O) stream the upstream way instead: CRI
//! `Exec`/`Attach`/`PortForward` return a URL of the runtime's streaming server that
//! the kubelet relays its client to.

use std::pin::Pin;

use tokio::io::AsyncRead;
use tokio::sync::mpsc;

/// Bytes a command wrote on one of its output streams.
pub type OutputChunk = prost::bytes::Bytes;

/// The stdio of a streamed command.
pub struct StreamIo {
    /// What the client sends (`None`: stdin closed, reads see end of file). End of
    /// file of this reader is the client closing its stdin.
    pub stdin: Option<Pin<Box<dyn AsyncRead + Send + Sync>>>,
    /// Where stdout goes (`None`: discarded). A full channel pauses the command.
    pub stdout: Option<mpsc::Sender<OutputChunk>>,
    /// Where stderr goes (`None`: discarded).
    pub stderr: Option<mpsc::Sender<OutputChunk>>,
}

/// Streaming exec, in process.
///
/// Contract: `exec_stream` runs `cmd` in the context of running container
/// `container_id` and resolves when the command has ended and its output has been
/// handed to the channels (they are dropped then), to its exit code. Errors are CRI
/// statuses: `NotFound` (no such container), `FailedPrecondition` (not running, or
/// nothing to run), `InvalidArgument` (bad command).
#[tonic::async_trait]
pub trait StreamingRuntime: Send + Sync {
    async fn exec_stream(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        io: StreamIo,
    ) -> Result<i32, tonic::Status>;
}

/// The streaming server of a runtime that runs in its own process (upstream's
/// `k8s.io/kubelet/pkg/cri/streaming`): CRI `Exec` and `PortForward` answer with a
/// single-use URL of it, which the kubelet connects to and relays its client through.
///
/// Contract: the runtime has checked the request (the container runs, the sandbox
/// exists) before asking; the URL serves one session and expires if unused.
pub trait StreamUrls: Send + Sync {
    fn exec_url(&self, req: crate::v1::ExecRequest) -> Result<String, tonic::Status>;
    fn port_forward_url(&self, req: crate::v1::PortForwardRequest)
        -> Result<String, tonic::Status>;
}
