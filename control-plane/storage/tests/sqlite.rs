//! The conformance suite and crash/restart checks on the embedded SQLite backend.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kelp_storage::sqlite::SqliteStore;
use kelp_storage::{conformance, Store, WriteOutcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("state.db")).unwrap());
    conformance::run_all(store, "/registry/t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_watch_resumes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let rev = {
        let s = SqliteStore::open(&path).unwrap();
        let WriteOutcome::Done(kv) = s.create("/registry/x/a", b"1".to_vec()).await.unwrap() else {
            panic!("create")
        };
        kv.mod_revision
    };
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(
        s.current_revision().await.unwrap(),
        rev,
        "the revision survives a restart"
    );
    let mut w = s.watch("/registry/x/", rev).await.unwrap();
    s.create("/registry/x/b", b"2".to_vec()).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.kv.key, "/registry/x/b");
    assert_eq!(ev.kv.mod_revision, rev + 1);
}

/// A child process writes and reports each acknowledged key; it is killed with
/// SIGKILL mid-stream; every acknowledged key must be there after reopening.
#[test]
fn sqlite_acknowledged_writes_survive_kill_9() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let exe = env!("CARGO_BIN_EXE_store-writer");
    let mut child = Command::new(exe)
        .arg(&path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut acked = Vec::new();
    for line in BufReader::new(out).lines() {
        let line = line.unwrap();
        acked.push(line);
        if acked.len() == 300 {
            // SIGKILL right after an acknowledged write, while more are in flight.
            child.kill().unwrap();
            break;
        }
    }
    let _ = child.wait();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = SqliteStore::open(&path).unwrap();
        for k in &acked {
            assert!(
                s.get(k).await.unwrap().is_some(),
                "acknowledged write {k} was lost"
            );
        }
    });
}
