//! Store benchmark: durable creates/s and p50/p99 latency at 1 and 64 concurrent
//! clients, for the embedded SQLite store, the etcd backend, and raw etcd puts through
//! the same gRPC connection (the denominator of the etcd backend's ratio).
//!
//! `cargo run --release -p kelp-storage --example store_bench -- --backend sqlite|etcd|raw-etcd`
//! (etcd and raw-etcd start their own etcd; set ETCD_ENDPOINT to use a running one).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kelp_storage::etcd::EtcdStore;
use kelp_storage::sqlite::SqliteStore;
use kelp_storage::testing::EtcdProcess;
use kelp_storage::{Store, WriteOutcome};

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

/// `op(client, i)` performs one durable write; returns when it is acknowledged.
async fn run<F, Fut>(label: &str, clients: usize, per_client: usize, op: F)
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let t = Instant::now();
                op(c, i).await;
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("bench task"));
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    println!(
        "{label:<10} clients={clients:<3} n={:<6} creates/s={:>8.0}  p50={:>6.2}ms  p99={:>6.2}ms",
        all.len(),
        all.len() as f64 / secs,
        pct(&all, 0.5),
        pct(&all, 0.99)
    );
}

fn value() -> Vec<u8> {
    // A small ConfigMap-sized object.
    let mut v = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x","namespace":"bench","uid":"00000000-0000-0000-0000-000000000000"},"data":{"k":""#.to_vec();
    v.extend(std::iter::repeat_n(b'x', 256));
    v.extend(b"\"}}");
    v
}

async fn bench_store(label: &str, store: Arc<dyn Store>) {
    for (clients, per) in [(1usize, 1000usize), (64, 160)] {
        let s = store.clone();
        let tag = format!("{label}-{clients}");
        run(label, clients, per, move |c, i| {
            let s = s.clone();
            let key = format!("/registry/configmaps/bench/{tag}-{c}-{i}");
            async move {
                match s.create(&key, value()).await {
                    Ok(WriteOutcome::Done(_)) => {}
                    other => panic!("create failed: {other:?}"),
                }
            }
        })
        .await;
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let backend = args
        .iter()
        .position(|a| a == "--backend")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .unwrap_or("sqlite");
    let mut _etcd = None;
    let endpoint = || -> String { std::env::var("ETCD_ENDPOINT").unwrap_or_default() };
    match backend {
        "sqlite" => {
            let dir = std::env::temp_dir().join(format!("kelp-store-bench-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("bench dir");
            let store = Arc::new(SqliteStore::open(&dir.join("bench.db")).expect("open sqlite"));
            bench_store("sqlite", store).await;
            let _ = std::fs::remove_dir_all(&dir);
        }
        "etcd" | "raw-etcd" => {
            let mut ep = endpoint();
            if ep.is_empty() {
                let e = EtcdProcess::start();
                ep = e.endpoint();
                _etcd = Some(e);
            }
            let store = Arc::new(
                EtcdStore::connect(&[ep.clone()])
                    .await
                    .expect("connect etcd"),
            );
            if backend == "etcd" {
                bench_store("etcd", store).await;
            } else {
                // Plain puts, no precondition: what etcd itself sustains.
                for (clients, per) in [(1usize, 1000usize), (64, 160)] {
                    let s = store.clone();
                    run("raw-etcd", clients, per, move |c, i| {
                        let s = s.clone();
                        async move {
                            s.raw_put(&format!("/raw/{clients}-{c}-{i}"), value())
                                .await
                                .expect("put");
                        }
                    })
                    .await;
                }
            }
        }
        other => panic!("unknown backend {other}: use sqlite, etcd or raw-etcd"),
    }
}
