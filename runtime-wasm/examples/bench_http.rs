//! wasi:http serving throughput and memory, printed as figures (docs/benchmarks.md,
//! "Wasm runtime").
//!
//! 1. requests/s and latency percentiles of `http::serve` against a raw
//!    wasmtime-wasi-http hyper loop (the peer: the crate's documented serving loop,
//!    same component, same engine) with N concurrent keep-alive clients, measured
//!    in alternating one-second windows, for the on-demand and the pooling instance
//!    allocator;
//! 2. host memory per idle wasi:http server: RSS (and PSS) growth for 1,000 servers
//!    of the same image (as the pods of one Deployment), each getting its component
//!    from `WasmEngine::compile` as the CRI does per container (so they share one
//!    compiled component and `ProxyPre` through the engine's artifact cache) and
//!    having served one request, divided by 1,000 (on-demand allocator, or the
//!    pooling one with `--pooling`).
//!
//! ```sh
//! scripts/build-wasm-examples.sh
//! cargo run --release -p kelp-runtime-wasm --example bench_http -- [--clients 32] [--seconds 5] [--servers 1000] [--pooling]
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use kelp_runtime_wasm::http::serve_on;
use kelp_runtime_wasm::{Allocation, Artifact, ContainerSpec, StopHandle, WasmEngine};
use tokio::net::TcpListener;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::Store;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn component_bytes() -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/wasm/target/wasm32-wasip2/release/http_hello.wasm");
    std::fs::read(&p)
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/build-wasm-examples.sh", p.display()))
}

/// (VmRSS, Pss) of this process in bytes.
fn memory() -> (u64, u64) {
    let field = |text: &str, name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    (field(&status, "VmRSS:"), field(&rollup, "Pss:"))
}

// ---- the peer: wasmtime-wasi-http's documented serving loop -------------------------

struct RawHost {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
}

impl WasiView for RawHost {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for RawHost {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: Default::default(),
        }
    }
}

async fn raw_handle(
    pre: ProxyPre<RawHost>,
    req: hyper::Request<hyper::body::Incoming>,
) -> wasmtime::Result<hyper::Response<HyperOutgoingBody>> {
    let mut store = Store::new(
        pre.engine(),
        RawHost {
            wasi: WasiCtx::builder().build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
        },
    );
    // The engine interrupts on epochs; the peer never wants that.
    store.set_epoch_deadline(u64::MAX / 2);
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let req = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, req)?;
    let out = store.data_mut().http().new_response_outparam(sender)?;
    let task = tokio::spawn(async move {
        let proxy = pre.instantiate_async(&mut store).await?;
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, req, out)
            .await
    });
    match receiver.await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => {
            let e = match task.await {
                Ok(Ok(())) => wasmtime::Error::msg("no response"),
                Ok(Err(e)) => e,
                Err(e) => e.into(),
            };
            Err(e)
        }
    }
}

async fn raw_serve(engine: wasmtime::Engine, component: Component, listener: TcpListener) {
    let mut linker: Linker<RawHost> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).unwrap();
    let pre = ProxyPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
    loop {
        let (sock, _) = listener.accept().await.unwrap();
        let _ = sock.set_nodelay(true);
        let pre = pre.clone();
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(
                    TokioIo::new(sock),
                    hyper::service::service_fn(move |req| raw_handle(pre.clone(), req)),
                )
                .await;
        });
    }
}

// ---- load ----------------------------------------------------------------------------

#[derive(Default)]
struct Load {
    /// Latency of every successful request.
    lat: Vec<Duration>,
    errors: u64,
    secs: f64,
}

impl Load {
    fn add(&mut self, other: Load) {
        self.lat.extend(other.lat);
        self.errors += other.errors;
        self.secs += other.secs;
    }

