//! `SqliteStore`: the embedded default backend, etcd emulated on SQLite in the kine
//! model (one row per revision, history kept until compaction).
//!
//! Table `kv` has one row per write: `id` is the revision (assigned by the writer from
//! the durable counter in `meta`, so never reused even after compaction), `created`/`deleted` flag a
//! create or a delete (a delete row carries the deleted value), `prev_revision` is the
//! row the write superseded and `old_value` its value (so a watch replays the previous
//! state without a join). Table `current` maps each live key to its latest row, so point
//! reads, counts and lists at the latest revision never scan history.
//!
//! One writer thread owns the only write connection and commits in groups: it drains
//! every queued write into one transaction (one fsync with `synchronous=FULL` in WAL
//! mode), checks each precondition in order inside it, then publishes the events in
//! revision order and answers the callers. Reads use a small pool of read-only
//! connections on blocking threads (WAL lets them run beside the writer, each on a
//! consistent snapshot).
//!
//! Compaction moves the compaction point at once (reads and watches below it fail from
//! then on), then deletes superseded rows and delete markers at or below it in batches of
//! [`COMPACT_BATCH`] revisions, each batch in the same transaction as a group of writes
//! (or alone when none are queued), so writers never wait behind a large compaction. It
//! resumes after a restart.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::{broadcast, oneshot, Semaphore};
use tracing::{debug, warn};

use crate::{
    EventKind, KeyValue, ListRequest, ListResponse, Revision, Store, StoreError, WatchEvent,
    WatchStream, WriteOutcome,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    created INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    create_revision INTEGER NOT NULL,
    prev_revision INTEGER NOT NULL,
    value BLOB NOT NULL,
    old_value BLOB
);
CREATE INDEX IF NOT EXISTS kv_name_id ON kv(name, id);
CREATE TABLE IF NOT EXISTS current (name TEXT PRIMARY KEY, id INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (k, v) VALUES ('revision', 0), ('compacted', 0), ('compact_done', 0);
";

/// Revisions whose superseded rows one compaction step deletes.
pub const COMPACT_BATCH: i64 = 2000;
/// Most write requests committed in one transaction.
const MAX_GROUP: usize = 4096;
/// Read-only connections (and concurrent blocking reads).
const READERS: usize = 4;
/// Rows read per watch catch-up page.
const REPLAY_PAGE: i64 = 5000;
/// Events buffered for live watchers; a watcher further behind catches up from the table.
const BROADCAST: usize = 64 * 1024;

fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::Internal(format!("sqlite: {e}"))
}

fn stopped() -> StoreError {
    StoreError::Unavailable("sqlite writer stopped".into())
}

enum Op {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: Revision,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
    Compact {
        revision: Revision,
    },
}

enum Reply {
    Write(oneshot::Sender<Result<WriteOutcome, StoreError>>),
    Compact(oneshot::Sender<Result<(), StoreError>>),
}

struct Request {
    op: Op,
    reply: Reply,
}

/// A pool of read-only connections used from blocking threads.
struct ReadPool {
    path: PathBuf,
    conns: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl ReadPool {
    /// Runs `f` on a pooled connection off the async runtime; at most [`READERS`] at once.
    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| stopped())?;
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = pool.conns.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let conn = match conn {
                Some(c) => c,
                None => open_conn(&pool.path, false)?,
            };
            let out = f(&conn);
            pool.conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn);
            out
        })
        .await
        .map_err(|e| StoreError::Internal(format!("sqlite read task: {e}")))?
    }
}

/// The embedded store. Cheap to share behind an `Arc`; dropping it stops the writer
/// thread once queued writes are committed.
pub struct SqliteStore {
    tx: mpsc::Sender<Request>,
    pool: Arc<ReadPool>,
    events: broadcast::Sender<Arc<WatchEvent>>,
    revision: Arc<AtomicI64>,
    compacted: Arc<AtomicI64>,
}

fn open_conn(path: &Path, write: bool) -> Result<Connection, StoreError> {
    let c = Connection::open(path).map_err(db_err)?;
    c.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(db_err)?;
    c.pragma_update(None, "journal_mode", "WAL")
        .map_err(db_err)?;
    // FULL: in WAL mode the WAL is fsynced at every commit, so a commit is on disk
    // before its caller hears of it (kill -9 and power loss alike).
    c.pragma_update(None, "synchronous", "FULL")
        .map_err(db_err)?;
    if !write {
        c.pragma_update(None, "query_only", true).map_err(db_err)?;
    }
    Ok(c)
}

