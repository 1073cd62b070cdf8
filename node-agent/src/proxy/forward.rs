//! The data path: TCP connections spliced to an endpoint, UDP datagrams relayed
//! through one upstream socket per client. Connections outlive their listener and
//! endpoint set: an endpoint leaving the set only stops new connections to it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tracing::debug;

use super::balancer::Balancer;
use super::metrics::PortMetrics;
use super::plane::{DataPlane, Forwarding};

/// How long a TCP connect to an endpoint may take before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Listens on `addr` from every data-plane thread — one socket per thread in a
/// SO_REUSEPORT group, so the kernel spreads connections and each stays on the thread
/// that took it — and returns the accept loops and the address. Sockets are bound
/// here, so a taken port is an error now, not in a task. Port 0: one free port for all.
///
/// A SO_REUSEPORT group would also take in another process's socket (the proxy of a
/// second cluster on this machine) and share the connections with it, so the address
/// is first bound alone: held by anyone else, it fails as without the group. (Two
/// proxies opening the same address in the same microseconds could still both get
/// in.)
pub fn listen_tcp(
    plane: &DataPlane,
    addr: SocketAddr,
    balancer: &Arc<Balancer>,
    metrics: &Arc<PortMetrics>,
) -> std::io::Result<(SocketAddr, Vec<JoinHandle<()>>)> {
    let group = plane.len() > 1;
    let socket = || -> std::io::Result<TcpSocket> {
        let s = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        s.set_reuseaddr(true)?;
        Ok(s)
    };
    let mut addr = addr;
    if group {
        let alone = socket()?;
        alone.bind(addr)?;
        addr = alone.local_addr()?;
    }
    let mut listeners = Vec::with_capacity(plane.len());
    for rt in plane.handles() {
        let s = socket()?;
        s.set_reuseport(group)?;
        s.bind(addr)?;
        addr = s.local_addr()?;
        let _on = rt.enter(); // registered with that thread's reactor
        listeners.push((rt, s.listen(1024)?));
    }
    let tasks = listeners
        .into_iter()
        .map(|(rt, l)| {
            rt.spawn(serve_tcp(
                l,
                balancer.clone(),
                metrics.clone(),
                plane.forwarding().clone(),
            ))
        })
        .collect();
    Ok((addr, tasks))
}

