//! The Deployment controller (upstream pkg/controller/deployment): one ReplicaSet per
//! pod template (named `<deployment>-<pod-template-hash>`), rolled forward by
//! RollingUpdate (maxSurge/maxUnavailable) or Recreate, scaled proportionally,
//! paused/resumed, with revision annotations, history cleanup and the
//! Progressing/Available conditions `kubectl rollout status` and `kubectl wait` read.
//! `kubectl rollout undo` patches an old template back into the Deployment, which this
//! controller sees as a new rollout onto the old ReplicaSet.

pub mod util;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::{Selector, SelectorExt};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::events::Recorder;
use crate::pods;
use crate::runner::{self, controller_of, Action, Change, Informer, Key, WorkQueue};
use crate::{is_status, Context, ControllerError, ControllerFuture};
use util::*;

const WORKERS: usize = 5;

pub fn run(ctx: Context) -> ControllerFuture {
    Box::pin(run_controller(ctx))
}

struct State {
    client: Client,
    deployments: Store<Deployment>,
    rs: Store<ReplicaSet>,
    pods: Store<Pod>,
    recorder: Recorder,
}

fn selector_of(d: &Deployment) -> Option<Selector> {
    Selector::try_from(d.spec.as_ref()?.selector.clone()).ok()
}

fn deployment_of(rs: &ReplicaSet) -> Option<Key> {
    let r = controller_of(rs)?;
    (r.kind == "Deployment").then(|| Key::new(rs.metadata.namespace.as_deref(), &r.name))
}

async fn run_controller(ctx: Context) -> Result<(), ControllerError> {
    let client = ctx.client.clone();
    let queue = WorkQueue::new();
    let d_inf = Informer::new(Api::<Deployment>::all(client.clone()));
    let rs_inf = Informer::new(Api::<ReplicaSet>::all(client.clone()));
    let pod_inf = ctx.pods.clone();
    let st = Arc::new(State {
        client: client.clone(),
        deployments: d_inf.store(),
        rs: rs_inf.store(),
        pods: pod_inf.store(),
        recorder: Recorder::new(client, "deployment-controller"),
    });
    let d_events = {
        let q = queue.clone();
        let store = st.deployments.clone();
        let q2 = queue.clone();
        d_inf.run(
            move |d, _| q.add(Key::of(d)),
            move || {
                store
                    .state()
                    .iter()
                    .for_each(|d| q2.add(Key::of(d.as_ref())))
            },
        )
    };
    let rs_events = {
        let q = queue.clone();
        let st = st.clone();
        rs_inf.run(
            move |rs, change| {
                if let Some(k) = deployment_of(rs) {
                    q.add(k);
                } else if controller_of(rs).is_none() && change == Change::Applied {
                    let labels = rs.metadata.labels.clone().unwrap_or_default();
                    for d in st.deployments.state() {
                        if d.metadata.namespace == rs.metadata.namespace
                            && selector_of(&d).is_some_and(|s| s.matches(&labels))
                        {
                            q.add(Key::of(d.as_ref()));
                        }
                    }
                }
            },
            || {},
        )
    };
    // Recreate waits for old pods to be gone: their deletion wakes the Deployment.
    let pod_events = {
        let q = queue.clone();
        let st = st.clone();
        pod_inf.handle(
            move |pod, change| {
                if change != Change::Deleted {
                    return;
                }
                let Some(r) = controller_of(pod) else { return };
                if r.kind != "ReplicaSet" {
                    return;
                }
                let key = Key::new(pod.metadata.namespace.as_deref(), &r.name);
                if let Some(rs) = st.rs.get(&key.object_ref()) {
                    if let Some(k) = deployment_of(&rs) {
                        q.add(k);
                    }
                }
            },
            || {},
        )
    };
    let workers = {
        let st = st.clone();
        async move {
            runner::wait_synced(&[&st.deployments, &st.rs, &st.pods]).await;
            runner::run_workers("deployment", queue, WORKERS, move |key| {
                let st = st.clone();
                async move { sync(&st, &key).await }
            })
            .await
        }
    };
    tokio::select! {
        _ = d_events => {}
        _ = rs_events => {}
        _ = pod_events => {}
        _ = workers => {}
    }
    Ok(())
}