    fn pct(&mut self, p: f64) -> Duration {
        self.lat.sort();
        self.lat
            .get(((self.lat.len() as f64 * p) as usize).min(self.lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    }
}

async fn load(addr: SocketAddr, clients: u64, dur: Duration) -> Load {
    let start = Instant::now();
    let deadline = start + dur;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                let _ = stream.set_nodelay(true);
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                let mut lat = Vec::new();
                let mut errors = 0u64;
                // At least one request, then until the deadline.
                loop {
                    let t = Instant::now();
                    let req = hyper::Request::get("/bench")
                        .header("host", "bench")
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    match sender.send_request(req).await {
                        Ok(resp) => {
                            let ok = resp.status() == 200;
                            let body = resp.into_body().collect().await;
                            if ok && body.is_ok() {
                                lat.push(t.elapsed());
                            } else {
                                errors += 1;
                            }
                        }
                        Err(_) => {
                            errors += 1;
                            break;
                        }
                    }
                    if Instant::now() >= deadline {
                        break;
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    Load {
        lat: all,
        errors,
        secs: start.elapsed().as_secs_f64(),
    }
}

fn row(name: &str, l: &mut Load) -> f64 {
    let rps = l.lat.len() as f64 / l.secs;
    let (p50, p99) = (l.pct(0.50), l.pct(0.99));
    println!(
        "| {name} | {rps:.0} | {:.2} ms | {:.2} ms | {} |",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        l.errors
    );
    rps
}

async fn throughput(clients: u64, secs: u64) {
    let bytes = component_bytes();
    println!(
        "## wasi:http throughput: {clients} keep-alive clients, {secs} s each, in alternating 1 s windows\n"
    );
    println!("| server | requests/s | p50 | p99 | errors |");
    println!("|---|---|---|---|---|");
    for (label, allocation) in [
        ("on-demand", Allocation::OnDemand),
        ("pooling", Allocation::Pooling { instances: 1000 }),
    ] {
        let engine = WasmEngine::with_allocation(None, allocation).unwrap();
        let Artifact::Component(component) = engine.compile(&bytes).unwrap() else {
            panic!("http_hello is a component")
        };
        let dir = tempfile::tempdir().unwrap();
        let spec = ContainerSpec {
            args: vec!["http-hello".into()],
            memory_limit: Some(128 << 20),
            log_path: dir.path().join("http.log"),
            ..Default::default()
        };

        // Both servers up at once, each warmed up, then measured in alternating
        // one-second windows (the machine is shared: its load drifts, and
        // interleaving gives both servers the same share of it).
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let kelp_addr = listener.local_addr().unwrap();
        let stop = StopHandle::default();
        let server = {
            let (engine, component, spec, stop) = (
                engine.clone(),
                component.clone(),
                spec.clone(),
                stop.clone(),
            );
            tokio::spawn(async move { serve_on(&engine, component, listener, &spec, stop).await })
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer_addr = listener.local_addr().unwrap();
        let raw = tokio::spawn(raw_serve(
            engine.engine().clone(),
            component.clone(),
            listener,
        ));
        let window = Duration::from_secs(1);
        load(kelp_addr, clients, window).await;
        load(peer_addr, clients, window).await;
        let (mut kelp, mut peer) = (Load::default(), Load::default());
        for round in 0..secs {
            if round % 2 == 0 {
                kelp.add(load(kelp_addr, clients, window).await);
                peer.add(load(peer_addr, clients, window).await);
            } else {
                peer.add(load(peer_addr, clients, window).await);
                kelp.add(load(kelp_addr, clients, window).await);
            }
        }
        stop.stop();
        let _ = server.await;
        raw.abort();

        let k = row(&format!("Kelp `http::serve` ({label})"), &mut kelp);
        let p = row(
            &format!("raw wasmtime-wasi-http loop, peer ({label})"),
            &mut peer,
        );
        println!("| Kelp / peer ({label}) | **{:.2}×** | | | |", k / p);
    }
    println!();
}

async fn idle_memory(servers: u64, label: &str, allocation: Allocation) {
    let bytes = component_bytes();
    let cache = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let engine = WasmEngine::with_allocation(Some(cache.path()), allocation).unwrap();
    // Fill the compile caches and warm the runtime before the baseline: the one copy
    // of the compiled image a node holds whatever its number of pods is not counted.
    drop(engine.compile(&bytes).unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (rss0, pss0) = memory();
    let mut stops = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..servers {
        let Artifact::Component(component) = engine.compile(&bytes).unwrap() else {
            panic!("http_hello is a component")
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(listener.local_addr().unwrap());
        let spec = ContainerSpec {
            args: vec!["http-hello".into()],
            memory_limit: Some(128 << 20),
            log_path: logs.path().join(format!("{i}.log")),
            ..Default::default()
        };
        let stop = StopHandle::default();
        stops.push(stop.clone());
        let engine = engine.clone();
        tokio::spawn(async move { serve_on(&engine, component, listener, &spec, stop).await });
    }
    // Each serves one request, then sits idle.
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for chunk in addrs.chunks(50) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|&addr| {
                let served = served.clone();
                tokio::spawn(async move {
                    let l = load(addr, 1, Duration::ZERO).await;
                    if l.errors == 0 {
                        served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss1, pss1) = memory();
    println!(
        "{label}: {servers} servers ({} served a request): RSS +{:.1} MiB = **{:.1} KiB per idle server** (PSS +{:.1} MiB = {:.1} KiB)\n",
        served.load(std::sync::atomic::Ordering::Relaxed),
        (rss1.saturating_sub(rss0)) as f64 / (1 << 20) as f64,
        (rss1.saturating_sub(rss0)) as f64 / 1024.0 / servers as f64,
        (pss1.saturating_sub(pss0)) as f64 / (1 << 20) as f64,
        (pss1.saturating_sub(pss0)) as f64 / 1024.0 / servers as f64,
    );
    for s in stops {
        s.stop();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::main]
async fn main() {
    let clients = arg("--clients", 32);
    let secs = arg("--seconds", 5);
    let servers = arg("--servers", 1000);
    // Memory first, on a fresh process heap.
    println!("## Idle wasi:http servers\n");
    // One allocator per process, so neither measurement inherits the other's heap.
    if std::env::args().any(|a| a == "--pooling") {
        idle_memory(servers, "pooling", Allocation::Pooling { instances: 1000 }).await;
    } else {
        idle_memory(servers, "on-demand", Allocation::OnDemand).await;
    }
    throughput(clients, secs).await;
}
