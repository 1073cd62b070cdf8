//! The watch cache: one in-memory copy of everything under `/registry/`, kept current
//! by a single store watch, so that lists and the fan-out of watches to many clients
//! never hit the store per client (kube-apiserver's cacher).
//!
//! Writers: only the feeder task. Readers: list snapshots and watch subscriptions,
//! taken under a read lock together with a broadcast subscription, so a subscriber
//! sees every event after its snapshot exactly once.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::{broadcast, watch, RwLock};
use tracing::{debug, info, warn};

use kelp_storage::{EventKind, KeyValue, ListRequest, Revision, Store, StoreError};

use crate::objects::decode;

/// Root of every key the cache holds.
pub const ROOT: &str = "/registry/";
/// How many past events are kept for watches resuming from an older revision.
const HISTORY: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// An object as the cache holds it: decoded once, serialized at most once.
#[derive(Debug)]
pub struct CachedObject {
    pub value: Value,
    pub revision: Revision,
    json: OnceLock<Bytes>,
}

impl CachedObject {
    pub fn new(value: Value, revision: Revision) -> Self {
        Self {
            value,
            revision,
            json: OnceLock::new(),
        }
    }

    /// The object's JSON, serialized on first use and shared by every watcher.
    pub fn json(&self) -> &Bytes {
        self.json
            .get_or_init(|| Bytes::from(serde_json::to_vec(&self.value).unwrap_or_default()))
    }
}

#[derive(Debug)]
pub struct CacheEvent {
    pub kind: EventType,
    pub key: String,
    pub object: Arc<CachedObject>,
    pub prev: Option<Arc<CachedObject>>,
    pub revision: Revision,
}

struct State {
    objects: BTreeMap<String, Arc<CachedObject>>,
    events: VecDeque<Arc<CacheEvent>>,
    revision: Revision,
    /// Events with revision > `oldest` are all in `events`.
    oldest: Revision,
}

pub struct WatchCache {
    state: RwLock<State>,
    tx: broadcast::Sender<Arc<CacheEvent>>,
    rev_tx: watch::Sender<Revision>,
    store: Arc<dyn Store>,
}

/// What a new watcher starts from.
pub enum Start {
    /// Current objects (for `resourceVersion` unset/0), at `revision`.
    Snapshot {
        objects: Vec<Arc<CachedObject>>,
        revision: Revision,
    },
    /// Past events after the requested revision.
    Replay(Vec<Arc<CacheEvent>>),
}

pub struct Subscription {
    pub start: Start,
    pub rx: broadcast::Receiver<Arc<CacheEvent>>,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("too old resource version: {requested} ({oldest})")]
    TooOld {
        requested: Revision,
        oldest: Revision,
    },
}

impl WatchCache {
    /// Loads everything under [`ROOT`] and starts following the store.
    pub async fn start(store: Arc<dyn Store>) -> Result<Arc<Self>, StoreError> {
        let (objects, revision) = load(&*store).await?;
        let (tx, _) = broadcast::channel(16 * 1024);
        let (rev_tx, _) = watch::channel(revision);
        let cache = Arc::new(Self {
            state: RwLock::new(State {
                objects,
                events: VecDeque::new(),
                revision,
                oldest: revision,
            }),
            tx,
            rev_tx,
            store,
        });
        info!(revision, "watch cache loaded");
        let feeder = cache.clone();
        tokio::spawn(async move { feeder.feed().await });
        Ok(cache)
    }