/// One pass over a Deployment, as upstream `syncDeployment`.
async fn sync(st: &State, key: &Key) -> Result<Action, ControllerError> {
    let Some(d) = st.deployments.get(&key.object_ref()) else {
        return Ok(Action::Done);
    };
    let mut d = (*d).clone();
    let now = Timestamp::now();
    let empty_selector = d
        .spec
        .as_ref()
        .is_none_or(|s| s.selector == LabelSelector::default());
    if empty_selector {
        st.recorder.record(
            &d,
            true,
            "SelectingAll",
            "This deployment is selecting all pods. A non-empty selector is required.".into(),
        );
        return Ok(Action::Done);
    }
    let mut rs_list = claim_replicasets(st, &d).await?;
    if d.metadata.deletion_timestamp.is_some() {
        let refs: Vec<&ReplicaSet> = rs_list.iter().collect();
        let (new_rs, _) = split_new_old(&d, &refs);
        let status = calculate_status(&d, new_rs, &refs, now);
        write_status(st, &d, status).await?;
        return Ok(Action::Done);
    }
    check_paused_conditions(st, &mut d, now).await?;
    let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
    let scaling = {
        let refs: Vec<&ReplicaSet> = rs_list.iter().collect();
        is_scaling_event(&d, &refs)
    };
    if paused || scaling {
        sync_new_rs(st, &mut d, &mut rs_list, false).await?;
        let refs: Vec<&ReplicaSet> = rs_list.iter().collect();
        let (new_rs, old) = split_new_old(&d, &refs);
        let plan = proportional_scale(&d, new_rs, &old);
        apply_scales(st, &d, &mut rs_list, plan).await?;
        let refs: Vec<&ReplicaSet> = rs_list.iter().collect();
        let (new_rs, old) = split_new_old(&d, &refs);
        if paused {
            cleanup_history(st, &d, &old).await?;
        }
        let status = calculate_status(&d, new_rs, &refs, now);
        write_status(st, &d, status).await?;
        return Ok(Action::Done);
    }
    if is_rolling(&d) {
        rollout_rolling(st, &mut d, &mut rs_list, now).await
    } else {
        rollout_recreate(st, &mut d, &mut rs_list, now).await
    }
}

async fn rollout_rolling(
    st: &State,
    d: &mut Deployment,
    rs_list: &mut Vec<ReplicaSet>,
    now: Timestamp,
) -> Result<Action, ControllerError> {
    sync_new_rs(st, d, rs_list, true).await?;
    // 1. Scale the new ReplicaSet up as far as maxSurge allows.
    let plan = {
        let refs: Vec<&ReplicaSet> = rs_list.iter().collect();
        let (new_rs, _) = split_new_old(d, &refs);
        let new_rs = new_rs.ok_or_else(|| ControllerError::Other("no new ReplicaSet".into()))?;
        let want = spec_replicas(d);
        let cur = rs_replicas(new_rs);
        let name = new_rs.name_any();
        if cur > want {
            vec![(name, want)]
        } else if cur < want {
            let to = new_rs_new_replicas(d, &refs, new_rs);
            if to != cur {
                vec![(name, to)]
            } else {
                Vec::new()
            }
        } else {
            Vec::new()
        }
    };
    if !plan.is_empty() {
        apply_scales(st, d, rs_list, plan).await?;
        return finish_rollout(st, d, rs_list, now).await;
    }
    // 2. Scale old ReplicaSets down as far as maxUnavailable allows.
    let plan = {
        let refs: Vec<&ReplicaSet> = rs_list.iter().collect();
        let (new_rs, old) = split_new_old(d, &refs);
        let active: Vec<&ReplicaSet> = old.into_iter().filter(|rs| rs_replicas(rs) > 0).collect();
        scale_down_old(d, new_rs, &active)
    };
    if !plan.is_empty() {
        apply_scales(st, d, rs_list, plan).await?;
        return finish_rollout(st, d, rs_list, now).await;
    }
    let complete = {
        let refs: Vec<&ReplicaSet> = rs_list.iter().collect();
        let (new_rs, _) = split_new_old(d, &refs);
        is_complete(d, &calculate_status(d, new_rs, &refs, now))
    };
    if complete {
        let refs: Vec<&ReplicaSet> = rs_list.iter().collect();
        let (_, old) = split_new_old(d, &refs);
        cleanup_history(st, d, &old).await?;
    }
    finish_rollout(st, d, rs_list, now).await
}

