//! One probe attempt: httpGet, tcpSocket, exec (CRI ExecSync) or grpc
//! (`grpc.health.v1.Health/Check`), each bounded by `timeoutSeconds`. Failure messages
//! are worded as upstream's (they end up in `Unhealthy` events).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kelp_cri_api::v1 as cri;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::cri::CriRuntime;

/// What a probe reaches.
pub struct Target<'a> {
    /// The default host of httpGet/tcpSocket/grpc probes.
    pub pod_ip: &'a str,
    /// For named ports.
    pub container: &'a Container,
    /// For exec probes.
    pub container_id: &'a str,
    pub runtime: &'a dyn CriRuntime,
}

/// One attempt's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    /// Why it failed (or the command output of an exec probe).
    pub message: String,
}

impl Outcome {
    fn success() -> Self {
        Outcome {
            ok: true,
            message: String::new(),
        }
    }

    fn failure(message: impl Into<String>) -> Self {
        Outcome {
            ok: false,
            message: message.into(),
        }
    }
}

/// The User-Agent upstream's prober sends (kubectl 1.32 is what this cluster speaks).
const USER_AGENT: &str = "kube-probe/1.32";

/// Runs `probe` once against `target` within `timeout`.
pub async fn run(probe: &Probe, target: &Target<'_>, timeout: Duration) -> Outcome {
    if let Some(h) = &probe.http_get {
        let port = match port(&h.port, target.container) {
            Ok(p) => p,
            Err(m) => return Outcome::failure(m),
        };
        let host = h
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| target.pod_ip.to_string());
        let scheme = h.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
        let path = h.path.clone().unwrap_or_default();
        let headers: Vec<(String, String)> = h
            .http_headers
            .iter()
            .flatten()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect();
        return http_get(&scheme, &host, port, &path, &headers, timeout).await;
    }
    if let Some(t) = &probe.tcp_socket {
        let port = match port(&t.port, target.container) {
            Ok(p) => p,
            Err(m) => return Outcome::failure(m),
        };
        let host = t
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| target.pod_ip.to_string());
        return tcp(&host, port, timeout).await;
    }
    if let Some(e) = &probe.exec {
        return exec(target, e.command.clone().unwrap_or_default(), timeout).await;
    }
    if let Some(g) = &probe.grpc {
        let Ok(port) = u16::try_from(g.port) else {
            return Outcome::failure(format!("invalid port number: {}", g.port));
        };
        return grpc(
            target.pod_ip,
            port,
            g.service.clone().unwrap_or_default(),
            timeout,
        )
        .await;
    }
    Outcome::failure("missing probe handler")
}

/// A port by number or by the name of one of the container's ports.
pub fn port(p: &IntOrString, c: &Container) -> Result<u16, String> {
    let n = match p {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => match s.parse::<i32>() {
            Ok(n) => n,
            Err(_) => c
                .ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(s.as_str()))
                .map(|cp| cp.container_port)
                .ok_or_else(|| format!("couldn't find port: {s:?} in container {}", c.name))?,
        },
    };
    u16::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("invalid port number: {n}"))
}

/// `host:port` as a URL authority (IPv6 in brackets).
fn authority(host: &str, port: u16) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        _ => format!("{host}:{port}"),
    }
}

/// Go's wording of a dial error.
fn dial_error(addr: &str, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => {
            format!("dial tcp {addr}: connect: connection refused")
        }
        _ => format!("dial tcp {addr}: {e}"),
    }
}

async fn tcp(host: &str, port: u16, timeout: Duration) -> Outcome {
    let addr = authority(host, port);
    match tokio::time::timeout(timeout, TcpStream::connect(&addr)).await {
        Ok(Ok(_)) => Outcome::success(),
        Ok(Err(e)) => Outcome::failure(dial_error(&addr, &e)),
        Err(_) => Outcome::failure(format!("dial tcp {addr}: i/o timeout")),
    }
}

/// The full URL an httpGet probe requests.
pub fn probe_url(scheme: &str, host: &str, port: u16, path: &str) -> String {
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    format!("{scheme}://{}{path}", authority(host, port))
}

