//! The Job controller: runs a Job's pods to completion (upstream
//! `pkg/controller/job`). Pods carry the `batch.kubernetes.io/job-tracking`
//! finalizer until their outcome is recorded in the Job's status, so a pod deleted
//! right after it finished is still counted exactly once: finished pods go to
//! `status.uncountedTerminatedPods`, their finalizers are removed, then they move to
//! `succeeded`/`failed`.

pub mod decide;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;

use crate::expectations::{Expectations, Seen};
use crate::informer::reflect;
use crate::ops::{self, error_policy};
use crate::util::{controller_of, controller_ref, is_controlled_by, key_of, random_suffix};
use crate::{Context, ControllerError, ControllerFuture};

use decide::{decide, BackoffRecord, NewPod, COMPLETION_INDEX, TRACKING_FINALIZER};

pub struct JobController {
    client: kube::Client,
    events: crate::events::Recorder,
    pods: Store<Pod>,
    jobs: Store<Job>,
    expectations: Expectations,
    backoff: Mutex<HashMap<String, BackoffRecord>>,
    /// The resourceVersion of each Job's last status this controller wrote. A sync
    /// whose informer copy is older would decide on counts from before that write
    /// (pods whose finalizers it since removed would count for nothing) and create
    /// pods the Job no longer needs; it waits for the informer instead.
    written: Mutex<HashMap<String, u64>>,
    /// Per Job, the UIDs of pods whose tracking finalizer this controller removed
    /// and whose informer copy still shows it (upstream's `finalizerExpectations`).
    /// Such a pod was counted already — its status write moved it out of
    /// `uncountedTerminatedPods` — and a sync on the stale copy would count it again.
    removing: Mutex<HashMap<String, HashSet<String>>>,
}

pub fn run(ctx: Context) -> ControllerFuture {
    Box::pin(async move {
        let client = ctx.client.clone();
        let (jobs, job_events) =
            reflect(Api::<Job>::all(client.clone()), watcher::Config::default());
        let (pods, pod_events) = ctx.pods.reflect();
        let state = Arc::new(JobController {
            client: client.clone(),
            events: crate::events::Recorder::new(client.clone(), "job-controller"),
            pods: pods.clone(),
            jobs: jobs.clone(),
            expectations: Expectations::default(),
            backoff: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
            removing: Mutex::new(HashMap::new()),
        });
        // Pods whose Job is gone still hold our finalizer: let them go.
        let orphans = state.clone();
        let pod_events = pod_events.then(move |ev| {
            let st = orphans.clone();
            async move {
                if let Ok(pod) = &ev {
                    release_orphan(&st, pod).await;
                }
                ev
            }
        });
        Controller::for_stream(job_events, jobs)
            .owns_stream(pod_events)
            .run(reconcile, error_policy, state)
            .for_each(|_| async {})
            .await;
        Ok(())
    })
}

async fn release_orphan(st: &JobController, pod: &Pod) {
    let holds = pod
        .metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|x| x == TRACKING_FINALIZER));
    if !holds {
        return;
    }
    st.jobs.wait_until_ready().await.ok();
    let ns = pod.namespace().unwrap_or_default();
    let owner_alive = controller_of(&pod.metadata)
        .filter(|r| r.kind == "Job")
        .and_then(|r| {
            st.jobs
                .get(&ObjectRef::new(&r.name).within(&ns))
                .filter(|j| j.uid().as_deref() == Some(r.uid.as_str()))
        });
    if owner_alive.is_none() {
        let api: Api<Pod> = Api::namespaced(st.client.clone(), &ns);
        if let Err(e) = ops::remove_finalizer(&api, pod, TRACKING_FINALIZER).await {
            tracing::debug!(pod = %key_of(&pod.metadata), error = %e, "releasing orphan pod");
        }
    }
}

fn seen(pods: &Store<Pod>, ns: &str, name: &str) -> Seen {
    match pods.get(&ObjectRef::new(name).within(ns)) {
        None => Seen::Absent,
        Some(p) if p.metadata.deletion_timestamp.is_some() => Seen::Terminating,
        Some(_) => Seen::Present,
    }
}

