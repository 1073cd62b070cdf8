//! The CronJob controller (upstream `pkg/controller/cronjob`, controllerv2): at each
//! schedule time a Job named `CRONJOB-<minutes since epoch>` from the job template,
//! honouring suspend, concurrencyPolicy (Allow/Forbid/Replace) and
//! startingDeadlineSeconds; `status.active`, `lastScheduleTime` and
//! `lastSuccessfulTime` kept; finished Jobs beyond the history limits deleted.

pub mod schedule;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::ResourceExt;

use crate::informer::reflect;
use crate::ops::{error_policy, is_status};
use crate::util::{controller_ref, is_controlled_by};
use crate::{Context, ControllerError, ControllerFuture};

use schedule::Schedule;

pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

struct CronController {
    client: kube::Client,
    events: crate::events::Recorder,
    jobs: Store<Job>,
}

pub fn run(ctx: Context) -> ControllerFuture {
    Box::pin(async move {
        let client = ctx.client.clone();
        let (cronjobs, cj_events) = reflect(
            Api::<CronJob>::all(client.clone()),
            watcher::Config::default(),
        );
        let (jobs, job_events) =
            reflect(Api::<Job>::all(client.clone()), watcher::Config::default());
        let state = Arc::new(CronController {
            events: crate::events::Recorder::new(client.clone(), "cronjob-controller"),
            client,
            jobs,
        });
        Controller::for_stream(cj_events, cronjobs)
            .owns_stream(job_events)
            .run(reconcile, error_policy, state)
            .for_each(|_| async {})
            .await;
        Ok(())
    })
}

/// A Job's terminal condition: Some(true) Complete, Some(false) Failed.
fn finished(job: &Job) -> Option<bool> {
    let conds = job.status.as_ref()?.conditions.as_ref()?;
    for c in conds.iter().filter(|c| c.status == "True") {
        match c.type_.as_str() {
            "Complete" => return Some(true),
            "Failed" => return Some(false),
            _ => {}
        }
    }
    None
}

/// The Job name for a schedule time: upstream `getJobName` (minutes since epoch).
pub fn job_name(cron_name: &str, scheduled: Timestamp) -> String {
    format!("{cron_name}-{}", scheduled.as_second().div_euclid(60))
}

fn job_ref(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..Default::default()
    }
}

fn job_from_template(cj: &CronJob, scheduled: Timestamp, sched: &Schedule) -> Job {
    let tpl = cj
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let meta = tpl.metadata.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_TIMESTAMP.into(), sched.render(scheduled));
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(&cj.name_any(), scheduled)),
            namespace: cj.namespace(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![controller_ref(cj)]),
            ..Default::default()
        },
        spec: tpl.spec,
        status: None,
    }
}

