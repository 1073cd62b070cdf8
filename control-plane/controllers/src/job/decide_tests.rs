use super::*;
use k8s_openapi::api::batch::v1::{JobSpec, PodFailurePolicyOnExitCodesRequirement};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStatus, PodCondition, PodStatus,
    PodTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

fn job(completions: Option<i32>, parallelism: i32, backoff_limit: i32) -> Job {
    Job {
        metadata: ObjectMeta {
            name: Some("j".into()),
            namespace: Some("ns".into()),
            uid: Some("juid".into()),
            ..Default::default()
        },
        spec: Some(JobSpec {
            completions,
            parallelism: Some(parallelism),
            backoff_limit: Some(backoff_limit),
            template: PodTemplateSpec::default(),
            ..Default::default()
        }),
        status: None,
    }
}

fn pod(name: &str, phase: &str, finalizer: bool) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(format!("uid-{name}")),
            finalizers: finalizer.then(|| vec![TRACKING_FINALIZER.to_string()]),
            ..Default::default()
        },
        spec: None,
        status: Some(PodStatus {
            phase: Some(phase.into()),
            ..Default::default()
        }),
    }
}

fn failed_with(name: &str, code: i32) -> Pod {
    let mut p = pod(name, "Failed", true);
    p.status.as_mut().unwrap().container_statuses = Some(vec![ContainerStatus {
        name: "main".into(),
        state: Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }]);
    p
}

fn ready(mut p: Pod) -> Pod {
    p.status.as_mut().unwrap().conditions = Some(vec![PodCondition {
        type_: "Ready".into(),
        status: "True".into(),
        ..Default::default()
    }]);
    p
}

fn cond<'a>(d: &'a Decision, ty: &str) -> Option<&'a JobCondition> {
    d.status.conditions.as_ref()?.iter().find(|c| c.type_ == ty)
}

fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

#[test]
fn creates_up_to_parallelism_and_never_past_remaining_completions() {
    let j = job(Some(10), 3, 6);
    let d = decide(&j, &[], &BackoffRecord::default(), now());
    assert_eq!(d.create.len(), 3);
    assert_eq!(d.status.active, Some(3));
    assert!(d.status.start_time.is_some());

    // 9 succeeded (counted), 1 running: nothing more to create.
    let mut j = job(Some(10), 3, 6);
    j.status = Some(JobStatus {
        succeeded: Some(9),
        ..Default::default()
    });
    let running = ready(pod("r", "Running", true));
    let d = decide(&j, &[&running], &BackoffRecord::default(), now());
    assert!(d.create.is_empty());
    assert!(d.delete.is_empty());
    assert_eq!(d.status.active, Some(1));
    assert_eq!(d.status.ready, Some(1));
}

#[test]
fn counts_finished_pods_once_and_removes_their_finalizers() {
    let j = job(Some(2), 2, 6);
    let a = pod("a", "Succeeded", true);
    let b = pod("b", "Running", true);
    let counted = pod("c", "Succeeded", false);
    let d = decide(&j, &[&a, &b, &counted], &BackoffRecord::default(), now());
    assert_eq!(d.newly_succeeded, vec!["uid-a".to_string()]);
    assert_eq!(d.remove_finalizers, vec!["a".to_string()]);
    assert_eq!(d.status.succeeded, Some(1));
    // One success and one running: want 1 more → none to create.
    assert!(d.create.is_empty());

    // The same pod already listed as uncounted is not counted twice.
    let mut j2 = job(Some(2), 2, 6);
    j2.status = Some(JobStatus {
        succeeded: Some(0),
        uncounted_terminated_pods: Some(k8s_openapi::api::batch::v1::UncountedTerminatedPods {
            succeeded: Some(vec!["uid-a".into()]),
            failed: None,
        }),
        ..Default::default()
    });
    let d = decide(&j2, &[&a, &b], &BackoffRecord::default(), now());
    assert!(d.newly_succeeded.is_empty());
    assert_eq!(d.status.succeeded, Some(1));
}