/// The smallest string greater than every string that starts with `prefix` (UTF-8 byte
/// order is code point order), or `None` when there is none (empty prefix).
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(c as u32 + 1),
        };
        if let Some(n) = next {
            chars.push(n);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Upper bound for SQL range conditions: past every key when the prefix has none.
fn sql_end(prefix: &str) -> String {
    prefix_end(prefix).unwrap_or_else(|| char::MAX.to_string().repeat(4))
}

fn row_kv(name: String, value: Vec<u8>, create_revision: i64, id: i64) -> KeyValue {
    KeyValue {
        key: name,
        value,
        create_revision,
        mod_revision: id,
    }
}

fn meta(conn: &Connection, k: &str) -> Result<i64, StoreError> {
    conn.query_row("SELECT v FROM meta WHERE k = ?1", [k], |r| r.get(0))
        .map_err(db_err)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, BROADCAST)
    }

    /// `open` with a given live-event buffer (tests use a tiny one to force the
    /// catch-up path of lagging watchers).
    fn open_with(path: &Path, broadcast_capacity: usize) -> Result<Self, StoreError> {
        let conn = open_conn(path, true)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        let rev = meta(&conn, "revision")?;
        let compacted = meta(&conn, "compacted")?;
        let compact_done = meta(&conn, "compact_done")?;
        let revision = Arc::new(AtomicI64::new(rev));
        let compacted_at = Arc::new(AtomicI64::new(compacted));
        let (events, _) = broadcast::channel(broadcast_capacity);
        let (tx, rx) = mpsc::channel::<Request>();
        let writer = Writer {
            conn,
            rev,
            compacted,
            compact_done,
            waiters: Vec::new(),
            events: events.clone(),
            revision: revision.clone(),
            compacted_at: compacted_at.clone(),
        };
        std::thread::Builder::new()
            .name("kelp-sqlite-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Internal(format!("starting the sqlite writer: {e}")))?;
        let mut conns = Vec::new();
        for _ in 0..READERS {
            conns.push(open_conn(path, false)?);
        }
        debug!(path = %path.display(), revision = rev, compacted, "sqlite store open");
        Ok(SqliteStore {
            tx,
            pool: Arc::new(ReadPool {
                path: path.to_path_buf(),
                conns: Mutex::new(conns),
                permits: Arc::new(Semaphore::new(READERS)),
            }),
            events,
            revision,
            compacted: compacted_at,
        })
    }

    async fn write(&self, op: Op) -> Result<WriteOutcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request {
                op,
                reply: Reply::Write(reply),
            })
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}

/// Rows with revision > `after` under `prefix`, as watch events, oldest first; read on
/// one snapshot together with the compaction point, so a concurrent compaction shows
/// as `Compacted`, never as missing events.
fn history(
    conn: &Connection,
    prefix: &str,
    after: Revision,
    limit: i64,
) -> Result<Vec<WatchEvent>, StoreError> {
    let tx = conn.unchecked_transaction().map_err(db_err)?;
    let compacted = meta(&tx, "compacted")?;
    if after < compacted {
        return Err(StoreError::Compacted {
            requested: after,
            compacted,
        });
    }
    let mut stmt = tx
        .prepare_cached(
            "SELECT id, name, created, deleted, create_revision, prev_revision, value, old_value FROM kv
             WHERE id > ?1 AND name >= ?2 AND name < ?3 ORDER BY id LIMIT ?4",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map(params![after, prefix, sql_end(prefix), limit], |r| {
            let id: i64 = r.get(0)?;
            let name: String = r.get(1)?;
            let created: bool = r.get(2)?;
            let deleted: bool = r.get(3)?;
            let create_revision: i64 = r.get(4)?;
            let prev_revision: i64 = r.get(5)?;
            let value: Vec<u8> = r.get(6)?;
            let old_value: Option<Vec<u8>> = r.get(7)?;
            let prev = (!created).then(|| KeyValue {
                key: name.clone(),
                value: old_value.unwrap_or_default(),
                create_revision,
                mod_revision: prev_revision,
            });
            Ok(WatchEvent {
                kind: if deleted {
                    EventKind::Delete
                } else {
                    EventKind::Put
                },
                kv: row_kv(name, value, create_revision, id),
                prev,
            })
        })
        .map_err(db_err)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
}

