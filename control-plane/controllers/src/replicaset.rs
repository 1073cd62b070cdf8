//! The ReplicaSet controller (upstream pkg/controller/replicaset): keeps
//! `spec.replicas` active pods matching the selector, adopting matching orphans and
//! releasing pods that stopped matching; creates in slow-start batches, deletes the
//! least valuable pods first; reports replicas / fullyLabeledReplicas / readyReplicas /
//! availableReplicas / observedGeneration. Expectations stop it from acting twice on
//! pods it has created or deleted but not yet seen in its cache.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::{Selector, SelectorExt};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::events::Recorder;
use crate::pods::{self, is_active};
use crate::runner::{self, controller_of, Action, Change, Informer, Key, WorkQueue};
use crate::{is_status, Context, ControllerError, ControllerFuture};

/// Upstream's `BurstReplicas`: at most this many creations or deletions per sync.
pub const BURST_REPLICAS: usize = 500;
/// Expectations older than this are presumed lost (upstream `ExpectationsTimeout`).
const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(300);
const WORKERS: usize = 5;

pub fn run(ctx: Context) -> ControllerFuture {
    Box::pin(run_controller(ctx))
}

/// Pods this controller created or deleted and has not yet seen so in its cache,
/// per ReplicaSet (upstream `UIDTrackingControllerExpectations`, checked against the
/// cache instead of counted from events).
#[derive(Default)]
pub struct Expectations {
    pending: Mutex<HashMap<Key, Pending>>,
}

#[derive(Default)]
struct Pending {
    /// Names of created pods not yet in the cache.
    adds: HashSet<String>,
    /// (name, uid) of deleted pods still in the cache without a deletionTimestamp.
    dels: HashSet<(String, String)>,
    since: Option<Instant>,
}

impl Expectations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn expect_creations(&self, key: &Key, names: impl IntoIterator<Item = String>) {
        let mut m = self.lock();
        let p = m.entry(key.clone()).or_default();
        p.adds.extend(names);
        p.since = Some(Instant::now());
    }

    pub fn expect_deletions(&self, key: &Key, pods: impl IntoIterator<Item = (String, String)>) {
        let mut m = self.lock();
        let p = m.entry(key.clone()).or_default();
        p.dels.extend(pods);
        p.since = Some(Instant::now());
    }

    /// A pod the owner created went away before the cache showed it.
    pub fn observe_deleted(&self, key: &Key, name: &str) {
        if let Some(p) = self.lock().get_mut(key) {
            p.adds.remove(name);
        }
    }

    pub fn forget(&self, key: &Key) {
        self.lock().remove(key);
    }

    /// Whether the cache reflects every creation and deletion made for `key`.
    pub fn satisfied(&self, key: &Key, pods: &Store<Pod>) -> bool {
        let mut m = self.lock();
        let Some(p) = m.get_mut(key) else {
            return true;
        };
        let ns = key.namespace.clone().unwrap_or_default();
        let lookup = |name: &str| pods.get(&Key::new(Some(&ns), name).object_ref::<Pod>());
        p.adds.retain(|name| lookup(name).is_none());
        p.dels.retain(|(name, uid)| {
            lookup(name).is_some_and(|pod| {
                pod.metadata.uid.as_deref() == Some(uid)
                    && pod.metadata.deletion_timestamp.is_none()
            })
        });
        if p.adds.is_empty() && p.dels.is_empty() {
            m.remove(key);
            return true;
        }
        if p.since.is_some_and(|t| t.elapsed() > EXPECTATIONS_TIMEOUT) {
            tracing::warn!(replicaset = %key, "expectations timed out; syncing anyway");
            m.remove(key);
            return true;
        }
        false
    }
}

/// At most this many API calls of one sync in flight at once. Upstream bounds the
/// same bursts with client-go's rate limiter; without a bound, hundreds of concurrent
/// HTTP/1.1 requests mean hundreds of TLS connections.
pub const MAX_IN_FLIGHT: usize = 16;

/// Runs `f` for `count` items in batches of 1, 2, 4, …, stopping after the first batch
/// with a failure (upstream `slowStartBatch`): a quota or admission problem costs one
/// failed call, not hundreds. Within a batch at most [`MAX_IN_FLIGHT`] calls run at
/// once. Returns the successes and the first error.
pub async fn slow_start_batch<T, E, F, Fut>(count: usize, mut f: F) -> (Vec<T>, Option<E>)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut done = Vec::with_capacity(count);
    let mut remaining = count;
    let mut batch = 1.min(remaining);
    let mut index = 0;
    while batch > 0 {
        let futs: Vec<Fut> = (index..index + batch).map(&mut f).collect();
        index += batch;
        let mut error = None;
        let results: Vec<Result<T, E>> = futures::stream::iter(futs)
            .buffer_unordered(MAX_IN_FLIGHT)
            .collect()
            .await;
        for r in results {
            match r {
                Ok(t) => done.push(t),
                Err(e) => {
                    if error.is_none() {
                        error = Some(e);
                    }
                }
            }
        }
        if error.is_some() {
            return (done, error);
        }
        remaining -= batch;
        batch = (2 * batch).min(remaining);
    }
    (done, None)
}

