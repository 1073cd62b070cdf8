//! `EtcdStore`: a real etcd v3 cluster behind the [`Store`] trait. Keys and revisions
//! pass straight through, so etcd's revision is the API's resourceVersion, exactly as
//! with kube-apiserver.

mod generated;

use std::sync::atomic::{AtomicI64, Ordering};

use async_trait::async_trait;
use futures::StreamExt;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use generated::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use generated::etcdserverpb::kv_client::KvClient;
use generated::etcdserverpb::request_op::Request as OpRequest;
use generated::etcdserverpb::response_op::Response as OpResponse;
use generated::etcdserverpb::watch_client::WatchClient;
use generated::etcdserverpb::watch_request::RequestUnion;
use generated::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest, WatchCreateRequest, WatchRequest,
};
use generated::mvccpb;

use crate::{
    EventKind, KeyValue, ListRequest, ListResponse, Revision, Store, StoreError, WatchEvent,
    WatchStream, WriteOutcome,
};

/// Connections per endpoint: one HTTP/2 connection serializes on its own flow
/// control and etcd's per-stream handling; a few spread concurrent writers.
const CONNECTIONS: usize = 4;

pub struct EtcdStore {
    kvs: Vec<KvClient<Channel>>,
    next: std::sync::atomic::AtomicUsize,
    watch: WatchClient<Channel>,
    compacted: AtomicI64,
}

fn status_err(s: tonic::Status) -> StoreError {
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
    pub async fn connect(endpoints: &[String]) -> Result<Self, StoreError> {
        let mut eps = Vec::new();
        for e in endpoints {
            let url = if e.starts_with("http://") || e.starts_with("https://") {
                e.clone()
            } else {
                format!("http://{e}")
            };
            let ep = Endpoint::from_shared(url)
                .map_err(|err| StoreError::Unavailable(format!("bad etcd endpoint {e:?}: {err}")))?
                .connect_timeout(std::time::Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(std::time::Duration::from_secs(30));
            eps.push(ep);
        }
        if eps.is_empty() {
            return Err(StoreError::Unavailable("no etcd endpoints".into()));
        }
        let mut channels = Vec::new();
        for _ in 0..CONNECTIONS {
            let channel = if eps.len() == 1 {
                eps[0]
                    .connect()
                    .await
                    .map_err(|e| StoreError::Unavailable(format!("connecting to etcd: {e}")))?
            } else {
                Channel::balance_list(eps.clone().into_iter())
            };
            channels.push(channel);
        }
        let store = EtcdStore {
            kvs: channels.iter().cloned().map(KvClient::new).collect(),
            next: std::sync::atomic::AtomicUsize::new(0),
            watch: WatchClient::new(channels[0].clone()),
            compacted: AtomicI64::new(0),
        };
        store.current_revision().await?;
        Ok(store)
    }

    fn kv(&self) -> KvClient<Channel> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.kvs.len();
        self.kvs[i].clone()
    }

    async fn txn(
        &self,
        req: TxnRequest,
    ) -> Result<generated::etcdserverpb::TxnResponse, StoreError> {
        self.kv()
            .txn(req)
            .await
            .map(|r| r.into_inner())
            .map_err(status_err)
    }

    /// An unconditional put (no transaction): the peer figure benchmarks compare with.
    pub async fn raw_put(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        let r = self
            .kv()
            .put(PutRequest {
                key: key.as_bytes().to_vec(),
                value,
                ..Default::default()
            })
            .await
            .map_err(status_err)?
            .into_inner();
        Ok(r.header.map(|h| h.revision).unwrap_or(0))
    }

    fn failure_current(resp: &generated::etcdserverpb::TxnResponse) -> Option<KeyValue> {
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
            .kv()
            .range(RangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            })
            .await
            .map_err(status_err)?
            .into_inner();
        Ok(r.kvs.into_iter().next().map(to_kv))
    }

    async fn list(&self, req: ListRequest) -> Result<ListResponse, StoreError> {
        let end = prefix_end(req.prefix.as_bytes());
        let lower = match &req.start_after {
            Some(s) if s.as_str() >= req.prefix.as_str() => {
                let mut k = s.as_bytes().to_vec();
                k.push(0);
                k
            }
            _ => req.prefix.as_bytes().to_vec(),
        };
        let r = self
            .kv()
            .range(RangeRequest {
                key: lower,
                range_end: end,
                limit: req.limit.map(|l| l as i64).unwrap_or(0),
                revision: req.revision.unwrap_or(0),
                ..Default::default()
            })
            .await
            .map_err(|s| match status_err(s) {
                StoreError::Compacted { .. } => StoreError::Compacted {
                    requested: req.revision.unwrap_or(0),
                    compacted: self.compacted.load(Ordering::Relaxed),
                },
                StoreError::FutureRevision { .. } => StoreError::FutureRevision {
                    requested: req.revision.unwrap_or(0),
                    current: 0,
                },
                other => other,
            })?
            .into_inner();
        let header_rev = r.header.as_ref().map(|h| h.revision).unwrap_or(0);
        let items: Vec<KeyValue> = r.kvs.into_iter().map(to_kv).collect();
        let remaining = (r.count - items.len() as i64).max(0);
        Ok(ListResponse {
            items,
            revision: req.revision.unwrap_or(header_rev),
            remaining,
        })
    }

    async fn count(&self, prefix: &str) -> Result<i64, StoreError> {
        let r = self
            .kv()
            .range(RangeRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: prefix_end(prefix.as_bytes()),
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
        let (req_tx, req_rx) = tokio::sync::mpsc::channel::<WatchRequest>(4);
        req_tx
            .send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key: prefix.as_bytes().to_vec(),
                    range_end: prefix_end(prefix.as_bytes()),
                    start_revision: if from == 0 { 0 } else { from + 1 },
                    prev_kv: true,
                    ..Default::default()
                })),
            })
            .await
            .map_err(|_| StoreError::Internal("watch request channel closed".into()))?;
        let mut responses = self
            .watch
            .clone()
            .watch(tokio_stream::wrappers::ReceiverStream::new(req_rx))
            .await
            .map_err(status_err)?
            .into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<WatchEvent, StoreError>>(1024);
        tokio::spawn(async move {
            // Keeping the request sender alive keeps the watch open.
            let _req_tx = req_tx;
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    msg = responses.next() => match msg {
                        Some(Ok(resp)) => {
                            if resp.compact_revision != 0 {
                                let _ = tx.send(Err(StoreError::Compacted { requested: from, compacted: resp.compact_revision })).await;
                                return;
                            }
                            if resp.canceled {
                                let _ = tx.send(Err(StoreError::Unavailable(format!("watch canceled: {}", resp.cancel_reason)))).await;
                                return;
                            }
                            for ev in resp.events {
                                let Some(kv) = ev.kv else { continue };
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
                                    kind: if delete { EventKind::Delete } else { EventKind::Put },
                                    prev: if !delete && kv.create_revision == kv.mod_revision { None } else { prev },
                                    kv,
                                };
                                if tx.send(Ok(we)).await.is_err() {
                                    return;
                                }
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
            .kv()
            .range(RangeRequest {
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
            .kv()
            .compact(CompactionRequest {
                revision,
                physical: true,
            })
            .await
        {
            Ok(_) => {}
            // Already compacted past this point: nothing to do.
            Err(s) if s.message().contains("compacted") => {}
            Err(s) => return Err(status_err(s)),
        }
        self.compacted.fetch_max(revision, Ordering::Relaxed);
        Ok(())
    }

    async fn compacted_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.compacted.load(Ordering::Relaxed))
    }
}
