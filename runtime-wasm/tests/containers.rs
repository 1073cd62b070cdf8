//! Wasm containers on a real wasmtime engine: output, exit codes, traps, the memory
//! limit, stop requests and mounts — and the host carrying on after each.

use std::path::Path;
use std::time::Duration;

use kelp_runtime_wasm::container::run;
use kelp_runtime_wasm::{
    Artifact, ContainerSpec, ExitReason, ExitStatus, Mount, StopHandle, WasmEngine,
};

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

// Hostile fixtures (tests/fixtures/README.md).
const TRAP: &str = include_str!("fixtures/trap.wat");
const MEMORY_HOG: &str = include_str!("fixtures/memory_hog.wat");
/// Prints "started", then spins forever.
const SPIN: &str = include_str!("fixtures/infinite_loop.wat");
const DEEP_RECURSION: &str = include_str!("fixtures/deep_recursion.wat");
const ESCAPE_DOTDOT: &str = include_str!("fixtures/escape_dotdot.wat");
const ESCAPE_SYMLINK: &str = include_str!("fixtures/escape_symlink.wat");
const ESCAPE_ABSOLUTE: &str = include_str!("fixtures/escape_absolute.wat");

/// Two memories of 100 pages (6.25 MiB) each: each alone fits an 8 MiB limit, both
/// together do not.
const TWO_MEMORIES: &str = r#"(module (memory 100) (memory 100) (func (export "_start")))"#;

/// 1 Mi table elements (8 MiB counted) beside a 64 KiB memory.
const BIG_TABLE: &str = r#"(module (memory 1) (table 1048576 funcref) (func (export "_start")))"#;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_counts_all_memories_and_tables_together() {
    let dir = tempfile::tempdir().unwrap();
    let engine = WasmEngine::new(None).unwrap();
    for (name, wat) in [("two-memories", TWO_MEMORIES), ("big-table", BIG_TABLE)] {
        let module = engine.compile(wat.as_bytes()).unwrap();
        let mut s = spec(dir.path(), name);
        s.memory_limit = Some(8 * 1024 * 1024);
        let st = run(&engine, &module, &s, &StopHandle::default())
            .await
            .unwrap();
        assert_eq!(
            (st.code, st.reason),
            (137, ExitReason::OomKilled),
            "{name}: {}",
            st.message
        );
        // Without the limit both run.
        s.memory_limit = None;
        let st = run(&engine, &module, &s, &StopHandle::default())
            .await
            .unwrap();
        assert_eq!(st.code, 0, "{name}: {}", st.message);
    }
}