struct Writer {
    conn: Connection,
    rev: i64,
    /// The compaction point (reads below it fail).
    compacted: i64,
    /// History is deleted up to here; catches up with `compacted` in steps.
    compact_done: i64,
    /// `compact` calls waiting for `compact_done` to reach their revision.
    waiters: Vec<(Revision, oneshot::Sender<Result<(), StoreError>>)>,
    events: broadcast::Sender<Arc<WatchEvent>>,
    revision: Arc<AtomicI64>,
    compacted_at: Arc<AtomicI64>,
}

struct Current {
    id: i64,
    create_revision: i64,
    value: Vec<u8>,
}

/// What one group commit changed, applied to the writer once the commit is durable.
struct Committed {
    rev: i64,
    compacted: i64,
    compact_done: i64,
}

fn current(tx: &rusqlite::Transaction<'_>, key: &str) -> Result<Option<Current>, rusqlite::Error> {
    tx.prepare_cached(
        "SELECT kv.id, kv.create_revision, kv.value FROM current JOIN kv ON kv.id = current.id WHERE current.name = ?1",
    )?
    .query_row([key], |r| {
        Ok(Current {
            id: r.get(0)?,
            create_revision: r.get(1)?,
            value: r.get(2)?,
        })
    })
    .optional()
}

#[allow(clippy::too_many_arguments)]
fn insert_row(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    key: &str,
    created: bool,
    deleted: bool,
    create_revision: i64,
    prev_revision: i64,
    value: &[u8],
    old_value: Option<&[u8]>,
) -> Result<(), rusqlite::Error> {
    tx.prepare_cached(
        "INSERT INTO kv (id, name, created, deleted, create_revision, prev_revision, value, old_value)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        id,
        key,
        created,
        deleted,
        create_revision,
        prev_revision,
        value,
        old_value
    ])?;
    if deleted {
        tx.prepare_cached("DELETE FROM current WHERE name = ?1")?
            .execute([key])?;
    } else {
        tx.prepare_cached("INSERT OR REPLACE INTO current (name, id) VALUES (?1, ?2)")?
            .execute(params![key, id])?;
    }
    Ok(())
}

/// Applies one write inside the group's transaction: checks the precondition against
/// the state left by the writes before it, and on success takes revision `*rev + 1`.
fn apply(
    tx: &rusqlite::Transaction<'_>,
    rev: &mut i64,
    op: Op,
    published: &mut Vec<WatchEvent>,
) -> Result<WriteOutcome, rusqlite::Error> {
    let conflict = |key: String, c: Current| {
        WriteOutcome::Conflict(Some(row_kv(key, c.value, c.create_revision, c.id)))
    };
    Ok(match op {
        Op::Compact { .. } => unreachable!("compaction is handled by the caller"),
        Op::Create { key, value } => match current(tx, &key)? {
            Some(c) => conflict(key, c),
            None => {
                *rev += 1;
                insert_row(tx, *rev, &key, true, false, *rev, 0, &value, None)?;
                let kv = row_kv(key, value, *rev, *rev);
                published.push(WatchEvent {
                    kind: EventKind::Put,
                    kv: kv.clone(),
                    prev: None,
                });
                WriteOutcome::Done(kv)
            }
        },
        Op::Update {
            key,
            value,
            expected,
        } => match current(tx, &key)? {
            Some(c) if c.id == expected => {
                *rev += 1;
                insert_row(
                    tx,
                    *rev,
                    &key,
                    false,
                    false,
                    c.create_revision,
                    c.id,
                    &value,
                    Some(&c.value),
                )?;
                let kv = row_kv(key.clone(), value, c.create_revision, *rev);
                published.push(WatchEvent {
                    kind: EventKind::Put,
                    kv: kv.clone(),
                    prev: Some(row_kv(key, c.value, c.create_revision, c.id)),
                });
                WriteOutcome::Done(kv)
            }
            Some(c) => conflict(key, c),
            None => WriteOutcome::Conflict(None),
        },
        Op::Delete { key, expected } => match current(tx, &key)? {
            Some(c) if expected.is_none_or(|e| e == c.id) => {
                *rev += 1;
                insert_row(
                    tx,
                    *rev,
                    &key,
                    false,
                    true,
                    c.create_revision,
                    c.id,
                    &c.value,
                    Some(&c.value),
                )?;
                let kv = row_kv(key.clone(), c.value.clone(), c.create_revision, *rev);
                published.push(WatchEvent {
                    kind: EventKind::Delete,
                    kv: kv.clone(),
                    prev: Some(row_kv(key, c.value, c.create_revision, c.id)),
                });
                WriteOutcome::Done(kv)
            }
            Some(c) => conflict(key, c),
            None => WriteOutcome::Conflict(None),
        },
    })
}

