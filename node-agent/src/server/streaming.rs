//! A CRI streaming server, for a runtime that serves CRI in its own process (`kelp
//! runtime`), as upstream's `k8s.io/kubelet/pkg/cri/streaming` is for containerd: CRI
//! `Exec` and `PortForward` register the request and answer with a single-use URL
//! (`/exec/TOKEN`, `/portforward/TOKEN`); the kubelet connects there with SPDY/3.1 and
//! relays its client ([`super::relay`]).
//!
//! Exec speaks `v4.channel.k8s.io` over SPDY (one stream per channel, the exit status
//! as JSON on the `error` stream); port-forward is [`super::spdy::serve_port_forward`]
//! to the sandbox's address. The tokens are the only credential, as upstream's: random,
//! unused ones expire after a minute, and the server listens on loopback by default.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, Request, Response, StatusCode};
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use kelp_cri_api::streaming::{StreamIo, StreamUrls};
use kelp_cri_api::tonic::Status;
use kelp_cri_api::v1 as cri;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::relay::FrameReader;
use super::remotecommand::{self, Outcome};
use super::spdy::{self, Frame};
use super::{portforward, spdy_upgrade, text, ServerError};
use crate::cri::CriRuntime;

/// An unused URL stops working after this long (upstream's default).
const TOKEN_TTL: Duration = Duration::from_secs(60);
/// The client must open its streams within this long (upstream's stream creation
/// timeout).
const STREAMS_TIMEOUT: Duration = Duration::from_secs(30);
const EXEC_PROTOCOL: &str = "v4.channel.k8s.io";

enum Session {
    Exec(cri::ExecRequest),
    PortForward(cri::PortForwardRequest),
}

struct Pending {
    expires: Instant,
    session: Session,
}

/// The server's address and its outstanding URLs.
pub struct StreamingServer {
    base: String,
    pending: Mutex<HashMap<String, Pending>>,
}

impl StreamingServer {
    /// Binds `addr` (port 0: any free port).
    pub async fn bind(addr: SocketAddr) -> Result<(Arc<Self>, TcpListener), ServerError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        let server = StreamingServer {
            base: format!("http://{local}"),
            pending: Mutex::new(HashMap::new()),
        };
        Ok((Arc::new(server), listener))
    }

    /// `http://ADDR:PORT`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Serves sessions of `runtime` (its in-process streaming and sandbox status) until
    /// `shutdown` resolves.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        runtime: Arc<dyn CriRuntime>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        info!(url = %self.base, "CRI streaming server listening");
        let app = Router::new()
            .route("/exec/{token}", any(exec))
            .route("/portforward/{token}", any(port_forward))
            .with_state((self, runtime));
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            warn!(error = %e, "CRI streaming server stopped");
        }
    }

    fn issue(&self, kind: &str, session: Session) -> String {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let now = Instant::now();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.retain(|_, p| p.expires > now);
        pending.insert(
            token.clone(),
            Pending {
                expires: now + TOKEN_TTL,
                session,
            },
        );
        format!("{}/{kind}/{token}", self.base)
    }

    fn take(&self, token: &str) -> Option<Session> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending
            .remove(token)
            .filter(|p| p.expires > Instant::now())
            .map(|p| p.session)
    }
}

impl StreamUrls for StreamingServer {
    fn exec_url(&self, req: cri::ExecRequest) -> Result<String, Status> {
        Ok(self.issue("exec", Session::Exec(req)))
    }

    fn port_forward_url(&self, req: cri::PortForwardRequest) -> Result<String, Status> {
        Ok(self.issue("portforward", Session::PortForward(req)))
    }
}

type AppState = State<(Arc<StreamingServer>, Arc<dyn CriRuntime>)>;

/// Whether the request upgrades to SPDY/3.1 offering `protocol`.
fn offers(req: &Request<Body>, protocol: &str) -> bool {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("spdy/3.1"));
    let offered = req
        .headers()
        .get_all("X-Stream-Protocol-Version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == protocol);
    upgrade && offered
}

fn unknown_token() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "unknown or expired stream token")
}

