//! wasi:http serving on the http-hello example (scripts/build-wasm-examples.sh builds
//! it): answers, concurrency, handlers that trap, exhaust memory or overrun their
//! deadline (each answered 500 while the server carries on), and stop.

#[path = "support/dns.rs"]
mod dns;
#[path = "support/wait.rs"]
mod wait;
mod wasm_examples;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use kelp_runtime_wasm::http::serve;
use kelp_runtime_wasm::{Artifact, ContainerSpec, ExitReason, StopHandle, WasmEngine};
use tokio::task::JoinHandle;
use wasmtime::component::Component;

/// Generous bound for things that must happen "promptly", so a hang fails the test
/// instead of stalling it; nothing is measured against it.
const PATIENCE: Duration = Duration::from_secs(30);

fn http_hello(engine: &WasmEngine) -> Component {
    match engine
        .compile(&wasm_examples::bytes("wasm32-wasip2", "http_hello"))
        .unwrap()
    {
        Artifact::Component(c) => c,
        Artifact::Module(_) => panic!("http_hello is a component"),
    }
}

/// Waits until `cond` holds; fails the test after PATIENCE.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let held = wait::until(PATIENCE, || std::future::ready(cond())).await;
    assert!(held, "timed out waiting for {what}");
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

struct Server {
    addr: SocketAddr,
    stop: StopHandle,
    task: JoinHandle<Result<kelp_runtime_wasm::ExitStatus, kelp_runtime_wasm::RuntimeError>>,
    log_path: std::path::PathBuf,
}

async fn start(engine: &WasmEngine, spec: ContainerSpec) -> Server {
    let addr = free_addr();
    let stop = StopHandle::default();
    let log_path = spec.log_path.clone();
    let task = {
        let (engine, stop, component) = (engine.clone(), stop.clone(), http_hello(engine));
        tokio::spawn(async move { serve(&engine, component, addr, &spec, stop).await })
    };
    let listening = wait::until(PATIENCE, || async {
        task.is_finished() || tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    assert!(!task.is_finished(), "serve ended early: {:?}", task.await);
    assert!(listening, "never listened");
    Server {
        addr,
        stop,
        task,
        log_path,
    }
}

/// One request on its own connection: status and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn spec(dir: &std::path::Path) -> ContainerSpec {
    ContainerSpec {
        args: vec!["http-hello".into()],
        log_path: dir.join("http-hello.log"),
        memory_limit: Some(64 * 1024 * 1024),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_requests_and_survives_failing_handlers() {
    let dir = tempfile::tempdir().unwrap();
    let engine = WasmEngine::new(None).unwrap();
    let mut s = spec(dir.path());
    s.request_timeout = Some(Duration::from_millis(500));
    let server = start(&engine, s).await;

    let (status, body) = get(server.addr, "/hello?x=1").await;
    assert_eq!(status, 200);
    assert_eq!(body, "Hello from Kelp over wasi:http\n/hello?x=1\n");

    // 100 concurrent requests, each on its own connection.
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let addr = server.addr;
            tokio::spawn(async move { (i, get(addr, &format!("/n/{i}")).await) })
        })
        .collect();
    for t in tasks {
        let (i, (status, body)) = t.await.unwrap();
        assert_eq!(status, 200, "request {i}");
        assert!(body.ends_with(&format!("/n/{i}\n")), "request {i}: {body}");
    }

    // A trap, the memory limit and the request deadline: 500, and the server goes on.
    for path in ["/trap", "/hog", "/spin"] {
        let (status, _) = get(server.addr, path).await;
        assert_eq!(status, 500, "{path}");
        let (status, body) = get(server.addr, "/after").await;
        assert_eq!(
            (status, body.as_str()),
            (200, "Hello from Kelp over wasi:http\n/after\n"),
            "after {path}"
        );
    }
    let log = std::fs::read_to_string(&server.log_path).unwrap();
    assert!(log.contains("kelp: request GET /trap failed"), "{log}");
    assert!(
        log.contains("kelp: request GET /hog failed: OOMKilled"),
        "{log}"
    );
    assert!(log.contains("kelp: request GET /spin failed"), "{log}");

    server.stop.stop();
    let st = tokio::time::timeout(PATIENCE, server.task)
        .await
        .expect("serve returns after stop")
        .unwrap()
        .unwrap();
    assert_eq!((st.code, st.reason), (0, ExitReason::Completed));
    assert!(
        tokio::net::TcpStream::connect(server.addr).await.is_err(),
        "no longer listening"
    );
}

/// A stop while a handler spins (with no deadline of its own) interrupts it once the
/// shutdown grace is over, and serve returns with idle keep-alive connections still
/// open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_interrupts_in_flight_requests() {
    let dir = tempfile::tempdir().unwrap();
    let engine = WasmEngine::new(None).unwrap();
    let spec = spec(dir.path());
    let gauge = spec.memory.clone();
    let server = start(&engine, spec).await;

    // An idle keep-alive connection.
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut idle, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = idle
        .send_request(
            hyper::Request::get("/idle")
                .header("host", "x")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    // The gauge sums the memory of in-flight request instances: zero once /idle's is gone.
    wait_until("the /idle instance to be dropped", || gauge.used() == 0).await;

    let spinning = {
        let addr = server.addr;
        tokio::spawn(async move {
            // Any failure (even connecting, had the stop come first) is an Err.
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| e.to_string())?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let req = hyper::Request::get("/spin")
                .header("host", "x")
                .body(Empty::<Bytes>::new())
                .unwrap();
            sender
                .send_request(req)
                .await
                .map(|r| r.status().as_u16())
                .map_err(|e| e.to_string())
        })
    };
    // The spinning request's instance is alive (it holds memory) until stopped.
    wait_until("the /spin request to be in the guest", || gauge.used() > 0).await;
    server.stop.stop();
    let st = tokio::time::timeout(PATIENCE, server.task)
        .await
        .expect("serve returns after stop")
        .unwrap()
        .unwrap();
    assert_eq!(st.code, 0);
    // The spinning request ends too: a 500, or the connection closed under it.
    let r = tokio::time::timeout(PATIENCE, spinning)
        .await
        .expect("the spinning request ends")
        .unwrap();
    assert!(matches!(r, Ok(500) | Err(_)), "{r:?}");
}

