//! API-level benchmark against a running Kelp API server: durable creates/s with
//! p50/p99 latency at several client concurrencies, and watch fan-out delivery latency.
//!
//! `scripts/bench.sh` starts the servers (embedded SQLite and etcd) and runs this;
//! by hand: `cargo run --release --example api_bench -- KUBECONFIG [creates] [watchers]`.

// The allocator the `kelp` binary uses, so the in-process server measures alike.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ObjectMeta, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

async fn client(kubeconfig: &str) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(cfg)?)
}

fn cm(name: String, payload: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name),
            ..Default::default()
        },
        data: Some([("payload".to_string(), payload.to_string())].into()),
        ..Default::default()
    }
}

async fn ensure_ns(c: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(c.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `total` creates spread over `concurrency` clients, each with its own connection.
async fn creates(
    kubeconfig: &str,
    ns: &str,
    total: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let per = total / concurrency;
    let mut clients = Vec::new();
    for _ in 0..concurrency {
        clients.push(client(kubeconfig).await?);
    }
    let payload = "x".repeat(256);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (w, c) in clients.into_iter().enumerate() {
        let ns = ns.to_string();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let api: Api<ConfigMap> = Api::namespaced(c, &ns);
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let t = Instant::now();
                api.create(
                    &PostParams::default(),
                    &cm(format!("c{concurrency}-w{w}-{i}"), &payload),
                )
                .await?;
                lat.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = start.elapsed();
    all.sort();
    println!(
        "creates  clients={concurrency:<3} n={:<6} rate={:>8.0}/s  p50={:>7.2}ms  p99={:>7.2}ms",
        all.len(),
        all.len() as f64 / elapsed.as_secs_f64(),
        percentile(&all, 0.50).as_secs_f64() * 1e3,
        percentile(&all, 0.99).as_secs_f64() * 1e3,
    );
    Ok(())
}

/// `watchers` watches on one namespace; `events` creates; per-delivery latency from
/// the create's acknowledgement time to each watcher's receipt.
async fn fanout(kubeconfig: &str, ns: &str, watchers: usize, events: usize) -> anyhow::Result<()> {
    let base = Instant::now();
    let sent: Arc<std::sync::Mutex<std::collections::HashMap<String, Duration>>> =
        Default::default();
    let mut clients = Vec::new();
    // Watches share a few connections (HTTP/2 streams), as informers in one process do.
    for _ in 0..8 {
        clients.push(client(kubeconfig).await?);
    }
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(watchers);
    let mut tasks = Vec::new();
    for w in 0..watchers {
        let api: Api<ConfigMap> = Api::namespaced(clients[w % clients.len()].clone(), ns);
        let ready = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = api
                .watch(&WatchParams::default().timeout(120), "0")
                .await?
                .boxed();
            ready.send(()).await.ok();
            let mut got = Vec::with_capacity(events);
            while got.len() < events {
                match stream.try_next().await? {
                    Some(WatchEvent::Added(o)) => {
                        got.push((o.metadata.name.unwrap_or_default(), base.elapsed()))
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            Ok::<_, anyhow::Error>(got)
        }));
    }
    for _ in 0..watchers {
        ready_rx.recv().await;
    }
    let writer: Api<ConfigMap> = Api::namespaced(clients[0].clone(), ns);
    for i in 0..events {
        let name = format!("fan-{i}");
        let t = base.elapsed();
        sent.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone(), t);
        writer
            .create(&PostParams::default(), &cm(name, "x"))
            .await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lat = Vec::new();
    for t in tasks {
        let got = tokio::time::timeout(Duration::from_secs(120), t).await???;
        let sent = sent.lock().unwrap_or_else(|e| e.into_inner());
        for (name, at) in got {
            if let Some(s) = sent.get(&name) {
                lat.push(at.saturating_sub(*s));
            }
        }
    }
    lat.sort();
    println!(
        "fan-out  watchers={watchers} events={events} deliveries={}  p50={:.2}ms  p99={:.2}ms  max={:.2}ms",
        lat.len(),
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    let kubeconfig = args
        .get(1)
        .ok_or_else(|| anyhow::anyhow!("usage: api_bench KUBECONFIG [creates] [watchers]"))?;
    let total: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(6400);
    let watchers: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let c = client(kubeconfig).await?;
    ensure_ns(&c, "bench").await?;
    ensure_ns(&c, "fanout").await?;
    creates(kubeconfig, "bench", total / 8, 1).await?;
    creates(kubeconfig, "bench", total, 64).await?;
    fanout(kubeconfig, "fanout", watchers, 50).await?;
    Ok(())
}