/// One compaction step: for the rows with revision in `(done, min(done + batch, target)]`,
/// deletes the rows they superseded (`prev_revision`, wherever it is) and the delete
/// markers themselves. After the step every row at or below the new `done` that is not
/// the latest state of its key at `done` is gone. Returns the new `done`.
fn compact_step(
    tx: &rusqlite::Transaction<'_>,
    done: i64,
    target: i64,
) -> Result<i64, rusqlite::Error> {
    if done >= target {
        return Ok(done);
    }
    let hi = target.min(done + COMPACT_BATCH);
    let doomed: Vec<i64> = tx
        .prepare_cached(
            "SELECT prev_revision FROM kv WHERE id > ?1 AND id <= ?2 AND created = 0 AND prev_revision > 0
             UNION SELECT id FROM kv WHERE id > ?1 AND id <= ?2 AND deleted = 1",
        )?
        .query_map(params![done, hi], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut del = tx.prepare_cached("DELETE FROM kv WHERE id = ?1")?;
    for id in &doomed {
        del.execute([id])?;
    }
    tx.prepare_cached("UPDATE meta SET v = ?1 WHERE k = 'compact_done'")?
        .execute([hi])?;
    debug!(
        from = done,
        to = hi,
        rows = doomed.len(),
        "sqlite compaction step"
    );
    Ok(hi)
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Request>) {
        loop {
            let first = if self.compact_done < self.compacted {
                // History to delete: don't block, do a step even if no write is queued.
                match rx.try_recv() {
                    Ok(r) => Some(r),
                    Err(mpsc::TryRecvError::Empty) => None,
                    Err(mpsc::TryRecvError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(r) => Some(r),
                    Err(_) => break,
                }
            };
            let mut group: Vec<Request> = first.into_iter().collect();
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(r) => group.push(r),
                    Err(_) => break,
                }
            }
            self.commit(group);
        }
        debug!("sqlite writer: store dropped, stopping");
    }

    /// One transaction for the whole group (and one compaction step if one is due).
    fn commit(&mut self, group: Vec<Request>) {
        let started = std::time::Instant::now();
        let size = group.len();
        let mut replies = Vec::with_capacity(group.len());
        let mut outcomes = Vec::with_capacity(group.len());
        let mut published = Vec::new();
        let known_rev = self.rev;
        let result = (|| -> Result<Committed, rusqlite::Error> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            // The counters as committed, read under the write lock: the in-memory copies
            // would go stale if anything else wrote (e.g. a writer of a store dropped
            // just before this one was opened on the same file).
            let counter = |k: &str| -> Result<i64, rusqlite::Error> {
                tx.prepare_cached("SELECT v FROM meta WHERE k = ?1")?
                    .query_row([k], |r| r.get(0))
            };
            let (start_rev, start_compacted, start_done) = (
                counter("revision")?,
                counter("compacted")?,
                counter("compact_done")?,
            );
            if start_rev != known_rev {
                warn!(
                    expected = known_rev,
                    found = start_rev,
                    "sqlite revision moved under the writer: another writer used this database"
                );
            }
            let mut rev = start_rev;
            let mut compacted = start_compacted;
            for req in group {
                replies.push(req.reply);
                match req.op {
                    Op::Compact { revision } => {
                        compacted = compacted.max(revision.min(rev));
                        outcomes.push(None);
                    }
                    op => outcomes.push(Some(apply(&tx, &mut rev, op, &mut published)?)),
                }
            }
            if rev != start_rev {
                tx.prepare_cached("UPDATE meta SET v = ?1 WHERE k = 'revision'")?
                    .execute([rev])?;
            }
            if compacted != start_compacted {
                tx.prepare_cached("UPDATE meta SET v = ?1 WHERE k = 'compacted'")?
                    .execute([compacted])?;
            }
            let compact_done = compact_step(&tx, start_done, compacted)?;
            tx.commit()?;
            Ok(Committed {
                rev,
                compacted,
                compact_done,
            })
        })();
        match result {
            Ok(c) => {
                debug!(
                    size,
                    micros = started.elapsed().as_micros() as u64,
                    revision = c.rev,
                    "group committed"
                );
                self.rev = c.rev;
                self.compacted = c.compacted;
                self.compact_done = c.compact_done;
                self.revision.store(c.rev, Ordering::Release);
                self.compacted_at.store(c.compacted, Ordering::Release);
                for ev in published {
                    let _ = self.events.send(Arc::new(ev));
                }
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    match (reply, outcome) {
                        (Reply::Write(r), Some(o)) => {
                            let _ = r.send(Ok(o));
                        }
                        (Reply::Compact(r), _) => self.waiters.push((c.compacted, r)),
                        (Reply::Write(r), None) => {
                            let _ = r.send(Err(StoreError::Internal("mismatched reply".into())));
                        }
                    }
                }
                let mut i = 0;
                while i < self.waiters.len() {
                    if self.waiters[i].0 <= self.compact_done {
                        let (_, r) = self.waiters.swap_remove(i);
                        let _ = r.send(Ok(()));
                    } else {
                        i += 1;
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "sqlite commit failed; the group is rejected");
                let err = || StoreError::Internal(format!("sqlite commit: {e}"));
                for reply in replies {
                    match reply {
                        Reply::Write(r) => {
                            let _ = r.send(Err(err()));
                        }
                        Reply::Compact(r) => {
                            let _ = r.send(Err(err()));
                        }
                    }
                }
            }
        }
    }
}