async fn exec(
    State((server, runtime)): AppState,
    Path(token): Path<String>,
    mut req: Request<Body>,
) -> Response<Body> {
    if !offers(&req, EXEC_PROTOCOL) {
        return text(
            StatusCode::BAD_REQUEST,
            format!("SPDY/3.1 upgrade with protocol {EXEC_PROTOCOL} required"),
        );
    }
    let Some(Session::Exec(exec)) = server.take(&token) else {
        return unknown_token();
    };
    let on = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>();
    spdy_upgrade(on, EXEC_PROTOCOL, move |io| serve_exec(io, exec, runtime))
}

async fn port_forward(
    State((server, runtime)): AppState,
    Path(token): Path<String>,
    mut req: Request<Body>,
) -> Response<Body> {
    if !offers(&req, portforward::SPDY_PROTOCOL) {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "SPDY/3.1 upgrade with protocol {} required",
                portforward::SPDY_PROTOCOL
            ),
        );
    }
    let Some(Session::PortForward(pf)) = server.take(&token) else {
        return unknown_token();
    };
    let status = runtime
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pf.pod_sandbox_id.clone(),
            verbose: false,
        })
        .await;
    let sandbox = match status.map(|s| s.status) {
        Ok(Some(s)) => s,
        Ok(None) | Err(_) => {
            return text(
                StatusCode::NOT_FOUND,
                format!("pod sandbox {:?} not found", pf.pod_sandbox_id),
            )
        }
    };
    let ip = sandbox
        .network
        .as_ref()
        .and_then(|n| n.ip.parse::<std::net::IpAddr>().ok());
    let Some(ip) = ip else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("pod sandbox {:?} has no address", pf.pod_sandbox_id),
        );
    };
    let meta = sandbox.metadata.unwrap_or_default();
    let dial = portforward::dialer(ip, format!("{}/{}", meta.namespace, meta.name), meta.uid);
    let on = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>();
    spdy_upgrade(on, portforward::SPDY_PROTOCOL, move |io| {
        spdy::serve_port_forward(io, dial)
    })
}

/// The stream type a SPDY stream of an exec session carries.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    Error,
    Stdin,
    Stdout,
    Stderr,
    Resize,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "error" => Kind::Error,
            "stdin" => Kind::Stdin,
            "stdout" => Kind::Stdout,
            "stderr" => Kind::Stderr,
            "resize" => Kind::Resize,
            _ => return None,
        })
    }

    /// What an exec request makes the client open (upstream's expected streams).
    fn expected(req: &cri::ExecRequest) -> Vec<Kind> {
        let mut kinds = vec![Kind::Error];
        if req.stdin {
            kinds.push(Kind::Stdin);
        }
        if req.stdout {
            kinds.push(Kind::Stdout);
        }
        if req.stderr && !req.tty {
            kinds.push(Kind::Stderr);
        }
        if req.tty {
            kinds.push(Kind::Resize);
        }
        kinds
    }
}

fn data(stream_id: u32, fin: bool, data: Bytes) -> Frame {
    Frame::Data {
        stream_id,
        fin,
        data,
    }
}

