//! `EtcdStore`: a real etcd v3 cluster behind the [`Store`] trait. Keys and revisions
//! pass straight through, so etcd's revision is the API's resourceVersion, exactly as
//! with kube-apiserver.
//!
//! - `create` = `Txn(create_revision(key) == 0 → put, else → range(key))`;
//! - `update` = `Txn(mod_revision(key) == expected → put with prev_kv, else → range)`;
//! - `delete` = `Txn(mod_revision == expected`, or `create_revision > 0` without a
//!   precondition, `→ delete with prev_kv, else → range)`;
//! - `list` = `Range [max(prefix, start_after + "\0"), prefix_end)` at the revision with
//!   the limit; etcd's `count` (keys in that range) gives `remaining`;
//! - `watch` = a Watch stream on the prefix with `prev_kv` and `start_revision = from + 1`
//!   (returned once etcd confirms it); compacted responses become `Compacted`.
//!
//! The gRPC client code is generated and checked in (`src/etcd/generated/`, see
//! `proto/README.md`): building Kelp never needs `protoc`.

mod generated;

use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use async_trait::async_trait;
use futures::StreamExt;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tracing::{debug, warn};

use generated::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use generated::etcdserverpb::kv_client::KvClient;
use generated::etcdserverpb::request_op::Request as OpRequest;
use generated::etcdserverpb::response_op::Response as OpResponse;
use generated::etcdserverpb::watch_client::WatchClient;
use generated::etcdserverpb::watch_request::RequestUnion;
use generated::etcdserverpb::{
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse, WatchCreateRequest,
    WatchRequest,
};
use generated::mvccpb;

use crate::{
    EventKind, KeyValue, ListRequest, ListResponse, Revision, Store, StoreError, WatchEvent,
    WatchStream, WriteOutcome,
};

/// Connections per endpoint: one HTTP/2 connection serializes on its own flow
/// control and etcd's per-stream handling; a few spread concurrent writers.
const CONNECTIONS: usize = 4;
/// Longest a unary call may take before it fails `Unavailable`.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The etcd backend. Cheap to share behind an `Arc`; requests are spread over a few
/// HTTP/2 connections to the preferred endpoint, failing over to the next endpoint
/// when it cannot be reached (see [`EtcdStore::connect`]).
pub struct EtcdStore {
    endpoints: Vec<Member>,
    /// The endpoint requests go to first; moves on when it cannot be reached.
    preferred: AtomicUsize,
    next: AtomicUsize,
    /// The highest compaction point seen (ours or learned from etcd); never above etcd's.
    compacted: AtomicI64,
}

type WatchOpen = (
    tokio::sync::mpsc::Sender<WatchRequest>,
    tonic::Streaming<generated::etcdserverpb::WatchResponse>,
    Vec<generated::etcdserverpb::WatchResponse>,
);

/// One etcd endpoint: a few connections for unary calls, and watch streams.
struct Member {
    url: String,
    kvs: Vec<KvClient<Channel>>,
    watch: WatchClient<Channel>,
}

/// The request certainly never reached etcd (so even a write may go elsewhere).
fn not_sent(s: &Status) -> bool {
    s.code() == Code::Unavailable && {
        let m = s.message().to_ascii_lowercase();
        m.contains("connect") || m.contains("dns error")
    }
}

fn status_err(s: Status) -> StoreError {
    let msg = s.message().to_string();
    if msg.contains("required revision has been compacted") {
        return StoreError::Compacted {
            requested: 0,
            compacted: 0,
        };
    }
    if msg.contains("required revision is a future revision") {
        return StoreError::FutureRevision {
            requested: 0,
            current: 0,
        };
    }
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            StoreError::Unavailable(msg)
        }
        _ => StoreError::Internal(format!("{:?}: {msg}", s.code())),
    }
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// `[key, range_end)` for every key under `prefix` (etcd wants a non-empty key: the
/// empty prefix is `["\0", "\0")`, i.e. all keys).
fn prefix_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        (vec![0], vec![0])
    } else {
        (prefix.as_bytes().to_vec(), prefix_end(prefix.as_bytes()))
    }
}

fn to_kv(kv: mvccpb::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        value: kv.value,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
    }
}

