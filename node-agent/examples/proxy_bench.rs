//! The proxy's data path against a direct connection, same run, same machine:
//! requests/s and latency (p50/p99) of small HTTP/1.1 keep-alive exchanges over 64
//! connections, and one bulk TCP stream's throughput.
//!
//! `cargo run --release -p kelp-node-agent --example proxy_bench [-- SECONDS [bulk] [busy=MICROSECONDS]]`
//! (`bulk`: only the bulk streams, three rounds; `latency`: only one connection's
//! request latency, the paths taking turns request by request (`latency solo`: each
//! path in a phase of its own), three rounds; `requests`: only requests/s, three rounds; `busy=N`: the proxy busy-polls for
//! N µs after each thread's last event, and HAProxy runs with `busy-polling`;
//! `threads=N`: the proxy's threads, one per core by default; `cc=ALGORITHM`: the
//! congestion control of bulk streams' local hops, cubic by default, `cc=` for the
//! system's)
//!
//! The backend is a minimal HTTP/1.1 server in this process on a tokio runtime of its
//! own, as a server process would be (until 2026-12-02 it shared the load generator's:
//! a direct exchange then never woke a sleeping thread, and each proxy hop was charged
//! the wake-ups a direct connection between two processes pays too). The proxy is the
//! real data plane (`kelp_node_agent::proxy::{DataPlane, listen_tcp}`: one thread per
//! core, a SO_REUSEPORT listener on each) with a one-endpoint set. The peer is HAProxy
//! (`apt-get install haproxy`) in TCP mode forwarding the same traffic to the same
//! backend, started by the benchmark when `haproxy` is on PATH, with as many threads
//! as the machine has cores.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kelp_node_agent::proxy::balancer::{Backends, Balancer};
use kelp_node_agent::proxy::metrics::Metrics;
use kelp_node_agent::proxy::{listen_tcp, DataPlane, PlaneConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: text/plain\r\n\r\nhello";
const REQUEST: &[u8] = b"GET /bench HTTP/1.1\r\nhost: bench\r\n\r\n";
const CONNECTIONS: usize = 64;

/// Answers every request with RESPONSE; a connection whose first byte is `B` is a
/// bulk stream and is drained instead. Runs on `rt`.
fn backend(rt: &tokio::runtime::Runtime) -> SocketAddr {
    let _on = rt.enter();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let l = TcpListener::from_std(l).unwrap();
    rt.spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut pending = 0usize;
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if buf[0] == b'B' && pending == 0 {
                        // Bulk: drain to EOF.
                        loop {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(_) => {}
                            }
                        }
                    }
                    // Requests end with an empty line; count them in what arrived.
                    pending += buf[..n].windows(4).filter(|w| w == b"\r\n\r\n").count();
                    while pending > 0 {
                        if s.write_all(RESPONSE).await.is_err() {
                            return;
                        }
                        pending -= 1;
                    }
                }
            });
        }
    });
    addr
}

/// The proxy's data plane as a node agent runs it (threads of its own, as HAProxy
/// runs in a process of its own with one thread per core): it competes with the load
/// generator and the backend for the CPUs, not for their runtime's queues. The plane
/// is returned to be kept alive for the run.
fn proxy(to: SocketAddr, plane: PlaneConfig) -> (SocketAddr, DataPlane) {
    let plane = DataPlane::start(plane).unwrap();
    let b = Arc::new(Balancer::new(Backends {
        addrs: vec![to],
        affinity: None,
    }));
    let m = Metrics::default().port("bench", "bench");
    let (addr, tasks) = listen_tcp(&plane, "127.0.0.1:0".parse().unwrap(), &b, &m).unwrap();
    drop(tasks); // detached: they run until the plane stops
    (addr, plane)
}