async fn rollout_recreate(
    st: &State,
    d: &mut Deployment,
    rs_list: &mut Vec<ReplicaSet>,
    now: Timestamp,
) -> Result<Action, ControllerError> {
    sync_new_rs(st, d, rs_list, false).await?;
    // 1. Every old ReplicaSet to zero.
    let plan: Vec<(String, i32)> = {
        let refs: Vec<&ReplicaSet> = rs_list.iter().collect();
        let (_, old) = split_new_old(d, &refs);
        old.iter()
            .filter(|rs| rs_replicas(rs) > 0)
            .map(|rs| (rs.name_any(), 0))
            .collect()
    };
    if !plan.is_empty() {
        apply_scales(st, d, rs_list, plan).await?;
        return finish_rollout(st, d, rs_list, now).await;
    }
    // 2. Wait until no old pod runs.
    if old_pods_running(st, d, rs_list) {
        return finish_rollout(st, d, rs_list, now).await;
    }
    // 3. The new ReplicaSet at full size.
    sync_new_rs(st, d, rs_list, true).await?;
    let plan = {
        let refs: Vec<&ReplicaSet> = rs_list.iter().collect();
        let (new_rs, _) = split_new_old(d, &refs);
        new_rs
            .filter(|rs| rs_replicas(rs) != spec_replicas(d))
            .map(|rs| vec![(rs.name_any(), spec_replicas(d))])
            .unwrap_or_default()
    };
    apply_scales(st, d, rs_list, plan).await?;
    let complete = {
        let refs: Vec<&ReplicaSet> = rs_list.iter().collect();
        let (new_rs, _) = split_new_old(d, &refs);
        is_complete(d, &calculate_status(d, new_rs, &refs, now))
    };
    if complete {
        let refs: Vec<&ReplicaSet> = rs_list.iter().collect();
        let (_, old) = split_new_old(d, &refs);
        cleanup_history(st, d, &old).await?;
    }
    finish_rollout(st, d, rs_list, now).await
}

/// Upstream `oldPodsRunning`: any old ReplicaSet still reporting pods, or any
/// non-terminated pod of one.
fn old_pods_running(st: &State, d: &Deployment, rs_list: &[ReplicaSet]) -> bool {
    let refs: Vec<&ReplicaSet> = rs_list.iter().collect();
    let (new_rs, old) = split_new_old(d, &refs);
    if old
        .iter()
        .any(|rs| rs.status.as_ref().is_some_and(|s| s.replicas > 0))
    {
        return true;
    }
    let new_uid = new_rs.and_then(|rs| rs.metadata.uid.clone());
    let owners: Vec<String> = refs
        .iter()
        .filter_map(|rs| rs.metadata.uid.clone())
        .filter(|u| Some(u) != new_uid.as_ref())
        .collect();
    st.pods.state().iter().any(|p| {
        p.metadata.namespace == d.metadata.namespace
            && controller_of(p.as_ref()).is_some_and(|r| owners.contains(&r.uid))
            && !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded") | Some("Failed")
            )
    })
}

