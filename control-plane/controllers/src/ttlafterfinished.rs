//! The TTL-after-finished controller (upstream `pkg/controller/ttlafterfinished`):
//! a finished Job with `ttlSecondsAfterFinished` is deleted (foreground, so its pods
//! go first) that many seconds after it finished.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Preconditions, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;

use crate::informer::reflect;
use crate::ops::{error_policy, is_status};
use crate::{Context, ControllerError, ControllerFuture};

/// When the Job finished: its Complete/Failed condition's transition time.
pub fn finish_time(job: &Job) -> Option<Timestamp> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0))
}

/// How long until the Job expires: `None` if it never does (no TTL, not finished).
pub fn time_left(job: &Job, now: Timestamp) -> Option<Duration> {
    let ttl = job.spec.as_ref()?.ttl_seconds_after_finished?;
    let done = finish_time(job)?;
    let expire_ms = done.as_millisecond() + i64::from(ttl) * 1000;
    Some(Duration::from_millis(
        (expire_ms - now.as_millisecond()).max(0) as u64,
    ))
}

pub fn run(ctx: Context) -> ControllerFuture {
    Box::pin(async move {
        let (jobs, events) = reflect(
            Api::<Job>::all(ctx.client.clone()),
            watcher::Config::default(),
        );
        Controller::for_stream(events, jobs)
            .run(reconcile, error_policy, Arc::new(ctx.client.clone()))
            .for_each(|_| async {})
            .await;
        Ok(())
    })
}

async fn reconcile(job: Arc<Job>, client: Arc<kube::Client>) -> Result<Action, ControllerError> {
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(left) = time_left(&job, Timestamp::now()) else {
        return Ok(Action::await_change());
    };
    if !left.is_zero() {
        return Ok(Action::requeue(left));
    }
    let api: Api<Job> = Api::namespaced((*client).clone(), &job.namespace().unwrap_or_default());
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        // Only the Job we judged: not one recreated under the same name.
        preconditions: Some(Preconditions {
            uid: job.uid(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&job.name_any(), &dp).await {
        Ok(_) => tracing::info!(job = %job.name_any(), "deleted finished job past its TTL"),
        Err(e) if is_status(&e, 404) || is_status(&e, 409) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::{JobCondition, JobSpec, JobStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn expiry_counts_from_the_finish() {
        let done = Timestamp::from_second(1000).unwrap();
        let mut job = Job {
            spec: Some(JobSpec {
                ttl_seconds_after_finished: Some(30),
                ..Default::default()
            }),
            status: Some(JobStatus {
                conditions: Some(vec![JobCondition {
                    type_: "Complete".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(done)),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let at = |s| Timestamp::from_second(s).unwrap();
        assert_eq!(time_left(&job, at(1010)), Some(Duration::from_secs(20)));
        assert_eq!(time_left(&job, at(1040)), Some(Duration::ZERO));
        job.spec.as_mut().unwrap().ttl_seconds_after_finished = None;
        assert_eq!(time_left(&job, at(1040)), None);
        job.spec.as_mut().unwrap().ttl_seconds_after_finished = Some(0);
        job.status = None;
        assert_eq!(time_left(&job, at(1040)), None);
    }
}
