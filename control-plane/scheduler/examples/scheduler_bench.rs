//! Scheduler throughput against a real, in-process Kelp API server (embedded SQLite on
//! a temporary directory): N simulated Node objects (with Leases the benchmark keeps
//! renewing every 10 s, as kubelets do), P pending pods created up front, then the
//! scheduler starts and binds them all through `pods/binding`.
//!
//! `cargo run --release -p kelp-scheduler --example scheduler_bench -- [PODS] [NODES…]`
//! (default: 10000 pods, at 1000 and at 5000 nodes).

// The allocator the `kelp` binary uses, so the in-process server measures alike.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

/// Concurrent requests while setting up nodes, leases and pods.
const SETUP_CONCURRENCY: usize = 32;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn node(i: usize) -> Node {
    let name = format!("node-{i:05}");
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "topology.kubernetes.io/zone": format!("zone-{}", i % 3),
        }},
        "status": {
            "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            "runtimeHandlers": [{"name": "wasm"}],
        }
    }))
    .expect("node JSON")
}

fn pod(i: usize) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": format!("pod-{i:05}"), "labels": {"app": "bench"}},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:v1",
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}
    }))
    .expect("pod JSON")
}

fn lease(name: &str) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("kube-node-lease".into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name.into()),
            lease_duration_seconds: Some(40),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..Default::default()
        }),
    }
}

async fn in_parallel<F, Fut>(n: usize, f: F) -> anyhow::Result<()>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    let mut s = stream::iter(0..n)
        .map(f)
        .buffer_unordered(SETUP_CONCURRENCY);
    while let Some(r) = s.next().await {
        r?;
    }
    Ok(())
}

/// Renews every node's Lease every 10 s until dropped.
fn renew_leases(client: Client, nodes: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, "kube-node-lease");
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let t = Instant::now();
            let _ = in_parallel(nodes, |i| {
                let api = api.clone();
                async move {
                    let patch = json!({"spec": {"renewTime": MicroTime(Timestamp::now())}});
                    api.patch(
                        &format!("node-{i:05}"),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                    .map(|_| ())
                }
            })
            .await;
            eprintln!(
                "  (renewed {nodes} leases in {:.1}s)",
                t.elapsed().as_secs_f64()
            );
        }
    })
}

async fn scenario(nodes: usize, pods: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let cfg = kelp_control_plane::Config {
        data_dir: dir.path().to_path_buf(),
        datastore: None,
        bind_address: "127.0.0.1".parse()?,
        https_port: port,
        kubeconfig: None,
        tls_sans: vec![],
        controllers: None,
        scheduler: None,
        cloud: None,
        service_ranges: Default::default(),
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(kelp_control_plane::run(
        cfg,
        async move {
            let _ = stop_rx.await;
        },
        move |s| {
            let _ = ready_tx.send(s.kubeconfig.clone());
        },
    ));
    let kubeconfig = ready_rx.await?;
    let client = kelp_scheduler::client_from_kubeconfig(&kubeconfig).await?;

    let t = Instant::now();
    let napi: Api<Node> = Api::all(client.clone());
    in_parallel(nodes, |i| {
        let napi = napi.clone();
        async move {
            napi.create(&PostParams::default(), &node(i))
                .await
                .map(|_| ())
        }
    })
    .await?;
    let lapi: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    in_parallel(nodes, |i| {
        let lapi = lapi.clone();
        async move {
            lapi.create(&PostParams::default(), &lease(&format!("node-{i:05}")))
                .await
                .map(|_| ())
        }
    })
    .await?;
    let renewer = renew_leases(client.clone(), nodes);
    let papi: Api<Pod> = Api::namespaced(client.clone(), "default");
    in_parallel(pods, |i| {
        let papi = papi.clone();
        async move {
            papi.create(&PostParams::default(), &pod(i))
                .await
                .map(|_| ())
        }
    })
    .await?;
    println!(
        "{nodes} nodes (+ leases) and {pods} pending pods created in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    let stats = Arc::new(kelp_scheduler::Stats::default());
    let (sched_stop_tx, sched_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let start = Instant::now();
    let sched = tokio::spawn(kelp_scheduler::run(
        client.clone(),
        kelp_scheduler::SchedulerConfig::new(),
        stats.clone(),
        async move {
            let _ = sched_stop_rx.await;
        },
    ));
    let mut first_bind = None;
    while stats.scheduled.load(Ordering::Relaxed) < pods as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if first_bind.is_none() && stats.scheduled.load(Ordering::Relaxed) > 0 {
            first_bind = Some(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("not all pods bound within 10 minutes");
        }
    }
    let total = start.elapsed();
    let first = first_bind.unwrap_or_default();
    let _ = sched_stop_tx.send(());
    let _ = sched.await;

    // The API agrees: no pod is left without a node.
    let pending = papi
        .list(&ListParams::default().fields("spec.nodeName="))
        .await?
        .items
        .len();
    let mut lat = stats
        .latencies
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    lat.sort();
    let cycles = stats.cycles.load(Ordering::Relaxed).max(1);
    let algo = Duration::from_nanos(stats.algorithm_nanos.load(Ordering::Relaxed));
    println!(
        "  {pods} pods bound in {:.2}s from scheduler start ({:.0} pods/s); \
         first bind after {:.2}s (informer sync), then {:.0} pods/s",
        total.as_secs_f64(),
        pods as f64 / total.as_secs_f64(),
        first.as_secs_f64(),
        pods as f64 / (total - first).as_secs_f64().max(1e-9),
    );
    println!(
        "  attempt→bound latency p50 {:.1} ms, p99 {:.1} ms; algorithm {:.0} µs/pod over {cycles} cycles; \
         bind errors {}; pods left unbound per the API: {pending}",
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        algo.as_secs_f64() * 1e6 / cycles as f64,
        stats.bind_errors.load(Ordering::Relaxed),
    );
    renewer.abort();
    let _ = stop_tx.send(());
    let _ = server.await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let pods = args.first().copied().unwrap_or(10_000);
    let node_counts = if args.len() > 1 {
        args[1..].to_vec()
    } else {
        vec![1000, 5000]
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        for n in node_counts {
            scenario(n, pods).await?;
        }
        Ok(())
    })
}
