//! The conformance suite every [`Store`] backend must pass (upstream's
//! `storage/testing/store_tests.go` idea): each function checks one contract and
//! panics with a message on failure. Backends' test files call [`run_all`].

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::{EventKind, ListRequest, Store, StoreError, WatchStream, WriteOutcome};

fn done(o: WriteOutcome) -> crate::KeyValue {
    match o {
        WriteOutcome::Done(kv) => kv,
        WriteOutcome::Conflict(c) => {
            panic!("expected the write to succeed, got a conflict with {c:?}")
        }
    }
}

async fn next(w: &mut WatchStream) -> crate::WatchEvent {
    match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
        Ok(Some(Ok(ev))) => ev,
        Ok(Some(Err(e))) => panic!("watch error: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within 10s"),
    }
}

/// Runs every check; `p` namespaces keys so one backend instance can run it repeatedly.
pub async fn run_all(store: Arc<dyn Store>, p: &str) {
    create_get_conflict(&*store, p).await;
    update_preconditions(&*store, p).await;
    delete_preconditions(&*store, p).await;
    revisions_increase_by_one(&*store, p).await;
    list_prefix_and_paging(&*store, p).await;
    list_at_old_revision(&*store, p).await;
    racing_writers(store.clone(), p).await;
    watch_replay_and_live(&*store, p).await;
    compaction(&*store, p).await;
}

pub async fn create_get_conflict(s: &dyn Store, p: &str) {
    let k = format!("{p}/cgc/a");
    let kv = done(s.create(&k, b"one".to_vec()).await.unwrap());
    assert_eq!(kv.create_revision, kv.mod_revision);
    let got = s.get(&k).await.unwrap().expect("created key is readable");
    assert_eq!(got.value, b"one");
    assert_eq!(got.mod_revision, kv.mod_revision);
    match s.create(&k, b"two".to_vec()).await.unwrap() {
        WriteOutcome::Conflict(Some(cur)) => assert_eq!(cur.value, b"one"),
        other => panic!("create of an existing key must conflict, got {other:?}"),
    }
    assert!(s.get(&format!("{p}/cgc/missing")).await.unwrap().is_none());
}

pub async fn update_preconditions(s: &dyn Store, p: &str) {
    let k = format!("{p}/upd/a");
    let v1 = done(s.create(&k, b"1".to_vec()).await.unwrap());
    let v2 = done(s.update(&k, b"2".to_vec(), v1.mod_revision).await.unwrap());
    assert!(v2.mod_revision > v1.mod_revision);
    assert_eq!(v2.create_revision, v1.create_revision);
    match s.update(&k, b"3".to_vec(), v1.mod_revision).await.unwrap() {
        WriteOutcome::Conflict(Some(cur)) => assert_eq!(cur.value, b"2"),
        other => panic!("stale update must conflict, got {other:?}"),
    }
    match s
        .update(&format!("{p}/upd/missing"), b"x".to_vec(), 1)
        .await
        .unwrap()
    {
        WriteOutcome::Conflict(None) => {}
        other => panic!("update of a missing key must be Conflict(None), got {other:?}"),
    }
}

pub async fn delete_preconditions(s: &dyn Store, p: &str) {
    let k = format!("{p}/del/a");
    let v1 = done(s.create(&k, b"1".to_vec()).await.unwrap());
    let v2 = done(s.update(&k, b"2".to_vec(), v1.mod_revision).await.unwrap());
    assert!(matches!(
        s.delete(&k, Some(v1.mod_revision)).await.unwrap(),
        WriteOutcome::Conflict(Some(_))
    ));
    let gone = done(s.delete(&k, Some(v2.mod_revision)).await.unwrap());
    assert_eq!(gone.value, b"2", "a delete returns the last value");
    assert!(gone.mod_revision > v2.mod_revision);
    assert!(s.get(&k).await.unwrap().is_none());
    assert_eq!(
        s.delete(&k, None).await.unwrap(),
        WriteOutcome::Conflict(None)
    );
    // Unconditional delete, and re-create after delete.
    done(s.create(&k, b"3".to_vec()).await.unwrap());
    done(s.delete(&k, None).await.unwrap());
}

pub async fn revisions_increase_by_one(s: &dyn Store, p: &str) {
    let before = s.current_revision().await.unwrap();
    let a = done(
        s.create(&format!("{p}/rev/a"), b"a".to_vec())
            .await
            .unwrap(),
    );
    let b = done(
        s.create(&format!("{p}/rev/b"), b"b".to_vec())
            .await
            .unwrap(),
    );
    assert!(a.mod_revision > before);
    assert_eq!(
        b.mod_revision,
        a.mod_revision + 1,
        "every write is the next revision"
    );
    assert_eq!(s.current_revision().await.unwrap(), b.mod_revision);
}

