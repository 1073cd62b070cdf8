//! Outgoing wasi:http requests of a pod, sent by the runtime rather than by
//! wasmtime-wasi-http's `default_send_request` (whose body this follows): the host name
//! is resolved by the pod's resolver for `https` as for `http` (cluster DNS names work
//! in both), the pod's egress policy is checked on the name and on the address
//! connected to, and a connection to a destination inside the cluster leaves from the
//! pod's own address, as a Linux pod's would. Destinations outside the cluster are
//! reached from the node's address: nothing masquerades pod addresses on the way out,
//! so a reply to one would not find its way back.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tracing::debug;
use wasmtime_wasi_http::{Error, RequestOptions};

use crate::dns::PodResolver;
use crate::egress::EgressPolicy;

/// Where a pod's connections come from.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The pod's address.
    pub ip: IpAddr,
    /// The cluster's pod networks: connections to them (and to the node's own
    /// addresses: other pods here, ClusterIPs, the node) leave from `ip`.
    pub cluster: Arc<[IpNet]>,
}

impl Origin {
    /// The address to bind before connecting to `dest`, if any.
    pub fn source_for(&self, dest: IpAddr) -> Option<IpAddr> {
        if self.ip.is_unspecified() || self.ip.is_ipv4() != dest.is_ipv4() {
            return None;
        }
        // A loopback pod address (no pod interface) reaches loopback destinations only.
        if self.ip.is_loopback() && !dest.is_loopback() {
            return None;
        }
        (self.cluster.iter().any(|n| n.contains(&dest)) || is_local(dest)).then_some(self.ip)
    }
}

/// Whether `ip` is an address of this host: only those can be bound.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// What the pod's hooks know for its outgoing requests.
#[derive(Clone, Default)]
pub struct Outbound {
    pub resolver: Option<Arc<PodResolver>>,
    pub egress: Option<Arc<EgressPolicy>>,
    pub origin: Option<Origin>,
}

trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T> Stream for T where T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}

type Sent = (
    http::Response<IncomingBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
);

impl Outbound {
    /// Sends `req` (as wasi:http's `handle` asked): resolve, check, connect, then
    /// HTTP/1.1 over plain TCP or TLS.
    pub async fn send<B>(
        &self,
        mut req: http::Request<B>,
        options: Option<RequestOptions>,
    ) -> Result<Sent, Error>
    where
        B: hyper::body::Body<Data = Bytes, Error = Error> + Send + 'static,
    {
        let uri = req.uri().clone();
        let host = uri.host().ok_or(Error::HttpRequestUriInvalid)?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let tls = uri.scheme() == Some(&Scheme::HTTPS);
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let timeout = |f: fn(&RequestOptions) -> Option<Duration>| {
            options
                .as_ref()
                .and_then(f)
                .unwrap_or(Duration::from_secs(600))
        };
        let connect_timeout = timeout(|o| o.connect_timeout);
        let first_byte_timeout = timeout(|o| o.first_byte_timeout);
        let between_bytes_timeout = timeout(|o| o.between_bytes_timeout);

        let mut addrs = self.resolve(&host, port).await?;
        if let Some(policy) = &self.egress {
            // A name the policy allows may go to any of its addresses; otherwise only
            // the addresses the policy allows are tried.
            if !policy.allows_host(&host, port) {
                addrs.retain(|a| policy.allows_addr(*a));
            }
            if addrs.is_empty() {
                debug!(%host, port, "outgoing request denied by the pod's egress policy");
                return Err(Error::HttpRequestDenied);
            }
        }
        let tcp = match tokio::time::timeout(connect_timeout, self.connect(&addrs)).await {
            Ok(r) => r?,
            Err(_) => return Err(Error::ConnectionTimeout),
        };
        let stream: Box<dyn Stream> = if tls {
            let name = tls_server_name(&host)?;
            let tls = tokio_rustls::TlsConnector::from(tls_config())
                .connect(name, tcp)
                .await
                .map_err(Error::Tls)?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let (mut sender, conn) = tokio::time::timeout(
            connect_timeout,
            hyper::client::conn::http1::Builder::new()
                .handshake(hyper_util::rt::TokioIo::new(stream)),
        )
        .await
        .map_err(|_| Error::ConnectionTimeout)??;

        // The request line carries the path only (the authority is for proxies).
        *req.uri_mut() = http::Uri::builder()
            .path_and_query(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
            .build()
            .map_err(|_| Error::HttpRequestUriInvalid)?;

        let send = async move {
            let res = tokio::time::timeout(first_byte_timeout, sender.send_request(req))
                .await
                .map_err(|_| Error::ConnectionReadTimeout)?
                .map_err(Error::from)?;
            // tokio's interval panics on zero.
            let between = between_bytes_timeout.max(Duration::from_nanos(1));
            let mut timer = tokio::time::interval(between);
            timer.reset();
            Ok::<_, Error>(res.map(|incoming| IncomingBody { incoming, timer }))
        };
        let mut send = std::pin::pin!(send);
        let mut conn = Some(conn);
        // Wait for the response while driving the connection's I/O.
        let res = std::future::poll_fn(|cx| match send.as_mut().poll(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => {
                let Some(c) = conn.as_mut() else {
                    return Poll::Pending;
                };
                let done = ready!(Pin::new(c).poll(cx));
                conn = None;
                match done {
                    Ok(()) => send.as_mut().poll(cx),
                    Err(e) => Poll::Ready(Err(Error::from(e))),
                }
            }
        })
        .await?;
        let io = async move {
            let Some(conn) = conn else { return Ok(()) };
            conn.await.map_err(|e| {
                if e.is_timeout() {
                    Error::HttpResponseTimeout
                } else {
                    Error::from(e)
                }
            })
        };
        Ok((res, Box::new(io)))
    }

    /// The addresses of `host`: itself when it is one, else the pod's resolver's
    /// answer (cluster names, search domains), else the system resolver's.
    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Error> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let ips = match &self.resolver {
            Some(r) => r.lookup(host).await.map_err(|e| {
                debug!(host, error = %e, "outgoing request: name lookup failed");
                Error::DnsError {
                    rcode: Some(e.to_string()),
                    info_code: None,
                }
            })?,
            None => None,
        };
        let mut addrs: Vec<SocketAddr> = match ips {
            Some(ips) => ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect(),
            None => tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| Error::DnsError {
                    rcode: Some(e.to_string()),
                    info_code: None,
                })?
                .collect(),
        };
        // IPv4 first: every address Kelp hands out (pods, ClusterIPs) is IPv4.
        addrs.sort_by_key(|a| !a.is_ipv4());
        if addrs.is_empty() {
            return Err(Error::DestinationNotFound);
        }
        Ok(addrs)
    }

