//! One watch per kind shared by every controller that needs it (upstream's
//! SharedInformerFactory). Pods are watched by nine controllers; with a watch each,
//! every pod change was sent, parsed into a `Pod` and cached nine times — on `kelp up`
//! that CPU is taken from the API server and the node on the same cores. The shared
//! informer keeps one cache and hands each change to every subscriber.

use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::runner::Change;

/// A change as subscribers receive it.
enum Shared<K> {
    Applied(Arc<K>),
    Deleted(Arc<K>),
    /// A complete (re)list ended: deletions during a watch gap may have been missed.
    Resynced,
}

struct Inner<K: Resource<DynamicType = ()> + Clone + 'static> {
    api: Api<K>,
    store: Store<K>,
    writer: Mutex<Option<Writer<K>>>,
    /// Whether the first list has completed (later subscribers are replayed the cache).
    listed: AtomicBool,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Shared<K>>>>,
}

/// A watch of one kind, its cache, and its subscribers. Cheap to clone.
pub struct SharedInformer<K: Resource<DynamicType = ()> + Clone + 'static> {
    inner: Arc<Inner<K>>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Clone for SharedInformer<K> {
    fn clone(&self) -> Self {
        SharedInformer {
            inner: self.inner.clone(),
        }
    }
}

impl<K> SharedInformer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Nothing is watched until [`SharedInformer::run`] is driven.
    pub fn new(api: Api<K>) -> Self {
        let (store, writer) = reflector::store();
        SharedInformer {
            inner: Arc::new(Inner {
                api,
                store,
                writer: Mutex::new(Some(writer)),
                listed: AtomicBool::new(false),
                subscribers: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The shared cache.
    pub fn store(&self) -> Store<K> {
        self.inner.store.clone()
    }

    /// Watches until dropped (re-listing after errors with back-off), updating the
    /// cache and then telling every subscriber. Runs once per informer.
    pub fn run(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let inner = self.inner.clone();
        let writer = inner.writer.lock().expect("informer lock").take();
        async move {
            let Some(writer) = writer else {
                tracing::warn!(kind = %K::kind(&()), "shared informer already running");
                return;
            };
            let stream = watcher(inner.api.clone(), watcher::Config::default())
                .default_backoff()
                .reflect(writer);
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                let change = match ev {
                    Ok(Event::Apply(o)) | Ok(Event::InitApply(o)) => Shared::Applied(Arc::new(o)),
                    Ok(Event::Delete(o)) => Shared::Deleted(Arc::new(o)),
                    Ok(Event::InitDone) => {
                        inner.listed.store(true, Ordering::Release);
                        Shared::Resynced
                    }
                    Ok(Event::Init) => continue,
                    Err(e) => {
                        tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying");
                        continue;
                    }
                };
                let mut subs = inner.subscribers.lock().expect("informer lock");
                subs.retain(|tx| tx.send(change.clone_ref()).is_ok());
            }
        }
    }

    fn subscribe(&self) -> mpsc::UnboundedReceiver<Shared<K>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut subs = self.inner.subscribers.lock().expect("informer lock");
        // Held while replaying: no change is sent between the replay and the
        // subscription (one may arrive twice, which handlers take as any repeat).
        if self.inner.listed.load(Ordering::Acquire) {
            for o in self.inner.store.state() {
                let _ = tx.send(Shared::Applied(o));
            }
            let _ = tx.send(Shared::Resynced);
        }
        subs.push(tx);
        rx
    }

    /// The cache and the stream of objects changed (applied or deleted), as
    /// [`crate::informer::reflect`] gives them for a watch of one's own.
    pub fn reflect(
        &self,
    ) -> (
        Store<K>,
        impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    ) {
        let rx = self.subscribe();
        let stream =
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx).filter_map(|c| async move {
                match c {
                    Shared::Applied(o) | Shared::Deleted(o) => Some(Ok((*o).clone())),
                    Shared::Resynced => None,
                }
            });
        (self.store(), stream)
    }

    /// Calls `handler` for each change and `on_resync` after each complete (re)list,
    /// as [`crate::runner::Informer::run`] does for a watch of its own.
    pub fn handle(
        &self,
        handler: impl Fn(&K, Change) + Send + 'static,
        on_resync: impl Fn() + Send + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.subscribe();
        async move {
            while let Some(c) = rx.recv().await {
                match c {
                    Shared::Applied(o) => handler(&o, Change::Applied),
                    Shared::Deleted(o) => handler(&o, Change::Deleted),
                    Shared::Resynced => on_resync(),
                }
            }
        }
    }
}

impl<K> Shared<K> {
    fn clone_ref(&self) -> Shared<K> {
        match self {
            Shared::Applied(o) => Shared::Applied(o.clone()),
            Shared::Deleted(o) => Shared::Deleted(o.clone()),
            Shared::Resynced => Shared::Resynced,
        }
    }
}