/// Accepts on `listener` forever, one task per connection.
pub async fn serve_tcp(
    listener: TcpListener,
    balancer: Arc<Balancer>,
    metrics: Arc<PortMetrics>,
    forwarding: Forwarding,
) {
    loop {
        let (inbound, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        super::plane::note_activity();
        let balancer = balancer.clone();
        let metrics = metrics.clone();
        let forwarding = forwarding.clone();
        tokio::spawn(async move {
            metrics.accepted.fetch_add(1, Ordering::Relaxed);
            let Some(mut outbound) = connect(&balancer, peer).await else {
                metrics.failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let mut inbound = inbound;
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            metrics.active.fetch_add(1, Ordering::Relaxed);
            let cc = forwarding.local_congestion.as_deref();
            let forwarded = super::splice::bidirectional(&mut inbound, &mut outbound, cc);
            if let Ok((up, down)) = forwarded.await {
                metrics.bytes.fetch_add(up + down, Ordering::Relaxed);
            }
            metrics.active.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Connects to an endpoint for `peer`, trying each endpoint once when connects fail
/// (an endpoint that just went away, before its EndpointSlice said so).
async fn connect(balancer: &Balancer, peer: SocketAddr) -> Option<TcpStream> {
    let tries = balancer.backends().addrs.len();
    for skip in 0..tries {
        let addr = balancer.pick(peer.ip(), skip, Instant::now())?;
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Some(s),
            Ok(Err(e)) => debug!(endpoint = %addr, error = %e, "endpoint refused; trying the next"),
            Err(_) => debug!(endpoint = %addr, "endpoint connect timed out; trying the next"),
        }
        balancer.forget(peer.ip(), addr);
    }
    None
}

/// One client's UDP flow: an upstream socket connected to its endpoint.
struct UdpSession {
    upstream: Arc<UdpSocket>,
    last: Mutex<Instant>,
}

/// Relays datagrams arriving on `socket`: each client gets an upstream socket to one
/// endpoint (chosen like a TCP connection) whose replies go back from `socket`;
/// sessions idle longer than `idle` end.
pub async fn serve_udp(
    socket: UdpSocket,
    balancer: Arc<Balancer>,
    metrics: Arc<PortMetrics>,
    idle: Duration,
) {
    let socket = Arc::new(socket);
    let sessions: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSession>>>> = Arc::default();
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        super::plane::note_activity();
        let existing = sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .cloned();
        let session = match existing {
            Some(s) => s,
            None => {
                let Some(s) = open_udp(&balancer, peer).await else {
                    metrics.failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                metrics.accepted.fetch_add(1, Ordering::Relaxed);
                let s = Arc::new(s);
                sessions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(peer, s.clone());
                tokio::spawn(relay_back(
                    socket.clone(),
                    s.clone(),
                    peer,
                    sessions.clone(),
                    idle,
                ));
                s
            }
        };
        *session.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        if session.upstream.send(&buf[..n]).await.is_ok() {
            metrics.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

async fn open_udp(balancer: &Balancer, peer: SocketAddr) -> Option<UdpSession> {
    let addr = balancer.pick(peer.ip(), 0, Instant::now())?;
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid")
    } else {
        "[::]:0".parse().expect("valid")
    };
    let upstream = UdpSocket::bind(bind).await.ok()?;
    upstream.connect(addr).await.ok()?;
    Some(UdpSession {
        upstream: Arc::new(upstream),
        last: Mutex::new(Instant::now()),
    })
}

async fn relay_back(
    socket: Arc<UdpSocket>,
    session: Arc<UdpSession>,
    peer: SocketAddr,
    sessions: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSession>>>>,
    idle: Duration,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        match tokio::time::timeout(idle, session.upstream.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                super::plane::note_activity();
                let _ = socket.send_to(&buf[..n], peer).await;
            }
            Ok(Err(_)) => {} // ICMP unreachable from the endpoint: keep listening
            Err(_) => {
                let last = *session.last.lock().unwrap_or_else(|e| e.into_inner());
                if last.elapsed() >= idle {
                    break;
                }
            }
        }
    }
    sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&peer);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::balancer::Backends;
    use crate::proxy::metrics::Metrics;
    use crate::proxy::plane::PlaneConfig;
    use std::io::{Read, Write};

    fn plane() -> DataPlane {
        DataPlane::start(PlaneConfig {
            threads: 2,
            ..PlaneConfig::default()
        })
        .unwrap()
    }

    fn balancer(to: SocketAddr) -> Arc<Balancer> {
        Arc::new(Balancer::new(Backends {
            addrs: vec![to],
            affinity: None,
        }))
    }

    #[test]
    fn every_thread_listens_and_forwards() {
        let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to = backend.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in backend.incoming() {
                let mut s = s.unwrap();
                std::thread::spawn(move || {
                    let mut b = [0u8; 64];
                    while let Ok(n) = s.read(&mut b) {
                        if n == 0 || s.write_all(&b[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let plane = plane();
        let m = Metrics::default().port("t", "t");
        let (addr, tasks) =
            listen_tcp(&plane, "127.0.0.1:0".parse().unwrap(), &balancer(to), &m).unwrap();
        assert_eq!(tasks.len(), 2, "one accept loop per thread");
        for i in 0..20u8 {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.write_all(&[i; 3]).unwrap();
            let mut got = [0u8; 3];
            c.read_exact(&mut got).unwrap();
            assert_eq!(got, [i; 3]);
        }
        assert_eq!(m.accepted.load(Ordering::Relaxed), 20);
    }

    #[test]
    fn an_address_another_process_holds_is_refused_even_to_a_reuseport_group() {
        let ours = plane();
        let m = Metrics::default().port("t", "t");
        let b = balancer("127.0.0.1:9".parse().unwrap());
        // A plain listener elsewhere.
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = other.local_addr().unwrap();
        let err = listen_tcp(&ours, taken, &b, &m).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        // Another proxy's SO_REUSEPORT group (a second cluster on this machine): it
        // must not be joined, or connections would be shared between the two.
        let other_plane = plane();
        let (theirs, _tasks) =
            listen_tcp(&other_plane, "127.0.0.1:0".parse().unwrap(), &b, &m).unwrap();
        let err = listen_tcp(&ours, theirs, &b, &m).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    }
}