struct Rr {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

async fn requests(addr: SocketAddr, secs: f64) -> Rr {
    requests_over(addr, secs, CONNECTIONS).await
}

/// One request and its whole response; how long it took.
async fn exchange(s: &mut TcpStream, buf: &mut [u8]) -> Duration {
    let t = Instant::now();
    s.write_all(REQUEST).await.unwrap();
    let mut got = 0;
    while got < RESPONSE.len() {
        let n = s.read(buf).await.unwrap();
        assert!(n > 0, "connection closed");
        got += n;
    }
    t.elapsed()
}

async fn requests_over(addr: SocketAddr, secs: f64, connections: usize) -> Rr {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = vec![];
    for _ in 0..connections {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            let mut lat = Vec::with_capacity(100_000);
            let mut buf = [0u8; 512];
            while Instant::now() < end {
                lat.push(exchange(&mut s, &mut buf).await);
            }
            lat
        }));
    }
    let start = Instant::now();
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let took = start.elapsed().as_secs_f64();
    all.sort();
    let q = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Rr {
        rps: all.len() as f64 / took,
        p50: q(0.50),
        p99: q(0.99),
    }
}

/// One request at a time over one connection per path, the paths taking turns
/// request by request, so that every path sees the same moments of the machine (a
/// VM's stalls move p99 more than a hop does; phases run one after another caught
/// different stalls). (p50, p99) per path.
async fn interleaved(addrs: &[SocketAddr], secs: f64) -> Vec<(Duration, Duration)> {
    let mut conns = Vec::new();
    for a in addrs {
        let s = TcpStream::connect(a).await.unwrap();
        s.set_nodelay(true).unwrap();
        conns.push(s);
    }
    let mut lats = vec![Vec::with_capacity(100_000); addrs.len()];
    let mut buf = [0u8; 512];
    let end = Instant::now() + Duration::from_secs_f64(secs * addrs.len() as f64);
    while Instant::now() < end {
        for (s, lat) in conns.iter_mut().zip(&mut lats) {
            lat.push(exchange(s, &mut buf).await);
        }
    }
    lats.into_iter()
        .map(|mut l| {
            l.sort();
            let q = |p: f64| l[((l.len() as f64 * p) as usize).min(l.len() - 1)];
            (q(0.50), q(0.99))
        })
        .collect()
}

/// MiB/s of one stream writing `bytes` to the draining backend.
async fn bulk(addr: SocketAddr, bytes: usize) -> f64 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let chunk = vec![b'B'; 256 * 1024];
    let start = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        s.write_all(&chunk).await.unwrap();
        sent += chunk.len();
    }
    s.shutdown().await.unwrap();
    // Wait for the far end to close (everything drained).
    let mut b = [0u8; 16];
    let _ = s.read(&mut b).await;
    sent as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64()
}

/// A phase of the benchmark, run against one address.
enum Phase {
    /// Seconds, connections.
    Requests(f64, usize),
    /// Bytes.
    Bulk(usize),
}

enum Measured {
    Rr(Rr),
    Bulk(f64),
}

impl Phase {
    async fn run(self, addr: SocketAddr) -> Measured {
        match self {
            Phase::Requests(secs, connections) => {
                Measured::Rr(requests_over(addr, secs, connections).await)
            }
            Phase::Bulk(bytes) => Measured::Bulk(bulk(addr, bytes).await),
        }
    }
}

impl Measured {
    fn rr(self) -> Rr {
        match self {
            Measured::Rr(r) => r,
            Measured::Bulk(_) => unreachable!("a requests phase"),
        }
    }
}

