//! The loopback transport (upstream's loopback client config): components running in
//! the API server's process — the controllers, the scheduler, `kelp up`'s kubelet —
//! call the router directly as an already authenticated user, so their requests and
//! watches cost no TLS, no TCP and no HTTP framing. Everything after authentication
//! (authorization, admission, the store) is the same path remote clients take.

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use axum::Router;
use bytes::Bytes;
use tower::{BoxError, Service, ServiceExt};

use crate::authn::UserInfo;

/// Where loopback requests come from, for handlers that look at the peer.
const LOOPBACK_PEER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// A service answering requests with `router` as `user`.
pub fn service<B>(
    router: Router,
    user: UserInfo,
) -> impl Service<
    Request<B>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone
       + Send
       + 'static
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    tower::service_fn(move |req: Request<B>| {
        let (router, user) = (router.clone(), user.clone());
        async move {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(user);
            req.extensions_mut().insert(ConnectInfo(LOOPBACK_PEER));
            router.oneshot(req).await
        }
    })
}