    /// Connects to the first of `addrs` that answers, from the pod's address where
    /// [`Origin::source_for`] says so.
    async fn connect(&self, addrs: &[SocketAddr]) -> Result<TcpStream, Error> {
        let mut last = Error::DestinationNotFound;
        for addr in addrs.iter().copied() {
            let socket = match addr {
                SocketAddr::V4(_) => TcpSocket::new_v4(),
                SocketAddr::V6(_) => TcpSocket::new_v6(),
            }
            .map_err(Error::Connect)?;
            if let Some(src) = self.origin.as_ref().and_then(|o| o.source_for(addr.ip())) {
                if let Err(e) = socket.bind(SocketAddr::new(src, 0)) {
                    // The pod's address went away under us: connect as the node does.
                    debug!(%src, error = %e, "cannot bind the pod's address for an outgoing request");
                }
            }
            match socket.connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    last = Error::ConnectionRefused
                }
                Err(e) => last = Error::Connect(e),
            }
        }
        Err(last)
    }
}

fn tls_server_name(host: &str) -> Result<rustls::pki_types::ServerName<'static>, Error> {
    use rustls::pki_types::ServerName;
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerName::from(ip));
    }
    ServerName::try_from(host.to_string()).map_err(|_| Error::HttpRequestUriInvalid)
}

/// One client config (the web PKI roots wasmtime-wasi-http trusts), built once.
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.into(),
            };
            Arc::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        })
        .clone()
}

/// A response body that fails when no bytes come for the between-bytes timeout.
pub struct IncomingBody {
    incoming: hyper::body::Incoming,
    timer: tokio::time::Interval,
}

impl hyper::body::Body for IncomingBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(if e.is_timeout() {
                Error::HttpResponseTimeout
            } else {
                Error::from(e)
            }))),
            Poll::Ready(Some(Ok(frame))) => {
                self.timer.reset();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                ready!(self.timer.poll_tick(cx));
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cluster_and_local_destinations_see_the_pod_address() {
        let pod = Origin {
            ip: ip("10.42.0.5"),
            cluster: Arc::from(["10.42.0.0/16".parse::<IpNet>().unwrap()]),
        };
        assert_eq!(
            pod.source_for(ip("10.42.3.9")),
            Some(pod.ip),
            "a pod elsewhere"
        );
        assert_eq!(pod.source_for(ip("127.0.0.1")), Some(pod.ip), "this host");
        assert_eq!(
            pod.source_for(ip("192.0.2.80")),
            None,
            "outside the cluster"
        );
        assert_eq!(pod.source_for(ip("::1")), None, "another family");
        // Without a pod interface, pods have loopback addresses: only loopback
        // destinations can see them.
        let loopback = Origin {
            ip: ip("127.42.0.5"),
            cluster: pod.cluster.clone(),
        };
        assert_eq!(loopback.source_for(ip("10.42.3.9")), None);
        assert_eq!(loopback.source_for(ip("127.0.0.1")), Some(loopback.ip));
    }
}
