//! Leader election through a `coordination.k8s.io/v1` Lease, as client-go's
//! leaderelection does: acquire when the lease is free or expired, renew every
//! `retry_period`, give up leadership when a renewal cannot succeed within
//! `renew_deadline`. Optimistic concurrency on the Lease's resourceVersion makes two
//! candidates racing for an expired lease safe.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub namespace: String,
    pub lease_name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaderConfig {
    /// Upstream's defaults: 15 s lease, 10 s renew deadline, 2 s retry.
    pub fn new(lease_name: &str, identity: &str) -> Self {
        LeaderConfig {
            namespace: "kube-system".into(),
            lease_name: lease_name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Tries once to acquire or renew; returns whether we hold the lease afterwards.
async fn try_acquire_or_renew(api: &Api<Lease>, cfg: &LeaderConfig) -> Result<bool, kube::Error> {
    let now = MicroTime(Timestamp::now());
    let duration_secs = cfg.lease_duration.as_secs().max(1) as i32;
    match api.get_opt(&cfg.lease_name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.lease_name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            let holder = spec.holder_identity.clone().unwrap_or_default();
            let held_by_us = holder == cfg.identity;
            if !held_by_us && !holder.is_empty() {
                let renewed = spec.renew_time.as_ref().map(|t| t.0);
                let dur = spec.lease_duration_seconds.unwrap_or(duration_secs) as i64;
                let expired = match renewed {
                    Some(t) => Timestamp::now().as_millisecond() - t.as_millisecond() > dur * 1000,
                    None => true,
                };
                if !expired {
                    return Ok(false);
                }
            }
            if !held_by_us {
                spec.acquire_time = Some(now.clone());
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                spec.holder_identity = Some(cfg.identity.clone());
            }
            spec.renew_time = Some(now);
            spec.lease_duration_seconds = Some(duration_secs);
            match api
                .replace(&cfg.lease_name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Campaigns for the lease forever. The returned receiver says whether we lead right
/// now; callers start their work on `true` and must stop it on `false`.
pub fn campaign(client: Client, cfg: LeaderConfig) -> watch::Receiver<bool> {
    campaign_with_handle(client, cfg).0
}

/// [`campaign`], also returning the campaigning task so the caller can stop it
/// (abort) before [`release`].
pub fn campaign_with_handle(
    client: Client,
    cfg: LeaderConfig,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
        let mut last_renew = tokio::time::Instant::now();
        loop {
            let leading = *tx.borrow();
            match try_acquire_or_renew(&api, &cfg).await {
                Ok(true) => {
                    last_renew = tokio::time::Instant::now();
                    if !leading {
                        tracing::info!(lease = %cfg.lease_name, identity = %cfg.identity, "became leader");
                        let _ = tx.send(true);
                    }
                }
                Ok(false) => {
                    if leading {
                        tracing::warn!(lease = %cfg.lease_name, "lost the lease to another holder");
                        let _ = tx.send(false);
                    }
                }
                Err(e) => {
                    tracing::warn!(lease = %cfg.lease_name, error = %e, "lease renewal failed");
                    if leading && last_renew.elapsed() > cfg.renew_deadline {
                        tracing::warn!(lease = %cfg.lease_name, "renew deadline passed; stepping down");
                        let _ = tx.send(false);
                    }
                }
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(cfg.retry_period).await;
        }
    });
    (rx, task)
}

/// Gives the lease up if we hold it (client-go's `ReleaseOnCancel`): another candidate
/// takes over at once instead of after `lease_duration`.
pub async fn release(client: &Client, cfg: &LeaderConfig) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let Ok(Some(mut lease)) = api.get_opt(&cfg.lease_name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    match api
        .replace(&cfg.lease_name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => tracing::info!(lease = %cfg.lease_name, "released the lease"),
        Err(e) => tracing::warn!(lease = %cfg.lease_name, error = %e, "releasing the lease failed"),
    }
}