async fn http_get(
    scheme: &str,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Outcome {
    let url = probe_url(scheme, host, port, path);
    let chain = follow(scheme, host, port, path, headers);
    match tokio::time::timeout(timeout, chain).await {
        Ok(Ok(code)) if (200..400).contains(&code) => Outcome::success(),
        Ok(Ok(code)) => Outcome::failure(format!("HTTP probe failed with statuscode: {code}")),
        Ok(Err((at, e))) => Outcome::failure(format!("Get {at:?}: {e}")),
        Err(_) => Outcome::failure(format!(
            "Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
    }
}

/// How many redirects a probe follows (Go's http.Client).
const MAX_REDIRECTS: usize = 10;

/// GETs the URL, following redirects to the same host as upstream's prober (a
/// redirect elsewhere ends the chain: its 3xx counts). Errors carry the URL they
/// happened at.
async fn follow(
    scheme: &str,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<u16, (String, String)> {
    let (mut scheme, mut port, mut path) = (scheme.to_string(), port, path.to_string());
    for hop in 0..=MAX_REDIRECTS {
        let url = probe_url(&scheme, host, port, &path);
        let (code, location) = http_status(&scheme, host, port, &url, headers)
            .await
            .map_err(|e| (url.clone(), e))?;
        let Some(location) = location.filter(|_| (300..400).contains(&code)) else {
            return Ok(code);
        };
        if hop == MAX_REDIRECTS {
            return Err((url, format!("stopped after {MAX_REDIRECTS} redirects")));
        }
        let next: http::Uri = location
            .parse()
            .map_err(|e| (url.clone(), format!("invalid redirect {location:?}: {e}")))?;
        match next.host() {
            Some(h) if h.trim_matches(['[', ']']) != host => return Ok(code),
            Some(_) => {
                scheme = next.scheme_str().unwrap_or(&scheme).to_string();
                port = next
                    .port_u16()
                    .unwrap_or(if scheme == "https" { 443 } else { 80 });
            }
            None => {}
        }
        path = match next.path_and_query() {
            Some(pq) if pq.as_str().starts_with('/') => pq.as_str().to_string(),
            // A relative reference: against the current path's directory.
            Some(pq) => {
                let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
                format!("{dir}/{}", pq.as_str())
            }
            None => "/".to_string(),
        };
    }
    unreachable!("the loop returns by its last hop")
}

/// GETs `url` once: the response status and its `Location` header.
async fn http_status(
    scheme: &str,
    host: &str,
    port: u16,
    url: &str,
    headers: &[(String, String)],
) -> Result<(u16, Option<String>), String> {
    let addr = authority(host, port);
    let tcp = TcpStream::connect(&addr)
        .await
        .map_err(|e| dial_error(&addr, &e))?;
    let _ = tcp.set_nodelay(true);
    let uri: http::Uri = url.parse().map_err(|e| format!("invalid URL: {e}"))?;
    let mut req = http::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()));
    let has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    if !has("host") {
        req = req.header(http::header::HOST, &addr);
    }
    if !has("user-agent") {
        req = req.header(http::header::USER_AGENT, USER_AGENT);
    }
    if !has("accept") {
        req = req.header(http::header::ACCEPT, "*/*");
    }
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("invalid request: {e}"))?;
    if scheme == "https" {
        // Upstream's prober does not verify the server's certificate.
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify))
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| format!("invalid host {host:?}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        send(tls, req).await
    } else {
        send(tcp, req).await
    }
}

async fn send<S>(io: S, req: http::Request<Empty<Bytes>>) -> Result<(u16, Option<String>), String>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string());
    let out = match resp {
        // Only the status counts; the body is not read (the connection is dropped).
        Ok(resp) => Ok((
            resp.status().as_u16(),
            resp.headers()
                .get(http::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(str::to_string),
        )),
        Err(e) => Err(e),
    };
    conn.abort();
    out
}

/// Accepts any server certificate (the prober only asks "does it answer").
#[derive(Debug)]
struct NoVerify;

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

