//! The kubelet's HTTPS server (upstream's port 10250): container logs, exec, attach,
//! port-forward, health, Prometheus metrics and the Summary API, as the API server
//! (`pods/log`, `pods/exec`, …) and metrics-server reach them.
//!
//! Layout: [`tls`] (serving certificate, client CA), [`pods`] (what the server knows
//! of the node's pods, and the pure choices of containers), [`logs`], and the
//! handlers here. Authentication: a TLS client certificate signed by the cluster CA
//! the node trusts; anything else gets 401, except `/healthz`.

pub mod logs;
pub mod metrics;
pub mod pods;
pub mod portforward;
pub mod relay;
pub mod remotecommand;
pub mod spdy;
pub mod stats;
pub mod streaming;
pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, Method, Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kelp_cri_api::v1 as cri;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn, Instrument};

use crate::cri::{CriRuntime, RuntimeRouter};
pub use pods::PodStore;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("tls: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A TLS handshake that takes longer than this is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers share.
pub struct ServerState {
    pub node_name: String,
    pub pods: PodStore,
    pub router: RuntimeRouter,
    /// When the kubelet started (RFC 3339; the Summary's node `startTime`).
    pub started: String,
    pub cpu_rates: stats::CpuRates,
    pub requests: metrics::RequestCounts,
}

/// A bound kubelet server, ready to serve.
pub struct KubeletServer {
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<ServerState>,
}

impl KubeletServer {
    /// Binds `addr` (port 0: any free port) with `tls`.
    pub async fn bind(
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        state: Arc<ServerState>,
    ) -> Result<Self, ServerError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        Ok(KubeletServer {
            listener,
            tls,
            state,
        })
    }

    /// The bound address (the port the Node advertises).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown` resolves; open streams end with the process.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) {
        let acceptor = TlsAcceptor::from(self.tls);
        let state = self.state.clone();
        // A first sample, so the first scrape already has CPU rates to report.
        let _ = stats::summary(&state).await;
        let app = router(self.state);
        if let Ok(addr) = self.listener.local_addr() {
            info!(%addr, "kubelet server listening");
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                r = self.listener.accept() => match r {
                    Ok((tcp, peer)) => {
                        let conn = serve_connection(acceptor.clone(), tcp, app.clone(), state.clone());
                        tokio::spawn(conn.instrument(tracing::debug_span!("kubelet_conn", %peer)));
                    }
                    Err(e) => {
                        warn!(error = %e, "kubelet server accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }
}

/// Upstream's kubelet answers 401 with this plain-text body.
fn unauthorized() -> Response<Body> {
    let mut r = Response::new(Body::from("Unauthorized"));
    *r.status_mut() = StatusCode::UNAUTHORIZED;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Paths anonymous clients may call.
fn is_open(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD) && path == "/healthz"
}

async fn serve_connection(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    app: Router,
    state: Arc<ServerState>,
) {
    let _ = tcp.set_nodelay(true);
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    // rustls verified any presented chain against the client CA.
    let authenticated = stream
        .get_ref()
        .1
        .peer_certificates()
        .is_some_and(|c| !c.is_empty());
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let app = app.clone();
        let state = state.clone();
        async move {
            let req = req.map(Body::new);
            if authenticated {
                state
                    .requests
                    .count(req.method().as_str(), req.uri().path());
            }
            if !authenticated && !is_open(req.method(), req.uri().path()) {
                debug!(method = %req.method(), path = req.uri().path(), "unauthorized");
                return Ok::<_, std::convert::Infallible>(unauthorized());
            }
            match tower::ServiceExt::oneshot(app, req).await {
                Ok(r) => Ok(r),
                Err(never) => match never {},
            }
        }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await
    {
        debug!(error = %e, "kubelet connection ended with an error");
    }
}

fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/containerLogs/{ns}/{pod}/{container}", get(container_logs))
        .route("/stats/summary", get(stats_summary))
        .route("/metrics", get(metrics_text))
        .route("/exec/{ns}/{pod}/{container}", any(exec))
        .route("/exec/{ns}/{pod}/{uid}/{container}", any(exec_uid))
        .route("/attach/{ns}/{pod}/{container}", any(attach))
        .route("/attach/{ns}/{pod}/{uid}/{container}", any(attach_uid))
        .route("/portForward/{ns}/{pod}", any(port_forward))
        .route("/portForward/{ns}/{pod}/{uid}", any(port_forward_uid))
        .fallback(|| async { text(StatusCode::NOT_FOUND, "404 page not found") })
        .with_state(state)
}

/// A plain-text answer (how upstream's kubelet reports errors).
pub(crate) fn text(code: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut msg = msg.into();
    if !msg.ends_with('\n') {
        msg.push('\n');
    }
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg,
    )
        .into_response()
}

fn container_error(e: pods::ContainerError) -> Response<Body> {
    match e {
        pods::ContainerError::NotFound(m) => text(StatusCode::NOT_FOUND, m),
        pods::ContainerError::BadRequest(m) => text(StatusCode::BAD_REQUEST, m),
    }
}

/// The runtime holding container `id` (without scheme) and its status.
pub(crate) async fn find_container(
    router: &RuntimeRouter,
    id: &str,
) -> Option<(Arc<dyn CriRuntime>, cri::ContainerStatus)> {
    for routed in router.runtimes() {
        if let Ok(r) = routed
            .runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            })
            .await
        {
            if let Some(s) = r.status {
                return Some((routed.runtime.clone(), s));
            }
        }
    }
    None
}

