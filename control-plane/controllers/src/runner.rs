//! The shared reconcile machinery every controller runs on, after client-go's
//! informer + workqueue pattern (and kube-rs's `Controller`, which is the same idea):
//!
//! * [`Informer`]: a watch feeding a local cache ([`Store`]) and then a handler that
//!   maps each changed object to the keys of the objects to reconcile. The cache is
//!   updated *before* the handler runs, so a reconcile triggered by an event sees it.
//! * [`WorkQueue`]: keys, deduplicated while they wait; a key is never reconciled by
//!   two workers at once (one re-added while processing runs again afterwards);
//!   failures are retried with per-key exponential back-off (5 ms doubling to 1000 s,
//!   client-go's default item rate limiter).
//! * [`run_workers`]: pops keys and calls `reconcile(key)`, which returns what to do
//!   next as a value ([`Action`]). Reconcilers are level-triggered and idempotent: they
//!   read the caches and make the world match, whatever event woke them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Resource;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::ControllerError;

/// What a queue holds: a namespaced (or cluster-scoped, `namespace: None`) name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub namespace: Option<String>,
    pub name: String,
}

impl Key {
    pub fn new(namespace: Option<&str>, name: &str) -> Self {
        Key {
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        }
    }

    pub fn of<K: Resource>(obj: &K) -> Self {
        let m = obj.meta();
        Key {
            namespace: m.namespace.clone(),
            name: m.name.clone().unwrap_or_default(),
        }
    }

    /// The cache key of this name for kind `K`.
    pub fn object_ref<K: Resource<DynamicType = ()>>(&self) -> reflector::ObjectRef<K> {
        let r = reflector::ObjectRef::new(&self.name);
        match &self.namespace {
            Some(ns) => r.within(ns),
            None => r,
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// What a reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing until an event wakes the key again.
    Done,
    /// Run again after this long (e.g. a minReadySeconds or a deadline to check).
    RequeueAfter(Duration),
}

const BACKOFF_BASE: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1000);

#[derive(Default)]
struct QueueState {
    queue: VecDeque<Key>,
    /// Keys in `queue` (waiting to be picked up).
    waiting: HashSet<Key>,
    /// Keys a worker holds right now.
    processing: HashSet<Key>,
    /// Keys added while processing: they go back to the queue when done.
    dirty: HashSet<Key>,
    failures: HashMap<Key, u32>,
    shut_down: bool,
}

/// A deduplicating work queue of keys; cheap to clone (shared).
#[derive(Clone, Default)]
pub struct WorkQueue {
    state: Arc<Mutex<QueueState>>,
    ready: Arc<Notify>,
}

impl WorkQueue {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `key` unless it is already waiting.
    pub fn add(&self, key: Key) {
        let mut s = self.lock();
        if s.shut_down {
            return;
        }
        if s.processing.contains(&key) {
            s.dirty.insert(key);
            return;
        }
        if s.waiting.insert(key.clone()) {
            s.queue.push_back(key);
            drop(s);
            self.ready.notify_one();
        }
    }

