//! `SqliteStore`: the embedded default backend, etcd emulated on SQLite in the kine
//! model (one row per revision, history kept until compaction).
//!
//! One writer thread owns the only write connection and commits in groups: it drains
//! every queued write into one transaction (one fsync), checks each precondition in
//! order inside it, then answers callers and publishes the events in revision order.
//! Reads use a small pool of read-only connections (WAL lets them run beside the
//! writer).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{broadcast, oneshot};
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
INSERT OR IGNORE INTO meta (k, v) VALUES ('revision', 0), ('compacted', 0);
";

fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::Internal(e.to_string())
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

type Reply = oneshot::Sender<Result<WriteOutcome, StoreError>>;

struct Request {
    op: Op,
    reply: Reply,
}

/// The embedded store.
pub struct SqliteStore {
    path: PathBuf,
    tx: Mutex<mpsc::Sender<Request>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    events: broadcast::Sender<Arc<WatchEvent>>,
    revision: Arc<AtomicI64>,
}

fn open_conn(path: &Path, write: bool) -> Result<Connection, StoreError> {
    let c = Connection::open(path).map_err(db_err)?;
    c.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(db_err)?;
    c.pragma_update(None, "journal_mode", "WAL")
        .map_err(db_err)?;
    // FULL: a commit is on disk (WAL fsynced) before the caller hears of it.
    c.pragma_update(None, "synchronous", "FULL")
        .map_err(db_err)?;
    if !write {
        c.pragma_update(None, "query_only", true).map_err(db_err)?;
    }
    Ok(c)
}

fn prefix_end(prefix: &str) -> String {
    let mut b = prefix.as_bytes().to_vec();
    while let Some(last) = b.pop() {
        if last < 0xff {
            b.push(last + 1);
            return String::from_utf8_lossy(&b).into_owned();
        }
    }
    "\u{10FFFF}".to_string()
}

fn row_kv(name: String, value: Vec<u8>, create_revision: i64, id: i64) -> KeyValue {
    KeyValue {
        key: name,
        value,
        create_revision,
        mod_revision: id,
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = open_conn(path, true)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        let rev: i64 = conn
            .query_row("SELECT v FROM meta WHERE k = 'revision'", [], |r| r.get(0))
            .map_err(db_err)?;
        let revision = Arc::new(AtomicI64::new(rev));
        let (events, _) = broadcast::channel(64 * 1024);
        let (tx, rx) = mpsc::channel::<Request>();
        let writer = Writer {
            conn,
            rev,
            events: events.clone(),
            revision: revision.clone(),
        };
        std::thread::Builder::new()
            .name("kelp-sqlite-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let mut readers = Vec::new();
        for _ in 0..4 {
            readers.push(open_conn(path, false)?);
        }
        Ok(SqliteStore {
            path: path.to_path_buf(),
            tx: Mutex::new(tx),
            readers: Arc::new(Mutex::new(readers)),
            events,
            revision,
        })
    }

    async fn write(&self, op: Op) -> Result<WriteOutcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Request { op, reply })
            .map_err(|_| StoreError::Unavailable("sqlite writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("sqlite writer stopped".into()))?
    }

    /// Runs `f` on a pooled read connection off the async runtime.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let conn = match conn {
                Some(c) => c,
                None => open_conn(&path, false)?,
            };
            let out = f(&conn);
            readers.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
            out
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?
    }
}

fn meta(conn: &Connection, k: &str) -> Result<i64, StoreError> {
    conn.query_row("SELECT v FROM meta WHERE k = ?1", [k], |r| r.get(0))
        .map_err(db_err)
}

/// Rows with revision > `from` under `prefix`, as watch events, oldest first.
fn history(
    conn: &Connection,
    prefix: &str,
    from: Revision,
    limit: i64,
) -> Result<Vec<WatchEvent>, StoreError> {
    let end = prefix_end(prefix);
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, name, created, deleted, create_revision, prev_revision, value, old_value FROM kv
             WHERE id > ?1 AND name >= ?2 AND name < ?3 ORDER BY id LIMIT ?4",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map(params![from, prefix, end, limit], |r| {
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
    events: broadcast::Sender<Arc<WatchEvent>>,
    revision: Arc<AtomicI64>,
}

struct Current {
    id: i64,
    create_revision: i64,
    value: Vec<u8>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < 4096 {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
        debug!("sqlite writer: all senders gone, stopping");
    }

    fn current(
        tx: &rusqlite::Transaction<'_>,
        key: &str,
    ) -> Result<Option<Current>, rusqlite::Error> {
        tx.prepare_cached(
            "SELECT kv.id, kv.create_revision, kv.value FROM current JOIN kv ON kv.id = current.id WHERE current.name = ?1",
        )?
        .query_row([key], |r| Ok(Current { id: r.get(0)?, create_revision: r.get(1)?, value: r.get(2)? }))
        .optional()
    }

