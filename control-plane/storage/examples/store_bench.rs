//! Store benchmark: durable creates/s and p50/p99 latency at 1 and 64 concurrent
//! clients, for the embedded SQLite store, the etcd backend, and raw etcd puts through
//! the same gRPC connection (the denominator of the etcd backend's ratio).
//!
//! `cargo run --release -p kelp-storage --example store_bench -- --backend sqlite|etcd|raw-etcd|all`
//! (etcd and raw-etcd start their own etcd, one for both with `all`, on a loopback
//! address, stopped by pid at exit; set ETCD_ENDPOINT=host:port to use a running one).

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

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "store_bench [--backend sqlite|etcd|raw-etcd|all] (default all)\n\
             ETCD_ENDPOINT=host:port uses a running etcd instead of starting one"
        );
        return;
    }
    let backend = arg(&args, "--backend").unwrap_or_else(|| "all".into());
    let backends: Vec<&str> = match backend.as_str() {
        "all" => vec!["sqlite", "etcd", "raw-etcd"],
        b @ ("sqlite" | "etcd" | "raw-etcd") => vec![b],
        other => {
            eprintln!("unknown backend {other}: use sqlite, etcd, raw-etcd or all");
            std::process::exit(2);
        }
    };
    println!(
        "durable creates, {}-byte values; 1 client x 1000, then 64 clients x 160",
        value().len()
    );
    let mut etcd: Option<(Option<EtcdProcess>, Arc<EtcdStore>)> = None;
    for b in backends {
        match b {
            "sqlite" => {
                let dir =
                    std::env::temp_dir().join(format!("kelp-store-bench-{}", std::process::id()));
                std::fs::create_dir_all(&dir).expect("bench dir");
                let store =
                    Arc::new(SqliteStore::open(&dir.join("bench.db")).expect("open sqlite"));
                bench_store("sqlite", store).await;
                let _ = std::fs::remove_dir_all(&dir);
            }
            _ => {
                if etcd.is_none() {
                    // Our own etcd (stopped by pid on drop) unless one is given.
                    let (proc_, ep) = match std::env::var("ETCD_ENDPOINT") {
                        Ok(ep) if !ep.is_empty() => (None, ep),
                        _ => {
                            let e = EtcdProcess::start();
                            let ep = e.endpoint();
                            (Some(e), ep)
                        }
                    };
                    let store = Arc::new(EtcdStore::connect(&[ep]).await.expect("connect etcd"));
                    etcd = Some((proc_, store));
                }
                let Some((_, store)) = etcd.as_ref() else {
                    unreachable!()
                };
                if b == "etcd" {
                    bench_store("etcd", store.clone()).await;
                } else {
                    // Plain puts, no precondition, same client: what etcd itself sustains.
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
        }
    }
}