async fn exec(target: &Target<'_>, cmd: Vec<String>, timeout: Duration) -> Outcome {
    let req = cri::ExecSyncRequest {
        container_id: target.container_id.to_string(),
        cmd: cmd.clone(),
        timeout: timeout.as_secs() as i64,
    };
    // The runtime enforces the timeout; ours only guards against one that does not.
    let guard = timeout + Duration::from_secs(1);
    match tokio::time::timeout(guard, target.runtime.exec_sync(req)).await {
        Ok(Ok(r)) if r.exit_code == 0 => Outcome::success(),
        Ok(Ok(r)) => {
            let mut out = String::from_utf8_lossy(&r.stdout).into_owned();
            out.push_str(&String::from_utf8_lossy(&r.stderr));
            let out = out.trim_end().to_string();
            if out.is_empty() {
                Outcome::failure(format!(
                    "command {:?} exited with {}",
                    cmd.join(" "),
                    r.exit_code
                ))
            } else {
                Outcome::failure(out)
            }
        }
        Ok(Err(s)) if s.code() == kelp_cri_api::tonic::Code::DeadlineExceeded => {
            Outcome::failure(format!("command {:?} timed out", cmd.join(" ")))
        }
        Ok(Err(s)) => Outcome::failure(s.message().to_string()),
        Err(_) => Outcome::failure(format!("command {:?} timed out", cmd.join(" "))),
    }
}