/// Writes the rollout status and asks to be woken for the progress deadline.
async fn finish_rollout(
    st: &State,
    d: &Deployment,
    rs_list: &[ReplicaSet],
    now: Timestamp,
) -> Result<Action, ControllerError> {
    let refs: Vec<&ReplicaSet> = rs_list.iter().collect();
    let (new_rs, _) = split_new_old(d, &refs);
    let status = rollout_status(d, new_rs, &refs, now);
    let after = requeue_stuck_after(d, &status, now);
    write_status(st, d, status).await?;
    Ok(match after {
        Some(ms) => Action::RequeueAfter(Duration::from_millis(ms as u64 + 100)),
        None => Action::Done,
    })
}

async fn write_status(
    st: &State,
    d: &Deployment,
    status: k8s_openapi::api::apps::v1::DeploymentStatus,
) -> Result<(), ControllerError> {
    if d.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let mut next = d.clone();
    next.status = Some(status);
    let api: Api<Deployment> = Api::namespaced(
        st.client.clone(),
        d.metadata.namespace.as_deref().unwrap_or(""),
    );
    match api
        .replace_status(&d.name_any(), &PostParams::default(), &next)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Upstream `checkPausedConditions`: Progressing=Unknown while paused and on resume.
async fn check_paused_conditions(
    st: &State,
    d: &mut Deployment,
    now: Timestamp,
) -> Result<(), ControllerError> {
    if !has_progress_deadline(d) {
        return Ok(());
    }
    let mut status = d.status.clone().unwrap_or_default();
    let cond = condition(&status, "Progressing").cloned();
    if cond.as_ref().and_then(|c| c.reason.as_deref()) == Some(TIMED_OUT) {
        return Ok(());
    }
    let paused_cond = cond.as_ref().and_then(|c| c.reason.as_deref()) == Some(PAUSED);
    let paused = d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false);
    let c = if paused && !paused_cond {
        new_condition(
            "Progressing",
            "Unknown",
            PAUSED,
            "Deployment is paused".into(),
            now,
        )
    } else if !paused && paused_cond {
        new_condition(
            "Progressing",
            "Unknown",
            RESUMED,
            "Deployment is resumed".into(),
            now,
        )
    } else {
        return Ok(());
    };
    set_condition(&mut status, c);
    write_status(st, d, status.clone()).await?;
    d.status = Some(status);
    Ok(())
}

