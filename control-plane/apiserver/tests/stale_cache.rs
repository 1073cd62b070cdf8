//! Updates start from the watch cache's copy of the object. A copy the cache has not
//! brought up to date yet must never lose a write, refuse a valid one, or accept a
//! stale one: the store write is conditional, and what a stale copy decides without a
//! write is decided again on the stored object. The cache is held behind by a store
//! whose watch events wait at a gate.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::http::{Method, Request, StatusCode};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use kelp_apiserver::app::App;
use kelp_apiserver::authn::{UserInfo, AUTHENTICATED_GROUP};
use kelp_apiserver::authz::AlwaysAllow;
use kelp_apiserver::loopback;
use kelp_apiserver::tls::ADMIN_GROUP;
use kelp_storage::sqlite::SqliteStore;
use kelp_storage::{
    KeyValue, ListRequest, ListResponse, Revision, Store, StoreError, WatchStream, WriteOutcome,
};
use serde_json::{json, Value};
use tokio::sync::watch;
use tower::ServiceExt;

/// A store whose watch events are held while the gate is closed.
struct GatedStore {
    inner: SqliteStore,
    open: watch::Receiver<bool>,
}

#[async_trait]
impl Store for GatedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, req: ListRequest) -> Result<ListResponse, StoreError> {
        self.inner.list(req).await
    }
    async fn count(&self, prefix: &str) -> Result<i64, StoreError> {
        self.inner.count(prefix).await
    }
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<WriteOutcome, StoreError> {
        self.inner.create(key, value).await
    }
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<WriteOutcome, StoreError> {
        self.inner.update(key, value, expected).await
    }
    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<WriteOutcome, StoreError> {
        self.inner.delete(key, expected).await
    }
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        let events = self.inner.watch(prefix, from).await?;
        let open = self.open.clone();
        Ok(Box::pin(events.then(move |ev| {
            let mut open = open.clone();
            async move {
                let _ = open.wait_for(|o| *o).await;
                ev
            }
        })))
    }
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.inner.current_revision().await
    }
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }
    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        self.inner.compacted_revision().await
    }
}

struct Api {
    app: Arc<App>,
}

impl Api {
    async fn call(&self, method: Method, uri: &str, ct: &str, body: Value) -> (StatusCode, Value) {
        let admin = UserInfo {
            username: "test-admin".into(),
            uid: String::new(),
            groups: vec![ADMIN_GROUP.into(), AUTHENTICATED_GROUP.into()],
        };
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", ct)
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        let resp = loopback::service(self.app.router(), admin)
            .oneshot(req)
            .await
            .expect("infallible");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn patch(&self, data: Value) -> (StatusCode, Value) {
        self.call(
            Method::PATCH,
            CM,
            "application/merge-patch+json",
            json!({"data": data}),
        )
        .await
    }

    async fn put(&self, rv: &str, data: Value) -> (StatusCode, Value) {
        self.call(
            Method::PUT,
            CM,
            "application/json",
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "cm", "namespace": "default", "resourceVersion": rv},
                "data": data,
            }),
        )
        .await
    }
}

const CM: &str = "/api/v1/namespaces/default/configmaps/cm";
const KEY: &str = "/registry/configmaps/default/cm";

fn rv(obj: &Value) -> String {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn updates_on_a_stale_cached_copy_lose_nothing() {
    let dir = std::env::temp_dir().join(format!("kelp-stale-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (gate, open) = watch::channel(true);
    let store = GatedStore {
        inner: SqliteStore::open(&dir.join("state.db")).unwrap(),
        open,
    };
    let app = App::new(Arc::new(store), Arc::new(AlwaysAllow), "127.0.0.1:0".into())
        .await
        .unwrap();
    app.bootstrap().await.unwrap();
    let api = Api { app: app.clone() };

    let (code, created) = api
        .call(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "cm"}, "data": {"a": "1"}}),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    let rv1: Revision = rv(&created).parse().unwrap();
    assert!(app.cache.wait_for(rv1, Duration::from_secs(10)).await);

    // From here the cache keeps the object as created.
    gate.send_replace(false);
    let (code, first) = api.patch(json!({"b": "2"})).await;
    assert_eq!(code, StatusCode::OK, "{first}");
    let cached = app.cache.get(KEY).await.expect("cached");
    assert_eq!(cached.revision, rv1, "the cache must lag for this test");

    // A merge patch on the stale copy: the conditional write fails, the retry from the
    // store keeps the first patch's key.
    let (code, second) = api.patch(json!({"c": "3"})).await;
    assert_eq!(code, StatusCode::OK, "{second}");
    assert_eq!(second["data"], json!({"a": "1", "b": "2", "c": "3"}));
    let stored = app.store.get(KEY).await.unwrap().expect("stored");
    let stored_data: Value = serde_json::from_slice(&stored.value).unwrap();
    assert_eq!(stored_data["data"], json!({"a": "1", "b": "2", "c": "3"}));
    assert_eq!(rv(&second), stored.mod_revision.to_string());

    // A PUT pinned to the current version succeeds though the cache holds an older one;
    // one pinned to an old version is a conflict.
    let (code, put) = api.put(&rv(&second), json!({"d": "4"})).await;
    assert_eq!(code, StatusCode::OK, "{put}");
    assert_eq!(put["data"], json!({"d": "4"}));
    let (code, stale) = api.put(&rv(&first), json!({"e": "5"})).await;
    assert_eq!(code, StatusCode::CONFLICT, "{stale}");

    // No change against the stored object (though a change against the stale copy):
    // nothing is written.
    let (code, same) = api.patch(json!({"d": "4"})).await;
    assert_eq!(code, StatusCode::OK, "{same}");
    assert_eq!(rv(&same), rv(&put));

    // Once the cache catches up, reads show the last write.
    gate.send_replace(true);
    let last: Revision = rv(&put).parse().unwrap();
    assert!(app.cache.wait_for(last, Duration::from_secs(10)).await);
    let (code, got) = api
        .call(Method::GET, CM, "application/json", Value::Null)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(got["data"], json!({"d": "4"}));
    drop(app);
    let _ = std::fs::remove_dir_all(&dir);
}