/// The runtime holding the ready sandbox of the pod with UID `uid`, and its id.
async fn find_sandbox<'r>(
    router: &'r RuntimeRouter,
    uid: &str,
) -> Option<(&'r crate::cri::RoutedRuntime, String)> {
    for routed in router.runtimes() {
        let filter = cri::PodSandboxFilter {
            label_selector: [(
                crate::kubelet::spec::POD_UID_LABEL.to_string(),
                uid.to_string(),
            )]
            .into(),
            state: Some(cri::PodSandboxStateValue {
                state: cri::PodSandboxState::SandboxReady as i32,
            }),
            ..Default::default()
        };
        if let Ok(l) = routed
            .runtime
            .list_pod_sandbox(cri::ListPodSandboxRequest {
                filter: Some(filter),
            })
            .await
        {
            if let Some(sb) = l.items.into_iter().next() {
                return Some((routed, sb.id));
            }
        }
    }
    None
}

/// The pod `ns/name` and that it has container `container`, or the 404 upstream
/// answers.
fn pod_with_container(
    state: &ServerState,
    ns: &str,
    name: &str,
    container: &str,
) -> Result<Arc<k8s_openapi::api::core::v1::Pod>, Response<Body>> {
    let pod = state.pods.get(ns, name).ok_or_else(|| {
        text(
            StatusCode::NOT_FOUND,
            format!("pod \"{ns}/{name}\" does not exist"),
        )
    })?;
    let has = pod.spec.as_ref().is_some_and(|s| {
        s.containers.iter().any(|c| c.name == container)
            || s.init_containers
                .iter()
                .flatten()
                .any(|c| c.name == container)
    });
    if !has {
        return Err(text(
            StatusCode::NOT_FOUND,
            format!("container \"{container}\" not found in pod \"{ns}/{name}\""),
        ));
    }
    Ok(pod)
}