/// The ReplicaSets this Deployment controls, adopting matching orphans and releasing
/// the ones that stopped matching (upstream `getReplicaSetsForDeployment`).
async fn claim_replicasets(st: &State, d: &Deployment) -> Result<Vec<ReplicaSet>, ControllerError> {
    let Some(selector) = selector_of(d) else {
        return Ok(Vec::new());
    };
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let ns = d.metadata.namespace.clone().unwrap_or_default();
    let api: Api<ReplicaSet> = Api::namespaced(st.client.clone(), &ns);
    let deleting = d.metadata.deletion_timestamp.is_some();
    let mut owned = Vec::new();
    for rs in st.rs.state() {
        if rs.metadata.namespace.as_deref() != Some(ns.as_str()) {
            continue;
        }
        let labels = rs.metadata.labels.clone().unwrap_or_default();
        let matches = selector.matches(&labels);
        match controller_of(rs.as_ref()) {
            Some(r) if r.uid == uid => {
                if matches || deleting {
                    owned.push((*rs).clone());
                } else {
                    let refs: Vec<OwnerReference> = rs
                        .metadata
                        .owner_references
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|r| r.uid != uid)
                        .collect();
                    let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": rs.metadata.resource_version}});
                    if let Err(e) = api
                        .patch(
                            &rs.name_any(),
                            &PatchParams::default(),
                            &Patch::Merge(&patch),
                        )
                        .await
                    {
                        if !is_status(&e, 404) {
                            return Err(e.into());
                        }
                    }
                }
            }
            Some(_) => {}
            None if matches && !deleting && rs.metadata.deletion_timestamp.is_none() => {
                let mut refs = rs.metadata.owner_references.clone().unwrap_or_default();
                refs.push(pods::controller_ref("apps/v1", "Deployment", &d.metadata));
                let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": rs.metadata.resource_version}});
                match api
                    .patch(
                        &rs.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await
                {
                    Ok(adopted) => owned.push(adopted),
                    Err(e) if is_status(&e, 404) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            None => {}
        }
    }
    Ok(owned)
}

/// Finds (or, with `create`, makes) the ReplicaSet of the current template and brings
/// its revision annotations and the Deployment's revision up to date (upstream
/// `getNewReplicaSet`).
async fn sync_new_rs(
    st: &State,
    d: &mut Deployment,
    rs_list: &mut Vec<ReplicaSet>,
    create: bool,
) -> Result<(), ControllerError> {
    let ns = d.metadata.namespace.clone().unwrap_or_default();
    let api: Api<ReplicaSet> = Api::namespaced(st.client.clone(), &ns);
    let (existing, new_revision) = {
        let refs: Vec<&ReplicaSet> = rs_list.iter().collect();
        let (new_rs, old) = split_new_old(d, &refs);
        (new_rs.cloned(), max_revision(&old) + 1)
    };
    let min_ready = d.spec.as_ref().and_then(|s| s.min_ready_seconds);
    let revision: String;
    if let Some(rs) = existing {
        let mut copy = rs.clone();
        let changed = set_new_rs_annotations(d, &mut copy, new_revision, true);
        let min_ready_changed = copy.spec.as_ref().and_then(|s| s.min_ready_seconds) != min_ready;
        if changed || min_ready_changed {
            if let Some(s) = copy.spec.as_mut() {
                s.min_ready_seconds = min_ready;
            }
            let updated = api
                .replace(&copy.name_any(), &PostParams::default(), &copy)
                .await?;
            replace_in(rs_list, updated);
        }
        revision = copy
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION).cloned())
            .unwrap_or_default();
        let mut status = d.status.clone().unwrap_or_default();
        if has_progress_deadline(d) && condition(&status, "Progressing").is_none() {
            set_condition(
                &mut status,
                new_condition(
                    "Progressing",
                    "True",
                    FOUND_NEW_RS,
                    format!("Found new replica set \"{}\"", rs.name_any()),
                    Timestamp::now(),
                ),
            );
            write_status(st, d, status.clone()).await?;
            d.status = Some(status);
        }
    } else {
        if !create {
            return Ok(());
        }
        let spec = d.spec.clone().unwrap_or_default();
        let collision = d.status.as_ref().and_then(|s| s.collision_count);
        let hash = compute_hash(&spec.template, collision);
        let mut template = spec.template.clone();
        let tm = template.metadata.get_or_insert_with(Default::default);
        tm.labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        tm.creation_timestamp = None;
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let name = format!("{}-{hash}", d.name_any());
        let mut new_rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                labels: tm.labels.clone(),
                owner_references: Some(vec![pods::controller_ref(
                    "apps/v1",
                    "Deployment",
                    &d.metadata,
                )]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: min_ready,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        let replicas = {
            let mut all: Vec<&ReplicaSet> = rs_list.iter().collect();
            all.push(&new_rs);
            new_rs_new_replicas(d, &all, &new_rs)
        };
        if let Some(s) = new_rs.spec.as_mut() {
            s.replicas = Some(replicas);
        }
        set_new_rs_annotations(d, &mut new_rs, new_revision, false);
        let created = match api.create(&PostParams::default(), &new_rs).await {
            Ok(rs) => {
                st.recorder.record(
                    d,
                    false,
                    "ScalingReplicaSet",
                    format!("Scaled up replica set {name} from 0 to {replicas}"),
                );
                let mut status = d.status.clone().unwrap_or_default();
                if has_progress_deadline(d) {
                    set_condition(
                        &mut status,
                        new_condition(
                            "Progressing",
                            "True",
                            NEW_RS_CREATED,
                            format!("Created new replica set \"{name}\""),
                            Timestamp::now(),
                        ),
                    );
                    write_status(st, d, status.clone()).await?;
                    d.status = Some(status);
                }
                rs
            }
            Err(e) if is_status(&e, 409) => {
                // Ours already (a stale cache), or a hash collision: then bump the
                // collision count so the next hash differs.
                let live = api.get(&name).await?;
                let ours =
                    controller_of(&live).is_some_and(|r| Some(&r.uid) == d.metadata.uid.as_ref());
                let same = live
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| equal_ignore_hash(t, &spec.template));
                if ours && same {
                    live
                } else {
                    let mut status = d.status.clone().unwrap_or_default();
                    status.collision_count = Some(status.collision_count.unwrap_or(0) + 1);
                    write_status(st, d, status).await?;
                    return Err(ControllerError::Other(format!(
                        "hash collision for ReplicaSet {name}; retrying with a new collision count"
                    )));
                }
            }
            Err(e) => return Err(e.into()),
        };
        revision = new_revision.to_string();
        replace_in(rs_list, created);
    }
    // The Deployment carries the revision of its new ReplicaSet.
    let current = d
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION).cloned());
    if !revision.is_empty() && current.as_deref() != Some(revision.as_str()) {
        let dapi: Api<Deployment> = Api::namespaced(st.client.clone(), &ns);
        let patch = json!({"metadata": {"annotations": {REVISION: revision}}});
        let updated = dapi
            .patch(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        d.metadata = updated.metadata;
    }
    Ok(())
}

