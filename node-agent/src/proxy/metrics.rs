//! Per-listener counters, rendered in the Prometheus text format (served on
//! `--metrics-bind-address` when given).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Debug, Default)]
pub struct PortMetrics {
    pub accepted: AtomicU64,
    /// Connections (or UDP flows) that found no endpoint answering.
    pub failed: AtomicU64,
    pub active: AtomicU64,
    pub bytes: AtomicU64,
}

/// Counters by (service port, listener address).
#[derive(Debug, Default)]
pub struct Metrics {
    ports: Mutex<BTreeMap<(String, String), Arc<PortMetrics>>>,
}

impl Metrics {
    pub fn port(&self, service: &str, listener: &str) -> Arc<PortMetrics> {
        self.ports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((service.to_string(), listener.to_string()))
            .or_default()
            .clone()
    }

    pub fn render(&self) -> String {
        let ports = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for (name, help, get) in [
            (
                "kelp_proxy_connections_total",
                "Connections (TCP) or flows (UDP) accepted.",
                (|m: &PortMetrics| m.accepted.load(Ordering::Relaxed)) as fn(&PortMetrics) -> u64,
            ),
            (
                "kelp_proxy_connection_failures_total",
                "Connections or flows no endpoint took.",
                |m| m.failed.load(Ordering::Relaxed),
            ),
            (
                "kelp_proxy_active_connections",
                "TCP connections being forwarded.",
                |m| m.active.load(Ordering::Relaxed),
            ),
            (
                "kelp_proxy_bytes_total",
                "Bytes forwarded, both directions.",
                |m| m.bytes.load(Ordering::Relaxed),
            ),
        ] {
            let ty = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {ty}");
            for ((svc, listener), m) in ports.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{service=\"{svc}\",listener=\"{listener}\"}} {}",
                    get(m)
                );
            }
        }
        out
    }
}

/// Answers every HTTP request on `addr` with the metrics (the path is not checked:
/// this endpoint serves nothing else).
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let l = TcpListener::bind(addr).await?;
    loop {
        let (mut s, _) = l.accept().await?;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") && seen.len() < 16_384 {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let body = metrics.render();
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.port("default/web:http", "10.43.0.10:80/TCP")
            .accepted
            .fetch_add(3, Ordering::Relaxed);
        let text = m.render();
        assert!(text.contains("# TYPE kelp_proxy_connections_total counter"));
        assert!(text.contains(
            "kelp_proxy_connections_total{service=\"default/web:http\",listener=\"10.43.0.10:80/TCP\"} 3"
        ));
        assert!(text.contains("# TYPE kelp_proxy_active_connections gauge"));
    }
}