    async fn feed(self: Arc<Self>) {
        loop {
            let from = self.state.read().await.revision;
            let mut stream = match self.store.watch(ROOT, from).await {
                Ok(s) => s,
                Err(StoreError::Compacted { .. }) => {
                    self.reload().await;
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, "watch cache: store watch failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            while let Some(item) = stream.next().await {
                match item {
                    Ok(ev) => self.apply(ev.kind, ev.kv, ev.prev).await,
                    Err(StoreError::Compacted { .. }) => {
                        self.reload().await;
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, "watch cache: store watch ended; resuming");
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// After losing history (compaction under us), start over from a fresh list.
    /// Watchers subscribed before lose their place: their receivers are closed by
    /// replacing nothing here, so they see a lag and end, and clients re-list.
    async fn reload(&self) {
        match load(&*self.store).await {
            Ok((objects, revision)) => {
                let mut st = self.state.write().await;
                st.objects = objects;
                st.events.clear();
                st.revision = revision;
                st.oldest = revision;
                self.rev_tx.send_replace(revision);
            }
            Err(e) => warn!(error = %e, "watch cache: reload failed"),
        }
    }

    async fn apply(&self, kind: EventKind, kv: KeyValue, prev: Option<KeyValue>) {
        let revision = kv.mod_revision;
        let mut st = self.state.write().await;
        if revision <= st.revision {
            return;
        }
        let key = kv.key.clone();
        let prev_obj = st.objects.get(&key).cloned().or_else(|| {
            prev.and_then(|p| {
                let rev = p.mod_revision;
                decode(&p).ok().map(|v| Arc::new(CachedObject::new(v, rev)))
            })
        });
        let event = match kind {
            EventKind::Put => {
                let Ok(value) = decode(&kv) else {
                    warn!(key = %key, "watch cache: undecodable value skipped");
                    st.revision = revision;
                    return;
                };
                let obj = Arc::new(CachedObject::new(value, revision));
                st.objects.insert(key.clone(), obj.clone());
                let kind = if prev_obj.is_some() {
                    EventType::Modified
                } else {
                    EventType::Added
                };
                CacheEvent {
                    kind,
                    key,
                    object: obj,
                    prev: prev_obj,
                    revision,
                }
            }
            EventKind::Delete => {
                st.objects.remove(&key);
                // The deleted object carries the deletion's revision, as upstream.
                let mut value = match &prev_obj {
                    Some(p) => p.value.clone(),
                    None => decode(&kv).unwrap_or(Value::Null),
                };
                if let Some(m) = value.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.insert(
                        "resourceVersion".into(),
                        Value::String(revision.to_string()),
                    );
                }
                let obj = Arc::new(CachedObject::new(value, revision));
                CacheEvent {
                    kind: EventType::Deleted,
                    key,
                    object: obj,
                    prev: prev_obj,
                    revision,
                }
            }
        };
        let event = Arc::new(event);
        st.events.push_back(event.clone());
        while st.events.len() > HISTORY {
            if let Some(old) = st.events.pop_front() {
                st.oldest = old.revision;
            }
        }
        st.revision = revision;
        let _ = self.tx.send(event);
        self.rev_tx.send_replace(revision);
        debug!(revision, "watch cache applied event");
    }

    pub async fn revision(&self) -> Revision {
        self.state.read().await.revision
    }

    /// Waits until the cache has caught up with `revision` (for consistent reads).
    pub async fn wait_for(&self, revision: Revision, timeout: Duration) -> bool {
        let mut rx = self.rev_tx.subscribe();
        let ok = matches!(
            tokio::time::timeout(timeout, rx.wait_for(|r| *r >= revision)).await,
            Ok(Ok(_))
        );
        ok
    }

    /// Objects under `prefix`, in key order, and the revision they are current at.
    pub async fn list(&self, prefix: &str) -> (Vec<Arc<CachedObject>>, Revision) {
        let st = self.state.read().await;
        let items = st
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect();
        (items, st.revision)
    }

    /// One object, if present.
    pub async fn get(&self, key: &str) -> Option<Arc<CachedObject>> {
        self.state.read().await.objects.get(key).cloned()
    }

    /// Starts a watch under `prefix` after `from` (0 = a snapshot of now first).
    pub async fn subscribe(
        &self,
        prefix: &str,
        from: Revision,
    ) -> Result<Subscription, CacheError> {
        let st = self.state.read().await;
        let rx = self.tx.subscribe();
        if from == 0 {
            let objects = st
                .objects
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| v.clone())
                .collect();
            return Ok(Subscription {
                start: Start::Snapshot {
                    objects,
                    revision: st.revision,
                },
                rx,
            });
        }
        if from < st.oldest {
            return Err(CacheError::TooOld {
                requested: from,
                oldest: st.oldest,
            });
        }
        let idx = st.events.partition_point(|e| e.revision <= from);
        let replay = st
            .events
            .iter()
            .skip(idx)
            .filter(|e| e.key.starts_with(prefix))
            .cloned()
            .collect();
        Ok(Subscription {
            start: Start::Replay(replay),
            rx,
        })
    }
}

async fn load(
    store: &dyn Store,
) -> Result<(BTreeMap<String, Arc<CachedObject>>, Revision), StoreError> {
    let mut objects = BTreeMap::new();
    let mut start_after = None;
    let mut revision = None;
    loop {
        let page = store
            .list(ListRequest {
                prefix: ROOT.into(),
                revision,
                limit: Some(10_000),
                start_after: start_after.clone(),
            })
            .await?;
        revision = Some(page.revision);
        for kv in &page.items {
            match decode(kv) {
                Ok(v) => {
                    objects.insert(
                        kv.key.clone(),
                        Arc::new(CachedObject::new(v, kv.mod_revision)),
                    );
                }
                Err(e) => {
                    warn!(key = %kv.key, error = %e, "watch cache: undecodable value skipped")
                }
            }
        }
        start_after = page.items.last().map(|kv| kv.key.clone());
        if page.remaining == 0 || page.items.is_empty() {
            break;
        }
    }
    Ok((objects, revision.unwrap_or(0)))
}
