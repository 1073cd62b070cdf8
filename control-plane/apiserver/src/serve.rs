//! HTTPS serving: TLS accept loop, HTTP/1.1 (with upgrades, for WebSocket and SPDY)
//! and HTTP/2 (ALPN `h2`), and authentication of every request before the router sees
//! it.
//!
//! Every request is authenticated (verified client certificate, else bearer token) and
//! the [`UserInfo`] is put into the request's extensions, together with
//! [`axum::extract::ConnectInfo`]`<SocketAddr>` of the peer. The `Authorization` header
//! is removed once it has been used, as kube-apiserver does. Anonymous requests get
//! `401` with a Kubernetes `Status` body, except `GET /livez` and `GET /readyz`, which
//! stay open for health probes (they reach the router without a `UserInfo`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Method, Request, Response, StatusCode};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, info, warn, Instrument};

use crate::authn::Authenticator;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("accept failed: {0}")]
    Accept(std::io::Error),
}

/// A TLS handshake that takes longer than this is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After shutdown, in-flight requests get this long before connections are dropped
/// (watches and other long-running requests are simply cut).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. out of file descriptors) to avoid spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The body kube-apiserver sends with `401 Unauthorized`.
pub const UNAUTHORIZED_BODY: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#;

fn unauthorized() -> Response<Body> {
    let mut resp = Response::new(Body::from(UNAUTHORIZED_BODY));
    *resp.status_mut() = StatusCode::UNAUTHORIZED;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    resp
}

/// Health probes that anonymous clients may call (upstream's
/// `system:public-info-viewer` allows them too).
fn is_open(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD) && matches!(path, "/livez" | "/readyz")
}

/// Serves `app` on `listener` over TLS until `shutdown` resolves, then stops accepting,
/// gives in-flight requests a few seconds and drops what is left.
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    authn: Arc<Authenticator>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let mut conns = JoinSet::new();
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving HTTPS");
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            // Reap finished connection tasks.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            r = listener.accept() => match r {
                Ok((tcp, peer)) => {
                    let conn = serve_connection(
                        acceptor.clone(),
                        tcp,
                        peer,
                        authn.clone(),
                        app.clone(),
                        graceful.watcher(),
                    );
                    conns.spawn(conn.instrument(tracing::debug_span!("conn", %peer)));
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    info!(
        connections = conns.len(),
        "no longer accepting connections; draining"
    );
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        debug!("drain timed out; dropping remaining connections");
    }
    conns.shutdown().await;
    Ok(())
}

async fn serve_connection(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    authn: Arc<Authenticator>,
    app: Router,
    watcher: Watcher,
) {
    let _ = tcp.set_nodelay(true);
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!("TLS handshake timed out");
            return;
        }
    };
    let (_, session) = stream.get_ref();
    // rustls has verified the chain against the cluster CA; keep the leaf.
    let peer_cert: Option<Arc<[u8]>> = session
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| Arc::from(c.as_ref()));
    debug!(
        alpn = ?session.alpn_protocol().map(String::from_utf8_lossy),
        client_cert = peer_cert.is_some(),
        "TLS established"
    );

    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let app = app.clone();
        let user = authn.authenticate(peer_cert.as_deref(), req.headers());
        async move {
            let mut req = req.map(Body::new);
            match user {
                Some(u) => {
                    req.headers_mut().remove(header::AUTHORIZATION);
                    req.extensions_mut().insert(u);
                }
                None if is_open(req.method(), req.uri().path()) => {}
                None => {
                    debug!(method = %req.method(), path = req.uri().path(), "unauthorized");
                    return Ok::<_, std::convert::Infallible>(unauthorized());
                }
            }
            req.extensions_mut().insert(ConnectInfo(peer));
            match app.oneshot(req).await {
                Ok(r) => Ok(r),
                Err(never) => match never {},
            }
        }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        debug!(error = %e, "connection ended with an error");
    }
}
