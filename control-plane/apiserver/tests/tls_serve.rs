//! HTTPS serving end to end: real TLS clients (HTTP/1.1 and h2) against `serve_https`
//! with the cluster PKI, bearer tokens, upgrades, graceful shutdown and `kubectl`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, Response, StatusCode, Version};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kelp_apiserver::authn::{Authenticator, UserInfo};
use kelp_apiserver::serve::{serve_https, ServeError, UNAUTHORIZED_BODY};
use kelp_apiserver::tls::{self, Pki};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "kelp-tls-serve-{name}-{}-{:x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&d).expect("tmpdir");
    d
}

const VERSION: &str = r#"{"major":"1","minor":"32","gitVersion":"v1.32.0-kelp","gitCommit":"0000000000000000000000000000000000000000","gitTreeState":"clean","buildDate":"2025-01-01T00:00:00Z","goVersion":"go1.23.0","compiler":"gc","platform":"linux/amd64"}"#;

fn json(body: String) -> Response<Body> {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("response")
}

/// Echoes 4 bytes over an HTTP/1.1 upgrade, as exec/attach/port-forward would stream.
async fn upgrade(mut req: Request) -> Response<Body> {
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(up) = on.await {
            let mut io = TokioIo::new(up);
            let mut buf = [0u8; 4];
            if io.read_exact(&mut buf).await.is_ok() {
                let _ = io.write_all(&buf).await;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "echo")
        .body(Body::empty())
        .expect("response")
}

fn router() -> Router {
    Router::new()
        .route("/version", get(|| async { json(VERSION.to_string()) }))
        .route(
            "/whoami",
            get(|req: Request| async move {
                let user = req.extensions().get::<UserInfo>().cloned();
                let auth_header = req.headers().contains_key(header::AUTHORIZATION);
                json(
                    serde_json::json!({"user": user, "authorizationHeader": auth_header})
                        .to_string(),
                )
            }),
        )
        .route("/livez", get(|| async { "ok" }))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/stream",
            get(|| async {
                Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>())
            }),
        )
        .route("/upgrade", get(upgrade))
}

struct Server {
    addr: SocketAddr,
    dir: PathBuf,
    pki: Pki,
    token: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

async fn start(name: &str) -> Server {
    let dir = tmpdir(name);
    let pki = Pki::load_or_create(&dir, &[]).expect("pki");
    let token = tls::load_or_create_token(&dir.join("node-token")).expect("token");
    let mut authn = Authenticator::new();
    authn.add_node_token(&token);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let cfg = tls::server_config(&pki).expect("server config");
    let task = tokio::spawn(serve_https(
        listener,
        cfg,
        Arc::new(authn),
        router(),
        async move {
            let _ = rx.await;
        },
    ));
    Server {
        addr,
        dir,
        pki,
        token,
        stop: Some(tx),
        task,
    }
}

fn client_config(
    ca: &Pki,
    cert: Option<(&str, &str)>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.ca_der().expect("ca der")).expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut cfg = match cert {
        Some((c, k)) => {
            let certs = rustls_pemfile::certs(&mut c.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("certs");
            let key = rustls_pemfile::private_key(&mut k.as_bytes())
                .expect("key")
                .expect("some key");
            builder
                .with_client_auth_cert(certs, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

struct Reply {
    status: StatusCode,
    version: Version,
    content_type: String,
    body: String,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("json body")
    }
}

async fn get_path(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    path: &str,
    bearer: Option<&str>,
) -> Result<Reply, BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    let tls = TlsConnector::from(cfg)
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
    let mut req = hyper::Request::builder().header(header::HOST, "localhost");
    if let Some(t) = bearer {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = if h2 {
        let req = req
            .uri(format!("https://localhost{path}"))
            .body(Full::new(Bytes::new()))?;
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        send.send_request(req).await?
    } else {
        let req = req.uri(path).body(Full::new(Bytes::new()))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        send.send_request(req).await?
    };
    let status = resp.status();
    let version = resp.version();
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Reply {
        status,
        version,
        content_type,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

const H1: &[&[u8]] = &[b"http/1.1"];
const H2: &[&[u8]] = &[b"h2"];

#[tokio::test]
async fn anonymous_requests_get_401_status() {
    let s = start("anon").await;
    for alpn in [H1, H2] {
        let cfg = client_config(&s.pki, None, alpn);
        for path in [
            "/version",
            "/whoami",
            "/healthz",
            "/api/v1/pods",
            "/nowhere",
        ] {
            let r = get_path(s.addr, cfg.clone(), path, None)
                .await
                .expect("request");
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
            assert_eq!(r.body, UNAUTHORIZED_BODY, "{path}");
            assert_eq!(r.content_type, "application/json");
            assert_eq!(
                r.json(),
                serde_json::json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401})
            );
        }
        // Unknown and malformed tokens are anonymous too.
        for token in ["nope", "", &format!("{}x", s.token)] {
            let r = get_path(s.addr, cfg.clone(), "/version", Some(token))
                .await
                .expect("request");
            assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        }
        // Health probes stay open.
        let r = get_path(s.addr, cfg.clone(), "/livez", None)
            .await
            .expect("livez");
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));
    }
}

#[tokio::test]
async fn admin_certificate_over_http1_and_h2() {
    let s = start("admin").await;
    let cert = Some((s.pki.admin_cert_pem.as_str(), s.pki.admin_key_pem.as_str()));
    for (alpn, version) in [(H1, Version::HTTP_11), (H2, Version::HTTP_2)] {
        let r = get_path(s.addr, client_config(&s.pki, cert, alpn), "/whoami", None)
            .await
            .expect("request");
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.version, version);
        let v = r.json();
        assert_eq!(v["user"]["username"], "kelp-admin");
        let groups = v["user"]["groups"].as_array().expect("groups");
        assert!(groups.contains(&"system:masters".into()), "{groups:?}");
        assert!(groups.contains(&"system:authenticated".into()));
    }
    // Both protocols offered: the server picks h2.
    let r = get_path(
        s.addr,
        client_config(&s.pki, cert, &[b"h2", b"http/1.1"]),
        "/version",
        None,
    )
    .await
    .expect("request");
    assert_eq!((r.status, r.version), (StatusCode::OK, Version::HTTP_2));
    assert_eq!(r.json()["minor"], "32");
}

#[tokio::test]
async fn node_token_and_issued_certificates() {
    let s = start("node").await;
    let cfg = client_config(&s.pki, None, H2);
    let r = get_path(s.addr, cfg, "/whoami", Some(&s.token))
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["user"]["username"], "kelp-node");
    assert!(v["user"]["groups"]
        .as_array()
        .expect("groups")
        .contains(&"system:nodes".into()));
    assert_eq!(
        v["authorizationHeader"], false,
        "the token is not passed on"
    );

