//! The conformance suite and crash/restart checks on the embedded SQLite backend.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kelp_storage::sqlite::SqliteStore;
use kelp_storage::testing::example_bin;
use kelp_storage::{conformance, Store, WriteOutcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("state.db")).unwrap());
    conformance::run_all(store.clone(), "/registry/t").await;
    // A second run on the same store (after compactions) passes too.
    conformance::run_all(store, "/registry/t2").await;
}

async fn next(w: &mut kelp_storage::WatchStream) -> kelp_storage::WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("an event within 10s")
        .expect("stream open")
        .expect("no error")
}

/// Write, note the revision, close, reopen: a watch from that revision sees later writes
/// (and replays the earlier ones from a lower revision).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_watch_resumes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let (first, rev) = {
        let s = SqliteStore::open(&path).unwrap();
        let WriteOutcome::Done(a) = s.create("/registry/x/a", b"1".to_vec()).await.unwrap() else {
            panic!("create")
        };
        let WriteOutcome::Done(b) = s
            .update("/registry/x/a", b"2".to_vec(), a.mod_revision)
            .await
            .unwrap()
        else {
            panic!("update")
        };
        (a.mod_revision, b.mod_revision)
    };
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(
        s.current_revision().await.unwrap(),
        rev,
        "the revision survives a restart"
    );
    let mut w = s.watch("/registry/x/", rev).await.unwrap();
    let mut replay = s.watch("/registry/x/", first).await.unwrap();
    s.create("/registry/x/b", b"3".to_vec()).await.unwrap();
    let ev = next(&mut w).await;
    assert_eq!(ev.kv.key, "/registry/x/b");
    assert_eq!(ev.kv.mod_revision, rev + 1);
    let ev = next(&mut replay).await;
    assert_eq!(
        (ev.kv.mod_revision, ev.kv.value.as_slice()),
        (rev, &b"2"[..])
    );
    assert_eq!(ev.prev.map(|p| p.value), Some(b"1".to_vec()));
    assert_eq!(next(&mut replay).await.kv.mod_revision, rev + 1);
}

/// A child process writes from 8 concurrent writers and prints each acknowledged key;
/// it is killed with SIGKILL right after an acknowledged write, with more in flight;
/// every acknowledged key must be there after reopening.
#[test]
fn sqlite_acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let mut child = Command::new(example_bin("store-writer"))
        .arg(&path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut acked = Vec::new();
    for line in BufReader::new(out).lines() {
        acked.push(line.unwrap());
        if acked.len() == 2000 {
            // SIGKILL (by pid) right after an acknowledged write, while more are in flight.
            child.kill().unwrap();
            break;
        }
    }
    let _ = child.wait();
    assert_eq!(acked.len(), 2000, "the writer stopped early");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = SqliteStore::open(&path).unwrap();
        for k in &acked {
            assert!(
                s.get(k).await.unwrap().is_some(),
                "acknowledged write {k} was lost"
            );
        }
        // Revisions stay dense and consistent with the rows after the crash.
        let n = s.count("/registry/durable/").await.unwrap();
        assert!(n >= acked.len() as i64);
        assert_eq!(s.current_revision().await.unwrap(), n);
    });
}