async fn wait_for_line(path: &Path, suffix: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !log_lines(path).iter().any(|l| l.ends_with(suffix)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{suffix:?} never appeared in {}",
            path.display()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Every hostile fixture at once on one engine, with a normal container started
/// while they run: each ends with its own status, the normal one completes, and the
/// host files outside the mount stay untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_table_node_survives() {
    let dir = tempfile::tempdir().unwrap();
    let engine = WasmEngine::new(None).unwrap();

    // host layout: <root>/mount (the volume), <root>/outside/secret.txt,
    // <root>/mount/link -> <root>/outside
    let root = tempfile::tempdir().unwrap();
    let mount = root.path().join("mount");
    let outside = root.path().join("outside");
    std::fs::create_dir_all(&mount).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(&outside, mount.join("link")).unwrap();
    let mounts = vec![Mount {
        host_path: mount.clone(),
        guest_path: "/data".into(),
        read_only: false,
    }];

    struct Case {
        name: &'static str,
        wat: &'static str,
        check: fn(&ExitStatus),
    }
    let cases = [
        Case {
            name: "memory-hog",
            wat: MEMORY_HOG,
            check: |st| assert_eq!((st.code, st.reason), (137, ExitReason::OomKilled), "{st:?}"),
        },
        Case {
            name: "deep-recursion",
            wat: DEEP_RECURSION,
            check: |st| {
                assert_eq!((st.code, st.reason), (1, ExitReason::Error), "{st:?}");
                assert!(st.message.contains("stack"), "{}", st.message);
            },
        },
        Case {
            name: "trap",
            wat: TRAP,
            check: |st| {
                assert_eq!((st.code, st.reason), (1, ExitReason::Error), "{st:?}");
                assert!(st.message.contains("unreachable"), "{}", st.message);
            },
        },
        Case {
            name: "escape-dotdot",
            wat: ESCAPE_DOTDOT,
            check: |st| assert!(st.code != 0 && st.reason == ExitReason::Error, "{st:?}"),
        },
        Case {
            name: "escape-symlink",
            wat: ESCAPE_SYMLINK,
            check: |st| assert!(st.code != 0 && st.reason == ExitReason::Error, "{st:?}"),
        },
        Case {
            name: "escape-absolute",
            wat: ESCAPE_ABSOLUTE,
            check: |st| assert!(st.code != 0 && st.reason == ExitReason::Error, "{st:?}"),
        },
    ];

    // The infinite loop first: it runs through everything else.
    let spin_spec = spec(dir.path(), "infinite-loop");
    let spin_stop = StopHandle::default();
    let spinner = {
        let (engine, s, stop) = (engine.clone(), spin_spec.clone(), spin_stop.clone());
        let module = engine.compile(SPIN.as_bytes()).unwrap();
        tokio::spawn(async move { run(&engine, &module, &s, &stop).await })
    };
    wait_for_line(&spin_spec.log_path, "started").await;

    let mut tasks = Vec::new();
    for case in cases {
        let module = engine.compile(case.wat.as_bytes()).unwrap();
        let mut s = spec(dir.path(), case.name);
        s.mounts = mounts.clone();
        s.memory_limit = Some(16 * 1024 * 1024);
        let engine = engine.clone();
        tasks.push((
            case,
            tokio::spawn(async move { run(&engine, &module, &s, &StopHandle::default()).await }),
        ));
    }
    // A normal container while the hostile ones run.
    let normal = spec(dir.path(), "normal");
    let st = run(
        &engine,
        &engine.compile(HELLO.as_bytes()).unwrap(),
        &normal,
        &StopHandle::default(),
    )
    .await
    .unwrap();
    assert_eq!((st.code, st.reason), (0, ExitReason::Completed));
    assert_eq!(
        log_lines(&normal.log_path),
        vec!["stdout F hello from wasm"]
    );

    for (case, task) in tasks {
        let st = task.await.expect("the container task").expect("setup");
        (case.check)(&st);
    }
    assert!(
        !root.path().join("escaped.txt").exists(),
        "../ escaped the mount"
    );
    assert!(!spinner.is_finished(), "the infinite loop still runs");

    spin_stop.stop();
    let st = spinner.await.unwrap().unwrap();
    assert_eq!((st.code, st.reason), (137, ExitReason::Killed));

    // Control: the same symlink fixture reads a secret that stays inside the mount,
    // so its refusal above was the sandbox, not a broken fixture.
    let inside = root.path().join("inside");
    std::fs::create_dir_all(inside.join("inner")).unwrap();
    std::fs::write(inside.join("inner/secret.txt"), "not secret").unwrap();
    std::os::unix::fs::symlink("inner", inside.join("link")).unwrap();
    let mut s = spec(dir.path(), "symlink-inside");
    s.mounts = vec![Mount {
        host_path: inside,
        guest_path: "/data".into(),
        read_only: true,
    }];
    let st = run(
        &engine,
        &engine.compile(ESCAPE_SYMLINK.as_bytes()).unwrap(),
        &s,
        &StopHandle::default(),
    )
    .await
    .unwrap();
    assert_eq!(st.code, 0, "a symlink within the mount resolves: {st:?}");

    // And the node goes on running containers afterwards.
    let st = run(
        &engine,
        &engine.compile(HELLO.as_bytes()).unwrap(),
        &spec(dir.path(), "after"),
        &StopHandle::default(),
    )
    .await
    .unwrap();
    assert_eq!(st.code, 0);
}

#[test]
fn compile_tells_modules_from_components() {
    let engine = WasmEngine::new(None).unwrap();
    assert!(matches!(
        engine.compile(HELLO.as_bytes()).unwrap(),
        Artifact::Module(_)
    ));
    let component = engine.compile(b"(component)").unwrap();
    assert!(matches!(component, Artifact::Component(_)));
    let binary = wat_component_binary();
    assert!(engine.compile(&binary).unwrap().is_component());
}

/// The binary encoding of an empty component: magic, version 0x0d, layer 1.
fn wat_component_binary() -> Vec<u8> {
    b"\0asm\x0d\0\x01\0".to_vec()
}
