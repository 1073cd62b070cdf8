//! Wasm containers on a real wasmtime engine: output, exit codes, traps, the memory
//! limit, stop requests and mounts — and the host carrying on after each.

use std::time::Duration;

use kelp_runtime_wasm::container::run;
use kelp_runtime_wasm::{ContainerSpec, ExitReason, Mount, StopHandle, WasmEngine};

const HELLO: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello from wasm\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

const EXIT_3: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 3))))"#;

const TRAP: &str = r#"(module (memory (export "memory") 1) (func (export "_start") unreachable))"#;

const MEMORY_HOG: &str = r#"(module (memory (export "memory") 1)
  (func (export "_start") (loop (drop (memory.grow (i32.const 16))) (br 0))))"#;

/// Prints "started", then spins forever.
const SPIN: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "started\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 8))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (loop (br 0))))"#;

/// Creates `out.txt` in the preopened directory (fd 3); exits with the WASI errno.
const CREATE_FILE: &str = r#"(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "out.txt")
  (func (export "_start")
    (call $exit (call $path_open (i32.const 3) (i32.const 0) (i32.const 16) (i32.const 7)
      (i32.const 1) (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 64)))))"#;

/// How often the stop test re-checks the log while waiting for the module to start.
const POLL: Duration = Duration::from_millis(10);

fn spec(dir: &std::path::Path, name: &str) -> ContainerSpec {
    ContainerSpec {
        args: vec![name.into()],
        log_path: dir.join(format!("{name}.log")),
        ..Default::default()
    }
}

fn log_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.splitn(4, ' ').collect::<Vec<_>>())
        .filter(|p| p.len() == 4)
        .map(|p| format!("{} {} {}", p[1], p[2], p[3]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_exit_codes_and_traps() {
    let dir = tempfile::tempdir().unwrap();
    let engine = WasmEngine::new(None).unwrap();

    let s = spec(dir.path(), "hello");
    let st = run(
        &engine,
        &engine.compile(HELLO.as_bytes()).unwrap(),
        &s,
        &StopHandle::default(),
    )
    .await
    .unwrap();
    assert_eq!((st.code, st.reason), (0, ExitReason::Completed));
    assert_eq!(log_lines(&s.log_path), vec!["stdout F hello from wasm"]);

    let st = run(
        &engine,
        &engine.compile(EXIT_3.as_bytes()).unwrap(),
        &spec(dir.path(), "exit"),
        &StopHandle::default(),
    )
    .await
    .unwrap();
    assert_eq!((st.code, st.reason), (3, ExitReason::Error));

    let st = run(
        &engine,
        &engine.compile(TRAP.as_bytes()).unwrap(),
        &spec(dir.path(), "trap"),
        &StopHandle::default(),
    )
    .await
    .unwrap();
    assert_eq!((st.code, st.reason), (1, ExitReason::Error));
    assert!(st.message.contains("unreachable"), "{}", st.message);

    // The host carries on: the same engine runs the next container normally.
    let s = spec(dir.path(), "after-trap");
    let st = run(
        &engine,
        &engine.compile(HELLO.as_bytes()).unwrap(),
        &s,
        &StopHandle::default(),
    )
    .await
    .unwrap();
    assert_eq!(st.code, 0);

    assert!(engine.compile(b"not wasm").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_is_oom_killed() {
    let dir = tempfile::tempdir().unwrap();
    let engine = WasmEngine::new(None).unwrap();
    let mut s = spec(dir.path(), "hog");
    s.memory_limit = Some(8 * 1024 * 1024);
    let st = run(
        &engine,
        &engine.compile(MEMORY_HOG.as_bytes()).unwrap(),
        &s,
        &StopHandle::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        (st.code, st.reason),
        (137, ExitReason::OomKilled),
        "{}",
        st.message
    );
    assert_eq!(st.reason.as_str(), "OOMKilled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_interrupts_a_spinning_module() {
    let dir = tempfile::tempdir().unwrap();
    let engine = WasmEngine::new(None).unwrap();
    let s = spec(dir.path(), "spin");
    let module = engine.compile(SPIN.as_bytes()).unwrap();
    let stop = StopHandle::default();
    let task = {
        let (engine, s, stop) = (engine.clone(), s.clone(), stop.clone());
        tokio::spawn(async move { run(&engine, &module, &s, &stop).await })
    };
    // Wait until it runs (its output is in the log), then stop it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !log_lines(&s.log_path)
        .iter()
        .any(|l| l.ends_with("started"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the module never started"
        );
        tokio::time::sleep(POLL).await;
    }
    stop.stop();
    let st = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stopped within 5s")
        .unwrap()
        .unwrap();
    assert_eq!((st.code, st.reason), (137, ExitReason::Killed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_honour_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let engine = WasmEngine::new(None).unwrap();
    let module = engine.compile(CREATE_FILE.as_bytes()).unwrap();
    let data = tempfile::tempdir().unwrap();

    let mut s = spec(dir.path(), "rw");
    s.mounts = vec![Mount {
        host_path: data.path().into(),
        guest_path: "/data".into(),
        read_only: false,
    }];
    let st = run(&engine, &module, &s, &StopHandle::default())
        .await
        .unwrap();
    assert_eq!(st.code, 0, "creating a file in a writable mount succeeds");
    assert!(data.path().join("out.txt").exists());
    std::fs::remove_file(data.path().join("out.txt")).unwrap();

    let mut s = spec(dir.path(), "ro");
    s.mounts = vec![Mount {
        host_path: data.path().into(),
        guest_path: "/data".into(),
        read_only: true,
    }];
    let st = run(&engine, &module, &s, &StopHandle::default())
        .await
        .unwrap();
    assert_ne!(st.code, 0, "a read-only mount refuses file creation");
    assert!(!data.path().join("out.txt").exists());
}

#[test]
fn compile_cache_is_reused() {
    let cache = tempfile::tempdir().unwrap();
    let engine = WasmEngine::new(Some(cache.path())).unwrap();
    engine.compile(HELLO.as_bytes()).unwrap();
    let files: Vec<_> = std::fs::read_dir(cache.path()).unwrap().collect();
    assert_eq!(files.len(), 1, "one cached compilation");
    let modified = std::fs::metadata(files[0].as_ref().unwrap().path())
        .unwrap()
        .modified()
        .unwrap();
    engine.compile(HELLO.as_bytes()).unwrap();
    let again = std::fs::metadata(files[0].as_ref().unwrap().path())
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(
        modified, again,
        "the second compile loads the cache instead of writing it"
    );
}