#[test]
fn completes_with_success_criteria_then_complete() {
    let mut j = job(Some(2), 2, 6);
    j.status = Some(JobStatus {
        succeeded: Some(1),
        ..Default::default()
    });
    let a = pod("a", "Succeeded", true);
    let d = decide(&j, &[&a], &BackoffRecord::default(), now());
    assert_eq!(cond(&d, "SuccessCriteriaMet").unwrap().status, "True");
    let c = cond(&d, "Complete").unwrap();
    assert_eq!(c.reason.as_deref(), Some("CompletionsReached"));
    assert!(d.status.completion_time.is_some());
    assert!(d.create.is_empty());
}

#[test]
fn fails_past_the_backoff_limit() {
    let mut j = job(Some(1), 1, 1);
    j.status = Some(JobStatus {
        failed: Some(1),
        ..Default::default()
    });
    let f = failed_with("f", 3);
    let d = decide(&j, &[&f], &BackoffRecord::default(), now());
    let c = cond(&d, "Failed").unwrap();
    assert_eq!(c.reason.as_deref(), Some("BackoffLimitExceeded"));
    assert_eq!(
        c.message.as_deref(),
        Some("Job has reached the specified backoff limit")
    );
    assert_eq!(cond(&d, "FailureTarget").unwrap().status, "True");
    assert_eq!(d.status.failed, Some(2));
    assert!(d.create.is_empty());
}

#[test]
fn backs_off_exponentially_before_replacing_failed_pods() {
    let j = job(Some(1), 1, 6);
    let f = failed_with("f", 1);
    let d = decide(&j, &[&f], &BackoffRecord::default(), now());
    // First failure: 10 s back-off from its finish time (now, as none is recorded).
    assert!(d.create.is_empty());
    assert_eq!(d.backoff.failures_after_last_success, 1);
    assert_eq!(d.requeue_after, Some(Duration::from_secs(10)));

    let rec = BackoffRecord {
        failures_after_last_success: 3,
        last_failure: Some(now()),
    };
    assert_eq!(rec.remaining(now()), Duration::from_secs(40));
    let later = Timestamp::from_second(1_800_000_041).unwrap();
    assert_eq!(rec.remaining(later), Duration::ZERO);
    let huge = BackoffRecord {
        failures_after_last_success: 40,
        last_failure: Some(now()),
    };
    assert_eq!(huge.remaining(now()), BACKOFF_MAX);
    // After the back-off the replacement is created.
    let mut j = job(Some(1), 1, 6);
    j.status = Some(JobStatus {
        failed: Some(1),
        ..Default::default()
    });
    let counted = pod("f", "Failed", false);
    let rec = BackoffRecord {
        failures_after_last_success: 1,
        last_failure: Some(now()),
    };
    assert_eq!(decide(&j, &[&counted], &rec, later).create.len(), 1);
}

#[test]
fn deadline_exceeded_fails_and_deletes_active_pods() {
    let mut j = job(Some(5), 2, 6);
    j.spec.as_mut().unwrap().active_deadline_seconds = Some(30);
    j.status = Some(JobStatus {
        start_time: Some(Time(Timestamp::from_second(1_800_000_000 - 31).unwrap())),
        ..Default::default()
    });
    let r = pod("r", "Running", true);
    let d = decide(&j, &[&r], &BackoffRecord::default(), now());
    assert_eq!(
        cond(&d, "Failed").unwrap().reason.as_deref(),
        Some("DeadlineExceeded")
    );
    assert_eq!(d.delete, vec!["r".to_string()]);
    // Before the deadline: requeued for it.
    j.status.as_mut().unwrap().start_time =
        Some(Time(Timestamp::from_second(1_800_000_000 - 10).unwrap()));
    let d = decide(&j, &[&r], &BackoffRecord::default(), now());
    assert!(cond(&d, "Failed").is_none());
    assert!(d.requeue_after.unwrap() >= Duration::from_secs(20));
}