/// One exec session: waits for the client's streams, runs the command with them as
/// its stdio, then writes the exit status on the error stream. The client going
/// away stops the command.
async fn serve_exec<IO>(io: IO, req: cri::ExecRequest, runtime: Arc<dyn CriRuntime>)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    let (out, writer) = spdy::spawn_writer(wr);
    let mut frames = FrameReader::new(rd);

    let mut missing = Kind::expected(&req);
    let mut streams: HashMap<Kind, u32> = HashMap::new();
    let opened = tokio::time::timeout(STREAMS_TIMEOUT, async {
        while !missing.is_empty() {
            match frames.next().await? {
                Frame::SynStream {
                    stream_id, headers, ..
                } => {
                    let _ = out
                        .send(Frame::SynReply {
                            stream_id,
                            fin: false,
                            headers: Vec::new(),
                        })
                        .await;
                    let kind = spdy::header(&headers, "streamtype").and_then(Kind::parse);
                    match kind {
                        Some(k) if missing.contains(&k) => {
                            missing.retain(|m| *m != k);
                            streams.insert(k, stream_id);
                        }
                        _ => {
                            let _ = out
                                .send(Frame::RstStream {
                                    stream_id,
                                    status: spdy::CANCEL,
                                })
                                .await;
                        }
                    }
                }
                Frame::Ping { id } => {
                    let _ = out.send(Frame::Ping { id }).await;
                }
                Frame::GoAway { .. } => return None,
                _ => {}
            }
        }
        Some(())
    })
    .await;
    if !matches!(opened, Ok(Some(()))) {
        debug!(container = %req.container_id, "exec client did not open its streams");
        drop(out);
        let _ = writer.await;
        return;
    }

    // Stdin: the client's data frames into a pipe the command reads.
    let (stdin_tx, stdin) = match streams.get(&Kind::Stdin) {
        Some(_) => {
            let (r, w) = tokio::io::duplex(64 * 1024);
            (Some(w), Some(Box::pin(r) as _))
        }
        None => (None, None),
    };
    let mut stdin_tx = stdin_tx;
    // Output: each channel pumped into its stream, which is half-closed at the end.
    let mut pumps = Vec::new();
    let mut output = |kind: Kind| {
        let id = *streams.get(&kind)?;
        let (tx, mut rx) = mpsc::channel::<Bytes>(16);
        let out = out.clone();
        pumps.push(tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                if out.send(data(id, false, chunk)).await.is_err() {
                    return;
                }
            }
            let _ = out.send(data(id, true, Bytes::new())).await;
        }));
        Some(tx)
    };
    let stdio = StreamIo {
        stdin,
        stdout: output(Kind::Stdout),
        stderr: output(Kind::Stderr),
    };
    let stdin_id = streams.get(&Kind::Stdin).copied();
    let error_id = streams.get(&Kind::Error).copied();

    let cmd = req.cmd.clone();
    let run = async {
        match runtime.streaming() {
            Some(s) => match s.exec_stream(&req.container_id, cmd, stdio).await {
                Ok(code) => Outcome::Exited(code),
                Err(e) => Outcome::Failed(e.message().to_string()),
            },
            None => Outcome::Failed("the runtime cannot stream".into()),
        }
    };
    tokio::pin!(run);
    let outcome = loop {
        tokio::select! {
            outcome = &mut run => break Some(outcome),
            frame = frames.next() => match frame {
                None | Some(Frame::GoAway { .. }) => break None,
                Some(Frame::Data { stream_id, fin, data }) => {
                    if !data.is_empty() {
                        let _ = out.send(Frame::WindowUpdate { stream_id, delta: data.len() as u32 }).await;
                    }
                    if Some(stream_id) == stdin_id {
                        if let Some(w) = stdin_tx.as_mut() {
                            if !data.is_empty() && w.write_all(&data).await.is_err() {
                                stdin_tx = None;
                            }
                        }
                        if fin {
                            stdin_tx = None;
                        }
                    }
                }
                Some(Frame::RstStream { stream_id, .. }) if Some(stream_id) == stdin_id => {
                    stdin_tx = None;
                }
                Some(Frame::Ping { id }) => {
                    let _ = out.send(Frame::Ping { id }).await;
                }
                Some(_) => {}
            },
        }
    };
    let Some(outcome) = outcome else {
        debug!(container = %req.container_id, "exec client went away; command stopped");
        for p in pumps {
            p.abort();
        }
        drop(out);
        let _ = writer.await;
        return;
    };
    // All output is queued before the status, which tells the client it has all.
    for p in pumps {
        let _ = p.await;
    }
    if let Some(id) = error_id {
        let status = remotecommand::status(&outcome, &req.cmd).to_string();
        let _ = out.send(data(id, true, Bytes::from(status))).await;
    }
    drop(out);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_streams_follow_the_request() {
        let req = |stdin, stdout, stderr, tty| cri::ExecRequest {
            stdin,
            stdout,
            stderr,
            tty,
            ..Default::default()
        };
        assert_eq!(
            Kind::expected(&req(true, true, true, false)),
            [Kind::Error, Kind::Stdin, Kind::Stdout, Kind::Stderr]
        );
        // A terminal merges stderr into stdout and adds resize.
        assert_eq!(
            Kind::expected(&req(false, true, true, true)),
            [Kind::Error, Kind::Stdout, Kind::Resize]
        );
    }

    #[tokio::test]
    async fn tokens_are_single_use() {
        let (server, _listener) = StreamingServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let url = server.exec_url(cri::ExecRequest::default()).unwrap();
        let token = url.rsplit('/').next().unwrap().to_string();
        assert!(url.starts_with(server.base_url()));
        assert!(server.take(&token).is_some());
        assert!(server.take(&token).is_none());
        assert!(server.take("not-a-token").is_none());
    }
}
