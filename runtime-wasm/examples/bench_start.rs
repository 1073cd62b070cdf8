//! Container start cost and memory, printed as figures (docs/benchmarks.md, "Wasm
//! runtime").
//!
//! 1. instantiate-and-run of the `hello` example, sequentially: Kelp's
//!    `container::run` (CRI log file, WASI context from the spec, limiter, epoch
//!    callback, exit status) against raw wasmtime on the same engine (imports
//!    resolved once into an `InstancePre`/`CommandPre` + a minimal WASI context +
//!    instantiate + `_start` / `wasi:cli/run`) — for the preview 1 module and the
//!    preview 2 command component;
//! 2. host memory per running `counter` container: RSS (and PSS) growth with N
//!    counters running, divided by N (on-demand allocator, or the pooling one with
//!    `--pooling`).
//!
//! ```sh
//! scripts/build-wasm-examples.sh
//! cargo run --release -p kelp-runtime-wasm --example bench_start -- [--runs 2000] [--counters 1000] [--pooling]
//! ```

use std::time::{Duration, Instant};

use kelp_runtime_wasm::container::run;
use kelp_runtime_wasm::{Allocation, Artifact, ContainerSpec, StopHandle, WasmEngine};
use wasmtime::component::ResourceTable;
use wasmtime::Store;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn example(target: &str, name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/wasm/target")
        .join(target)
        .join("release")
        .join(format!("{name}.wasm"));
    std::fs::read(&p)
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/build-wasm-examples.sh", p.display()))
}

fn memory() -> (u64, u64) {
    let field = |text: &str, name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    (field(&status, "VmRSS:"), field(&rollup, "Pss:"))
}

