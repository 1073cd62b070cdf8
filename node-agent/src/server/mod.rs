//! The kubelet's HTTPS server (upstream's port 10250): container logs, exec, attach,
//! port-forward, health, Prometheus metrics and the Summary API, as the API server
//! (`pods/log`, `pods/exec`, …) and metrics-server reach them.
//!
//! Layout: [`tls`] (serving certificate, client CA), [`pods`] (what the server knows
//! of the node's pods, and the pure choices of containers), [`logs`], and the
//! handlers here. Authentication: a TLS client certificate signed by the cluster CA
//! the node trusts; anything else gets 401, except `/healthz`.

pub mod logs;
pub mod pods;
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
use axum::routing::get;
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
                        let conn = serve_connection(acceptor.clone(), tcp, app.clone());
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

async fn serve_connection(acceptor: TlsAcceptor, tcp: TcpStream, app: Router) {
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
        async move {
            let req = req.map(Body::new);
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