/// `GET /containerLogs/{ns}/{pod}/{container}`.
async fn container_logs(
    State(state): State<Arc<ServerState>>,
    Path((ns, name, container)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response<Body> {
    let pod = match pod_with_container(&state, &ns, &name, &container) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let opts = match logs::LogOptions::from_query(&q, chrono::Utc::now()) {
        Ok(o) => o,
        Err(m) => return text(StatusCode::BAD_REQUEST, m),
    };
    let previous = q.get("previous").is_some_and(|v| v == "true" || v == "1");
    let id = match pods::log_container_id(&pod, &container, previous) {
        Ok(id) => id,
        Err(e) => return container_error(e),
    };
    let id = pods::strip_scheme(&id).to_string();
    let Some((runtime, status)) = find_container(&state.router, &id).await else {
        return text(
            StatusCode::NOT_FOUND,
            format!("container \"{container}\" in pod \"{name}\": instance {id} is gone"),
        );
    };
    if status.log_path.is_empty() {
        return text(StatusCode::OK, "");
    }
    let running: logs::RunningCheck = Box::new(move || {
        let (rt, id) = (runtime.clone(), id.clone());
        Box::pin(async move {
            rt.container_status(cri::ContainerStatusRequest {
                container_id: id,
                verbose: false,
            })
            .await
            .ok()
            .and_then(|r| r.status)
            .is_some_and(|s| s.state == cri::ContainerState::ContainerRunning as i32)
        })
    });
    let rx = logs::stream(status.log_path.clone().into(), opts, running);
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

/// The runtime running container `container` of pod `ns/name`, and the container's
/// id, for exec and attach (404/400 with upstream's words otherwise).
async fn running_container(
    state: &ServerState,
    ns: &str,
    name: &str,
    container: &str,
) -> Result<(Arc<dyn CriRuntime>, String, Option<String>), Response<Body>> {
    let pod = pod_with_container(state, ns, name, container)?;
    let id = pods::running_container_id(&pod, container).map_err(container_error)?;
    let id = pods::strip_scheme(&id).to_string();
    let (rt, status) = find_container(&state.router, &id).await.ok_or_else(|| {
        text(
            StatusCode::NOT_FOUND,
            format!("container \"{container}\" in pod \"{name}\" is not running"),
        )
    })?;
    let log = Some(status.log_path).filter(|p| !p.is_empty());
    Ok((rt, id, log))
}

/// The WebSocket upgrade of a remote-command request, with its chosen protocol.
async fn remote_command_socket(
    parts: &mut http::request::Parts,
) -> Result<(axum::extract::ws::WebSocketUpgrade, bool), Response<Body>> {
    use axum::extract::FromRequestParts;
    let ws = axum::extract::ws::WebSocketUpgrade::from_request_parts(parts, &())
        .await
        .map_err(|_| {
            // SPDY (kubectl's fallback when WebSockets are refused) is not served
            // for exec/attach: kubectl 1.32 uses WebSockets first.
            text(
                StatusCode::BAD_REQUEST,
                "Upgrade request required (WebSocket: v5.channel.k8s.io or v4.channel.k8s.io)",
            )
        })?
        .protocols(remotecommand::PROTOCOLS);
    let v5 = match ws.selected_protocol().and_then(|p| p.to_str().ok()) {
        Some(remotecommand::V5) => true,
        Some(remotecommand::V4) => false,
        _ => return Err(text(
            StatusCode::BAD_REQUEST,
            "no supported stream protocol offered (want v5.channel.k8s.io or v4.channel.k8s.io)",
        )),
    };
    Ok((ws, v5))
}

async fn exec_uid(
    state: State<Arc<ServerState>>,
    Path((ns, name, _uid, container)): Path<(String, String, String, String)>,
    req: Request<Body>,
) -> Response<Body> {
    exec(state, Path((ns, name, container)), req).await
}

/// `/exec/{ns}/{pod}/{container}?command=…&stdin=…`: WebSocket remote command.
async fn exec(
    State(state): State<Arc<ServerState>>,
    Path((ns, name, container)): Path<(String, String, String)>,
    req: Request<Body>,
) -> Response<Body> {
    let (mut parts, _) = req.into_parts();
    let opts = remotecommand::Options::from_query(parts.uri.query().unwrap_or(""));
    if opts.command.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 command",
        );
    }
    let (rt, id, _) = match running_container(&state, &ns, &name, &container).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let (ws, v5) = match remote_command_socket(&mut parts).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    info!(pod = %format!("{ns}/{name}"), %container, command = ?opts.command, "exec");
    if rt.streaming().is_none() {
        // A remote runtime: its streaming server runs the command; we relay.
        let url = match rt
            .exec(cri::ExecRequest {
                container_id: id.clone(),
                cmd: opts.command.clone(),
                tty: opts.tty,
                stdin: opts.stdin,
                stdout: opts.stdout,
                stderr: opts.stderr,
            })
            .await
        {
            Ok(r) => r.url,
            Err(e) => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("exec in container \"{container}\": {}", e.message()),
                )
            }
        };
        return ws.on_upgrade(move |socket| relay::relay_spdy(socket, url, opts));
    }
    ws.on_upgrade(move |socket| async move {
        let cmd = opts.command.clone();
        remotecommand::serve(socket, v5, opts, move |io| async move {
            match rt.streaming() {
                Some(s) => match s.exec_stream(&id, cmd, io).await {
                    Ok(code) => remotecommand::Outcome::Exited(code),
                    Err(e) => remotecommand::Outcome::Failed(e.message().to_string()),
                },
                None => remotecommand::Outcome::Failed("the runtime cannot stream".into()),
            }
        })
        .await
    })
}

async fn attach_uid(
    state: State<Arc<ServerState>>,
    Path((ns, name, _uid, container)): Path<(String, String, String, String)>,
    req: Request<Body>,
) -> Response<Body> {
    attach(state, Path((ns, name, container)), req).await
}

/// `/attach/{ns}/{pod}/{container}`: the running container's output from now on
/// (read from its CRI log as it is written) until it exits. A Wasm container's
/// stdin is not attachable (it is given at start).
async fn attach(
    State(state): State<Arc<ServerState>>,
    Path((ns, name, container)): Path<(String, String, String)>,
    req: Request<Body>,
) -> Response<Body> {
    let (mut parts, _) = req.into_parts();
    let opts = remotecommand::Options::from_query(parts.uri.query().unwrap_or(""));
    let (rt, id, log) = match running_container(&state, &ns, &name, &container).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let (ws, v5) = match remote_command_socket(&mut parts).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    ws.on_upgrade(move |socket| async move {
        remotecommand::serve(socket, v5, opts, move |io| async move {
            let Some(path) = log else {
                return remotecommand::Outcome::Exited(0);
            };
            let running = running_check(rt, id);
            logs::attach(path.into(), running, io.stdout, io.stderr).await;
            remotecommand::Outcome::Exited(0)
        })
        .await
    })
}

