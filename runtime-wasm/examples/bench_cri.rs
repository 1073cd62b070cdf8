//! Pod start through the CRI service, printed as figures (docs/benchmarks.md, "Wasm
//! runtime"), in-process as the kubelet calls it:
//!
//! 1. CreateContainer + StartContainer → exit of the `hello` example (it prints and
//!    exits, so this bounds "to first instruction" from above): cold (a module never
//!    compiled: each run gets a distinct module, so the compile cache misses) and warm
//!    (the same module: the compiled artifact is loaded from the cache by digest);
//! 2. capacity: N `counter` containers (each prints a line a second, forever) started
//!    in N sandboxes, then checked to be all running and all logging; RSS per
//!    container and the time to stop them all.
//!
//! ```sh
//! scripts/build-wasm-examples.sh
//! cargo run --release -p kelp-runtime-wasm --example bench_cri -- [--cold 30] [--warm 300] [--counters 10000]
//! ```

use std::time::{Duration, Instant};

use kelp_runtime_wasm::service::{
    ContainerConfig, ContainerPhase, RuntimeConfig, SandboxConfig, WasmRuntime,
};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn example(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/wasm/target/wasm32-wasip1/release")
        .join(format!("{name}.wasm"));
    std::fs::read(&p)
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/build-wasm-examples.sh", p.display()))
}

/// The module with a custom section appended: same code, new digest (a cold start).
fn distinct(module: &[u8], i: u64) -> Vec<u8> {
    let name = b"kelp-bench";
    let payload = i.to_le_bytes();
    let body_len = 1 + name.len() + payload.len();
    let mut out = module.to_vec();
    out.push(0); // custom section id
    out.push(body_len as u8); // < 128: one LEB byte
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&payload);
    out
}

fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(what: &str, mut d: Vec<Duration>) {
    d.sort();
    println!(
        "{what:<44} n={:<5} p50 {:>9.3} ms  p99 {:>9.3} ms",
        d.len(),
        percentile(&d, 0.5).as_secs_f64() * 1e3,
        percentile(&d, 0.99).as_secs_f64() * 1e3
    );
}

fn sandbox(i: u64, logs: &std::path::Path) -> SandboxConfig {
    SandboxConfig {
        name: format!("pod-{i}"),
        uid: format!("uid-{i}"),
        namespace: "bench".into(),
        hostname: format!("pod-{i}"),
        log_directory: Some(logs.join(format!("pod-{i}"))),
        ..Default::default()
    }
}

fn container(image: &str) -> ContainerConfig {
    ContainerConfig {
        name: "main".into(),
        image: image.into(),
        log_path: Some("main/0.log".into()),
        ..Default::default()
    }
}

async fn start_to_exit(rt: &WasmRuntime, sb: &str, image: &str) -> Duration {
    let t = Instant::now();
    let c = rt.create_container(sb, container(image)).await.unwrap();
    rt.start_container(&c.id).unwrap();
    let exit = c.wait().await;
    let d = t.elapsed();
    assert_eq!(exit.code, 0, "{exit:?}");
    rt.remove_container(&c.id).await.unwrap();
    d
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let cold_runs = arg("--cold", 30);
    let warm_runs = arg("--warm", 300);
    let counters = arg("--counters", 10_000);
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    let rt = WasmRuntime::new(RuntimeConfig::new(dir.path().join("runtime"))).unwrap();
    let hello = example("hello");
    let sb = rt.run_sandbox(sandbox(0, &logs)).unwrap();

    let mut cold = Vec::new();
    for i in 0..cold_runs {
        let name = format!("bench/hello-cold:{i}");
        rt.images().import(&distinct(&hello, i), &name).unwrap();
        cold.push(start_to_exit(&rt, &sb.id, &name).await);
    }
    report("Create+Start→exit, cold (compile)", cold);

    rt.images().import(&hello, "bench/hello:warm").unwrap();
    start_to_exit(&rt, &sb.id, "bench/hello:warm").await;
    let mut warm = Vec::new();
    for _ in 0..warm_runs {
        warm.push(start_to_exit(&rt, &sb.id, "bench/hello:warm").await);
    }
    report("Create+Start→exit, warm (compile cache)", warm);
    rt.remove_sandbox(&sb.id).await.unwrap();

    if counters == 0 {
        return;
    }
    rt.images()
        .import(&example("counter"), "bench/counter:v1")
        .unwrap();
    let before = rss();
    let t = Instant::now();
    let mut ids = Vec::with_capacity(counters as usize);
    for i in 1..=counters {
        let sb = rt.run_sandbox(sandbox(i, &logs)).unwrap();
        let c = rt
            .create_container(&sb.id, container("bench/counter:v1"))
            .await
            .unwrap();
        rt.start_container(&c.id).unwrap();
        ids.push((sb.id.clone(), c));
    }
    let started = t.elapsed();
    // Every counter is running and has logged its second line (it is alive, not just
    // started).
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let alive = ids
            .iter()
            .filter(|(_, c)| {
                c.state().phase == ContainerPhase::Running
                    && std::fs::read_to_string(&c.log_path)
                        .map(|l| l.contains("count 1"))
                        .unwrap_or(false)
            })
            .count();
        if alive == ids.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {alive} of {} counters alive",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let grown = rss().saturating_sub(before);
    println!(
        "{counters} counter containers started in {:.2} s ({:.0}/s), all running and logging after {:.2} s; RSS {:.1} MiB in all, {:.1} KiB per container",
        started.as_secs_f64(),
        counters as f64 / started.as_secs_f64(),
        t.elapsed().as_secs_f64(),
        grown as f64 / (1 << 20) as f64,
        grown as f64 / counters as f64 / 1024.0
    );
    let t = Instant::now();
    for (sb, _) in &ids {
        rt.remove_sandbox(sb).await.unwrap();
    }
    println!(
        "stopped and removed {counters} sandboxes in {:.2} s",
        t.elapsed().as_secs_f64()
    );
}
