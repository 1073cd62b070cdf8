//! Pod start benchmark against a running Kelp cluster: pod create → Running, as seen
//! through a watch, for one pod at a time and for bursts of N pods; optionally the
//! resident memory of the node's process before and after.
//!
//! `scripts/bench-pods.sh` starts the cluster and runs this; by hand:
//! `cargo run --release --example pod_bench -- --kubeconfig F --node N --image REF
//!  [--burst 100 --burst 1000] [--singles 50] [--rss NAME=PID]... [--schedule]
//!  [--runtime-class C] [--command "ARGV..."] [--label TEXT]`.
//! `scripts/bench-linux-vs-wasm.sh` runs it twice on one node: a Wasm pod and a Linux
//! container pod of the same tiny HTTP app.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Container, Event as KubeEvent, Namespace, Pod, PodSpec};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Config};
use tokio::sync::Mutex;

struct Args {
    kubeconfig: String,
    node: String,
    image: String,
    singles: usize,
    bursts: Vec<usize>,
    /// Node processes whose RSS is reported (name, pid).
    rss: Vec<(String, u32)>,
    /// Leave spec.nodeName empty so the scheduler places the pods.
    schedule: bool,
    runtime_class: Option<String>,
    command: Option<Vec<String>>,
    /// Printed before each figure (which run this is).
    label: String,
    /// Process names whose proportional memory (with their descendants') is the
    /// node's cost of its pods (`kelp,containerd,containerd-shim-runc-v2`).
    pss_of: Vec<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        kubeconfig: String::new(),
        node: String::new(),
        image: String::new(),
        singles: 50,
        bursts: Vec::new(),
        rss: Vec::new(),
        schedule: false,
        runtime_class: None,
        command: None,
        label: String::new(),
        pss_of: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--kubeconfig" => a.kubeconfig = val()?,
            "--node" => a.node = val()?,
            "--image" => a.image = val()?,
            "--singles" => a.singles = val()?.parse()?,
            "--burst" => a.bursts.push(val()?.parse()?),
            "--rss" => {
                let v = val()?;
                let (name, pid) = v.split_once('=').context("--rss takes NAME=PID")?;
                a.rss.push((name.to_string(), pid.parse()?));
            }
            "--schedule" => a.schedule = true,
            "--runtime-class" => a.runtime_class = Some(val()?),
            "--command" => a.command = Some(val()?.split_whitespace().map(String::from).collect()),
            "--label" => a.label = format!("{}: ", val()?),
            "--pss-of" => a.pss_of = val()?.split(',').map(String::from).collect(),
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    anyhow::ensure!(
        !a.kubeconfig.is_empty() && !a.node.is_empty() && !a.image.is_empty(),
        "usage: pod_bench --kubeconfig F --node N --image REF [--singles K] [--burst N]... [--rss NAME=PID]... [--schedule]"
    );
    if a.bursts.is_empty() {
        a.bursts = vec![100, 1000];
    }
    Ok(a)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `TOTAL MiB (NAME A MiB + NAME B MiB); PSS TOTAL MiB (…)`: resident sets, which
/// count the pages the processes share (one `kelp` executable) in each, then
/// proportional sets, which split them among their users.
fn rss_line(procs: &[(String, u32)]) -> String {
    let line = |field: &str| {
        let each: Vec<(String, f64)> = procs
            .iter()
            .map(|(name, pid)| {
                let kib = proc_kib(&format!("/proc/{pid}/status"), field)
                    .or_else(|| proc_kib(&format!("/proc/{pid}/smaps_rollup"), field));
                (name.clone(), kib.unwrap_or(0) as f64 / 1024.0)
            })
            .collect();
        let total: f64 = each.iter().map(|(_, m)| m).sum();
        let parts: Vec<String> = each
            .iter()
            .map(|(name, m)| format!("{name} {m:.1} MiB"))
            .collect();
        format!("{total:.1} MiB ({})", parts.join(" + "))
    };
    format!("{}; PSS {}", line("VmRSS:"), line("Pss:"))
}

/// The KiB figure of the line starting with `field` in a /proc file.
fn proc_kib(path: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The summed proportional set size (KiB) of the processes named `names` and all
/// their descendants: shared pages (one busybox binary in every container, the shim's
/// code) are split among their users instead of counted in each.
fn pss_kib(names: &[String]) -> u64 {
    let mut parent = HashMap::new();
    let mut comm = HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid …"; comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(0);
        parent.insert(pid, ppid);
        comm.insert(pid, stat[open + 1..close].to_string());
    }
    // comm is cut at 15 bytes (containerd-shim-runc-v2 → containerd-shim).
    let named = |pid: &u32| {
        comm.get(pid).is_some_and(|c| {
            names
                .iter()
                .any(|n| n.starts_with(c.as_str()) && !c.is_empty())
        })
    };
    let counted = |mut pid: u32| loop {
        if named(&pid) {
            return true;
        }
        match parent.get(&pid) {
            Some(&p) if p > 1 && p != pid => pid = p,
            _ => return false,
        }
    };
    parent
        .keys()
        .filter(|pid| counted(**pid))
        .filter_map(|pid| {
            let r = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
            r.lines()
                .find(|l| l.starts_with("Pss:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn pod(name: &str, run: &str, a: &Args) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([("bench".to_string(), run.to_string())].into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: (!a.schedule).then(|| a.node.clone()),
            // Deleted gracefully (a stop, then the kubelet's confirmation), but a
            // process that ignores SIGTERM — busybox httpd as a container's PID 1 —
            // is killed after 1 s instead of 30.
            termination_grace_period_seconds: Some(1),
            runtime_class_name: a.runtime_class.clone(),
            containers: vec![Container {
                name: "app".into(),
                image: Some(a.image.clone()),
                image_pull_policy: Some("IfNotPresent".into()),
                command: a.command.clone(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creation instants by pod name, and the create → Running latency of each pod once
/// a watch event shows it Running.
#[derive(Default)]
struct Timings {
    created: HashMap<String, Instant>,
    running: HashMap<String, Duration>,
}

/// Watches the run's pods and records when each is first seen Running; returns once
/// `expected` pods were seen so.
async fn watch_running(
    pods: Api<Pod>,
    run: String,
    expected: usize,
    timings: Arc<Mutex<Timings>>,
) -> anyhow::Result<()> {
    let cfg = watcher::Config::default().labels(&format!("bench={run}"));
    let mut stream = watcher::watcher(pods, cfg).boxed();
    while let Some(ev) = stream.try_next().await? {
        let now = Instant::now();
        let objs: Vec<Pod> = match ev {
            Event::Apply(p) | Event::InitApply(p) => vec![p],
            _ => continue,
        };
        let mut t = timings.lock().await;
        for p in objs {
            let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            let name = p.metadata.name.unwrap_or_default();
            if running && !t.running.contains_key(&name) {
                if let Some(start) = t.created.get(&name).copied() {
                    t.running.insert(name, now - start);
                }
            }
        }
        if t.running.len() >= expected {
            return Ok(());
        }
    }
    anyhow::bail!("the watch ended early")
}

/// Creates `n` pods (32 creates in flight) and waits until all are Running.
async fn run_burst(
    client: &Client,
    ns: &str,
    n: usize,
    a: &Args,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let round = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let run = format!("b{n}-r{round}");
    let timings = Arc::new(Mutex::new(Timings::default()));
    let watch = tokio::spawn(watch_running(pods.clone(), run.clone(), n, timings.clone()));
    // Let the watch establish before the first create.
    pods.list(
        &ListParams::default()
            .labels(&format!("bench={run}"))
            .limit(1),
    )
    .await?;
    let start = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let (pods, timings, run) = (pods.clone(), timings.clone(), run.clone());
            let name = format!("{run}-{i}");
            let body = pod(&name, &run, a);
            async move {
                timings.lock().await.created.insert(name, Instant::now());
                pods.create(&PostParams::default(), &body).await.map(|_| ())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    tokio::time::timeout(Duration::from_secs(600), watch)
        .await
        .context("pods not all Running within 10 minutes")???;
    let all = start.elapsed();
    let mut lat: Vec<Duration> = timings.lock().await.running.values().copied().collect();
    lat.sort();
    Ok((lat, all))
}

/// Deletes the namespace's pods gracefully and waits until every object is gone (their
/// kubelet has stopped the containers) and the kubelet's `Killing` event of each is
/// recorded (its event writer is first-in first-out, so the pods' earlier events are
/// written too): the next run starts on a settled node, not beside the teardown and
/// the event writes of the previous pods. A kubelet that records no `Killing` event
/// costs a wait of 5 s (and 20 ms per pod) per call, with a warning.
async fn delete_all(client: &Client, ns: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let names: HashSet<String> = pods
        .list(&ListParams::default())
        .await?
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    pods.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    wait_gone(pods).await?;
    let events: Api<KubeEvent> = Api::namespaced(client.clone(), ns);
    // The kubelet writes its events one at a time, a few per pod.
    let patience = Duration::from_secs(5) + Duration::from_millis(20) * names.len() as u32;
    if tokio::time::timeout(patience, wait_killed(events, names))
        .await
        .is_err()
    {
        eprintln!("warning: no Killing event for every deleted pod within {patience:?}");
    }
    Ok(())
}

async fn wait_killed(events: Api<KubeEvent>, mut names: HashSet<String>) -> anyhow::Result<()> {
    let mut stream = watcher::watcher(events, watcher::Config::default()).boxed();
    while let Some(ev) = stream.try_next().await? {
        if let Event::Apply(e) | Event::InitApply(e) = ev {
            if e.reason.as_deref() == Some("Killing") {
                names.remove(e.involved_object.name.as_deref().unwrap_or_default());
            }
        }
        if names.is_empty() {
            return Ok(());
        }
    }
    anyhow::bail!("the watch ended early")
}

async fn wait_gone(pods: Api<Pod>) -> anyhow::Result<()> {
    let mut stream = watcher::watcher(pods, watcher::Config::default()).boxed();
    let (mut live, mut listing) = (HashSet::new(), HashSet::new());
    let mut listed = false;
    while let Some(ev) = stream.try_next().await? {
        match ev {
            Event::Init => listing.clear(),
            Event::InitApply(p) => {
                listing.insert(p.metadata.name.unwrap_or_default());
            }
            Event::InitDone => {
                live = std::mem::take(&mut listing);
                listed = true;
            }
            Event::Apply(p) => {
                live.insert(p.metadata.name.unwrap_or_default());
            }
            Event::Delete(p) => {
                live.remove(&p.metadata.name.unwrap_or_default());
            }
        }
        if listed && live.is_empty() {
            return Ok(());
        }
    }
    anyhow::bail!("the watch ended early")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = parse_args()?;
    let kc = Kubeconfig::read_from(&a.kubeconfig)?;
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(cfg)?;
    let ns = format!("pod-bench-{}", std::process::id());
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;
    if !a.rss.is_empty() {
        println!("node process RSS idle: {}", rss_line(&a.rss));
    }

    if a.singles > 0 {
        // One pod at a time: the latency a user sees for `kubectl run`.
        let mut lat = Vec::new();
        for _ in 0..a.singles {
            let (l, _) = run_burst(&client, &ns, 1, &a).await?;
            lat.extend(l);
            delete_all(&client, &ns).await?;
        }
        lat.sort();
        println!(
            "{}single pod create → Running: n={} p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
            a.label,
            lat.len(),
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            ms(*lat.last().unwrap_or(&Duration::ZERO)),
        );
    }
    for &n in &a.bursts {
        let pss_before = (!a.pss_of.is_empty()).then(|| pss_kib(&a.pss_of));
        let (lat, all) = run_burst(&client, &ns, n, &a).await?;
        if let Some(b) = pss_before {
            let after = pss_kib(&a.pss_of);
            println!(
                "{}node processes ({}) PSS with {n} running pods: {:.1} → {:.1} MiB, {:.2} MiB per pod",
                a.label,
                a.pss_of.join(", "),
                b as f64 / 1024.0,
                after as f64 / 1024.0,
                after.saturating_sub(b) as f64 / 1024.0 / n as f64
            );
        }
        println!(
            "{}{n} pods create → Running: all in {:.2} s ({:.0} pods/s); per pod p50 {:.1} ms p99 {:.1} ms",
            a.label,
            all.as_secs_f64(),
            n as f64 / all.as_secs_f64(),
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
        );
        if !a.rss.is_empty() {
            println!(
                "node process RSS with {n} running pods: {}",
                rss_line(&a.rss)
            );
        }
        delete_all(&client, &ns).await?;
    }
    Api::<Namespace>::all(client.clone())
        .delete(&ns, &DeleteParams::default())
        .await?;
    Ok(())
}