struct P2Raw {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for P2Raw {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn args() -> Vec<String> {
    vec!["hello".into(), "a".into()]
}

async fn raw_p1(engine: &wasmtime::Engine, pre: &wasmtime::InstancePre<WasiP1Ctx>) {
    let wasi = WasiCtx::builder().args(&args()).build_p1();
    let mut store = Store::new(engine, wasi);
    store.set_epoch_deadline(u64::MAX / 2);
    let instance = pre.instantiate_async(&mut store).await.unwrap();
    let start = instance
        .get_typed_func::<(), ()>(&mut store, "_start")
        .unwrap();
    start.call_async(&mut store, ()).await.unwrap();
}

async fn raw_p2(engine: &wasmtime::Engine, pre: &wasmtime_wasi::p2::bindings::CommandPre<P2Raw>) {
    let mut store = Store::new(
        engine,
        P2Raw {
            wasi: WasiCtx::builder().args(&args()).build(),
            table: ResourceTable::new(),
        },
    );
    store.set_epoch_deadline(u64::MAX / 2);
    let cmd = pre.instantiate_async(&mut store).await.unwrap();
    cmd.wasi_cli_run()
        .call_run(&mut store)
        .await
        .unwrap()
        .unwrap();
}

fn per_run(total: Duration, runs: u64) -> f64 {
    total.as_secs_f64() * 1e6 / runs as f64
}

async fn start_cost(runs: u64) {
    let engine = WasmEngine::new(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    println!("## Instantiate and run `hello`: {runs} runs in sequence\n");
    println!("| workload | Kelp `container::run` | raw wasmtime (peer) | Kelp / peer |");
    println!("|---|---|---|---|");

    // Preview 1 module.
    let Artifact::Module(module) = engine.compile(&example("wasm32-wasip1", "hello")).unwrap()
    else {
        panic!("hello for wasip1 is a module")
    };
    let mut linker: wasmtime::Linker<WasiP1Ctx> = wasmtime::Linker::new(engine.engine());
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |c| c).unwrap();
    let pre = linker.instantiate_pre(&module).unwrap();
    let spec = ContainerSpec {
        args: args(),
        log_path: dir.path().join("p1.log"),
        ..Default::default()
    };
    let artifact = Artifact::Module(module.clone());
    let (mut kelp, mut raw) = (Duration::ZERO, Duration::ZERO);
    for i in 0..runs + runs / 10 {
        // Interleaved, the first tenth as warm-up.
        let t = Instant::now();
        let st = run(&engine, &artifact, &spec, &StopHandle::default())
            .await
            .unwrap();
        let k = t.elapsed();
        assert_eq!(st.code, 0);
        let t = Instant::now();
        raw_p1(engine.engine(), &pre).await;
        let r = t.elapsed();
        if i >= runs / 10 {
            kelp += k;
            raw += r;
        }
        if i % 500 == 0 {
            // Keep the log file from growing through the run.
            let _ = std::fs::remove_file(&spec.log_path);
        }
    }
    println!(
        "| hello, WASI preview 1 module | {:.1} µs | {:.1} µs | **{:.2}×** |",
        per_run(kelp, runs),
        per_run(raw, runs),
        kelp.as_secs_f64() / raw.as_secs_f64()
    );

    // Preview 2 command component.
    let Artifact::Component(component) =
        engine.compile(&example("wasm32-wasip2", "hello")).unwrap()
    else {
        panic!("hello for wasip2 is a component")
    };
    let mut linker: wasmtime::component::Linker<P2Raw> =
        wasmtime::component::Linker::new(engine.engine());
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
    let pre =
        wasmtime_wasi::p2::bindings::CommandPre::new(linker.instantiate_pre(&component).unwrap())
            .unwrap();
    let spec = ContainerSpec {
        args: args(),
        log_path: dir.path().join("p2.log"),
        ..Default::default()
    };
    let artifact = Artifact::Component(component);
    let (mut kelp, mut raw) = (Duration::ZERO, Duration::ZERO);
    for i in 0..runs + runs / 10 {
        let t = Instant::now();
        let st = run(&engine, &artifact, &spec, &StopHandle::default())
            .await
            .unwrap();
        let k = t.elapsed();
        assert_eq!(st.code, 0);
        let t = Instant::now();
        raw_p2(engine.engine(), &pre).await;
        let r = t.elapsed();
        if i >= runs / 10 {
            kelp += k;
            raw += r;
        }
        if i % 500 == 0 {
            let _ = std::fs::remove_file(&spec.log_path);
        }
    }
    println!(
        "| hello, WASI preview 2 command component | {:.1} µs | {:.1} µs | **{:.2}×** |",
        per_run(kelp, runs),
        per_run(raw, runs),
        kelp.as_secs_f64() / raw.as_secs_f64()
    );
    println!();
}

async fn counter_memory(n: u64, label: &str, allocation: Allocation) {
    let engine = WasmEngine::with_allocation(None, allocation).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let artifact = engine
        .compile(&example("wasm32-wasip1", "counter"))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (rss0, pss0) = memory();
    let mut running = Vec::new();
    for i in 0..n {
        let spec = ContainerSpec {
            args: vec!["counter".into()],
            memory_limit: Some(16 << 20),
            log_path: dir.path().join(format!("{i}.log")),
            ..Default::default()
        };
        let stop = StopHandle::default();
        let (engine, artifact, s) = (engine.clone(), artifact.clone(), stop.clone());
        running.push((
            stop,
            tokio::spawn(async move { run(&engine, &artifact, &spec, &s).await }),
        ));
    }
    // Let every counter print a few lines.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss1, pss1) = memory();
    println!(
        "{label}: {n} counters (preview 1): RSS +{:.1} MiB = **{:.1} KiB per running container** (PSS +{:.1} MiB = {:.1} KiB)\n",
        rss1.saturating_sub(rss0) as f64 / (1 << 20) as f64,
        rss1.saturating_sub(rss0) as f64 / 1024.0 / n as f64,
        pss1.saturating_sub(pss0) as f64 / (1 << 20) as f64,
        pss1.saturating_sub(pss0) as f64 / 1024.0 / n as f64,
    );
    for (stop, _) in &running {
        stop.stop();
    }
    for (_, task) in running {
        let st = task.await.unwrap().unwrap();
        assert_eq!(st.code, 137);
    }
}

#[tokio::main]
async fn main() {
    let runs = arg("--runs", 2000);
    let counters = arg("--counters", 1000);
    println!("## Running `counter` containers\n");
    // One allocator per process, so neither measurement inherits the other's heap.
    if std::env::args().any(|a| a == "--pooling") {
        // The pool has slots for 1,000 instances in all.
        let n = counters.min(900);
        counter_memory(n, "pooling", Allocation::Pooling { instances: 1000 }).await;
    } else {
        counter_memory(counters, "on-demand", Allocation::OnDemand).await;
    }
    start_cost(runs).await;
}
