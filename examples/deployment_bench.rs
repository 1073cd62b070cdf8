//! Controller benchmark against a running `kelp up`: how long a Deployment of N
//! replicas (default 1,000) takes from `create` until every pod is Running and Ready,
//! with the milestones on the way (all pods created, half ready), then how long
//! deleting it takes until every pod is gone.
//!
//! ```sh
//! cargo build --release --bin kelp --example deployment_bench
//! target/release/kelp image import examples/wasm/target/wasm32-wasip1/release/counter.wasm \
//!     --name example.com/counter:v1 --data-dir /tmp/kb
//! target/release/kelp up --data-dir /tmp/kb --https-port 16643 --node-name bench &
//! target/release/examples/deployment_bench /tmp/kb/kubeconfig bench 1000
//! ```
//!
//! Arguments: KUBECONFIG NODE [REPLICAS] [IMAGE]. Pods are pinned to NODE with
//! `spec.nodeName` (pass `-` to leave placement to a scheduler).

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

async fn client(kubeconfig: &str) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(cfg)?)
}

async fn running_pods(pods: &Api<Pod>) -> anyhow::Result<(usize, usize)> {
    let list = pods
        .list(&ListParams::default().labels("app=bench"))
        .await?;
    let running = list
        .items
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count();
    Ok((list.items.len(), running))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let kubeconfig = args.first().cloned().unwrap_or_else(|| "kubeconfig".into());
    let node = args.get(1).cloned().unwrap_or_else(|| "-".into());
    let replicas: i32 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let image = args
        .get(3)
        .cloned()
        .unwrap_or_else(|| "example.com/counter:v1".into());
    let c = client(&kubeconfig).await?;
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");

    let mut spec = json!({
        "containers": [{"name": "counter", "image": image}],
        "terminationGracePeriodSeconds": 5,
    });
    if node != "-" {
        spec["nodeName"] = json!(node);
    }
    let d: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "bench"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "bench"}},
            "template": {"metadata": {"labels": {"app": "bench"}}, "spec": spec},
        }
    }))?;

    let start = Instant::now();
    deployments.create(&PostParams::default(), &d).await?;
    let (mut created_at, mut half_at) = (None, None);
    let ready_at = loop {
        let d = deployments.get("bench").await?;
        let st = d.status.unwrap_or_default();
        if created_at.is_none() && st.replicas.unwrap_or(0) >= replicas {
            created_at = Some(start.elapsed());
            eprintln!(
                "[{:>7.2} s] all {replicas} pods created",
                start.elapsed().as_secs_f64()
            );
        }
        if half_at.is_none() && st.ready_replicas.unwrap_or(0) >= replicas / 2 {
            half_at = Some(start.elapsed());
            eprintln!("[{:>7.2} s] half ready", start.elapsed().as_secs_f64());
        }
        if st.ready_replicas.unwrap_or(0) >= replicas
            && st.available_replicas.unwrap_or(0) >= replicas
        {
            break start.elapsed();
        }
        if start.elapsed() > Duration::from_secs(1800) {
            anyhow::bail!("not all ready after 1800 s: {st:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (total, running) = running_pods(&pods).await?;
    anyhow::ensure!(
        total == replicas as usize && running == replicas as usize,
        "ready by status, but {running} of {total} pods Running"
    );
    println!("deployment of {replicas} replicas (node {node}):");
    println!(
        "  all pods created (status.replicas)   {:>8.2} s",
        created_at.unwrap_or(ready_at).as_secs_f64()
    );
    println!(
        "  half ready                           {:>8.2} s",
        half_at.unwrap_or(ready_at).as_secs_f64()
    );
    println!(
        "  all Running and Ready                {:>8.2} s  ({:.0} pods/s)",
        ready_at.as_secs_f64(),
        f64::from(replicas) / ready_at.as_secs_f64()
    );

    let del = Instant::now();
    deployments
        .delete("bench", &DeleteParams::background())
        .await?;
    loop {
        let (total, _) = running_pods(&pods).await?;
        if total == 0 {
            break;
        }
        if del.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("{total} pods left 600 s after deleting the Deployment");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "  delete until every pod is gone       {:>8.2} s",
        del.elapsed().as_secs_f64()
    );
    Ok(())
}
