//! Watch: newline-delimited JSON events from the watch cache, with resourceVersion
//! semantics, selector transitions, bookmarks and 410 Expired.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use rand::Rng;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use kelp_api::registry::ResourceInfo;

use crate::app::App;
use crate::error::{ApiError, ApiResult};
use crate::filter::Filter;
use crate::objects::list_prefix;
use crate::request::{wants_table, Query, Target};
use crate::watch_cache::{CacheEvent, CachedObject, EventType, Start};

const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

struct Encoder {
    info: Arc<ResourceInfo>,
    table: bool,
    q: Query,
}

impl Encoder {
    fn event(&self, typ: EventType, obj: &CachedObject) -> Bytes {
        if self.table {
            let t = crate::table::table(
                &self.info,
                std::slice::from_ref(&obj.value),
                &self.q,
                None,
                None,
            );
            let line = json!({"type": typ.as_str(), "object": t});
            let mut b = serde_json::to_vec(&line).unwrap_or_default();
            b.push(b'\n');
            return Bytes::from(b);
        }
        let body = obj.json();
        let mut b = Vec::with_capacity(body.len() + 32);
        b.extend_from_slice(b"{\"type\":\"");
        b.extend_from_slice(typ.as_str().as_bytes());
        b.extend_from_slice(b"\",\"object\":");
        b.extend_from_slice(body);
        b.extend_from_slice(b"}\n");
        Bytes::from(b)
    }

    fn bookmark(&self, revision: i64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": revision.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let line = json!({"type": "BOOKMARK", "object": {"kind": self.info.gvk.kind, "apiVersion": self.info.gvk.api_version(), "metadata": meta}});
        let mut b = serde_json::to_vec(&line).unwrap_or_default();
        b.push(b'\n');
        Bytes::from(b)
    }
}

fn error_event(e: &ApiError) -> Bytes {
    let line = json!({"type": "ERROR", "object": e.status_json()});
    let mut b = serde_json::to_vec(&line).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

/// How an event appears to a watcher with a selector: objects that start or stop
/// matching become ADDED or DELETED, as upstream does.
fn visible(filter: &Filter, info: &ResourceInfo, ev: &CacheEvent) -> Option<EventType> {
    let now = filter.matches(info, &ev.object.value);
    let before = ev
        .prev
        .as_ref()
        .is_some_and(|p| filter.matches(info, &p.value));
    match ev.kind {
        EventType::Added => now.then_some(EventType::Added),
        EventType::Deleted => (before || now).then_some(EventType::Deleted),
        EventType::Modified => match (before, now) {
            (true, true) => Some(EventType::Modified),
            (false, true) => Some(EventType::Added),
            (true, false) => Some(EventType::Deleted),
            (false, false) => None,
        },
    }
}

pub async fn watch(
    app: Arc<App>,
    t: &Target,
    q: &Query,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let info = t.info.clone();
    let mut q = q.clone();
    if let Some(name) = &t.name {
        // `GET …/pods/x?watch=true`: a watch of one object.
        let fs = match q.get("fieldSelector") {
            Some(f) => format!("{f},metadata.name={name}"),
            None => format!("metadata.name={name}"),
        };
        q.0.insert("fieldSelector".into(), fs);
    }
    let filter = Filter::from_query(&info, &q)?;
    let prefix = list_prefix(&info, t.namespace.as_deref());
    let rv = q.get("resourceVersion").unwrap_or("0");
    let from: i64 = rv
        .parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?;
    let send_initial = q.flag("sendInitialEvents");
    if send_initial && q.get("resourceVersionMatch") != Some("NotOlderThan") {
        return Err(ApiError::new(422, "Invalid", "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"));
    }
    let bookmarks = q.flag("allowWatchBookmarks");
    let timeout = match q.get("timeoutSeconds").and_then(|s| s.parse::<u64>().ok()) {
        Some(s) => Duration::from_secs(s),
        None => Duration::from_secs(rand::rng().random_range(1800..3600)),
    };
    let enc = Encoder {
        info: info.clone(),
        table: wants_table(headers),
        q: q.clone(),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let start_from = if send_initial { 0 } else { from };
    let sub = app.cache.subscribe(&prefix, start_from).await;
    match sub {
        Err(e) => {
            let err = ApiError::gone(e.to_string());
            let _ = tx.try_send(error_event(&err));
        }
        Ok(sub) => {
            tokio::spawn(async move {
                let mut rx = sub.rx;
                let mut last = 0i64;
                match sub.start {
                    Start::Snapshot { objects, revision } => {
                        for o in objects {
                            if filter.matches(&enc.info, &o.value)
                                && tx.send(enc.event(EventType::Added, &o)).await.is_err()
                            {
                                return;
                            }
                        }
                        last = revision;
                        if send_initial && tx.send(enc.bookmark(revision, true)).await.is_err() {
                            return;
                        }
                    }
                    Start::Replay(events) => {
                        for ev in events {
                            last = ev.revision;
                            if let Some(typ) = visible(&filter, &enc.info, &ev) {
                                if tx.send(enc.event(typ, &ev.object)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        last = last.max(from);
                    }
                }
                let deadline = tokio::time::sleep(timeout);
                tokio::pin!(deadline);
                let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
                ticker.tick().await;
                loop {
                    tokio::select! {
                        _ = &mut deadline => return,
                        _ = ticker.tick(), if bookmarks => {
                            if tx.send(enc.bookmark(last, false)).await.is_err() { return; }
                        }
                        _ = tx.closed() => return,
                        ev = rx.recv() => match ev {
                            Ok(ev) => {
                                if ev.revision <= last || !ev.key.starts_with(&prefix) {
                                    continue;
                                }
                                last = ev.revision;
                                if let Some(typ) = visible(&filter, &enc.info, &ev) {
                                    if tx.send(enc.event(typ, &ev.object)).await.is_err() { return; }
                                }
                            }
                            // Too slow a reader: end the watch; the client resumes
                            // from its last revision out of the cache's history.
                            Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                        }
                    }
                }
            });
        }
    }
    let stream = ReceiverStream::new(rx).map(Ok::<Bytes, Infallible>);
    let body = Body::from_stream(stream);
    Ok((
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}