    // A kubelet-style certificate with two groups.
    let (c, k) = s
        .pki
        .issue_client_cert("system:node:n1", &["system:nodes".into(), "team-a".into()])
        .expect("issue");
    let r = get_path(
        s.addr,
        client_config(&s.pki, Some((&c, &k)), H1),
        "/whoami",
        None,
    )
    .await
    .expect("request");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json()["user"],
        serde_json::json!({"username":"system:node:n1","uid":"","groups":["system:nodes","team-a","system:authenticated"]})
    );
}

#[tokio::test]
async fn certificate_from_another_ca_is_rejected() {
    let s = start("foreign").await;
    let other_dir = tmpdir("other-ca");
    let other = Pki::load_or_create(&other_dir, &[]).expect("other pki");
    for alpn in [H1, H2] {
        let cfg = client_config(
            &s.pki,
            Some((&other.admin_cert_pem, &other.admin_key_pem)),
            alpn,
        );
        match get_path(s.addr, cfg, "/whoami", None).await {
            Err(_) => {}
            Ok(r) => assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body),
        }
    }
    // The server is still serving.
    let cert = Some((s.pki.admin_cert_pem.as_str(), s.pki.admin_key_pem.as_str()));
    let r = get_path(s.addr, client_config(&s.pki, cert, H1), "/version", None)
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::OK);
    std::fs::remove_dir_all(&other_dir).ok();
}

#[tokio::test]
async fn garbage_instead_of_tls_does_not_stop_the_server() {
    let s = start("garbage").await;
    let mut tcp = TcpStream::connect(s.addr).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    let r = get_path(s.addr, client_config(&s.pki, None, H1), "/livez", None)
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn http1_upgrade_streams_both_ways() {
    let s = start("upgrade").await;
    let cfg = client_config(
        &s.pki,
        Some((&s.pki.admin_cert_pem, &s.pki.admin_key_pem)),
        H1,
    );
    let tcp = TcpStream::connect(s.addr).await.expect("connect");
    let tls = TlsConnector::from(cfg)
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("tls");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("handshake");
    tokio::spawn(conn.with_upgrades());
    let req = hyper::Request::builder()
        .uri("/upgrade")
        .header(header::HOST, "localhost")
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "echo")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = send.send_request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let up = hyper::upgrade::on(resp).await.expect("upgraded");
    let mut io = TokioIo::new(up);
    io.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("read");
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn shutdown_stops_accepting_and_drops_streams() {
    let mut s = start("shutdown").await;
    let cfg = client_config(
        &s.pki,
        Some((&s.pki.admin_cert_pem, &s.pki.admin_key_pem)),
        H1,
    );
    // A never-ending response, like a watch.
    let tcp = TcpStream::connect(s.addr).await.expect("connect");
    let tls = TlsConnector::from(cfg.clone())
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("tls");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri("/stream")
        .header(header::HOST, "localhost")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = send.send_request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();

    let started = Instant::now();
    s.stop.take().expect("stop").send(()).expect("signal");
    let result = tokio::time::timeout(Duration::from_secs(15), &mut s.task)
        .await
        .expect("serve_https returns after shutdown")
        .expect("task");
    assert!(result.is_ok());
    assert!(started.elapsed() < Duration::from_secs(10));
    // The stream was cut, and nobody listens any more.
    let end = tokio::time::timeout(Duration::from_secs(5), body.frame()).await;
    assert!(matches!(end, Ok(None) | Ok(Some(Err(_)))), "stream ended");
    assert!(get_path(s.addr, cfg, "/version", None).await.is_err());
}

#[tokio::test]
async fn kubectl_with_the_written_kubeconfig() {
    let s = start("kubectl").await;
    let kubeconfig = s.dir.join("kubeconfig");
    tls::write_kubeconfig(
        &kubeconfig,
        &format!("https://127.0.0.1:{}", s.addr.port()),
        &s.pki,
        "kelp",
    )
    .expect("kubeconfig");
    let out = match tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "--raw", "/version", "--request-timeout=20s"])
        .env_remove("KUBECONFIG")
        .kill_on_drop(true)
        .output()
        .await
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("kubectl not on PATH; skipping");
            return;
        }
        Err(e) => panic!("kubectl: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(
        (v["major"].as_str(), v["minor"].as_str()),
        (Some("1"), Some("32"))
    );
}
