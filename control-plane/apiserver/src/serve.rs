//! HTTPS serving: TLS accept loop, HTTP/1.1 (with upgrades) and HTTP/2, and
//! authentication of every request before the router sees it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, info};

use crate::authn::{Authenticator, UserInfo};
use crate::error::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("accept failed: {0}")]
    Accept(std::io::Error),
}

fn unauthorized() -> Response {
    ApiError::new(401, "Unauthorized", "Unauthorized").into_response()
}

/// Health checks are open, as upstream allows for anonymous probes.
fn is_open_path(path: &str) -> bool {
    matches!(path, "/livez" | "/readyz" | "/healthz")
}

/// Serves `app` on `listener` over TLS until `shutdown` resolves.
pub async fn serve_https(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    authn: Arc<Authenticator>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let authn = authn.clone();
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let cert_user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| authn.from_certificate(c.as_ref()));
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let app = app.clone();
                let authn = authn.clone();
                let cert_user = cert_user.clone();
                async move {
                    let mut req = req.map(Body::new);
                    let user: Option<UserInfo> = cert_user.or_else(|| {
                        req.headers()
                            .get(header::AUTHORIZATION)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|h| authn.from_bearer(h))
                    });
                    match user {
                        Some(u) => {
                            req.extensions_mut().insert(u);
                        }
                        None if is_open_path(req.uri().path()) => {}
                        None => return Ok::<_, std::convert::Infallible>(unauthorized()),
                    }
                    match app.oneshot(req).await {
                        Ok(r) => Ok(r),
                        Err(never) => match never {},
                    }
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    info!("no longer accepting connections; draining");
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
    }
    Ok(())
}
