//! The conformance suite every [`Store`] backend must pass (upstream's
//! `storage/testing/store_tests.go` idea): each function checks one contract and
//! panics with a message on failure. Backends' test files call [`run_all`]; other
//! crates can call it (or single checks) on any `Store`, e.g. a wrapper.
//!
//! Every check writes only under its own prefix below `p`, so one store can run the
//! suite more than once (with different `p`) and checks do not see each other's keys.
//! [`compaction`] and [`compaction_after_compaction`] compact the whole store up to
//! the current revision: run them last (as [`run_all`] does).

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

fn ok<T>(r: Result<T, StoreError>) -> T {
    r.unwrap_or_else(|e| panic!("store call failed: {e}"))
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
    watch_from_now(&*store, p).await;
    compaction(&*store, p).await;
    compaction_after_compaction(&*store, p).await;
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

/// Every successful write (create, update, delete) takes the next revision; a write
/// that loses its precondition takes none.
pub async fn revisions_increase_by_one(s: &dyn Store, p: &str) {
    let before = ok(s.current_revision().await);
    let a = done(ok(s.create(&format!("{p}/rev/a"), b"a".to_vec()).await));
    assert_eq!(a.mod_revision, before + 1, "a create is the next revision");
    let b = done(ok(s.create(&format!("{p}/rev/b"), b"b".to_vec()).await));
    assert_eq!(
        b.mod_revision,
        a.mod_revision + 1,
        "every write is the next revision"
    );
    // Losing writes do not take a revision.
    assert!(matches!(
        ok(s.create(&format!("{p}/rev/a"), b"again".to_vec()).await),
        WriteOutcome::Conflict(_)
    ));
    assert!(matches!(
        ok(
            s.update(&format!("{p}/rev/a"), b"x".to_vec(), b.mod_revision)
                .await
        ),
        WriteOutcome::Conflict(_)
    ));
    assert_eq!(ok(s.current_revision().await), b.mod_revision);
    let a2 = done(ok(s
        .update(&format!("{p}/rev/a"), b"a2".to_vec(), a.mod_revision)
        .await));
    assert_eq!(
        a2.mod_revision,
        b.mod_revision + 1,
        "an update is the next revision"
    );
    let gone = done(ok(s
        .delete(&format!("{p}/rev/b"), Some(b.mod_revision))
        .await));
    assert_eq!(
        gone.mod_revision,
        a2.mod_revision + 1,
        "a delete is the next revision"
    );
    assert_eq!(ok(s.current_revision().await), gone.mod_revision);
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

/// A list at an older revision shows the state then: old values, keys deleted since,
/// not keys created since; a future revision is refused.
pub async fn list_at_old_revision(s: &dyn Store, p: &str) {
    let prefix = format!("{p}/old/");
    let k = format!("{prefix}a");
    let v1 = done(ok(s.create(&k, b"1".to_vec()).await));
    let doomed = done(ok(s.create(&format!("{prefix}b"), b"b".to_vec()).await));
    let at = doomed.mod_revision;
    done(ok(s.update(&k, b"2".to_vec(), v1.mod_revision).await));
    done(ok(s.delete(&format!("{prefix}b"), None).await));
    done(ok(s.create(&format!("{prefix}c"), b"c".to_vec()).await));
    let old = ok(s
        .list(ListRequest {
            prefix: prefix.clone(),
            revision: Some(at),
            ..Default::default()
        })
        .await);
    assert_eq!(old.revision, at);
    let state: Vec<(String, Vec<u8>)> = old
        .items
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    assert_eq!(
        state,
        vec![
            (k.clone(), b"1".to_vec()),
            (format!("{prefix}b"), b"b".to_vec())
        ],
        "the state at the old revision"
    );
    assert_eq!(old.items[0].mod_revision, v1.mod_revision);
    let now = ok(s
        .list(ListRequest {
            prefix: prefix.clone(),
            ..Default::default()
        })
        .await);
    let keys: Vec<&str> = now.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, vec![k.clone(), format!("{prefix}c")]);
    assert_eq!(now.revision, ok(s.current_revision().await));
    let current = ok(s.current_revision().await);
    match s
        .list(ListRequest {
            prefix,
            revision: Some(current + 1000),
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

/// A watch from a past revision replays history, then streams live changes, in
/// revision order, with previous values, and only under its prefix.
pub async fn watch_replay_and_live(s: &dyn Store, p: &str) {
    let prefix = format!("{p}/w/a/");
    let sibling = format!("{p}/w/ab/x");
    let a = done(ok(s.create(&format!("{prefix}a"), b"1".to_vec()).await));
    let sib = done(ok(s.create(&sibling, b"x".to_vec()).await));
    let a2 = done(ok(s
        .update(&format!("{prefix}a"), b"2".to_vec(), a.mod_revision)
        .await));
    let mut w = ok(s.watch(&prefix, a.mod_revision - 1).await);
    let e1 = next(&mut w).await;
    assert_eq!(
        (
            e1.kind,
            e1.kv.mod_revision,
            e1.kv.value.as_slice(),
            e1.prev.is_none()
        ),
        (EventKind::Put, a.mod_revision, &b"1"[..], true),
        "replay starts right after `from`; a create has no previous value"
    );
    let e2 = next(&mut w).await;
    assert_eq!(
        e2.kv.mod_revision, a2.mod_revision,
        "the sibling prefix is not watched"
    );
    assert_eq!(e2.kv.create_revision, a.mod_revision);
    assert_eq!(
        e2.prev.as_ref().map(|p| (p.value.clone(), p.mod_revision)),
        Some((b"1".to_vec(), a.mod_revision)),
        "an update carries the previous value"
    );
    // Live from here on.
    done(ok(s
        .update(&sibling, b"y".to_vec(), sib.mod_revision)
        .await));
    let b = done(ok(s.create(&format!("{prefix}b"), b"b".to_vec()).await));
    let a3 = done(ok(s
        .update(&format!("{prefix}a"), b"3".to_vec(), a2.mod_revision)
        .await));
    let gone = done(ok(s.delete(&format!("{prefix}a"), None).await));
    let e3 = next(&mut w).await;
    assert_eq!(
        e3.kv.mod_revision, b.mod_revision,
        "live events follow replayed ones, in order, without the sibling's"
    );
    let e4 = next(&mut w).await;
    assert_eq!(
        (e4.kind, e4.kv.mod_revision, e4.kv.value.clone()),
        (EventKind::Put, a3.mod_revision, b"3".to_vec())
    );
    assert_eq!(e4.prev.map(|p| p.value), Some(b"2".to_vec()));
    let e5 = next(&mut w).await;
    assert_eq!(e5.kind, EventKind::Delete);
    assert_eq!(e5.kv.key, format!("{prefix}a"));
    assert_eq!(
        e5.kv.mod_revision, gone.mod_revision,
        "a delete event has the delete's revision"
    );
    assert_eq!(gone.value, b"3", "a delete returns the deleted value");
    assert_eq!(
        e5.prev.map(|p| (p.value, p.mod_revision)),
        Some((b"3".to_vec(), a3.mod_revision)),
        "a delete event carries the old value"
    );
}

/// A watch from 0 sees every write acknowledged after the call returned, and nothing
/// from before it.
pub async fn watch_from_now(s: &dyn Store, p: &str) {
    let prefix = format!("{p}/wnow/");
    done(ok(s
        .create(&format!("{prefix}before"), b"0".to_vec())
        .await));
    for i in 0..5 {
        let mut w = ok(s.watch(&prefix, 0).await);
        let kv = done(ok(s.create(&format!("{prefix}k{i}"), b"1".to_vec()).await));
        let ev = next(&mut w).await;
        assert_eq!(
            (ev.kv.key.as_str(), ev.kv.mod_revision),
            (kv.key.as_str(), kv.mod_revision),
            "the first event of a watch from now is the next write"
        );
    }
}

/// Compaction: reads and watches below the point fail `Compacted`; at and above it
/// they work; current values survive.
pub async fn compaction(s: &dyn Store, p: &str) {
    let prefix = format!("{p}/compact/");
    let k = format!("{prefix}a");
    let v1 = done(ok(s.create(&k, b"1".to_vec()).await));
    let v2 = done(ok(s.update(&k, b"2".to_vec(), v1.mod_revision).await));
    ok(s.compact(v2.mod_revision).await);
    assert_eq!(ok(s.compacted_revision().await), v2.mod_revision);
    match s
        .list(ListRequest {
            prefix: prefix.clone(),
            revision: Some(v1.mod_revision),
            ..Default::default()
        })
        .await
    {
        Err(StoreError::Compacted { .. }) => {}
        other => panic!("a list below the compaction point must be Compacted, got {other:?}"),
    }
    match s.watch(&prefix, v1.mod_revision - 1).await {
        Err(StoreError::Compacted { .. }) => {}
        Ok(mut w) => match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
            Ok(Some(Err(StoreError::Compacted { .. }))) => {}
            other => {
                panic!("a watch below the compaction point must fail Compacted, got {other:?}")
            }
        },
        Err(e) => panic!("unexpected error {e}"),
    }
    // At the compaction point, lists and watches still work.
    let at = ok(s
        .list(ListRequest {
            prefix: prefix.clone(),
            revision: Some(v2.mod_revision),
            ..Default::default()
        })
        .await);
    assert_eq!(at.items.len(), 1);
    assert_eq!(at.items[0].value, b"2");
    let mut w = ok(s.watch(&prefix, v2.mod_revision).await);
    let v3 = done(ok(s.update(&k, b"3".to_vec(), v2.mod_revision).await));
    let ev = next(&mut w).await;
    assert_eq!(ev.kv.mod_revision, v3.mod_revision);
    assert_eq!(ev.prev.map(|p| p.value), Some(b"2".to_vec()));
    // The current value survives compaction.
    assert_eq!(ok(s.get(&k).await).map(|kv| kv.value), Some(b"3".to_vec()));
}

/// A second compaction also forgets what the first one had to keep: a key deleted
/// between the two stays deleted at the new point (no resurrection), updated keys show
/// their new value, keys created later do not show.
pub async fn compaction_after_compaction(s: &dyn Store, p: &str) {
    let prefix = format!("{p}/compact2/");
    let a = done(ok(s.create(&format!("{prefix}a"), b"1".to_vec()).await));
    done(ok(s.create(&format!("{prefix}b"), b"1".to_vec()).await));
    done(ok(s
        .create(&format!("{p}/compact2-other"), b"x".to_vec())
        .await));
    ok(s.compact(ok(s.current_revision().await)).await);
    done(ok(s
        .update(&format!("{prefix}a"), b"2".to_vec(), a.mod_revision)
        .await));
    done(ok(s.delete(&format!("{prefix}b"), None).await));
    let point = ok(s.current_revision().await);
    ok(s.compact(point).await);
    done(ok(s.create(&format!("{prefix}c"), b"1".to_vec()).await));
    let at = ok(s
        .list(ListRequest {
            prefix: prefix.clone(),
            revision: Some(point),
            ..Default::default()
        })
        .await);
    let state: Vec<(String, Vec<u8>)> = at
        .items
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    assert_eq!(
        state,
        vec![(format!("{prefix}a"), b"2".to_vec())],
        "the state at the second compaction point"
    );
    assert_eq!(ok(s.count(&prefix).await), 2);
}