fn range_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(OpRequest::RequestRange(RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

fn compare(key: &str, target: CompareTarget, result: CompareResult, union: TargetUnion) -> Compare {
    Compare {
        result: result as i32,
        target: target as i32,
        key: key.as_bytes().to_vec(),
        range_end: vec![],
        target_union: Some(union),
    }
}

impl EtcdStore {
    /// Connects to etcd at `host:port` (or `http://host:port`) endpoints; requests are
    /// balanced over all of them.
    /// Connects to etcd at `host:port` (or `http://host:port`) endpoints, members of one
    /// cluster. Requests go to the first endpoint that can be reached and move on to
    /// the next one when it cannot (reads also on any `Unavailable` error; writes only
    /// when they certainly were not sent, otherwise their result is unknown and they
    /// fail `Unavailable`). Fails unless one of the endpoints answers.
    pub async fn connect(endpoints: &[String]) -> Result<Self, StoreError> {
        let mut members = Vec::new();
        for e in endpoints {
            let url = if e.starts_with("http://") || e.starts_with("https://") {
                e.clone()
            } else {
                format!("http://{e}")
            };
            let ep = Endpoint::from_shared(url.clone())
                .map_err(|err| StoreError::Unavailable(format!("bad etcd endpoint {e:?}: {err}")))?
                .connect_timeout(std::time::Duration::from_secs(5))
                // Unary calls only (a watch's timeout ends with its response headers).
                .timeout(REQUEST_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(std::time::Duration::from_secs(30));
            let channels: Vec<Channel> = (0..CONNECTIONS).map(|_| ep.connect_lazy()).collect();
            members.push(Member {
                url,
                kvs: channels.iter().cloned().map(KvClient::new).collect(),
                watch: WatchClient::new(channels[0].clone()),
            });
        }
        if members.is_empty() {
            return Err(StoreError::Unavailable("no etcd endpoints".into()));
        }
        let store = EtcdStore {
            endpoints: members,
            preferred: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            compacted: AtomicI64::new(0),
        };
        let rev = store.current_revision().await?;
        debug!(revision = rev, endpoints = ?endpoints, "connected to etcd");
        Ok(store)
    }

    /// Calls `f` on the preferred endpoint, failing over to the others in order when it
    /// cannot be reached (see [`EtcdStore::connect`]).
    async fn call<T, F, Fut>(&self, idempotent: bool, f: F) -> Result<tonic::Response<T>, Status>
    where
        F: Fn(KvClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let n = self.endpoints.len();
        let start = self.preferred.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let idx = (start + i) % n;
            let m = &self.endpoints[idx];
            let c = self.next.fetch_add(1, Ordering::Relaxed) % m.kvs.len();
            match f(m.kvs[c].clone()).await {
                Ok(r) => {
                    if i > 0 {
                        self.preferred.store(idx, Ordering::Relaxed);
                    }
                    return Ok(r);
                }
                Err(s)
                    if n > 1 && (not_sent(&s) || (idempotent && s.code() == Code::Unavailable)) =>
                {
                    warn!(endpoint = %m.url, error = %s.message(), "etcd endpoint unavailable; trying the next");
                    last = Some(s);
                }
                Err(s) => return Err(s),
            }
        }
        Err(last.unwrap_or_else(|| Status::unavailable("no etcd endpoint")))
    }

    async fn range_rpc(&self, req: RangeRequest) -> Result<tonic::Response<RangeResponse>, Status> {
        self.call(true, |mut kv| {
            let req = req.clone();
            async move { kv.range(req).await }
        })
        .await
    }

    async fn txn_rpc(&self, req: TxnRequest) -> Result<tonic::Response<TxnResponse>, Status> {
        self.call(false, |mut kv| {
            let req = req.clone();
            async move { kv.txn(req).await }
        })
        .await
    }

    async fn put_rpc(&self, req: PutRequest) -> Result<tonic::Response<PutResponse>, Status> {
        self.call(false, |mut kv| {
            let req = req.clone();
            async move { kv.put(req).await }
        })
        .await
    }

    async fn compact_rpc(
        &self,
        req: CompactionRequest,
    ) -> Result<tonic::Response<CompactionResponse>, Status> {
        self.call(true, |mut kv| async move { kv.compact(req).await })
            .await
    }

    /// Is a read at `rev` refused as compacted?
    async fn is_compacted(&self, rev: Revision) -> Result<bool, StoreError> {
        match self
            .range_rpc(RangeRequest {
                key: vec![0],
                count_only: true,
                revision: rev,
                ..Default::default()
            })
            .await
        {
            Ok(_) => Ok(false),
            Err(s) => match status_err(s) {
                StoreError::Compacted { .. } => Ok(true),
                e => Err(e),
            },
        }
    }

    /// `StoreError::Compacted` with the real numbers.
    async fn compacted_err(&self, requested: Revision) -> StoreError {
        let compacted = match self.compacted_revision().await {
            Ok(c) => c,
            Err(_) => self.compacted.load(Ordering::Relaxed),
        };
        StoreError::Compacted {
            requested,
            compacted,
        }
    }

    async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, StoreError> {
        self.txn_rpc(req)
            .await
            .map(|r| r.into_inner())
            .map_err(status_err)
    }

    /// Opens a watch stream on one endpoint and waits for etcd to confirm it.
    async fn open_watch(
        &self,
        m: &Member,
        create: WatchCreateRequest,
        from: Revision,
    ) -> Result<WatchOpen, StoreError> {
        let (req_tx, req_rx) = tokio::sync::mpsc::channel::<WatchRequest>(4);
        req_tx
            .send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(create)),
            })
            .await
            .map_err(|_| StoreError::Internal("watch request channel closed".into()))?;
        let mut responses = m
            .watch
            .clone()
            .watch(tokio_stream::wrappers::ReceiverStream::new(req_rx))
            .await
            .map_err(status_err)?
            .into_inner();
        // Wait for etcd to confirm the watch, so that (for `from` = 0) every write
        // acknowledged after this call returns is seen.
        let mut pending = Vec::new();
        loop {
            let first = tokio::time::timeout(REQUEST_TIMEOUT, responses.next())
                .await
                .map_err(|_| StoreError::Unavailable("etcd did not confirm the watch".into()))?;
            match first {
                Some(Ok(resp)) if resp.compact_revision != 0 => {
                    self.compacted
                        .fetch_max(resp.compact_revision, Ordering::Relaxed);
                    return Err(StoreError::Compacted {
                        requested: from,
                        compacted: resp.compact_revision,
                    });
                }
                Some(Ok(resp)) if resp.canceled => {
                    return Err(StoreError::Unavailable(format!(
                        "etcd refused the watch: {}",
                        resp.cancel_reason
                    )))
                }
                Some(Ok(resp)) => {
                    let created = resp.created;
                    pending.push(resp);
                    if created {
                        break;
                    }
                }
                Some(Err(s)) => return Err(status_err(s)),
                None => {
                    return Err(StoreError::Unavailable(
                        "etcd watch stream ended before the watch was created".into(),
                    ))
                }
            }
        }
        Ok((req_tx, responses, pending))
    }

    /// An unconditional put (no transaction): the peer figure benchmarks compare with.
    pub async fn raw_put(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        let r = self
            .put_rpc(PutRequest {
                key: key.as_bytes().to_vec(),
                value,
                ..Default::default()
            })
            .await
            .map_err(status_err)?
            .into_inner();
        Ok(r.header.map(|h| h.revision).unwrap_or(0))
    }

    fn failure_current(resp: &TxnResponse) -> Option<KeyValue> {
        resp.responses.iter().find_map(|r| match &r.response {
            Some(OpResponse::ResponseRange(rr)) => rr.kvs.first().cloned().map(to_kv),
            _ => None,
        })
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let r = self
            .range_rpc(RangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            })
            .await
            .map_err(status_err)?
            .into_inner();
        Ok(r.kvs.into_iter().next().map(to_kv))
    }

    async fn list(&self, req: ListRequest) -> Result<ListResponse, StoreError> {
        let (first, end) = prefix_range(&req.prefix);
        let lower = match &req.start_after {
            Some(s) if s.as_str() >= req.prefix.as_str() => {
                let mut k = s.as_bytes().to_vec();
                k.push(0);
                k
            }
            _ => first,
        };
        let requested = req.revision.unwrap_or(0);
        let r = match self
            .range_rpc(RangeRequest {
                key: lower,
                range_end: end,
                // 0 is "no limit" for etcd, as for the trait.
                limit: req
                    .limit
                    .map(|l| i64::try_from(l).unwrap_or(i64::MAX))
                    .unwrap_or(0),
                revision: requested,
                ..Default::default()
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) => {
                return Err(match status_err(s) {
                    StoreError::Compacted { .. } => self.compacted_err(requested).await,
                    StoreError::FutureRevision { .. } => StoreError::FutureRevision {
                        requested,
                        current: self.current_revision().await.unwrap_or(0),
                    },
                    other => other,
                })
            }
        };
        let header_rev = r.header.as_ref().map(|h| h.revision).unwrap_or(0);
        let items: Vec<KeyValue> = r.kvs.into_iter().map(to_kv).collect();
        let remaining = (r.count - items.len() as i64).max(0);
        Ok(ListResponse {
            items,
            revision: if requested > 0 { requested } else { header_rev },
            remaining,
        })
    }

    async fn count(&self, prefix: &str) -> Result<i64, StoreError> {
        let (key, range_end) = prefix_range(prefix);
        let r = self
            .range_rpc(RangeRequest {
                key,
                range_end,
                count_only: true,
                ..Default::default()
            })
            .await
            .map_err(status_err)?
            .into_inner();
        Ok(r.count)
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<WriteOutcome, StoreError> {
        let resp = self
            .txn(TxnRequest {
                compare: vec![compare(
                    key,
                    CompareTarget::Create,
                    CompareResult::Equal,
                    TargetUnion::CreateRevision(0),
                )],
                success: vec![RequestOp {
                    request: Some(OpRequest::RequestPut(PutRequest {
                        key: key.as_bytes().to_vec(),
                        value: value.clone(),
                        ..Default::default()
                    })),
                }],
                failure: vec![range_op(key)],
            })
            .await?;
        if resp.succeeded {
            let rev = resp.header.map(|h| h.revision).unwrap_or(0);
            Ok(WriteOutcome::Done(KeyValue {
                key: key.to_string(),
                value,
                create_revision: rev,
                mod_revision: rev,
            }))
        } else {
            Ok(WriteOutcome::Conflict(Self::failure_current(&resp)))
        }
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> Result<WriteOutcome, StoreError> {
        let resp = self
            .txn(TxnRequest {
                compare: vec![compare(
                    key,
                    CompareTarget::Mod,
                    CompareResult::Equal,
                    TargetUnion::ModRevision(expected),
                )],
                success: vec![RequestOp {
                    request: Some(OpRequest::RequestPut(PutRequest {
                        key: key.as_bytes().to_vec(),
                        value: value.clone(),
                        prev_kv: true,
                        ..Default::default()
                    })),
                }],
                failure: vec![range_op(key)],
            })
            .await?;
        if resp.succeeded {
            let rev = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
            let create_revision = resp
                .responses
                .iter()
                .find_map(|r| match &r.response {
                    Some(OpResponse::ResponsePut(p)) => {
                        p.prev_kv.as_ref().map(|kv| kv.create_revision)
                    }
                    _ => None,
                })
                .unwrap_or(rev);
            Ok(WriteOutcome::Done(KeyValue {
                key: key.to_string(),
                value,
                create_revision,
                mod_revision: rev,
            }))
        } else {
            Ok(WriteOutcome::Conflict(Self::failure_current(&resp)))
        }
    }

    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<WriteOutcome, StoreError> {
        let cmp = match expected {
            Some(rev) => compare(
                key,
                CompareTarget::Mod,
                CompareResult::Equal,
                TargetUnion::ModRevision(rev),
            ),
            None => compare(
                key,
                CompareTarget::Create,
                CompareResult::Greater,
                TargetUnion::CreateRevision(0),
            ),
        };
        let resp = self
            .txn(TxnRequest {
                compare: vec![cmp],
                success: vec![RequestOp {
                    request: Some(OpRequest::RequestDeleteRange(DeleteRangeRequest {
                        key: key.as_bytes().to_vec(),
                        prev_kv: true,
                        ..Default::default()
                    })),
                }],
                failure: vec![range_op(key)],
            })
            .await?;
        if resp.succeeded {
            let rev = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
            let prev = resp.responses.into_iter().find_map(|r| match r.response {
                Some(OpResponse::ResponseDeleteRange(d)) => d.prev_kvs.into_iter().next(),
                _ => None,
            });
            match prev {
                Some(p) => Ok(WriteOutcome::Done(KeyValue {
                    key: key.to_string(),
                    value: p.value,
                    create_revision: p.create_revision,
                    mod_revision: rev,
                })),
                None => Ok(WriteOutcome::Conflict(None)),
            }
        } else {
            Ok(WriteOutcome::Conflict(Self::failure_current(&resp)))
        }
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        let known = self.compacted.load(Ordering::Relaxed);
        if from > 0 && from < known {
            return Err(StoreError::Compacted {
                requested: from,
                compacted: known,
            });
        }
        let (key, range_end) = prefix_range(prefix);
        let create = WatchCreateRequest {
            key,
            range_end,
            // etcd's start revision is inclusive; ours is "after `from`".
            start_revision: if from == 0 { 0 } else { from + 1 },
            prev_kv: true,
            ..Default::default()
        };
        let n = self.endpoints.len();
        let start = self.preferred.load(Ordering::Relaxed);
        let mut opened = None;
        for i in 0..n {
            let m = &self.endpoints[(start + i) % n];
            match self.open_watch(m, create.clone(), from).await {
                Ok(w) => {
                    opened = Some(w);
                    break;
                }
                Err(StoreError::Unavailable(e)) if i + 1 < n => {
                    warn!(endpoint = %m.url, error = %e, "etcd endpoint unavailable for a watch; trying the next");
                }
                Err(e) => return Err(e),
            }
        }
        let Some((req_tx, mut responses, pending)) = opened else {
            return Err(StoreError::Unavailable("no etcd endpoint".into()));
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<WatchEvent, StoreError>>(1024);
        tokio::spawn(async move {
            // Keeping the request sender alive keeps the watch open.
            let _req_tx = req_tx;
            let mut last = from;
            for resp in pending {
                if !forward(&tx, resp, from, &mut last).await {
                    return;
                }
            }
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    msg = responses.next() => match msg {
                        Some(Ok(resp)) => {
                            if !forward(&tx, resp, from, &mut last).await {
                                return;
                            }
                        }
                        Some(Err(s)) => {
                            let _ = tx.send(Err(status_err(s))).await;
                            return;
                        }
                        None => {
                            let _ = tx.send(Err(StoreError::Unavailable("etcd watch stream ended".into()))).await;
                            return;
                        }
                    }
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let r = self
            .range_rpc(RangeRequest {
                key: b"/".to_vec(),
                count_only: true,
                ..Default::default()
            })
            .await
            .map_err(status_err)?
            .into_inner();
        Ok(r.header.map(|h| h.revision).unwrap_or(0))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        match self
            .compact_rpc(CompactionRequest {
                revision,
                // Wait until the history is gone (as SqliteStore does).
                physical: true,
            })
            .await
        {
            Ok(_) => {}
            Err(s) => match status_err(s) {
                // Already compacted past this point: nothing to do.
                StoreError::Compacted { .. } => {}
                StoreError::FutureRevision { .. } => {
                    return Err(StoreError::FutureRevision {
                        requested: revision,
                        current: self.current_revision().await.unwrap_or(0),
                    })
                }
                e => return Err(e),
            },
        }
        self.compacted.fetch_max(revision, Ordering::Relaxed);
        Ok(())
    }

    /// etcd does not report its compaction point, so this finds it: the lowest revision
    /// a read is not refused at, by binary search between the last known point and the
    /// current revision (a few count-only ranges). 0 when nothing was compacted.
    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        let known = self.compacted.load(Ordering::Relaxed);
        let current = self.current_revision().await?;
        // Invariant: reads at `hi` work; reads below `lo` are refused.
        let (mut lo, mut hi) = (known.max(1), current.max(1));
        if lo >= hi || !self.is_compacted(lo).await? {
            return Ok(known);
        }
        lo += 1;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.is_compacted(mid).await? {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        self.compacted.fetch_max(lo, Ordering::Relaxed);
        Ok(lo)
    }
}

/// Sends one watch response's events; false when the watch is over (the receiver is
/// gone, or etcd compacted or canceled the watch, which is sent as an error).
async fn forward(
    tx: &tokio::sync::mpsc::Sender<Result<WatchEvent, StoreError>>,
    resp: generated::etcdserverpb::WatchResponse,
    from: Revision,
    last: &mut Revision,
) -> bool {
    if resp.compact_revision != 0 {
        let _ = tx
            .send(Err(StoreError::Compacted {
                requested: from,
                compacted: resp.compact_revision,
            }))
            .await;
        return false;
    }
    if resp.canceled {
        let _ = tx
            .send(Err(StoreError::Unavailable(format!(
                "etcd canceled the watch: {}",
                resp.cancel_reason
            ))))
            .await;
        return false;
    }
    for ev in resp.events {
        let Some(kv) = ev.kv else { continue };
        if kv.mod_revision <= *last {
            continue;
        }
        *last = kv.mod_revision;
        let prev = ev.prev_kv.map(to_kv);
        let delete = ev.r#type == mvccpb::event::EventType::Delete as i32;
        let mut kv = to_kv(kv);
        if delete {
            // etcd sends only the key for a delete; carry the last value.
            if let Some(p) = &prev {
                kv.value = p.value.clone();
                kv.create_revision = p.create_revision;
            }
        }
        let we = WatchEvent {
            kind: if delete {
                EventKind::Delete
            } else {
                EventKind::Put
            },
            prev: if !delete && kv.create_revision == kv.mod_revision {
                None
            } else {
                prev
            },
            kv,
        };
        if tx.send(Ok(we)).await.is_err() {
            return false;
        }
    }
    true
}