    fn commit(&mut self, batch: Vec<Request>) {
        let start_rev = self.rev;
        let mut answers: Vec<(Reply, Result<WriteOutcome, StoreError>)> = Vec::new();
        let mut published: Vec<WatchEvent> = Vec::new();
        let result = (|| -> Result<(), rusqlite::Error> {
            let tx = self.conn.transaction()?;
            let mut rev = start_rev;
            for req in batch {
                let outcome = match req.op {
                    Op::Compact { revision } => {
                        answers.push((req.reply, Ok(WriteOutcome::Conflict(None))));
                        compact(&tx, revision)?;
                        continue;
                    }
                    Op::Create { key, value } => match Self::current(&tx, &key)? {
                        Some(c) => WriteOutcome::Conflict(Some(row_kv(
                            key,
                            c.value,
                            c.create_revision,
                            c.id,
                        ))),
                        None => {
                            rev += 1;
                            tx.prepare_cached("INSERT INTO kv (id, name, created, deleted, create_revision, prev_revision, value, old_value) VALUES (?1, ?2, 1, 0, ?1, 0, ?3, NULL)")?
                                .execute(params![rev, key, value])?;
                            tx.prepare_cached(
                                "INSERT OR REPLACE INTO current (name, id) VALUES (?1, ?2)",
                            )?
                            .execute(params![key, rev])?;
                            let kv = row_kv(key, value, rev, rev);
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
                    } => match Self::current(&tx, &key)? {
                        Some(c) if c.id == expected => {
                            rev += 1;
                            tx.prepare_cached("INSERT INTO kv (id, name, created, deleted, create_revision, prev_revision, value, old_value) VALUES (?1, ?2, 0, 0, ?3, ?4, ?5, ?6)")?
                                .execute(params![rev, key, c.create_revision, c.id, value, c.value])?;
                            tx.prepare_cached(
                                "INSERT OR REPLACE INTO current (name, id) VALUES (?1, ?2)",
                            )?
                            .execute(params![key, rev])?;
                            let kv = row_kv(key.clone(), value, c.create_revision, rev);
                            let prev = row_kv(key, c.value, c.create_revision, c.id);
                            published.push(WatchEvent {
                                kind: EventKind::Put,
                                kv: kv.clone(),
                                prev: Some(prev),
                            });
                            WriteOutcome::Done(kv)
                        }
                        Some(c) => WriteOutcome::Conflict(Some(row_kv(
                            key,
                            c.value,
                            c.create_revision,
                            c.id,
                        ))),
                        None => WriteOutcome::Conflict(None),
                    },
                    Op::Delete { key, expected } => match Self::current(&tx, &key)? {
                        Some(c) if expected.is_none_or(|e| e == c.id) => {
                            rev += 1;
                            tx.prepare_cached("INSERT INTO kv (id, name, created, deleted, create_revision, prev_revision, value, old_value) VALUES (?1, ?2, 0, 1, ?3, ?4, ?5, ?5)")?
                                .execute(params![rev, key, c.create_revision, c.id, c.value])?;
                            tx.prepare_cached("DELETE FROM current WHERE name = ?1")?
                                .execute([&key])?;
                            let kv = row_kv(key.clone(), c.value.clone(), c.create_revision, rev);
                            let prev = row_kv(key, c.value, c.create_revision, c.id);
                            published.push(WatchEvent {
                                kind: EventKind::Delete,
                                kv: kv.clone(),
                                prev: Some(prev),
                            });
                            WriteOutcome::Done(kv)
                        }
                        Some(c) => WriteOutcome::Conflict(Some(row_kv(
                            key,
                            c.value,
                            c.create_revision,
                            c.id,
                        ))),
                        None => WriteOutcome::Conflict(None),
                    },
                };
                answers.push((req.reply, Ok(outcome)));
            }
            if rev != start_rev {
                tx.prepare_cached("UPDATE meta SET v = ?1 WHERE k = 'revision'")?
                    .execute([rev])?;
            }
            tx.commit()?;
            self.rev = rev;
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.revision.store(self.rev, Ordering::Release);
                for ev in published {
                    let _ = self.events.send(Arc::new(ev));
                }
                for (reply, outcome) in answers {
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                warn!(error = %e, "sqlite commit failed; the batch is rejected");
                self.rev = start_rev;
                for (reply, _) in answers {
                    let _ = reply.send(Err(StoreError::Internal(e.to_string())));
                }
            }
        }
    }
}

/// Drops history below `revision`: superseded rows and delete markers. Current rows
/// stay whatever their age.
fn compact(tx: &rusqlite::Transaction<'_>, revision: Revision) -> Result<(), rusqlite::Error> {
    let done: i64 = tx.query_row("SELECT v FROM meta WHERE k = 'compacted'", [], |r| r.get(0))?;
    if revision <= done {
        return Ok(());
    }
    tx.execute(
        "DELETE FROM kv WHERE id > ?1 AND id < ?2 AND id NOT IN (SELECT id FROM current)",
        params![done - 1, revision],
    )?;
    tx.execute("UPDATE meta SET v = ?1 WHERE k = 'compacted'", [revision])?;
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_string();
        self.read(move |c| {
            c.prepare_cached("SELECT kv.value, kv.create_revision, kv.id FROM current JOIN kv ON kv.id = current.id WHERE current.name = ?1")
                .map_err(db_err)?
                .query_row([&key], |r| Ok(row_kv(key.clone(), r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
                .map_err(db_err)
        })
        .await
    }

    async fn list(&self, req: ListRequest) -> Result<ListResponse, StoreError> {
        self.read(move |c| {
            let tx = c.unchecked_transaction().map_err(db_err)?;
            let current = meta(&tx, "revision")?;
            let compacted = meta(&tx, "compacted")?;
            let at = req.revision.unwrap_or(current);
            if at > current {
                return Err(StoreError::FutureRevision { requested: at, current });
            }
            if at < compacted {
                return Err(StoreError::Compacted { requested: at, compacted });
            }
            let end = prefix_end(&req.prefix);
            let lower = match &req.start_after {
                Some(s) if s.as_str() >= req.prefix.as_str() => format!("{s}\u{0}"),
                _ => req.prefix.clone(),
            };
            let limit = req.limit.map(|l| l as i64).unwrap_or(-1);
            let items: Vec<KeyValue> = if at == current {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT current.name, kv.value, kv.create_revision, kv.id FROM current JOIN kv ON kv.id = current.id
                         WHERE current.name >= ?1 AND current.name < ?2 ORDER BY current.name LIMIT ?3",
                    )
                    .map_err(db_err)?;
                let rows = stmt
                    .query_map(params![lower, end, limit], |r| Ok(row_kv(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .map_err(db_err)?;
                rows.collect::<Result<_, _>>().map_err(db_err)?
            } else {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT kv.name, kv.value, kv.create_revision, kv.id FROM kv JOIN
                           (SELECT name, MAX(id) AS mid FROM kv WHERE name >= ?1 AND name < ?2 AND id <= ?3 GROUP BY name) latest
                           ON kv.id = latest.mid
                         WHERE kv.deleted = 0 ORDER BY kv.name LIMIT ?4",
                    )
                    .map_err(db_err)?;
                let rows = stmt
                    .query_map(params![lower, end, at, limit], |r| Ok(row_kv(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .map_err(db_err)?;
                rows.collect::<Result<_, _>>().map_err(db_err)?
            };
            let remaining = match (items.last(), req.limit) {
                (Some(last), Some(l)) if items.len() >= l => {
                    let after = format!("{}\u{0}", last.key);
                    if at == current {
                        tx.query_row("SELECT COUNT(*) FROM current WHERE name >= ?1 AND name < ?2", params![after, end], |r| r.get(0))
                    } else {
                        tx.query_row(
                            "SELECT COUNT(*) FROM kv JOIN (SELECT name, MAX(id) AS mid FROM kv WHERE name >= ?1 AND name < ?2 AND id <= ?3 GROUP BY name) latest ON kv.id = latest.mid WHERE kv.deleted = 0",
                            params![after, end, at],
                            |r| r.get(0),
                        )
                    }
                    .map_err(db_err)?
                }
                _ => 0,
            };
            Ok(ListResponse { items, revision: at, remaining })
        })
        .await
    }

    async fn count(&self, prefix: &str) -> Result<i64, StoreError> {
        let prefix = prefix.to_string();
        self.read(move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM current WHERE name >= ?1 AND name < ?2",
                params![prefix, prefix_end(&prefix)],
                |r| r.get(0),
            )
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
        // Subscribe before replaying so nothing committed in between is missed.
        let mut live = self.events.subscribe();
        let current = self.revision.load(Ordering::Acquire);
        let from = if from == 0 { current } else { from };
        let compacted = self.read(|c| meta(c, "compacted")).await?;
        if from < compacted {
            return Err(StoreError::Compacted {
                requested: from,
                compacted,
            });
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<WatchEvent, StoreError>>(1024);
        let prefix = prefix.to_string();
        let readers = self.readers.clone();
        let path = self.path.clone();
        let catch_up = move |after: Revision, prefix: String| {
            let readers = readers.clone();
            let path = path.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    let conn = readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
                    let conn = match conn {
                        Some(c) => c,
                        None => open_conn(&path, false)?,
                    };
                    let out = history(&conn, &prefix, after, 10_000);
                    readers.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
                    out
                })
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))?
            }
        };
        tokio::spawn(async move {
            let mut last = from;
            // Replay history, in pages, until caught up with what was current at subscribe time.
            loop {
                match catch_up(last, prefix.clone()).await {
                    Ok(evs) if evs.is_empty() => break,
                    Ok(evs) => {
                        for ev in evs {
                            last = ev.kv.mod_revision;
                            if tx.send(Ok(ev)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
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
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            // Fell behind the broadcast: read the missed part from the table.
                            loop {
                                match catch_up(last, prefix.clone()).await {
                                    Ok(evs) if evs.is_empty() => break,
                                    Ok(evs) => {
                                        for ev in evs {
                                            last = ev.kv.mod_revision;
                                            if tx.send(Ok(ev)).await.is_err() {
                                                return;
                                            }
                                        }
                                    }
                                    Err(e) => {
                                        let _ = tx.send(Err(e)).await;
                                        return;
                                    }
                                }
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
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
        self.write(Op::Compact { revision }).await.map(|_| ())
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        self.read(|c| meta(c, "compacted")).await
    }
}
