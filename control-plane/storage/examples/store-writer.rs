//! Test helper for the durability tests: writes keys to a store from 8 concurrent
//! writers as fast as it can and prints each key once its create is acknowledged. The
//! tests kill it (or etcd under it) with SIGKILL, then check every printed key is there.
//!
//! Usage: `store-writer SQLITE_PATH` or `store-writer etcd://HOST:PORT`.

use std::io::Write;
use std::sync::Arc;

use kelp_storage::{Store, WriteOutcome};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(target) = std::env::args().nth(1) else {
        eprintln!("usage: store-writer SQLITE_PATH|etcd://HOST:PORT");
        std::process::exit(2);
    };
    let store: Arc<dyn Store> = match target.strip_prefix("etcd://") {
        Some(ep) => match kelp_storage::etcd::EtcdStore::connect(&[ep.to_string()]).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                eprintln!("store-writer: connecting to etcd: {e}");
                std::process::exit(1);
            }
        },
        None => match kelp_storage::sqlite::SqliteStore::open(std::path::Path::new(&target)) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                eprintln!("store-writer: opening {target}: {e}");
                std::process::exit(1);
            }
        },
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1024);
    for w in 0..8 {
        let store = store.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let key = format!("/registry/durable/w{w}-{i:08}");
                match store.create(&key, vec![b'x'; 128]).await {
                    Ok(WriteOutcome::Done(_)) => {
                        if tx.send(key).await.is_err() {
                            return;
                        }
                    }
                    Ok(WriteOutcome::Conflict(_)) => {}
                    Err(e) => {
                        eprintln!("store-writer: {key}: {e}");
                        return;
                    }
                }
            }
        });
    }
    drop(tx);
    let mut out = std::io::stdout().lock();
    while let Some(k) = rx.recv().await {
        // An acknowledged key is printed (and flushed) only after its create returned.
        if writeln!(out, "{k}").and_then(|()| out.flush()).is_err() {
            return;
        }
    }
}
