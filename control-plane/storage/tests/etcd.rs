//! The conformance suite and crash/restart checks against a real etcd.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kelp_storage::etcd::EtcdStore;
use kelp_storage::testing::EtcdProcess;
use kelp_storage::{conformance, Store, WriteOutcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_conformance() {
    let etcd = EtcdProcess::start();
    let store: Arc<dyn Store> = Arc::new(EtcdStore::connect(&[etcd.endpoint()]).await.unwrap());
    conformance::run_all(store, "/registry/t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_resumes_after_restart() {
    let mut etcd = EtcdProcess::start();
    let rev = {
        let s = EtcdStore::connect(&[etcd.endpoint()]).await.unwrap();
        let WriteOutcome::Done(kv) = s.create("/registry/x/a", b"1".to_vec()).await.unwrap() else {
            panic!("create")
        };
        kv.mod_revision
    };
    etcd.restart();
    let s = EtcdStore::connect(&[etcd.endpoint()]).await.unwrap();
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

/// etcd is killed with SIGKILL right after acknowledged writes; after a restart every
/// acknowledged key is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_acknowledged_writes_survive_kill_9() {
    let mut etcd = EtcdProcess::start();
    let s = Arc::new(EtcdStore::connect(&[etcd.endpoint()]).await.unwrap());
    let mut acked = Vec::new();
    for i in 0..200 {
        let k = format!("/registry/durable/{i:05}");
        if let WriteOutcome::Done(_) = s.create(&k, vec![b'x'; 64]).await.unwrap() {
            acked.push(k);
        }
    }
    etcd.kill();
    etcd.restart();
    let s = EtcdStore::connect(&[etcd.endpoint()]).await.unwrap();
    for k in &acked {
        assert!(
            s.get(k).await.unwrap().is_some(),
            "acknowledged write {k} was lost"
        );
    }
}
