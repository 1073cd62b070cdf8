//! Watch-backed caches: a reflector [`Store`] plus the stream of touched objects that
//! feeds a kube-rs `Controller` (so one watch per kind serves both the cache a
//! reconcile reads and the triggers that wake it).

use std::fmt::Debug;
use std::hash::Hash;

use futures::{Stream, StreamExt};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

/// A reflected watch of `api`: the cache, and every object added, changed or deleted.
pub fn reflect<K>(
    api: Api<K>,
    cfg: watcher::Config,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, cfg))
        .default_backoff()
        .touched_objects();
    (reader, stream)
}

/// Drives a reflected stream that no controller consumes (a cache only).
pub fn drive<K, S>(stream: S)
where
    S: Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    tokio::spawn(async move {
        let mut s = std::pin::pin!(stream);
        while let Some(ev) = s.next().await {
            if let Err(e) = ev {
                tracing::debug!(error = %e, "watch error (retrying)");
            }
        }
    });
}