type Catchup = Result<Vec<WatchEvent>, StoreError>;

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_string();
        self.pool
            .run(move |c| {
                c.prepare_cached(
                    "SELECT kv.value, kv.create_revision, kv.id FROM current JOIN kv ON kv.id = current.id WHERE current.name = ?1",
                )
                .map_err(db_err)?
                .query_row([&key], |r| Ok(row_kv(key.clone(), r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
                .map_err(db_err)
            })
            .await
    }

    async fn list(&self, req: ListRequest) -> Result<ListResponse, StoreError> {
        self.pool.run(move |c| list_at(c, req)).await
    }

    async fn count(&self, prefix: &str) -> Result<i64, StoreError> {
        let prefix = prefix.to_string();
        self.pool
            .run(move |c| {
                c.prepare_cached("SELECT COUNT(*) FROM current WHERE name >= ?1 AND name < ?2")
                    .map_err(db_err)?
                    .query_row(params![prefix, sql_end(&prefix)], |r| r.get(0))
                    .map_err(db_err)
            })
            .await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<WriteOutcome, StoreError> {
        self.write(Op::Create {
            key: key.to_string(),
            value,
        })
        .await
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<WriteOutcome, StoreError> {
        self.write(Op::Update {
            key: key.to_string(),
            value,
            expected,
        })
        .await
    }

    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<WriteOutcome, StoreError> {
        self.write(Op::Delete {
            key: key.to_string(),
            expected,
        })
        .await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        // Subscribe before reading the revision and replaying, so every commit is in the
        // table replay, in the live feed, or both (duplicates are dropped by revision).
        let mut live = self.events.subscribe();
        let current = self.revision.load(Ordering::Acquire);
        let from = if from == 0 { current } else { from };
        let compacted = self.compacted.load(Ordering::Acquire);
        if from < compacted {
            return Err(StoreError::Compacted {
                requested: from,
                compacted,
            });
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<WatchEvent, StoreError>>(1024);
        let prefix = prefix.to_string();
        let pool = self.pool.clone();
        let page = move |after: Revision, prefix: String| {
            let pool = pool.clone();
            async move {
                pool.run(move |c| history(c, &prefix, after, REPLAY_PAGE))
                    .await
            }
        };
        tokio::spawn(async move {
            let mut last = from;
            // Sends table rows after `last` until the table has no more; false when the
            // watcher is gone or failed.
            macro_rules! catch_up {
                () => {
                    loop {
                        let evs: Catchup = page(last, prefix.clone()).await;
                        match evs {
                            Ok(evs) if evs.is_empty() => break true,
                            Ok(evs) => {
                                let mut open = true;
                                for ev in evs {
                                    last = ev.kv.mod_revision;
                                    if tx.send(Ok(ev)).await.is_err() {
                                        open = false;
                                        break;
                                    }
                                }
                                if !open {
                                    break false;
                                }
                            }
                            Err(e) => {
                                let _ = tx.send(Err(e)).await;
                                break false;
                            }
                        }
                    }
                };
            }
            if from < current && !catch_up!() {
                return;
            }
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    ev = live.recv() => match ev {
                        Ok(ev) => {
                            if ev.kv.mod_revision <= last || !ev.kv.key.starts_with(&prefix) {
                                continue;
                            }
                            last = ev.kv.mod_revision;
                            if tx.send(Ok((*ev).clone())).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            // Fell behind the live feed: read the missed part from the table.
                            debug!(skipped = n, "sqlite watch lagged; catching up from the table");
                            if !catch_up!() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => {
                            let _ = tx.send(Err(stopped())).await;
                            return;
                        }
                    }
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.revision.load(Ordering::Acquire))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let current = self.revision.load(Ordering::Acquire);
        if revision > current {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current,
            });
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request {
                op: Op::Compact { revision },
                reply: Reply::Compact(reply),
            })
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.compacted.load(Ordering::Acquire))
    }
}

/// A list on one read snapshot (the revision, the compaction point and the rows agree).
fn list_at(c: &Connection, req: ListRequest) -> Result<ListResponse, StoreError> {
    let tx = c.unchecked_transaction().map_err(db_err)?;
    let current = meta(&tx, "revision")?;
    let compacted = meta(&tx, "compacted")?;
    let at = match req.revision {
        Some(r) if r > 0 => r,
        _ => current,
    };
    if at > current {
        return Err(StoreError::FutureRevision {
            requested: at,
            current,
        });
    }
    if at < compacted {
        return Err(StoreError::Compacted {
            requested: at,
            compacted,
        });
    }
    let end = sql_end(&req.prefix);
    let lower = match &req.start_after {
        Some(s) if s.as_str() >= req.prefix.as_str() => format!("{s}\u{0}"),
        _ => req.prefix.clone(),
    };
    let limit = match req.limit {
        Some(l) if l > 0 => i64::try_from(l).unwrap_or(i64::MAX),
        _ => -1,
    };
    let latest = at == current;
    let items: Vec<KeyValue> = if latest {
        let mut stmt = tx
            .prepare_cached(
                "SELECT current.name, kv.value, kv.create_revision, kv.id FROM current JOIN kv ON kv.id = current.id
                 WHERE current.name >= ?1 AND current.name < ?2 ORDER BY current.name LIMIT ?3",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![lower, end, limit], |r| {
                Ok(row_kv(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)?
    } else {
        // The kine query: the latest row of each key at or below `at`, unless a delete.
        let mut stmt = tx
            .prepare_cached(
                "SELECT kv.name, kv.value, kv.create_revision, kv.id FROM kv JOIN
                   (SELECT MAX(id) AS mid FROM kv WHERE name >= ?1 AND name < ?2 AND id <= ?3 GROUP BY name) latest
                   ON kv.id = latest.mid
                 WHERE kv.deleted = 0 ORDER BY kv.name LIMIT ?4",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![lower, end, at, limit], |r| {
                Ok(row_kv(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)?
    };
    let remaining = match items.last() {
        Some(last) if limit > 0 && items.len() as i64 >= limit => {
            let after = format!("{}\u{0}", last.key);
            if latest {
                tx.prepare_cached("SELECT COUNT(*) FROM current WHERE name >= ?1 AND name < ?2")
                    .map_err(db_err)?
                    .query_row(params![after, end], |r| r.get(0))
            } else {
                tx.prepare_cached(
                    "SELECT COUNT(*) FROM kv JOIN
                       (SELECT MAX(id) AS mid FROM kv WHERE name >= ?1 AND name < ?2 AND id <= ?3 GROUP BY name) latest
                       ON kv.id = latest.mid
                     WHERE kv.deleted = 0",
                )
                .map_err(db_err)?
                .query_row(params![after, end, at], |r| r.get(0))
            }
            .map_err(db_err)?
        }
        _ => 0,
    };
    Ok(ListResponse {
        items,
        revision: at,
        remaining,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_string() {
        assert_eq!(prefix_end("/a/").as_deref(), Some("/a0"));
        assert_eq!(prefix_end("").as_deref(), None);
        assert_eq!(prefix_end("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
    }

    /// Compaction after earlier compactions must also drop rows left current by those
    /// (a delete after a compaction used to resurrect the key in old-revision lists).
    #[tokio::test]
    async fn compaction_leaves_exactly_the_state_at_the_point() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.db");
        let s = SqliteStore::open(&path).expect("open");
        let WriteOutcome::Done(a) = s.create("/k/a", b"1".to_vec()).await.expect("a") else {
            panic!("create a")
        };
        s.create("/k/b", b"1".to_vec()).await.expect("b");
        s.compact(s.current_revision().await.expect("rev"))
            .await
            .expect("compact 1");
        s.update("/k/a", b"2".to_vec(), a.mod_revision)
            .await
            .expect("update a");
        s.delete("/k/b", None).await.expect("delete b");
        let point = s.current_revision().await.expect("rev");
        s.compact(point).await.expect("compact 2");
        s.create("/k/c", b"1".to_vec()).await.expect("c");
        let old = s
            .list(ListRequest {
                prefix: "/k/".into(),
                revision: Some(point),
                ..Default::default()
            })
            .await
            .expect("list");
        let keys: Vec<_> = old.items.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["/k/a"], "state at the compaction point");
        assert_eq!(old.items[0].value, b"2");
        // Only the latest rows are left: a@update and c.
        let c = Connection::open(&path).expect("open raw");
        let rows: i64 = c
            .query_row("SELECT COUNT(*) FROM kv", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, 2, "superseded rows and delete markers are deleted");
    }

    /// A watcher that falls behind the live feed catches up from the table: no gaps.
    #[tokio::test(flavor = "current_thread")]
    async fn lagging_watcher_catches_up_from_the_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Arc::new(SqliteStore::open_with(&dir.path().join("c.db"), 4).expect("open"));
        let mut w = s.watch("/k/", 0).await.expect("watch");
        // Write from another thread while this (current-thread) runtime is blocked, so
        // the watch task cannot run and its 4-event live buffer overflows.
        let s2 = s.clone();
        let revs = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut revs = Vec::new();
                for i in 0..100 {
                    match s2.create(&format!("/k/{i:03}"), b"x".to_vec()).await {
                        Ok(WriteOutcome::Done(kv)) => revs.push(kv.mod_revision),
                        other => panic!("create: {other:?}"),
                    }
                }
                revs
            })
        })
        .join()
        .expect("writer thread");
        assert_eq!(revs.len(), 100);
        use futures::StreamExt;
        for want in revs {
            let ev = tokio::time::timeout(std::time::Duration::from_secs(10), w.next())
                .await
                .expect("event in time")
                .expect("open")
                .expect("no error");
            assert_eq!(ev.kv.mod_revision, want);
        }
    }

    /// A large compaction proceeds in steps and completes; writes interleave.
    #[tokio::test]
    async fn compaction_in_steps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Arc::new(SqliteStore::open(&dir.path().join("c.db")).expect("open"));
        let WriteOutcome::Done(mut kv) = s.create("/k/a", b"0".to_vec()).await.expect("a") else {
            panic!("create")
        };
        let n = COMPACT_BATCH * 2 + 10;
        for i in 0..n {
            match s
                .update("/k/a", i.to_string().into_bytes(), kv.mod_revision)
                .await
                .expect("update")
            {
                WriteOutcome::Done(next) => kv = next,
                other => panic!("update: {other:?}"),
            }
        }
        let point = kv.mod_revision;
        let s2 = s.clone();
        let writer = tokio::spawn(async move {
            for i in 0..50 {
                s2.create(&format!("/k/new{i}"), b"x".to_vec())
                    .await
                    .expect("create");
            }
        });
        s.compact(point).await.expect("compact");
        writer.await.expect("writer");
        assert_eq!(s.compacted_revision().await.expect("compacted"), point);
        let got = s.get("/k/a").await.expect("get").expect("a exists");
        assert_eq!(got.mod_revision, point);
        let rows: i64 = s
            .pool
            .run(|c| {
                c.query_row("SELECT COUNT(*) FROM kv WHERE name = '/k/a'", [], |r| {
                    r.get(0)
                })
                .map_err(db_err)
            })
            .await
            .expect("rows");
        assert_eq!(rows, 1);
    }
}
