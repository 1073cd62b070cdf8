//! The conformance suite and crash/restart checks against a real etcd process (the
//! Debian package etcd-server; these tests fail, not skip, when `etcd` is missing).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kelp_storage::etcd::EtcdStore;
use kelp_storage::testing::{example_bin, EtcdProcess};
use kelp_storage::{conformance, Store, WriteOutcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_conformance() {
    let etcd = EtcdProcess::start();
    let store: Arc<dyn Store> = Arc::new(EtcdStore::connect(&[etcd.endpoint()]).await.unwrap());
    conformance::run_all(store, "/registry/t").await;
}

/// Several endpoints, with and without `http://`, one of them dead: requests still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_connect_several_endpoints() {
    let etcd = EtcdProcess::start();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let s = EtcdStore::connect(&[format!("http://{}", etcd.endpoint()), dead])
        .await
        .unwrap();
    for i in 0..10 {
        let r = s
            .create(&format!("/registry/multi/{i}"), b"x".to_vec())
            .await;
        assert!(matches!(r, Ok(WriteOutcome::Done(_))), "create {i}: {r:?}");
    }
    assert_eq!(s.count("/registry/multi/").await.unwrap(), 10);
}

/// Write, note the revision, restart etcd: a watch from that revision (on a client that
/// lived through the restart, and on a new one) sees later writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_resumes_after_restart() {
    let mut etcd = EtcdProcess::start();
    let old = EtcdStore::connect(&[etcd.endpoint()]).await.unwrap();
    let WriteOutcome::Done(kv) = old.create("/registry/x/a", b"1".to_vec()).await.unwrap() else {
        panic!("create")
    };
    let rev = kv.mod_revision;
    etcd.restart();
    let s = EtcdStore::connect(&[etcd.endpoint()]).await.unwrap();
    let mut w = s.watch("/registry/x/", rev).await.unwrap();
    // The old client reconnects by itself.
    let mut w_old = loop {
        match old.watch("/registry/x/", rev).await {
            Ok(w) => break w,
            Err(kelp_storage::StoreError::Unavailable(_)) => tokio::task::yield_now().await,
            Err(e) => panic!("watch on the old client: {e}"),
        }
    };
    s.create("/registry/x/b", b"2".to_vec()).await.unwrap();
    for w in [&mut w, &mut w_old] {
        let ev = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(ev.kv.key, "/registry/x/b");
        assert_eq!(ev.kv.mod_revision, rev + 1);
    }
}

/// A child process writes from 8 concurrent writers through `EtcdStore` and prints each
/// acknowledged key; etcd itself is killed with SIGKILL right after an acknowledged
/// write, with more in flight; after a restart every acknowledged key is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_acknowledged_writes_survive_kill_9() {
    let mut etcd = EtcdProcess::start();
    let mut child = Command::new(example_bin("store-writer"))
        .arg(format!("etcd://{}", etcd.endpoint()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut acked = Vec::new();
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            acked.push(line);
            if acked.len() == 500 {
                break;
            }
        }
        acked
    });
    let acked = tokio::task::spawn_blocking(move || reader.join().unwrap())
        .await
        .unwrap();
    // SIGKILL etcd right after the 500th acknowledgement, then stop the writer.
    etcd.kill();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(acked.len(), 500, "the writer stopped early");
    etcd.restart();
    let s = EtcdStore::connect(&[etcd.endpoint()]).await.unwrap();
    for k in &acked {
        assert!(
            s.get(k).await.unwrap().is_some(),
            "acknowledged write {k} was lost"
        );
    }
}
