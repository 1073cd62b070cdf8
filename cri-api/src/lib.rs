//! Kubernetes CRI v1 (`runtime.v1`) gRPC bindings for Kelp, plus the two transport helpers
//! the kubelet and the runtimes share.
//!
//! [`v1`] is generated ahead of time from `proto/runtime/v1/api.proto` by
//! `proto/generate.sh` (protox + tonic-prost-build; no `protoc`, no build script) and
//! checked in. It holds every message, and the client and server halves of
//! `RuntimeService` and `ImageService`:
//!
//! - clients: [`v1::runtime_service_client::RuntimeServiceClient`],
//!   [`v1::image_service_client::ImageServiceClient`];
//! - server traits: [`v1::runtime_service_server::RuntimeService`],
//!   [`v1::image_service_server::ImageService`] (implement them with
//!   `#[tonic::async_trait]`), wrapped by `RuntimeServiceServer`/`ImageServiceServer`.
//!
//! [`connect`] dials a runtime (`unix:///path/to.sock` or `http://host:port`);
//! [`serve_unix`] serves both services on a unix socket until a shutdown signal.

use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint, Server, Uri};

pub use prost;
pub use tonic;

pub mod streaming;

/// The generated CRI v1 API (package `runtime.v1`).
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    missing_docs,
    rustdoc::all,
    unused_qualifications
)]
pub mod v1 {
    include!("generated/runtime.v1.rs");
}

use v1::image_service_client::ImageServiceClient;
use v1::image_service_server::{ImageService, ImageServiceServer};
use v1::runtime_service_client::RuntimeServiceClient;
use v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};

/// Largest gRPC message accepted, either way, by [`connect`]'s clients and [`serve_unix`]'s
/// services. tonic's default is 4 MiB; CRI runtimes (containerd, CRI-O) use 16 MiB because
/// `ListContainers`/`ListPodSandbox`/`ExecSync` replies on a busy node get large.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;

/// How long [`connect`] waits for the connection to come up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Failures of [`connect`] and [`serve_unix`]. Errors of individual calls are
/// [`tonic::Status`]es.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The endpoint is neither `unix:///path` nor `http://host:port`.
    #[error("invalid CRI endpoint {0:?}: expected unix:///path/to.sock or http://host:port")]
    InvalidEndpoint(String),
    /// The runtime could not be reached.
    #[error("connecting to CRI endpoint {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// Preparing, binding or removing the server's socket failed.
    #[error("CRI socket {}: {action}", path.display())]
    Socket {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    /// The gRPC server failed while serving.
    #[error("serving CRI")]
    Serve(#[source] tonic::transport::Error),
}

/// Connects to a CRI runtime and returns a `RuntimeService` and an `ImageService` client
/// sharing one HTTP/2 connection.
///
/// `endpoint` is `unix:///path/to.sock` (what kubelets and crictl take for containerd and
/// CRI-O) or `http://host:port`. The connection is made eagerly, so a missing socket or a
/// refused port is an error here rather than on the first call. Both clients accept
/// messages up to [`MAX_MESSAGE_SIZE`].
pub async fn connect(
    endpoint: &str,
) -> Result<(RuntimeServiceClient<Channel>, ImageServiceClient<Channel>), CriError> {
    let connect_err = |source| CriError::Connect {
        endpoint: endpoint.to_string(),
        source,
    };
    let channel = if let Some(path) = endpoint.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err(CriError::InvalidEndpoint(endpoint.to_string()));
        }
        let path = PathBuf::from(path);
        // The URI is required by tonic but unused: every connection goes to the socket.
        Endpoint::from_static("http://[::]:50051")
            .connect_timeout(CONNECT_TIMEOUT)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { Ok::<_, io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
            }))
            .await
            .map_err(connect_err)?
    } else if endpoint.starts_with("http://") {
        Endpoint::try_from(endpoint.to_string())
            .map_err(|_| CriError::InvalidEndpoint(endpoint.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .connect()
            .await
            .map_err(connect_err)?
    } else {
        return Err(CriError::InvalidEndpoint(endpoint.to_string()));
    };
    let runtime = RuntimeServiceClient::new(channel.clone())
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let images = ImageServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    Ok((runtime, images))
}

/// Serves `runtime` and `images` as a CRI endpoint on the unix socket `path` until
/// `shutdown` completes, then drains in-flight calls and returns.
///
/// A stale socket file at `path` is removed first and the parent directory created if
/// missing; the socket is made mode 0660 and removed again when serving ends (also on
/// error). Messages up to [`MAX_MESSAGE_SIZE`] are accepted.
pub async fn serve_unix<R, I>(
    path: &Path,
    runtime: Arc<R>,
    images: Arc<I>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CriError>
where
    R: RuntimeService,
    I: ImageService,
{
    let socket_err = |action, source| CriError::Socket {
        path: path.to_path_buf(),
        action,
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| socket_err("creating parent directory", e))?;
    }
    remove_socket(path).map_err(|e| socket_err("removing stale socket", e))?;
    let listener = UnixListener::bind(path).map_err(|e| socket_err("binding", e))?;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)) {
        let _ = remove_socket(path);
        return Err(socket_err("setting mode 0660", e));
    }

    let result = Server::builder()
        .add_service(
            RuntimeServiceServer::from_arc(runtime)
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        )
        .add_service(
            ImageServiceServer::from_arc(images)
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        )
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;

    let removed = remove_socket(path);
    result.map_err(CriError::Serve)?;
    removed.map_err(|e| socket_err("removing socket", e))
}

/// Removes `path` if it exists.
fn remove_socket(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