    /// Queues `key` after `delay` (the timer lives in its own task).
    pub fn add_after(&self, key: Key, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            q.add(key);
        });
    }

    /// Queues `key` after its next back-off step (exponential per key).
    pub fn add_rate_limited(&self, key: Key) {
        let n = {
            let mut s = self.lock();
            let n = s.failures.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        self.add_after(key, backoff(n));
    }

    /// Clears the back-off of `key` (after a success).
    pub fn forget(&self, key: &Key) {
        self.lock().failures.remove(key);
    }

    /// Waits for a key and marks it processing. `None` once shut down.
    pub async fn pop(&self) -> Option<Key> {
        loop {
            let notified = self.ready.notified();
            {
                let mut s = self.lock();
                if s.shut_down {
                    return None;
                }
                if let Some(k) = s.queue.pop_front() {
                    s.waiting.remove(&k);
                    s.processing.insert(k.clone());
                    let more = !s.queue.is_empty();
                    drop(s);
                    if more {
                        // Hand the next key to another idle worker.
                        self.ready.notify_one();
                    }
                    return Some(k);
                }
            }
            notified.await;
        }
    }

    /// Marks `key` processed; a key re-added meanwhile is queued again.
    pub fn done(&self, key: &Key) {
        let mut s = self.lock();
        s.processing.remove(key);
        if s.dirty.remove(key) && s.waiting.insert(key.clone()) {
            s.queue.push_back(key.clone());
            drop(s);
            self.ready.notify_one();
        }
    }

    pub fn shut_down(&self) {
        self.lock().shut_down = true;
        self.ready.notify_waiters();
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Back-off for the `n`th consecutive failure (n ≥ 1).
pub fn backoff(n: u32) -> Duration {
    let factor = 1u64 << n.saturating_sub(1).min(30);
    BACKOFF_BASE
        .saturating_mul(factor.min(u32::MAX as u64) as u32)
        .min(BACKOFF_MAX)
}

/// How one watched object changed, as a handler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Created, updated, or (re)listed.
    Applied,
    Deleted,
}

/// A watch of kind `K` kept in a local cache. Built with [`Informer::new`]; run its
/// future ([`Informer::run`]) next to the workers that read [`Informer::store`].
pub struct Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + fmt::Debug + Send + Sync + 'static,
{
    api: Api<K>,
    config: watcher::Config,
    store: Store<K>,
    writer: reflector::store::Writer<K>,
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + fmt::Debug + Send + Sync + 'static,
{
    pub fn new(api: Api<K>) -> Self {
        Self::with_config(api, watcher::Config::default())
    }

    pub fn with_config(api: Api<K>, config: watcher::Config) -> Self {
        let (store, writer) = reflector::store();
        Informer {
            api,
            config,
            store,
            writer,
        }
    }

    /// The cache (readable from anywhere, filled by [`Informer::run`]).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Watches forever (re-listing after errors with back-off), applying each event to
    /// the cache and then calling `handler(object, change)`. `on_resync` runs after each
    /// complete (re)list, when deletions during a watch gap may have been missed.
    pub fn run(
        self,
        handler: impl Fn(&K, Change) + Send + 'static,
        on_resync: impl Fn() + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let Informer {
            api,
            config,
            writer,
            ..
        } = self;
        async move {
            let stream = watcher(api, config).default_backoff().reflect(writer);
            let mut stream = std::pin::pin!(stream.into_stream());
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(Event::Apply(o)) | Ok(Event::InitApply(o)) => handler(&o, Change::Applied),
                    Ok(Event::Delete(o)) => handler(&o, Change::Deleted),
                    Ok(Event::InitDone) => on_resync(),
                    Ok(Event::Init) => {}
                    Err(e) => {
                        tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying")
                    }
                }
            }
        }
    }
}

/// Runs `workers` concurrent reconciles over `queue` until the future is dropped.
/// `Ok(Action)` clears the key's back-off (and requeues if asked); `Err` requeues
/// it rate-limited.
pub async fn run_workers<F, Fut>(name: &'static str, queue: WorkQueue, workers: usize, reconcile: F)
where
    F: Fn(Key) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, ControllerError>> + Send + 'static,
{
    let reconcile = Arc::new(reconcile);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let queue = queue.clone();
        let reconcile = reconcile.clone();
        set.spawn(async move {
            while let Some(key) = queue.pop().await {
                let result = reconcile(key.clone()).await;
                match result {
                    Ok(Action::Done) => queue.forget(&key),
                    Ok(Action::RequeueAfter(d)) => {
                        queue.forget(&key);
                        queue.add_after(key.clone(), d);
                    }
                    Err(e) => {
                        // Conflicts are expected under concurrency: retry quietly.
                        if e.is_conflict() {
                            tracing::debug!(controller = name, key = %key, error = %e, "reconcile conflict; retrying");
                        } else {
                            tracing::warn!(controller = name, key = %key, error = %e, "reconcile failed; retrying");
                        }
                        queue.add_rate_limited(key.clone());
                    }
                }
                queue.done(&key);
            }
        });
    }
    // Dropping `set` (when this future is dropped) aborts the workers.
    while set.join_next().await.is_some() {}
}

/// Waits until every store listed has completed its first list.
pub async fn wait_synced(stores: &[&dyn SyncedStore]) {
    for s in stores {
        s.wait().await;
    }
}

/// A cache whose first complete list can be awaited (any [`Store`]).
pub trait SyncedStore: Sync {
    fn wait(&self) -> futures::future::BoxFuture<'_, ()>;
}

impl<K> SyncedStore for Store<K>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    fn wait(&self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.wait_until_ready().await;
        })
    }
}

/// The controller `ownerReference` of `obj`, if any.
pub fn controller_of<K: Resource>(
    obj: &K,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    obj.meta()
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_millis(5));
        assert_eq!(backoff(2), Duration::from_millis(10));
        assert_eq!(backoff(11), Duration::from_millis(5 * 1024));
        assert_eq!(backoff(40), BACKOFF_MAX);
    }

    #[tokio::test]
    async fn queue_dedups_and_serializes_a_key() {
        let q = WorkQueue::new();
        let a = Key::new(Some("ns"), "a");
        q.add(a.clone());
        q.add(a.clone());
        assert_eq!(q.len(), 1);
        let got = q.pop().await.unwrap();
        assert_eq!(got, a);
        // Added while processing: not handed out again until done.
        q.add(a.clone());
        assert_eq!(q.len(), 0);
        q.done(&a);
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop().await.unwrap(), a);
        q.done(&a);
        assert!(q.is_empty());
    }
}