fn replace_in(list: &mut Vec<ReplicaSet>, rs: ReplicaSet) {
    match list.iter_mut().find(|x| x.metadata.uid == rs.metadata.uid) {
        Some(slot) => *slot = rs,
        None => list.push(rs),
    }
}

/// Scales ReplicaSets to the given sizes, updating their desired/max annotations
/// (upstream `scaleReplicaSet`), and records a ScalingReplicaSet event per change.
async fn apply_scales(
    st: &State,
    d: &Deployment,
    rs_list: &mut [ReplicaSet],
    plan: Vec<(String, i32)>,
) -> Result<(), ControllerError> {
    let ns = d.metadata.namespace.clone().unwrap_or_default();
    let api: Api<ReplicaSet> = Api::namespaced(st.client.clone(), &ns);
    let desired = spec_replicas(d);
    let max = desired + max_surge(d);
    for (name, to) in plan {
        let Some(slot) = rs_list.iter_mut().find(|rs| rs.name_any() == name) else {
            continue;
        };
        let from = rs_replicas(slot);
        let mut copy = slot.clone();
        let annotations_changed = set_replicas_annotations(&mut copy, desired, max);
        if from == to && !annotations_changed {
            continue;
        }
        if let Some(s) = copy.spec.as_mut() {
            s.replicas = Some(to);
        }
        let updated = api.replace(&name, &PostParams::default(), &copy).await?;
        if from != to {
            let dir = if to > from { "up" } else { "down" };
            st.recorder.record(
                d,
                false,
                "ScalingReplicaSet",
                format!("Scaled {dir} replica set {name} from {from} to {to}"),
            );
        }
        *slot = updated;
    }
    Ok(())
}

/// Deletes old ReplicaSets beyond `revisionHistoryLimit` (upstream `cleanupDeployment`).
async fn cleanup_history(
    st: &State,
    d: &Deployment,
    old: &[&ReplicaSet],
) -> Result<(), ControllerError> {
    let ns = d.metadata.namespace.clone().unwrap_or_default();
    let api: Api<ReplicaSet> = Api::namespaced(st.client.clone(), &ns);
    for rs in history_to_clean(d, old) {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: rs.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&rs.name_any(), &dp).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