async fn grpc(host: &str, port: u16, service: String, timeout: Duration) -> Outcome {
    use kelp_cri_api::tonic;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let addr = authority(host, port);
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{addr}")) {
        Ok(e) => e.connect_timeout(timeout).timeout(timeout),
        Err(e) => return Outcome::failure(format!("invalid address {addr:?}: {e}")),
    };
    let channel = match tokio::time::timeout(timeout, endpoint.connect()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return Outcome::failure(format!(
                "timeout: failed to connect service {addr:?} within {}s: {e}",
                timeout.as_secs()
            ))
        }
        Err(_) => {
            return Outcome::failure(format!(
                "timeout: failed to connect service {addr:?} within {}s",
                timeout.as_secs()
            ))
        }
    };
    let mut client = HealthClient::new(channel);
    let call = client.check(HealthCheckRequest { service });
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(r)) => {
            let status = r.into_inner().status();
            if status == ServingStatus::Serving {
                Outcome::success()
            } else {
                Outcome::failure(format!(
                    "service unhealthy (responded with {:?})",
                    status.as_str_name()
                ))
            }
        }
        Ok(Err(s)) if s.code() == tonic::Code::Unimplemented => Outcome::failure(format!(
            "this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
            s.message()
        )),
        Ok(Err(s)) if s.code() == tonic::Code::DeadlineExceeded => Outcome::failure(format!(
            "timeout: health rpc did not complete within {}s",
            timeout.as_secs()
        )),
        Ok(Err(s)) => Outcome::failure(format!(
            "rpc error: code = {:?} desc = {}",
            s.code(),
            s.message()
        )),
        Err(_) => Outcome::failure(format!(
            "timeout: health rpc did not complete within {}s",
            timeout.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ContainerPort;

    #[test]
    fn ports_by_number_or_name() {
        let c = Container {
            name: "web".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(port(&IntOrString::Int(80), &c), Ok(80));
        assert_eq!(port(&IntOrString::String("http".into()), &c), Ok(8080));
        assert_eq!(port(&IntOrString::String("81".into()), &c), Ok(81));
        assert!(port(&IntOrString::String("grpc".into()), &c).is_err());
        assert!(port(&IntOrString::Int(0), &c).is_err());
        assert!(port(&IntOrString::Int(70000), &c).is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(
            probe_url("http", "10.0.0.1", 80, "healthz"),
            "http://10.0.0.1:80/healthz"
        );
        assert_eq!(
            probe_url("https", "::1", 8443, "/a?b=c"),
            "https://[::1]:8443/a?b=c"
        );
    }

    /// A tiny HTTP server: answers `/code/N` with status N and echoes the request
    /// head into the body of a 200 on `/echo`.
    async fn server() -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).to_string();
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    let code: u16 = path
                        .strip_prefix("/code/")
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(200);
                    if path == "/slow" {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                    let wanted = head.contains("x-probe: yes") && head.contains("kube-probe/1.32");
                    let code = if path == "/headers" && !wanted {
                        418
                    } else {
                        code
                    };
                    // /redirect/TARGET answers 302 to TARGET (`_` for `/`).
                    let (code, location) = match path.strip_prefix("/redirect/") {
                        Some(t) => (302, format!("location: {}\r\n", t.replace('_', "/"))),
                        None => (code, String::new()),
                    };
                    let resp = format!(
                        "HTTP/1.1 {code} X\r\n{location}content-length: 2\r\nconnection: close\r\n\r\nok"
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn http_get_succeeds_on_2xx_and_3xx_only() {
        let port = server().await;
        let t = Duration::from_secs(1);
        let get = |path: &'static str, headers: Vec<(String, String)>| async move {
            http_get("http", "127.0.0.1", port, path, &headers, t).await
        };
        assert!(get("/code/200", vec![]).await.ok);
        assert!(
            get("/code/302", vec![]).await.ok,
            "a 3xx without Location counts"
        );
        // Redirects to the same host are followed; elsewhere, the 3xx counts.
        assert!(get("/redirect/_code_200", vec![]).await.ok);
        assert_eq!(
            get("/redirect/_code_503", vec![]).await,
            Outcome::failure("HTTP probe failed with statuscode: 503")
        );
        assert!(!get("/redirect/_redirect__code_500", vec![]).await.ok);
        assert!(get("/redirect/http:__other.invalid_x", vec![]).await.ok);
        let endless = get("/redirect/_redirect__redirect__redirect__redirect__redirect__redirect__redirect__redirect__redirect__redirect__redirect__code_200", vec![]).await;
        assert!(
            !endless.ok && endless.message.contains("stopped after 10 redirects"),
            "{endless:?}"
        );
        assert!(get("/code/399", vec![]).await.ok);
        assert_eq!(
            get("/code/500", vec![]).await,
            Outcome::failure("HTTP probe failed with statuscode: 500")
        );
        assert!(!get("/code/404", vec![]).await.ok);
        assert!(!get("/headers", vec![]).await.ok);
        assert!(
            get("/headers", vec![("X-Probe".into(), "yes".into())])
                .await
                .ok
        );
        let slow = get("/slow", vec![]).await;
        assert!(
            !slow.ok && slow.message.contains("context deadline exceeded"),
            "{slow:?}"
        );
    }

    #[tokio::test]
    async fn refused_connections_are_worded_as_upstream() {
        // A port nothing listens on: bind, read, close.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let t = Duration::from_secs(1);
        let h = http_get("http", "127.0.0.1", port, "/healthz", &[], t).await;
        assert_eq!(
            h.message,
            format!("Get \"http://127.0.0.1:{port}/healthz\": dial tcp 127.0.0.1:{port}: connect: connection refused")
        );
        let c = tcp("127.0.0.1", port, t).await;
        assert_eq!(
            c.message,
            format!("dial tcp 127.0.0.1:{port}: connect: connection refused")
        );
        let open = server().await;
        assert!(tcp("127.0.0.1", open, t).await.ok);
        let g = grpc("127.0.0.1", port, String::new(), t).await;
        assert!(
            !g.ok && g.message.starts_with("timeout: failed to connect service"),
            "{g:?}"
        );
    }

    #[tokio::test]
    async fn grpc_health_checks() {
        use kelp_cri_api::tonic::transport::Server;
        use tonic_health::ServingStatus;
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", ServingStatus::Serving)
            .await;
        reporter
            .set_service_status("db", ServingStatus::NotServing)
            .await;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(
            Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream_of(l)),
        );
        let t = Duration::from_secs(2);
        assert_eq!(
            grpc("127.0.0.1", port, String::new(), t).await,
            Outcome::success()
        );
        assert_eq!(
            grpc("127.0.0.1", port, "db".into(), t).await,
            Outcome::failure("service unhealthy (responded with \"NOT_SERVING\")")
        );
        let unknown = grpc("127.0.0.1", port, "nope".into(), t).await;
        assert!(
            !unknown.ok && unknown.message.contains("NotFound"),
            "{unknown:?}"
        );
    }

    /// A listener as the stream of connections tonic's server takes.
    fn tokio_stream_of(
        l: tokio::net::TcpListener,
    ) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
        futures::stream::unfold(l, |l| async move {
            let r = l.accept().await.map(|(s, _)| s);
            Some((r, l))
        })
    }
}
