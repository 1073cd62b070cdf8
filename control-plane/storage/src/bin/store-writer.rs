//! Test helper: writes keys to a store as fast as it can and prints each key once its
//! write is acknowledged. The durability tests kill it with SIGKILL.
//! Usage: `store-writer SQLITE_PATH` or `store-writer etcd://HOST:PORT`.

use std::io::Write;
use std::sync::Arc;

use kelp_storage::Store;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let target = std::env::args()
        .nth(1)
        .expect("usage: store-writer SQLITE_PATH|etcd://HOST:PORT");
    let store: Arc<dyn Store> = match target.strip_prefix("etcd://") {
        Some(ep) => Arc::new(
            kelp_storage::etcd::EtcdStore::connect(&[ep.to_string()])
                .await
                .expect("connect"),
        ),
        None => Arc::new(
            kelp_storage::sqlite::SqliteStore::open(std::path::Path::new(&target)).expect("open"),
        ),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1024);
    for w in 0..8 {
        let store = store.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let key = format!("/registry/durable/w{w}-{i:08}");
                if let Ok(kelp_storage::WriteOutcome::Done(_)) =
                    store.create(&key, vec![b'x'; 128]).await
                {
                    if tx.send(key).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    drop(tx);
    let mut out = std::io::stdout().lock();
    while let Some(k) = rx.recv().await {
        let _ = writeln!(out, "{k}");
        let _ = out.flush();
    }
}