pub async fn list_prefix_and_paging(s: &dyn Store, p: &str) {
    for k in ["a/1", "a/2", "a/3", "a/4", "a/5", "ab/1"] {
        done(
            s.create(&format!("{p}/list/{k}"), k.as_bytes().to_vec())
                .await
                .unwrap(),
        );
    }
    let prefix = format!("{p}/list/a/");
    let all = s
        .list(ListRequest {
            prefix: prefix.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.items.len(), 5, "prefix /a/ must not include /ab/");
    assert!(
        all.items.windows(2).all(|w| w[0].key < w[1].key),
        "key order"
    );
    assert_eq!(s.count(&prefix).await.unwrap(), 5);
    let page1 = s
        .list(ListRequest {
            prefix: prefix.clone(),
            limit: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page1.items.len(), 2);
    assert_eq!(page1.remaining, 3);
    // A write after the first page must not show in later pages read at its revision.
    done(
        s.create(&format!("{p}/list/a/0"), b"late".to_vec())
            .await
            .unwrap(),
    );
    let page2 = s
        .list(ListRequest {
            prefix: prefix.clone(),
            limit: Some(2),
            revision: Some(page1.revision),
            start_after: page1.items.last().map(|kv| kv.key.clone()),
        })
        .await
        .unwrap();
    assert_eq!(
        page2
            .items
            .iter()
            .map(|kv| kv.value.clone())
            .collect::<Vec<_>>(),
        vec![b"a/3".to_vec(), b"a/4".to_vec()]
    );
    assert_eq!(page2.remaining, 1);
    let last = s
        .list(ListRequest {
            prefix,
            limit: Some(2),
            revision: Some(page1.revision),
            start_after: page2.items.last().map(|kv| kv.key.clone()),
        })
        .await
        .unwrap();
    assert_eq!(last.items.len(), 1);
    assert_eq!(last.remaining, 0);
}

pub async fn list_at_old_revision(s: &dyn Store, p: &str) {
    let k = format!("{p}/old/a");
    let v1 = done(s.create(&k, b"1".to_vec()).await.unwrap());
    done(s.update(&k, b"2".to_vec(), v1.mod_revision).await.unwrap());
    let old = s
        .list(ListRequest {
            prefix: format!("{p}/old/"),
            revision: Some(v1.mod_revision),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(old.items.len(), 1);
    assert_eq!(old.items[0].value, b"1");
    let now = s.current_revision().await.unwrap();
    match s
        .list(ListRequest {
            prefix: format!("{p}/old/"),
            revision: Some(now + 1000),
            ..Default::default()
        })
        .await
    {
        Err(StoreError::FutureRevision { .. }) => {}
        other => panic!("a future revision must be refused, got {other:?}"),
    }
}

/// 32 writers race to update one key from the same revision: exactly one wins.
pub async fn racing_writers(s: Arc<dyn Store>, p: &str) {
    let k = format!("{p}/race/a");
    let base = done(s.create(&k, b"0".to_vec()).await.unwrap());
    let mut tasks = Vec::new();
    for i in 0..32 {
        let s = s.clone();
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            s.update(&k, format!("{i}").into_bytes(), base.mod_revision)
                .await
        }));
    }
    let mut wins = 0;
    let mut conflicts = 0;
    for t in tasks {
        match t.await.unwrap().unwrap() {
            WriteOutcome::Done(_) => wins += 1,
            WriteOutcome::Conflict(_) => conflicts += 1,
        }
    }
    assert_eq!(
        (wins, conflicts),
        (1, 31),
        "exactly one of the racing writers wins"
    );
}

pub async fn watch_replay_and_live(s: &dyn Store, p: &str) {
    let prefix = format!("{p}/watch/");
    let a = done(
        s.create(&format!("{prefix}a"), b"1".to_vec())
            .await
            .unwrap(),
    );
    let a2 = done(
        s.update(&format!("{prefix}a"), b"2".to_vec(), a.mod_revision)
            .await
            .unwrap(),
    );
    done(
        s.create(&format!("{p}/other/x"), b"x".to_vec())
            .await
            .unwrap(),
    );
    let mut w = s.watch(&prefix, a.mod_revision - 1).await.unwrap();
    let e1 = next(&mut w).await;
    assert_eq!(
        (e1.kind, e1.kv.mod_revision, e1.prev.is_none()),
        (EventKind::Put, a.mod_revision, true)
    );
    let e2 = next(&mut w).await;
    assert_eq!(e2.kv.mod_revision, a2.mod_revision);
    assert_eq!(
        e2.prev.as_ref().map(|p| p.value.clone()),
        Some(b"1".to_vec())
    );
    let b = done(
        s.create(&format!("{prefix}b"), b"b".to_vec())
            .await
            .unwrap(),
    );
    let gone = done(s.delete(&format!("{prefix}a"), None).await.unwrap());
    let e3 = next(&mut w).await;
    assert_eq!(
        e3.kv.mod_revision, b.mod_revision,
        "live events follow replayed ones, in order"
    );
    let e4 = next(&mut w).await;
    assert_eq!(e4.kind, EventKind::Delete);
    assert_eq!(e4.kv.mod_revision, gone.mod_revision);
    assert_eq!(
        e4.prev.map(|p| p.value),
        Some(b"2".to_vec()),
        "a delete event carries the old value"
    );
}

pub async fn compaction(s: &dyn Store, p: &str) {
    let k = format!("{p}/compact/a");
    let v1 = done(s.create(&k, b"1".to_vec()).await.unwrap());
    let v2 = done(s.update(&k, b"2".to_vec(), v1.mod_revision).await.unwrap());
    s.compact(v2.mod_revision).await.unwrap();
    assert!(s.compacted_revision().await.unwrap() >= v2.mod_revision);
    match s
        .list(ListRequest {
            prefix: format!("{p}/compact/"),
            revision: Some(v1.mod_revision),
            ..Default::default()
        })
        .await
    {
        Err(StoreError::Compacted { .. }) => {}
        other => panic!("a list below the compaction point must be Compacted, got {other:?}"),
    }
    match s.watch(&format!("{p}/compact/"), v1.mod_revision - 1).await {
        Err(StoreError::Compacted { .. }) => {}
        Ok(mut w) => match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
            Ok(Some(Err(StoreError::Compacted { .. }))) => {}
            other => {
                panic!("a watch below the compaction point must fail Compacted, got {other:?}")
            }
        },
        Err(e) => panic!("unexpected error {e}"),
    }
    // The current value survives compaction.
    assert_eq!(
        s.get(&k).await.unwrap().map(|kv| kv.value),
        Some(b"2".to_vec())
    );
}