/// A pod's outgoing requests: a destination on this host sees the pod's address as
/// the peer (the connection leaves from it), and an `https` name resolves through
/// the pod's DNS, its TLS handshake naming the host as the module wrote it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_requests_leave_from_the_pod_address_and_resolve_https_names_by_pod_dns() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pod_ip: std::net::IpAddr = "127.0.0.77".parse().unwrap();

    // A plain HTTP backend recording who connects.
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_port = backend.local_addr().unwrap().port();
    let (peers_tx, mut peers) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = backend.accept().await {
            let _ = peers_tx.send(peer.ip());
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nconnection: close\r\n\r\nbackend",
                )
                .await;
        }
    });
    // A TLS endpoint that reads the ClientHello: (peer, server name) of each.
    let tls = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_port = tls.local_addr().unwrap().port();
    let (hellos_tx, mut hellos) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, peer)) = tls.accept().await {
            let acceptor =
                tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), s);
            if let Ok(start) = acceptor.await {
                let name = start.client_hello().server_name().map(String::from);
                let _ = hellos_tx.send((peer.ip(), name));
            }
        }
    });
    let dns = kelp_cri_api::v1::DnsConfig {
        servers: vec![dns::server(vec![(
            "secure.shop.svc.cluster.local.",
            std::net::Ipv4Addr::LOCALHOST,
        )])
        .to_string()],
        searches: vec!["shop.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    };

    let dir = tempfile::tempdir().unwrap();
    let engine = WasmEngine::new(None).unwrap();
    let mut s = spec(dir.path());
    s.allow_network = true;
    s.resolver = kelp_runtime_wasm::dns::PodResolver::from_cri(&dns).map(std::sync::Arc::new);
    s.origin = Some(kelp_runtime_wasm::outbound::Origin {
        ip: pod_ip,
        cluster: std::sync::Arc::from([]),
    });
    let server = start(&engine, s).await;

    let (status, body) = get(server.addr, &format!("/fetch/127.0.0.1:{backend_port}/x")).await;
    assert_eq!((status, body.as_str()), (200, "backend"));
    assert_eq!(peers.recv().await, Some(pod_ip), "the backend's peer");

    let (status, body) = get(server.addr, &format!("/fetch-tls/secure:{tls_port}/x")).await;
    // The handshake fails (the endpoint has no certificate); it reached the address
    // cluster DNS gave the short name, from the pod's address, naming `secure`.
    assert_eq!(status, 502, "{body}");
    let hello = tokio::time::timeout(PATIENCE, hellos.recv()).await.unwrap();
    assert_eq!(hello, Some((pod_ip, Some("secure".to_string()))), "{body}");
    server.stop.stop();
}