/// Asks the runtime whether container `id` still runs.
fn running_check(rt: Arc<dyn CriRuntime>, id: String) -> logs::RunningCheck {
    Box::new(move || {
        let (rt, id) = (rt.clone(), id.clone());
        Box::pin(async move {
            rt.container_status(cri::ContainerStatusRequest {
                container_id: id,
                verbose: false,
            })
            .await
            .ok()
            .and_then(|r| r.status)
            .is_some_and(|s| s.state == cri::ContainerState::ContainerRunning as i32)
        })
    })
}

async fn port_forward_uid(
    state: State<Arc<ServerState>>,
    Path((ns, name, _uid)): Path<(String, String, String)>,
    req: Request<Body>,
) -> Response<Body> {
    port_forward(state, Path((ns, name)), req).await
}

/// `/portForward/{ns}/{pod}`: SPDY (plain or in a WebSocket) or WebSocket v4.
async fn port_forward(
    State(state): State<Arc<ServerState>>,
    Path((ns, name)): Path<(String, String)>,
    req: Request<Body>,
) -> Response<Body> {
    let (mut parts, _) = req.into_parts();
    let Some(pod) = state.pods.get(&ns, &name) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod \"{ns}/{name}\" does not exist"),
        );
    };
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
    let Some(ip) = ip else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("pod \"{ns}/{name}\" has no IP address yet"),
        );
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    // A runtime that networks its own sandboxes (containerd: a network namespace per
    // pod) forwards inside the pod's namespace, through its streaming server. Pods the
    // kubelet networks (Wasm, in this process or in `kelp runtime`) listen on the
    // pod's address, reachable from here.
    let dial = match find_sandbox(&state.router, &uid).await {
        Some((routed, sandbox)) if !routed.kubelet_network => {
            relay::cri_port_dialer(routed.runtime.clone(), sandbox, format!("{ns}/{name}"), uid)
        }
        _ => portforward::dialer(ip, format!("{ns}/{name}"), uid),
    };
    info!(pod = %format!("{ns}/{name}"), %ip, "port-forward");

    let upgrade = parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if upgrade.starts_with("spdy/3.1") {
        let on = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        return spdy_upgrade(on, portforward::SPDY_PROTOCOL, move |io| {
            spdy::serve_port_forward(io, dial)
        });
    }

    use axum::extract::FromRequestParts;
    let query = parts.uri.query().unwrap_or("").to_string();
    let ws = match axum::extract::ws::WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws.protocols([portforward::SPDY_OVER_WS, portforward::WS_V4]),
        Err(_) => return text(StatusCode::BAD_REQUEST, "Upgrade request required"),
    };
    match ws.selected_protocol().and_then(|p| p.to_str().ok()) {
        Some(portforward::SPDY_OVER_WS) => ws.on_upgrade(move |socket| async move {
            spdy::serve_port_forward(portforward::ws_pipe(socket), dial).await
        }),
        Some(portforward::WS_V4) => {
            let ports = match portforward::ports_from_query(&query) {
                Ok(p) => p,
                Err(m) => return text(StatusCode::BAD_REQUEST, m),
            };
            ws.on_upgrade(move |socket| portforward::serve_ws_v4(socket, ports, dial))
        }
        _ => text(
            StatusCode::BAD_REQUEST,
            "no supported stream protocol offered (want SPDY/3.1+portforward.k8s.io or v4.channel.k8s.io)",
        ),
    }
}

/// Answers a SPDY/3.1 upgrade (101, naming `protocol`) and runs `session` on the
/// upgraded connection.
pub(crate) fn spdy_upgrade<F, Fut>(
    on: Option<hyper::upgrade::OnUpgrade>,
    protocol: &'static str,
    session: F,
) -> Response<Body>
where
    F: FnOnce(TokioIo<hyper::upgrade::Upgraded>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let Some(on) = on else {
        return text(StatusCode::BAD_REQUEST, "Upgrade request required");
    };
    tokio::spawn(async move {
        match on.await {
            Ok(up) => session(TokioIo::new(up)).await,
            Err(e) => debug!(error = %e, "spdy upgrade failed"),
        }
    });
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    h.insert(
        "X-Stream-Protocol-Version",
        HeaderValue::from_static(protocol),
    );
    r
}

/// `GET /stats/summary`.
async fn stats_summary(State(state): State<Arc<ServerState>>) -> Response<Body> {
    let v = stats::summary(&state).await;
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// `GET /metrics`.
async fn metrics_text(State(state): State<Arc<ServerState>>) -> Response<Body> {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(&state).await,
    )
        .into_response()
}