struct State {
    client: Client,
    rs: Store<ReplicaSet>,
    pods: Store<Pod>,
    expectations: Arc<Expectations>,
    recorder: Recorder,
}

/// The selector of a ReplicaSet (an unparsable one selects nothing).
fn selector_of(rs: &ReplicaSet) -> Option<Selector> {
    Selector::try_from(rs.spec.as_ref()?.selector.clone()).ok()
}

fn labels_of(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.labels.clone().unwrap_or_default()
}

fn owner_key(pod: &Pod, kind: &str) -> Option<Key> {
    let r = controller_of(pod)?;
    (r.kind == kind && r.api_version.starts_with("apps/"))
        .then(|| Key::new(pod.metadata.namespace.as_deref(), &r.name))
}

async fn run_controller(ctx: Context) -> Result<(), ControllerError> {
    let client = ctx.client.clone();
    let queue = WorkQueue::new();
    let rs_inf = Informer::new(Api::<ReplicaSet>::all(client.clone()));
    let pod_inf = ctx.pods.clone();
    let state = Arc::new(State {
        client: client.clone(),
        rs: rs_inf.store(),
        pods: pod_inf.store(),
        expectations: Arc::new(Expectations::default()),
        recorder: Recorder::new(client, "replicaset-controller"),
    });

    let q = queue.clone();
    let rs_events = rs_inf.run(move |rs, _| q.add(Key::of(rs)), {
        let q = queue.clone();
        let store = state.rs.clone();
        move || {
            store
                .state()
                .iter()
                .for_each(|rs| q.add(Key::of(rs.as_ref())))
        }
    });
    let pod_events = {
        let q = queue.clone();
        let st = state.clone();
        pod_inf.handle(
            move |pod, change| {
                if let Some(key) = owner_key(pod, "ReplicaSet") {
                    if change == Change::Deleted {
                        st.expectations.observe_deleted(&key, &pod.name_any());
                    }
                    q.add(key);
                } else if controller_of(pod).is_none() && change == Change::Applied {
                    // An orphan: every ReplicaSet that would adopt it takes a look.
                    let labels = labels_of(pod);
                    let ns = pod.metadata.namespace.as_deref();
                    for rs in st.rs.state() {
                        if rs.metadata.namespace.as_deref() == ns
                            && selector_of(&rs).is_some_and(|s| s.matches(&labels))
                        {
                            q.add(Key::of(rs.as_ref()));
                        }
                    }
                }
            },
            || {},
        )
    };
    let workers = {
        let st = state.clone();
        async move {
            runner::wait_synced(&[&st.rs, &st.pods]).await;
            runner::run_workers("replicaset", queue, WORKERS, move |key| {
                let st = st.clone();
                async move { sync(&st, &key).await }
            })
            .await
        }
    };
    tokio::select! {
        _ = rs_events => {}
        _ = pod_events => {}
        _ = workers => {}
    }
    Ok(())
}

