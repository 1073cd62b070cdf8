//! The control plane's storage layer: a revisioned key-value store in the etcd model.
//!
//! Only the API server talks to a [`Store`]. Keys are kube-apiserver's layout
//! (`/registry/pods/NAMESPACE/NAME`), values are the objects' JSON bytes, and every
//! write gets the next global revision, which the API server exposes as
//! `metadata.resourceVersion`.
//!
//! This crate must not depend on the API server or on any Kubernetes types.
//!
//! Backends: [`sqlite::SqliteStore`] (embedded, the default) and [`etcd::EtcdStore`]
//! (a real etcd v3 cluster over gRPC). [`conformance`] is the suite both pass;
//! [`testing`] starts a real etcd for tests.

pub mod conformance;
pub mod etcd;
pub mod sqlite;
pub mod testing;

use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;

/// A store revision (etcd's `mod_revision`). Revisions start at 1 and only grow.
pub type Revision = i64;

/// One key at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision at which the key was (last) created.
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
}

/// A page of keys under a prefix, read at one revision.
#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    /// Keys that start with this prefix (e.g. `/registry/pods/default/`).
    pub prefix: String,
    /// Read at this revision; `None` (or `Some(0)`) means the latest. Older than the compaction
    /// point ⇒ [`StoreError::Compacted`]; newer than current ⇒ [`StoreError::FutureRevision`].
    pub revision: Option<Revision>,
    /// At most this many items; `None` means all (so does `Some(0)`, as for etcd and
    /// the Kubernetes API's `limit=0`).
    pub limit: Option<usize>,
    /// Only keys strictly greater than this one (the continue point of the previous page).
    pub start_after: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ListResponse {
    /// In key order.
    pub items: Vec<KeyValue>,
    /// The revision the list was read at (the store's current revision when the request
    /// had none). Later pages must be read at this revision.
    pub revision: Revision,
    /// Number of matching keys after the last returned item (0 when the page is the last).
    pub remaining: i64,
}

/// Result of a conditional write. Losing a race is a value, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The write happened; the key's new state (for deletes: the deleted value with
    /// `mod_revision` = the delete's revision).
    Done(KeyValue),
    /// The precondition failed: the key's current state (`None` if it does not exist).
    Conflict(Option<KeyValue>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change, as a watch delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    /// For `Put`: the new state. For `Delete`: the key, the last value before the delete,
    /// and `mod_revision` = the revision of the delete.
    pub kv: KeyValue,
    /// The state before this change (`None` for a create).
    pub prev: Option<KeyValue>,
}

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, StoreError>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The requested revision is below the compaction point.
    #[error("required revision {requested} has been compacted (compacted up to {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("required revision {requested} is a future revision (current {current})")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    /// The backend could not be reached or failed; the write may or may not have happened.
    #[error("storage backend unavailable: {0}")]
    Unavailable(String),
    #[error("storage backend error: {0}")]
    Internal(String),
}

/// A revisioned key-value store with watch (the etcd model; see kine for SQL-as-etcd).
///
/// Contract shared by every backend (checked by [`conformance`]):
/// - every successful write increments the global revision by exactly one;
/// - an acknowledged write (an `Ok(Done)` answer) is durable: it survives a crash;
/// - watches deliver every change under the prefix with revision > `from`, in
///   revision order, with no gaps, until the stream is dropped.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    async fn list(&self, req: ListRequest) -> Result<ListResponse, StoreError>;

    /// Number of keys under `prefix` at the latest revision.
    async fn count(&self, prefix: &str) -> Result<i64, StoreError>;

    /// Create `key` only if it does not exist. `Conflict(Some(current))` if it does.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<WriteOutcome, StoreError>;

    /// Replace `key` only if its `mod_revision` equals `expected`.
    /// `Conflict(current)` otherwise (`Conflict(None)` if the key is missing).
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<WriteOutcome, StoreError>;

    /// Delete `key`, only if its `mod_revision` equals `expected` when given.
    /// `Conflict(None)` if the key does not exist.
    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<WriteOutcome, StoreError>;

    /// Every change under `prefix` with revision > `from` (`from` = 0: changes after now).
    /// `from` below the compaction point ⇒ `Err(Compacted)` (from the call or as the
    /// stream's first item).
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError>;

    /// The latest revision.
    async fn current_revision(&self) -> Result<Revision, StoreError>;

    /// Forget history below `revision`: reads and watches below it become `Compacted`.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    /// The compaction point (reads at revisions below it fail).
    async fn compacted_revision(&self) -> Result<Revision, StoreError>;
}