/// The pod a Job creates (upstream `getPodsForJob` + `podTemplate` handling).
pub fn pod_for(job: &Job, new: &NewPod) -> Pod {
    let tpl = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let job_name = job.name_any();
    let mut meta = tpl.metadata.unwrap_or_default();
    let mut spec = tpl.spec.unwrap_or_default();
    let name = match new.index {
        Some(i) => format!("{job_name}-{i}-{}", random_suffix(5)),
        None => format!("{job_name}-{}", random_suffix(5)),
    };
    let mut labels = meta.labels.take().unwrap_or_default();
    let mut annotations = meta.annotations.take().unwrap_or_default();
    if let Some(i) = new.index {
        labels.insert(COMPLETION_INDEX.into(), i.to_string());
        annotations.insert(COMPLETION_INDEX.into(), i.to_string());
        // JOB_COMPLETION_INDEX from the annotation, as upstream injects it.
        let env = EnvVar {
            name: "JOB_COMPLETION_INDEX".into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
                }),
                ..Default::default()
            }),
        };
        for c in spec
            .containers
            .iter_mut()
            .chain(spec.init_containers.iter_mut().flatten())
        {
            let envs = c.env.get_or_insert_with(Vec::new);
            if !envs.iter().any(|e| e.name == env.name) {
                envs.push(env.clone());
            }
        }
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: job.namespace(),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: Some(vec![controller_ref(job)]),
            finalizers: Some(vec![TRACKING_FINALIZER.into()]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

async fn reconcile(job: Arc<Job>, st: Arc<JobController>) -> Result<Action, ControllerError> {
    st.pods
        .wait_until_ready()
        .await
        .map_err(|e| ControllerError::Other(e.to_string()))?;
    let ns = job.namespace().unwrap_or_default();
    let key = key_of(&job.metadata);
    let uid = job.uid().unwrap_or_default();
    if !st.expectations.satisfied(&key, |n| seen(&st.pods, &ns, n)) {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let version = |j: &Job| {
        j.metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
    };
    let last_written = st.written.lock().expect("written lock").get(&key).copied();
    if let (Some(w), Some(v)) = (last_written, version(&job)) {
        if v < w {
            // The Job's update event will trigger the next sync.
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
    }
    let owned: Vec<Arc<Pod>> = st
        .pods
        .state()
        .into_iter()
        .filter(|p| {
            p.metadata.namespace.as_deref() == Some(ns.as_str())
                && is_controlled_by(&p.metadata, &uid)
        })
        .collect();
    let pods_api: Api<Pod> = Api::namespaced(st.client.clone(), &ns);
    let by_name = |n: &str| owned.iter().find(|p| p.metadata.name.as_deref() == Some(n));

    // A Job being deleted lets its pods go (the garbage collector removes them).
    if job.metadata.deletion_timestamp.is_some() {
        for p in &owned {
            ops::remove_finalizer(&pods_api, p, TRACKING_FINALIZER).await?;
        }
        st.expectations.clear(&key);
        return Ok(Action::await_change());
    }

    let record = st
        .backoff
        .lock()
        .expect("backoff lock")
        .get(&uid)
        .cloned()
        .unwrap_or_default();
    let removing = {
        let mut all = st.removing.lock().expect("removing lock");
        pending_removals(&mut all, &key, &owned)
    };
    let pods = as_decided(&owned, &removing);
    let refs: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
    let d = decide(&job, &refs, &record, Timestamp::now());
    let jobs_api: Api<Job> = Api::namespaced(st.client.clone(), &ns);
    let mut current: Job = (*job).clone();

    // 1. Record newly finished pods as uncounted before their finalizers go.
    if !d.newly_succeeded.is_empty() || !d.newly_failed.is_empty() {
        let mut status = current.status.clone().unwrap_or_default();
        let unc = status
            .uncounted_terminated_pods
            .get_or_insert_with(UncountedTerminatedPods::default);
        unc.succeeded
            .get_or_insert_with(Vec::new)
            .extend(d.newly_succeeded.iter().cloned());
        unc.failed
            .get_or_insert_with(Vec::new)
            .extend(d.newly_failed.iter().cloned());
        current.status = Some(status);
        current = write_status(&jobs_api, &current).await?;
        remember_written(&st, &key, &current);
    }
    // 2. Deletions and creations.
    for name in &d.delete {
        st.expectations.expect_delete(&key, name);
        if let Err(e) = ops::delete_pod(&pods_api, name).await {
            st.expectations.forget(&key, name);
            return Err(e);
        }
    }
    let creates = d.create.iter().map(|new| {
        let pod = pod_for(&job, new);
        let name = pod.name_any();
        st.expectations.expect_create(&key, &name);
        let api = pods_api.clone();
        let st = st.clone();
        let key = key.clone();
        async move {
            let r = ops::create_pod(&api, &pod).await;
            if r.is_err() {
                st.expectations.forget(&key, &name);
            }
            r
        }
    });
    let results = futures::future::join_all(creates).await;
    let mut create_err = None;
    for r in results {
        match r {
            Ok(p) => {
                tracing::info!(job = %key, pod = %p.name_any(), "created pod");
                st.events.record(
                    job.as_ref(),
                    false,
                    "SuccessfulCreate",
                    format!("Created pod: {}", p.name_any()),
                );
            }
            Err(e) => create_err = Some(e),
        }
    }
    // 3. Finalizers of counted pods.
    for name in &d.remove_finalizers {
        if let Some(p) = by_name(name) {
            let pod_uid = p.uid().unwrap_or_default();
            expect_removal(&st, &key, &pod_uid, true);
            if let Err(e) = ops::remove_finalizer(&pods_api, p, TRACKING_FINALIZER).await {
                expect_removal(&st, &key, &pod_uid, false);
                return Err(e);
            }
        }
    }
    for name in &d.delete {
        st.events.record(
            job.as_ref(),
            false,
            "SuccessfulDelete",
            format!("Deleted pod: {name}"),
        );
    }
    // Newly reached terminal conditions, as upstream reports them.
    let was = |ty: &str| {
        job.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == ty && c.status == "True"))
    };
    for c in d
        .status
        .conditions
        .iter()
        .flatten()
        .filter(|c| c.status == "True")
    {
        match c.type_.as_str() {
            "Complete" if !was("Complete") => {
                st.events
                    .record(job.as_ref(), false, "Completed", "Job completed".into())
            }
            "Failed" if !was("Failed") => st.events.record(
                job.as_ref(),
                true,
                c.reason.as_deref().unwrap_or("Failed"),
                c.message.clone().unwrap_or_default(),
            ),
            _ => {}
        }
    }
    // 4. The final status, counts moved out of uncounted.
    if current.status.as_ref() != Some(&d.status) {
        current.status = Some(d.status.clone());
        let written = write_status(&jobs_api, &current).await?;
        remember_written(&st, &key, &written);
    }
    st.backoff
        .lock()
        .expect("backoff lock")
        .insert(uid, d.backoff.clone());
    if let Some(e) = create_err {
        return Err(e.into());
    }
    Ok(match d.requeue_after {
        Some(after) => Action::requeue(after),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

/// The UIDs of `key`'s pods whose finalizer removal is still unseen (from
/// `removing`, every Job's); forgets the ones the informer now shows without the
/// finalizer, or no longer has.
fn pending_removals(
    removing: &mut HashMap<String, HashSet<String>>,
    key: &str,
    owned: &[Arc<Pod>],
) -> HashSet<String> {
    let Some(set) = removing.get_mut(key) else {
        return HashSet::new();
    };
    set.retain(|u| {
        owned.iter().any(|p| {
            p.uid().as_deref() == Some(u.as_str())
                && p.finalizers().iter().any(|f| f == TRACKING_FINALIZER)
        })
    });
    let pending = set.clone();
    if set.is_empty() {
        removing.remove(key);
    }
    pending
}

/// The pods a sync decides on: `owned`, those whose finalizer removal is pending
/// shown as the informer will show them, without it (only they are copied).
fn as_decided<'a>(owned: &'a [Arc<Pod>], removing: &HashSet<String>) -> Vec<Cow<'a, Pod>> {
    owned
        .iter()
        .map(|p| {
            if !removing.contains(p.uid().as_deref().unwrap_or_default()) {
                return Cow::Borrowed(p.as_ref());
            }
            let mut p = (**p).clone();
            if let Some(f) = p.metadata.finalizers.as_mut() {
                f.retain(|x| x != TRACKING_FINALIZER);
            }
            Cow::Owned(p)
        })
        .collect()
}

fn expect_removal(st: &JobController, key: &str, pod_uid: &str, expect: bool) {
    let mut removing = st.removing.lock().expect("removing lock");
    if expect {
        removing
            .entry(key.to_string())
            .or_default()
            .insert(pod_uid.to_string());
    } else if let Some(set) = removing.get_mut(key) {
        set.remove(pod_uid);
    }
}

fn remember_written(st: &JobController, key: &str, job: &Job) {
    let mut written = st.written.lock().expect("written lock");
    match job
        .metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
    {
        Some(v) => {
            // Bounded: Jobs come and go; a forgotten entry only loses the guard once.
            if written.len() > 10_000 {
                written.clear();
            }
            written.insert(key.to_string(), v);
        }
        None => {
            written.remove(key);
        }
    }
}

async fn write_status(api: &Api<Job>, job: &Job) -> Result<Job, ControllerError> {
    Ok(api
        .replace_status(&job.name_any(), &PostParams::default(), job)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{JobSpec, JobStatus};
    use k8s_openapi::api::core::v1::PodStatus;

    fn succeeded_pod(name: &str) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                finalizers: Some(vec![TRACKING_FINALIZER.into()]),
                ..Default::default()
            },
            spec: None,
            status: Some(PodStatus {
                phase: Some("Succeeded".into()),
                ..Default::default()
            }),
        })
    }

    #[test]
    fn a_pod_whose_finalizer_we_removed_is_not_counted_again_from_a_stale_copy() {
        // The Job has counted pod a (its status moved it out of uncounted) and we
        // removed a's finalizer; the informer still has a's copy with the finalizer.
        let job = Job {
            metadata: ObjectMeta {
                name: Some("j".into()),
                uid: Some("juid".into()),
                ..Default::default()
            },
            spec: Some(JobSpec {
                completions: Some(3),
                parallelism: Some(1),
                ..Default::default()
            }),
            status: Some(JobStatus {
                succeeded: Some(1),
                ..Default::default()
            }),
        };
        let owned = vec![succeeded_pod("a")];
        let now = Timestamp::now();
        let stale: Vec<&Pod> = owned.iter().map(|p| p.as_ref()).collect();
        let d = decide(&job, &stale, &BackoffRecord::default(), now);
        assert_eq!(d.newly_succeeded, vec!["uid-a"], "without the expectation");

        let mut removing: HashMap<String, HashSet<String>> = HashMap::new();
        removing
            .entry("ns/j".into())
            .or_default()
            .insert("uid-a".into());
        let pending = pending_removals(&mut removing, "ns/j", &owned);
        let pods = as_decided(&owned, &pending);
        let refs: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
        let d = decide(&job, &refs, &BackoffRecord::default(), now);
        assert!(d.newly_succeeded.is_empty(), "{:?}", d.newly_succeeded);
        assert_eq!(d.status.succeeded, Some(1));
        assert_eq!(d.create.len(), 1, "one more pod for the third completion");

        // Once the informer shows the finalizer gone, the expectation is dropped.
        let mut seen = (*owned[0]).clone();
        seen.metadata.finalizers = None;
        let pending = pending_removals(&mut removing, "ns/j", &[Arc::new(seen)]);
        assert!(pending.is_empty() && removing.is_empty());
    }
}