async fn delete_job(api: &Api<Job>, name: &str) -> Result<(), ControllerError> {
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn reconcile(cj: Arc<CronJob>, st: Arc<CronController>) -> Result<Action, ControllerError> {
    st.jobs
        .wait_until_ready()
        .await
        .map_err(|e| ControllerError::Other(e.to_string()))?;
    if cj.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = cj.namespace().unwrap_or_default();
    let uid = cj.uid().unwrap_or_default();
    let spec = cj.spec.clone().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(st.client.clone(), &ns);
    let children: Vec<Arc<Job>> = st
        .jobs
        .state()
        .into_iter()
        .filter(|j| {
            j.metadata.namespace.as_deref() == Some(ns.as_str())
                && is_controlled_by(&j.metadata, &uid)
        })
        .collect();
    let old_status = cj.status.clone().unwrap_or_default();
    let mut status = old_status.clone();

    // Active list: unfinished children; finished ones leave it (success recorded).
    let mut active: Vec<ObjectReference> = Vec::new();
    for j in &children {
        match finished(j) {
            None if j.metadata.deletion_timestamp.is_none() => active.push(job_ref(j)),
            Some(true) => {
                let done = j.status.as_ref().and_then(|s| s.completion_time.clone());
                if let Some(t) = done {
                    if status
                        .last_successful_time
                        .as_ref()
                        .is_none_or(|l| l.0 < t.0)
                    {
                        status.last_successful_time = Some(t);
                    }
                }
            }
            _ => {}
        }
    }
    active.sort_by(|a, b| a.name.cmp(&b.name));

    let now = Timestamp::now();
    let sched = match Schedule::parse(&spec.schedule, spec.time_zone.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(cronjob = %cj.name_any(), error = %e, "unparseable schedule");
            write_status(&st, &cj, &old_status, active, status).await?;
            return Ok(Action::await_change());
        }
    };
    let mut requeue = sched.next_after(now).map(|n| {
        Duration::from_millis((n.as_millisecond() - now.as_millisecond()).max(0) as u64 + 100)
    });

    if spec.suspend != Some(true) {
        let mut earliest = status
            .last_schedule_time
            .as_ref()
            .map(|t| t.0)
            .or_else(|| cj.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .unwrap_or(now);
        if let Some(deadline) = spec.starting_deadline_seconds {
            let floor = Timestamp::from_second(now.as_second() - deadline).unwrap_or(now);
            earliest = earliest.max(floor);
        }
        let (due, missed) = sched.most_recent(earliest, now);
        if missed > 100 {
            tracing::warn!(cronjob = %cj.name_any(), missed, "too many missed start times; check clock skew");
        }
        if let Some(t) = due {
            let too_late = spec
                .starting_deadline_seconds
                .is_some_and(|d| t.as_second() + d < now.as_second());
            let name = job_name(&cj.name_any(), t);
            let exists = children
                .iter()
                .any(|j| j.metadata.name.as_deref() == Some(name.as_str()));
            let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
            if too_late || exists {
                // Missed (or already run): wait for the next one.
            } else if policy == "Forbid" && !active.is_empty() {
                // The due run waits for the active one to finish (the owned Job's
                // change wakes us).
                requeue =
                    Some(Duration::from_secs(10).min(requeue.unwrap_or(Duration::from_secs(10))));
            } else {
                if policy == "Replace" {
                    for a in active.drain(..) {
                        delete_job(&jobs_api, a.name.as_deref().unwrap_or("")).await?;
                    }
                }
                let job = job_from_template(&cj, t, &sched);
                let created = match jobs_api.create(&PostParams::default(), &job).await {
                    Ok(j) => j,
                    Err(e) if is_status(&e, 409) => jobs_api.get(&name).await?,
                    Err(e) => return Err(e.into()),
                };
                st.events.record(
                    cj.as_ref(),
                    false,
                    "SuccessfulCreate",
                    format!("Created job {name}"),
                );
                active.push(job_ref(&created));
                status.last_schedule_time = Some(Time(t));
            }
        }
    }

    // History limits over finished children, oldest first.
    let mut done: Vec<(bool, Timestamp, String)> = children
        .iter()
        .filter_map(|j| {
            let ok = finished(j)?;
            let t = j
                .status
                .as_ref()
                .and_then(|s| s.completion_time.clone().or(s.start_time.clone()))
                .map(|t| t.0)
                .or_else(|| j.metadata.creation_timestamp.as_ref().map(|t| t.0))?;
            Some((ok, t, j.name_any()))
        })
        .collect();
    done.sort_by_key(|(_, t, _)| *t);
    for (success, limit) in [
        (true, spec.successful_jobs_history_limit.unwrap_or(3)),
        (false, spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let of_kind: Vec<&(bool, Timestamp, String)> =
            done.iter().filter(|(ok, _, _)| *ok == success).collect();
        let excess = of_kind.len().saturating_sub(limit.max(0) as usize);
        for (_, _, name) in of_kind.into_iter().take(excess) {
            delete_job(&jobs_api, name).await?;
            st.events.record(
                cj.as_ref(),
                false,
                "SuccessfulDelete",
                format!("Deleted job {name}"),
            );
        }
    }

    write_status(&st, &cj, &old_status, active, status).await?;
    Ok(match requeue {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

async fn write_status(
    st: &CronController,
    cj: &CronJob,
    old: &CronJobStatus,
    active: Vec<ObjectReference>,
    mut status: CronJobStatus,
) -> Result<(), ControllerError> {
    // Only identity matters for the comparison, not resourceVersions of the Jobs.
    let names = |v: &Option<Vec<ObjectReference>>| {
        v.iter()
            .flatten()
            .map(|r| r.uid.clone())
            .collect::<Vec<_>>()
    };
    status.active = (!active.is_empty()).then_some(active);
    if names(&status.active) == names(&old.active)
        && status.last_schedule_time == old.last_schedule_time
        && status.last_successful_time == old.last_successful_time
    {
        return Ok(());
    }
    let mut next = cj.clone();
    next.status = Some(status);
    Api::<CronJob>::namespaced(st.client.clone(), &cj.namespace().unwrap_or_default())
        .replace_status(&cj.name_any(), &PostParams::default(), &next)
        .await?;
    Ok(())
}