#[test]
fn indexed_jobs_create_missing_indexes_and_track_completed_ones() {
    let mut j = job(Some(5), 2, 6);
    j.spec.as_mut().unwrap().completion_mode = Some("Indexed".into());
    let mut done = pod("j-0-x", "Succeeded", true);
    done.metadata.annotations = Some([(COMPLETION_INDEX.to_string(), "0".to_string())].into());
    let mut run = pod("j-1-x", "Running", true);
    run.metadata.annotations = Some([(COMPLETION_INDEX.to_string(), "1".to_string())].into());
    let mut dup = pod("j-1-y", "Running", true);
    dup.metadata.annotations = Some([(COMPLETION_INDEX.to_string(), "1".to_string())].into());
    let d = decide(&j, &[&done, &run, &dup], &BackoffRecord::default(), now());
    assert_eq!(d.status.completed_indexes.as_deref(), Some("0"));
    assert_eq!(d.delete, vec!["j-1-y".to_string()]);
    assert_eq!(d.create, vec![NewPod { index: Some(2) }]);
    assert_eq!(d.status.succeeded, Some(1));
}

#[test]
fn index_sets_round_trip() {
    let s = parse_indexes("0-2,4,6-7");
    assert_eq!(
        s.iter().copied().collect::<Vec<_>>(),
        vec![0, 1, 2, 4, 6, 7]
    );
    assert_eq!(format_indexes(&s), "0-2,4,6-7");
    assert_eq!(format_indexes(&BTreeSet::new()), "");
}

#[test]
fn pod_failure_policy_fail_job_ignore_and_count() {
    let rule = |action: &str, op: &str, values: Vec<i32>| PodFailurePolicyRule {
        action: action.into(),
        on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
            container_name: None,
            operator: op.into(),
            values,
        }),
        on_pod_conditions: None,
    };
    let rules = vec![
        rule("FailJob", "In", vec![42]),
        rule("Ignore", "In", vec![7]),
    ];
    assert!(matches!(
        match_failure_policy(&rules, &failed_with("a", 42)),
        PolicyVerdict::FailJob(m) if m.contains("exit code 42") && m.contains("FailJob rule at index 0")
    ));
    assert_eq!(
        match_failure_policy(&rules, &failed_with("a", 7)),
        PolicyVerdict::Ignore
    );
    assert_eq!(
        match_failure_policy(&rules, &failed_with("a", 1)),
        PolicyVerdict::Count
    );

    let mut j = job(Some(1), 1, 0);
    j.spec.as_mut().unwrap().pod_failure_policy =
        Some(k8s_openapi::api::batch::v1::PodFailurePolicy { rules });
    // Ignored failures are not counted toward backoffLimit 0.
    let d = decide(
        &j,
        &[&failed_with("a", 7)],
        &BackoffRecord::default(),
        now(),
    );
    assert!(cond(&d, "Failed").is_none());
    assert_eq!(d.status.failed, Some(0));
    assert_eq!(d.create.len(), 1);
    let d = decide(
        &j,
        &[&failed_with("a", 42)],
        &BackoffRecord::default(),
        now(),
    );
    assert_eq!(
        cond(&d, "Failed").unwrap().reason.as_deref(),
        Some("PodFailurePolicy")
    );
}

#[test]
fn finished_jobs_release_finalizers_only() {
    let mut j = job(Some(1), 1, 6);
    j.status = Some(JobStatus {
        conditions: Some(vec![JobCondition {
            type_: "Complete".into(),
            status: "True".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    let a = pod("a", "Succeeded", true);
    let d = decide(&j, &[&a], &BackoffRecord::default(), now());
    assert_eq!(d.remove_finalizers, vec!["a".to_string()]);
    assert!(d.create.is_empty() && d.delete.is_empty());
}

#[test]
fn suspended_jobs_delete_active_pods() {
    let mut j = job(Some(3), 3, 6);
    j.spec.as_mut().unwrap().suspend = Some(true);
    let r = pod("r", "Running", true);
    let d = decide(&j, &[&r], &BackoffRecord::default(), now());
    assert_eq!(d.delete, vec!["r".to_string()]);
    assert_eq!(cond(&d, "Suspended").unwrap().status, "True");
    assert!(d.create.is_empty());
}