async fn sync(st: &State, key: &Key) -> Result<Action, ControllerError> {
    let Some(rs) = st.rs.get(&key.object_ref()) else {
        st.expectations.forget(key);
        return Ok(Action::Done);
    };
    let ns = key.namespace.clone().unwrap_or_default();
    let Some(selector) = selector_of(&rs) else {
        st.recorder.record(
            rs.as_ref(),
            true,
            "InvalidSelector",
            "invalid label selector".into(),
        );
        return Ok(Action::Done);
    };
    let needs_sync = st.expectations.satisfied(key, &st.pods);
    let candidates: Vec<Arc<Pod>> = st
        .pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()) && is_active(p))
        .collect();
    let owned = claim_pods(st, &rs, &selector, &candidates).await?;

    let mut manage_error = None;
    if needs_sync && rs.metadata.deletion_timestamp.is_none() {
        if let Err(e) = manage_replicas(st, key, &rs, &owned).await {
            manage_error = Some(e);
        }
    }

    let now = Timestamp::now();
    let status = compute_status(&rs, &owned, manage_error.as_ref(), now);
    if rs.status.as_ref() != Some(&status) {
        let mut next = (*rs).clone();
        next.status = Some(status.clone());
        let api: Api<ReplicaSet> = Api::namespaced(st.client.clone(), &ns);
        match api
            .replace_status(&key.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => return Ok(Action::Done),
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(e) = manage_error {
        return Err(e);
    }
    // Pods ready but not yet available: look again when the first one should be.
    let min_ready = rs
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    if min_ready > 0 {
        let next = owned
            .iter()
            .filter_map(|p| pods::until_available(p, min_ready, now))
            .min();
        if let Some(ms) = next {
            return Ok(Action::RequeueAfter(Duration::from_millis(ms as u64 + 50)));
        }
    }
    Ok(Action::Done)
}

/// Adopts matching orphans and releases owned pods that no longer match (upstream
/// `PodControllerRefManager.ClaimPods`); returns the pods this ReplicaSet controls.
async fn claim_pods(
    st: &State,
    rs: &ReplicaSet,
    selector: &Selector,
    candidates: &[Arc<Pod>],
) -> Result<Vec<Arc<Pod>>, ControllerError> {
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let ns = rs.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(st.client.clone(), &ns);
    let deleting = rs.metadata.deletion_timestamp.is_some();
    let mut owned = Vec::new();
    let mut rechecked = false;
    for pod in candidates {
        let matches = selector.matches(&labels_of(pod));
        match controller_of(pod.as_ref()) {
            Some(r) if r.uid == uid => {
                if matches || deleting {
                    owned.push(pod.clone());
                } else {
                    release(&api, pod, &uid).await?;
                }
            }
            Some(_) => {}
            None => {
                if !matches || deleting || pod.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                // Adopt only if the live ReplicaSet is still this one and not going away
                // (the cache may lag a deletion).
                if !rechecked {
                    let rs_api: Api<ReplicaSet> = Api::namespaced(st.client.clone(), &ns);
                    let live = rs_api.get_opt(&rs.name_any()).await?;
                    let ok = live.is_some_and(|l| {
                        l.metadata.uid.as_deref() == Some(uid.as_str())
                            && l.metadata.deletion_timestamp.is_none()
                    });
                    if !ok {
                        return Ok(owned);
                    }
                    rechecked = true;
                }
                if let Some(p) = adopt(&api, pod, rs).await? {
                    owned.push(Arc::new(p));
                }
            }
        }
    }
    Ok(owned)
}

/// Adds `owner` as the pod's controller, guarded by its resourceVersion.
async fn adopt(api: &Api<Pod>, pod: &Pod, rs: &ReplicaSet) -> Result<Option<Pod>, ControllerError> {
    let mut refs: Vec<OwnerReference> = pod.metadata.owner_references.clone().unwrap_or_default();
    refs.push(pods::controller_ref("apps/v1", "ReplicaSet", &rs.metadata));
    let patch = json!({"metadata": {
        "ownerReferences": refs,
        "resourceVersion": pod.metadata.resource_version,
    }});
    match api
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(p) => Ok(Some(p)),
        Err(e) if is_status(&e, 404) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Removes the reference to `owner_uid` from a pod that no longer matches.
async fn release(api: &Api<Pod>, pod: &Pod, owner_uid: &str) -> Result<(), ControllerError> {
    let refs: Vec<OwnerReference> = pod
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.uid != owner_uid)
        .collect();
    let patch = json!({"metadata": {
        "ownerReferences": if refs.is_empty() { serde_json::Value::Null } else { json!(refs) },
        "resourceVersion": pod.metadata.resource_version,
    }});
    match api
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates or deletes pods so the ReplicaSet has `spec.replicas` of them.
async fn manage_replicas(
    st: &State,
    key: &Key,
    rs: &ReplicaSet,
    owned: &[Arc<Pod>],
) -> Result<(), ControllerError> {
    let want = rs
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0) as usize;
    let ns = key.namespace.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(st.client.clone(), &ns);
    if owned.len() < want {
        let count = (want - owned.len()).min(BURST_REPLICAS);
        let Some(template) = rs.spec.as_ref().and_then(|s| s.template.clone()) else {
            return Ok(());
        };
        let owner = pods::controller_ref("apps/v1", "ReplicaSet", &rs.metadata);
        let pod = pods::pod_from_template(&template, &ns, &format!("{}-", key.name), owner);
        let (created, err) = slow_start_batch(count, |_| {
            let api = api.clone();
            let pod = pod.clone();
            async move { api.create(&PostParams::default(), &pod).await }
        })
        .await;
        st.expectations
            .expect_creations(key, created.iter().map(|p| p.name_any()));
        for p in &created {
            st.recorder.record(
                rs,
                false,
                "SuccessfulCreate",
                format!("Created pod: {}", p.name_any()),
            );
        }
        if let Some(e) = err {
            st.recorder
                .record(rs, true, "FailedCreate", format!("Error creating: {e}"));
            return Err(e.into());
        }
    } else if owned.len() > want {
        let count = (owned.len() - want).min(BURST_REPLICAS);
        let refs: Vec<&Pod> = owned.iter().map(|p| p.as_ref()).collect();
        let victims = pods::pods_to_delete(&refs, &refs, count);
        st.expectations.expect_deletions(
            key,
            victims
                .iter()
                .map(|p| (p.name_any(), p.metadata.uid.clone().unwrap_or_default())),
        );
        let deletes: Vec<_> = victims
            .iter()
            .map(|p| {
                let api = api.clone();
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: p.metadata.uid.clone(),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                let name = p.name_any();
                async move { (name.clone(), api.delete(&name, &dp).await) }
            })
            .collect();
        let results: Vec<_> = futures::stream::iter(deletes)
            .buffer_unordered(MAX_IN_FLIGHT)
            .collect()
            .await;
        let mut first_err = None;
        for (name, r) in results {
            match r {
                Ok(_) => st.recorder.record(
                    rs,
                    false,
                    "SuccessfulDelete",
                    format!("Deleted pod: {name}"),
                ),
                Err(e) if is_status(&e, 404) || is_status(&e, 409) => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            // Forget the expectations so the next sync recounts from the cache.
            st.expectations.forget(key);
            return Err(e.into());
        }
    }
    Ok(())
}

/// The status a ReplicaSet should report for the pods it controls.
pub fn compute_status(
    rs: &ReplicaSet,
    owned: &[Arc<Pod>],
    manage_error: Option<&ControllerError>,
    now: Timestamp,
) -> ReplicaSetStatus {
    let spec = rs.spec.as_ref();
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let template_labels = spec
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully_labeled = owned
        .iter()
        .filter(|p| {
            let l = labels_of(p);
            template_labels.iter().all(|(k, v)| l.get(k) == Some(v))
        })
        .count() as i32;
    let ready = owned.iter().filter(|p| pods::is_ready(p)).count() as i32;
    let available = owned
        .iter()
        .filter(|p| pods::is_available(p, min_ready, now))
        .count() as i32;
    let old = rs.status.clone().unwrap_or_default();
    let mut conditions: Vec<ReplicaSetCondition> = old
        .conditions
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_ != "ReplicaFailure")
        .collect();
    if let Some(e) = manage_error {
        let prev = old
            .conditions
            .as_ref()
            .and_then(|cs| cs.iter().find(|c| c.type_ == "ReplicaFailure"));
        conditions.push(ReplicaSetCondition {
            type_: "ReplicaFailure".into(),
            status: "True".into(),
            reason: Some("FailedCreate".into()),
            message: Some(e.to_string()),
            last_transition_time: prev
                .and_then(|c| c.last_transition_time.clone())
                .or(Some(Time(now))),
        });
    }
    let nonzero = |n: i32| (n != 0).then_some(n);
    ReplicaSetStatus {
        replicas: owned.len() as i32,
        fully_labeled_replicas: nonzero(fully_labeled),
        ready_replicas: nonzero(ready),
        available_replicas: nonzero(available),
        observed_generation: rs.metadata.generation,
        conditions: (!conditions.is_empty()).then_some(conditions),
        terminating_replicas: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slow_start_doubles_and_stops_at_the_first_failing_batch() {
        let calls = std::sync::Mutex::new(Vec::new());
        let (ok, err) = slow_start_batch(10, |i| {
            calls.lock().unwrap().push(i);
            async move {
                if i == 5 {
                    Err("boom")
                } else {
                    Ok(i)
                }
            }
        })
        .await;
        // Batches 1, 2, 4 (indices 0..7): index 5 fails in the third batch.
        assert_eq!(calls.lock().unwrap().len(), 7);
        assert_eq!(ok.len(), 6);
        assert_eq!(err, Some("boom"));

        let (ok, err) = slow_start_batch(10, |i| async move { Ok::<_, ()>(i) }).await;
        assert_eq!(ok.len(), 10);
        assert!(err.is_none());
        let (ok, _) = slow_start_batch(0, |i| async move { Ok::<_, ()>(i) }).await;
        assert!(ok.is_empty());
    }
}