/// HAProxy in TCP mode in front of `to`, on a free port; killed on drop.
struct Haproxy {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: std::path::PathBuf,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

async fn haproxy(to: SocketAddr, threads: usize, busy: bool) -> Option<Haproxy> {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
        l.local_addr().ok()?.port()
    };
    let dir = std::env::temp_dir().join(format!("proxy-bench-haproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 4000\n  nbthread {threads}\n{}\ndefaults\n  mode tcp\n  \
             timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\n\
             frontend bench\n  bind 127.0.0.1:{port}\n  default_backend endpoints\n\n\
             backend endpoints\n  server e1 {to}\n",
            if busy { "  busy-polling\n" } else { "" }
        ),
    )
    .ok()?;
    let child = std::process::Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().ok()?;
    let h = Haproxy {
        child,
        addr,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            eprintln!("haproxy never listened on {addr}");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some(h)
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// `a - b` in µs, negative when the path through a proxy was faster.
fn signed_us(a: Duration, b: Duration) -> String {
    format!("{:+.0} µs", (a.as_secs_f64() - b.as_secs_f64()) * 1e6)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let secs: f64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let bulk_only = args.iter().any(|a| a == "bulk");
    let latency_only = args.iter().any(|a| a == "latency");
    let requests_only = args.iter().any(|a| a == "requests");
    let busy_poll = args
        .iter()
        .find_map(|a| a.strip_prefix("busy="))
        .map(|us| Duration::from_micros(us.parse().expect("busy=MICROSECONDS")));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let backend_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name("backend")
        .enable_all()
        .build()
        .unwrap();
    let direct = backend(&backend_runtime);
    let threads = args
        .iter()
        .find_map(|a| a.strip_prefix("threads="))
        .map_or(cores, |n| n.parse().expect("threads=N"));
    // As agents run it: local hops of bulk streams on cubic unless `cc=ALGORITHM`
    // (`cc=`: the system's congestion control throughout).
    let local_congestion_control = args
        .iter()
        .find_map(|a| a.strip_prefix("cc="))
        .map_or(Some("cubic".to_string()), |cc| {
            Some(cc.to_string()).filter(|c| !c.is_empty())
        });
    println!(
        "proxy: {threads} threads, local hops' congestion control {}",
        local_congestion_control
            .as_deref()
            .unwrap_or("(the system's)")
    );
    let (proxied, proxy_plane) = proxy(
        direct,
        PlaneConfig {
            threads,
            busy_poll,
            local_congestion_control,
        },
    );
    if let Some(w) = busy_poll {
        println!("busy polling: Kelp for {w:?} after each event, HAProxy `busy-polling`");
    }

    let busy = busy_poll.is_some();
    let have_peer = haproxy(direct, cores, busy).await.is_some();
    if !have_peer {
        eprintln!("no HAProxy peer figures (is haproxy installed? apt-get install haproxy)");
    }
    // HAProxy is started for each of its phases alone: with busy-polling it spins even
    // when idle, and would slow the phases of the others.
    let peer = async |phase: Phase| {
        if !have_peer {
            return None;
        }
        let h = haproxy(direct, cores, busy).await?;
        requests(h.addr, 0.3).await;
        Some(phase.run(h.addr).await)
    };

    if bulk_only {
        // Only the bulk streams, three rounds (the figure moves with the machine).
        for round in 1..=3 {
            let bytes = 2 << 30;
            let bd = bulk(direct, bytes).await;
            let bp = bulk(proxied, bytes).await;
            let bh = match peer(Phase::Bulk(bytes)).await {
                Some(Measured::Bulk(b)) => b,
                _ => 0.0,
            };
            println!(
                "bulk round {round}: direct {bd:.0} MiB/s, proxy {bp:.0} MiB/s ({:.0}%), HAProxy {bh:.0} MiB/s ({:.0}%)",
                100.0 * bp / bd,
                100.0 * bh / bd
            );
        }
        drop(proxy_plane);
        backend_runtime.shutdown_background();
        return;
    }
    if requests_only {
        // Only requests/s over 64 connections, three rounds.
        requests(direct, 0.3).await;
        requests(proxied, 0.3).await;
        for round in 1..=3 {
            let d = requests(direct, secs).await;
            let p = requests(proxied, secs).await;
            let h = peer(Phase::Requests(secs, CONNECTIONS))
                .await
                .map(Measured::rr);
            let hs = h.map_or("-".to_string(), |h| {
                format!("{:.0} ({:.2}x)", h.rps, p.rps / h.rps)
            });
            println!(
                "requests round {round}, requests/s: direct {:.0}, proxy {:.0}, HAProxy {hs}",
                d.rps, p.rps
            );
        }
        drop(proxy_plane);
        backend_runtime.shutdown_background();
        return;
    }
    if latency_only {
        // One connection per path, the paths interleaved request by request; three
        // rounds. HAProxy runs for the whole of it.
        let h = if have_peer {
            haproxy(direct, cores, busy).await
        } else {
            None
        };
        let mut addrs = vec![direct, proxied];
        addrs.extend(h.as_ref().map(|h| h.addr));
        interleaved(&addrs, 0.3).await;
        // `solo`: each path in a phase of its own instead (a lone request on an
        // otherwise idle machine, as the benchmark measured until 2026-12-02).
        let solo = args.iter().any(|a| a == "solo");
        for round in 1..=3 {
            let r = if solo {
                let mut r = Vec::new();
                for a in &addrs {
                    r.push(interleaved(&[*a], secs).await[0]);
                }
                r
            } else {
                interleaved(&addrs, secs).await
            };
            let ((d50, d99), (p50, p99)) = (r[0], r[1]);
            let hs = r.get(2).map_or("-".to_string(), |&(h50, h99)| {
                format!(
                    "{} / {} (added {} / {})",
                    us(h50),
                    us(h99),
                    signed_us(h50, d50),
                    signed_us(h99, d99)
                )
            });
            println!(
                "latency round {round}, p50 / p99: direct {} / {}, proxy {} / {} (added {} / {}), HAProxy {hs}",
                us(d50),
                us(d99),
                us(p50),
                us(p99),
                signed_us(p50, d50),
                signed_us(p99, d99),
            );
        }
        drop(h);
        drop(proxy_plane);
        backend_runtime.shutdown_background();
        return;
    }
    // Warm every path.
    requests(direct, 0.5).await;
    requests(proxied, 0.5).await;
    let d = requests(direct, secs).await;
    let p = requests(proxied, secs).await;
    let hp = peer(Phase::Requests(secs, CONNECTIONS))
        .await
        .map(Measured::rr);
    // Per-hop latency without queueing: one connection, one request at a time.
    let d1 = requests_over(direct, secs, 1).await;
    let p1 = requests_over(proxied, secs, 1).await;
    let h1 = peer(Phase::Requests(secs, 1)).await.map(Measured::rr);
    let bytes = 2 << 30;
    let bd = bulk(direct, bytes).await;
    let bp = bulk(proxied, bytes).await;
    let bh = match peer(Phase::Bulk(bytes)).await {
        Some(Measured::Bulk(b)) => Some(b),
        _ => None,
    };

    println!("proxy_bench: {CONNECTIONS} keep-alive connections, {secs} s each, {cores} cores");
    println!("| path | requests/s | p50 | p99 |");
    println!("|---|---|---|---|");
    println!("| direct | {:.0} | {} | {} |", d.rps, us(d.p50), us(d.p99));
    println!(
        "| through the proxy | {:.0} | {} | {} |",
        p.rps,
        us(p.p50),
        us(p.p99)
    );
    if let Some(h) = &hp {
        println!(
            "| through HAProxy (peer) | {:.0} | {} | {} |",
            h.rps,
            us(h.p50),
            us(h.p99)
        );
    }
    println!(
        "proxy/direct requests/s: {:.0}%; added latency p50 {}, p99 {}",
        100.0 * p.rps / d.rps,
        us(p.p50.saturating_sub(d.p50)),
        us(p.p99.saturating_sub(d.p99))
    );
    println!(
        "one connection, one request at a time: direct p50 {} p99 {}; proxy p50 {} p99 {} \
         (added p50 {}, p99 {})",
        us(d1.p50),
        us(d1.p99),
        us(p1.p50),
        us(p1.p99),
        us(p1.p50.saturating_sub(d1.p50)),
        us(p1.p99.saturating_sub(d1.p99))
    );
    if let Some(h) = &h1 {
        println!(
            "one connection through HAProxy: p50 {} p99 {} (added p50 {}, p99 {})",
            us(h.p50),
            us(h.p99),
            us(h.p50.saturating_sub(d1.p50)),
            us(h.p99.saturating_sub(d1.p99))
        );
    }
    println!(
        "one bulk stream (2 GiB): direct {bd:.0} MiB/s, through the proxy {bp:.0} MiB/s ({:.0}%)",
        100.0 * bp / bd
    );
    if let (Some(h), Some(bh)) = (&hp, bh) {
        println!(
            "proxy/HAProxy requests/s: {:.2}x; HAProxy added latency p50 {}, p99 {}; \
             HAProxy bulk {bh:.0} MiB/s ({:.0}% of direct)",
            p.rps / h.rps,
            us(h.p50.saturating_sub(d.p50)),
            us(h.p99.saturating_sub(d.p99)),
            100.0 * bh / bd
        );
    }
    drop(proxy_plane);
    backend_runtime.shutdown_background();
}
