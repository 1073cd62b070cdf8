//! The Job controller's decision (upstream `pkg/controller/job/job_controller.go`
//! `syncJob`), as a pure function of the Job, its pods, the back-off record and the
//! time: which pods to create and delete, whose tracking finalizers to remove, and the
//! status to write.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus, PodFailurePolicyRule};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::util::{is_pod_active, is_pod_ready, is_terminating, phase};

pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// Upstream `DefaultJobPodFailureBackOff` and `MaxJobPodFailureBackOff`.
pub const BACKOFF_BASE: Duration = Duration::from_secs(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(360);

/// Failures since the last success, and when the latest happened (upstream
/// `backoffRecord`), kept in memory per Job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackoffRecord {
    pub failures_after_last_success: u32,
    pub last_failure: Option<Timestamp>,
}

impl BackoffRecord {
    /// How long to wait before creating a replacement pod.
    pub fn remaining(&self, now: Timestamp) -> Duration {
        let (n, Some(last)) = (self.failures_after_last_success, self.last_failure) else {
            return Duration::ZERO;
        };
        if n == 0 {
            return Duration::ZERO;
        }
        let backoff = BACKOFF_BASE
            .saturating_mul(1u32.checked_shl(n - 1).unwrap_or(u32::MAX))
            .min(BACKOFF_MAX);
        let elapsed_ms = (now.as_millisecond() - last.as_millisecond()).max(0) as u64;
        backoff.saturating_sub(Duration::from_millis(elapsed_ms))
    }
}

/// A pod to create: its completion index for Indexed jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPod {
    pub index: Option<i32>,
}

#[derive(Debug, Default)]
pub struct Decision {
    /// Finished pods not counted before: they go to `uncountedTerminatedPods` first.
    pub newly_succeeded: Vec<String>,
    pub newly_failed: Vec<String>,
    /// Pods (by name) whose tracking finalizer can go.
    pub remove_finalizers: Vec<String>,
    pub delete: Vec<String>,
    pub create: Vec<NewPod>,
    pub status: JobStatus,
    pub requeue_after: Option<Duration>,
    pub backoff: BackoffRecord,
}

fn has_finalizer(pod: &Pod) -> bool {
    pod.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|x| x == TRACKING_FINALIZER))
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

pub fn completion_index(pod: &Pod) -> Option<i32> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(COMPLETION_INDEX))
        .or_else(|| pod.metadata.labels.as_ref()?.get(COMPLETION_INDEX))
        .and_then(|v| v.parse().ok())
        .filter(|i: &i32| *i >= 0)
}

pub fn is_finished(job: &Job) -> bool {
    condition_true(job.status.as_ref(), "Complete") || condition_true(job.status.as_ref(), "Failed")
}

fn condition_true(st: Option<&JobStatus>, ty: &str) -> bool {
    st.and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == ty && c.status == "True"))
}

fn find_condition<'a>(st: &'a JobStatus, ty: &str) -> Option<&'a JobCondition> {
    st.conditions.as_ref()?.iter().find(|c| c.type_ == ty)
}

/// Sets a condition, keeping its transition time when the status does not change.
fn set_condition(st: &mut JobStatus, ty: &str, status: &str, reason: &str, msg: &str, now: &Time) {
    let conds = st.conditions.get_or_insert_with(Vec::new);
    if let Some(c) = conds.iter_mut().find(|c| c.type_ == ty) {
        // Unchanged conditions are left alone so a sync that decides nothing new
        // writes nothing.
        if c.status == status
            && c.reason.as_deref() == Some(reason)
            && c.message.as_deref() == Some(msg)
        {
            return;
        }
        if c.status != status {
            c.last_transition_time = Some(now.clone());
        }
        c.status = status.into();
        c.reason = Some(reason.into());
        c.message = Some(msg.into());
        c.last_probe_time = Some(now.clone());
        return;
    }
    conds.push(JobCondition {
        type_: ty.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(msg.into()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    });
}

/// When a pod finished (its latest container termination), for back-off.
fn finish_time(pod: &Pod) -> Option<Timestamp> {
    let st = pod.status.as_ref()?;
    st.container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max()
        .or_else(|| pod.metadata.deletion_timestamp.as_ref().map(|t| t.0))
}

/// Parses `status.completedIndexes` ("1,3-5").
pub fn parse_indexes(s: &str) -> BTreeSet<i32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(i) = part.parse() {
                    out.insert(i);
                }
            }
        }
    }
    out
}

/// Formats indexes as upstream does: ascending, runs of 2+ as `a-b`.
pub fn format_indexes(set: &BTreeSet<i32>) -> String {
    let mut parts = Vec::new();
    let mut iter = set.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().expect("peeked");
        }
        parts.push(if end > start {
            format!("{start}-{end}")
        } else {
            start.to_string()
        });
    }
    parts.join(",")
}

/// What a pod failure policy says about a failed pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyVerdict {
    FailJob(String),
    Ignore,
    Count,
}

/// Evaluates `podFailurePolicy` rules in order (upstream `matchPodFailurePolicy`).
pub fn match_failure_policy(rules: &[PodFailurePolicyRule], pod: &Pod) -> PolicyVerdict {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("");
    let pname = pod.metadata.name.as_deref().unwrap_or("");
    let statuses: Vec<_> = pod
        .status
        .iter()
        .flat_map(|s| {
            s.init_container_statuses
                .iter()
                .flatten()
                .chain(s.container_statuses.iter().flatten())
        })
        .collect();
    for (i, rule) in rules.iter().enumerate() {
        let mut matched: Option<String> = None;
        if let Some(req) = &rule.on_exit_codes {
            for cs in &statuses {
                if req.container_name.as_ref().is_some_and(|n| n != &cs.name) {
                    continue;
                }
                let Some(code) = cs
                    .state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .map(|t| t.exit_code)
                else {
                    continue;
                };
                // Exit code 0 never matches (upstream skips successful containers).
                if code == 0 {
                    continue;
                }
                let listed = req.values.contains(&code);
                let hit = match req.operator.as_str() {
                    "In" => listed,
                    "NotIn" => !listed,
                    _ => false,
                };
                if hit {
                    matched = Some(format!(
                        "Container {} for pod {ns}/{pname} failed with exit code {code} matching {} rule at index {i}",
                        cs.name, rule.action
                    ));
                    break;
                }
            }
        }
        for pat in rule.on_pod_conditions.iter().flatten() {
            let want = pat.status.as_str();
            let hit = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == pat.type_ && c.status == want));
            if hit {
                matched = Some(format!(
                    "Pod {ns}/{pname} has condition {} matching {} rule at index {i}",
                    pat.type_, rule.action
                ));
                break;
            }
        }
        if let Some(msg) = matched {
            return match rule.action.as_str() {
                "FailJob" => PolicyVerdict::FailJob(msg),
                "Ignore" => PolicyVerdict::Ignore,
                _ => PolicyVerdict::Count,
            };
        }
    }
    PolicyVerdict::Count
}

/// Upstream `isPodFailed`: phase Failed, or (when pods are replaced while terminating)
/// deleted before succeeding.
fn is_failed(pod: &Pod, replace_terminating: bool) -> bool {
    match phase(pod) {
        "Failed" => true,
        "Succeeded" => false,
        _ => replace_terminating && is_terminating(pod),
    }
}

/// The one decision of a sync. `pods` are the pods the Job controls.
pub fn decide(job: &Job, pods: &[&Pod], backoff: &BackoffRecord, now: Timestamp) -> Decision {
    let now_t = Time(now);
    let spec = job.spec.clone().unwrap_or_default();
    let old = job.status.clone().unwrap_or_default();
    let mut st = old.clone();
    let mut d = Decision {
        backoff: backoff.clone(),
        ..Default::default()
    };
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let completions = spec.completions;
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let rules = spec
        .pod_failure_policy
        .as_ref()
        .map(|p| p.rules.clone())
        .unwrap_or_default();
    let replace_terminating = spec.pod_failure_policy.is_none()
        && spec.pod_replacement_policy.as_deref() != Some("Failed");

    // A finished Job only lets go of its pods.
    if is_finished(job) {
        d.remove_finalizers = pods
            .iter()
            .filter(|p| has_finalizer(p))
            .map(|p| name(p))
            .collect();
        d.status = st;
        return d;
    }

    // Counting: pods already counted (no finalizer), pending (uid in uncounted), new.
    let unc = old.uncounted_terminated_pods.clone().unwrap_or_default();
    let unc_succeeded: HashSet<String> = unc
        .succeeded
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let unc_failed: HashSet<String> = unc.failed.clone().unwrap_or_default().into_iter().collect();
    let mut succeeded_total = old.succeeded.unwrap_or(0) + unc_succeeded.len() as i32;
    let mut failed_total = old.failed.unwrap_or(0) + unc_failed.len() as i32;
    let mut completed: BTreeSet<i32> =
        parse_indexes(old.completed_indexes.as_deref().unwrap_or(""));
    let mut fail_job: Option<(String, String)> = None;
    let mut newest_failure: Option<Timestamp> = None;

    for p in pods {
        let u = uid(p);
        if phase(p) == "Succeeded" {
            if let Some(i) = completion_index(p) {
                if completions.is_some_and(|c| i < c) {
                    completed.insert(i);
                }
            }
        }
        if !has_finalizer(p) {
            continue;
        }
        let in_unc = unc_succeeded.contains(&u) || unc_failed.contains(&u);
        if phase(p) == "Succeeded" {
            if !in_unc {
                d.newly_succeeded.push(u);
                succeeded_total += 1;
            }
            d.remove_finalizers.push(name(p));
        } else if is_failed(p, replace_terminating) {
            if !in_unc {
                match match_failure_policy(&rules, p) {
                    PolicyVerdict::Ignore => {
                        // Not counted toward the back-off limit; just let it go.
                        d.remove_finalizers.push(name(p));
                        continue;
                    }
                    PolicyVerdict::FailJob(msg) => {
                        fail_job.get_or_insert(("PodFailurePolicy".into(), msg));
                    }
                    PolicyVerdict::Count => {}
                }
                d.newly_failed.push(u);
                failed_total += 1;
                let t = finish_time(p).unwrap_or(now);
                newest_failure = Some(newest_failure.map_or(t, |n| n.max(t)));
            }
            d.remove_finalizers.push(name(p));
        }
    }
    if !d.newly_succeeded.is_empty() {
        d.backoff.failures_after_last_success = 0;
    }
    if !d.newly_failed.is_empty() {
        d.backoff.failures_after_last_success += d.newly_failed.len() as u32;
        d.backoff.last_failure = newest_failure;
    }
    if indexed {
        succeeded_total = completed.len() as i32;
        st.completed_indexes = Some(format_indexes(&completed));
    }

    let active: Vec<&Pod> = pods.iter().copied().filter(|p| is_pod_active(p)).collect();
    let terminating = pods
        .iter()
        .filter(|p| is_terminating(p) && !matches!(phase(p), "Succeeded" | "Failed"))
        .count() as i32;

    // Suspension (upstream: delete active pods, Suspended=True, no start time).
    let suspended = spec.suspend == Some(true);
    if suspended {
        d.delete = active.iter().map(|p| name(p)).collect();
        set_condition(
            &mut st,
            "Suspended",
            "True",
            "JobSuspended",
            "Job suspended",
            &now_t,
        );
        st.start_time = None;
        finish_status(&mut st, succeeded_total, failed_total, 0, 0, terminating);
        d.status = st;
        return d;
    }
    if find_condition(&st, "Suspended").is_some_and(|c| c.status == "True") {
        set_condition(
            &mut st,
            "Suspended",
            "False",
            "JobResumed",
            "Job resumed",
            &now_t,
        );
    }
    if st.start_time.is_none() {
        st.start_time = Some(now_t.clone());
    }

    // Terminal decisions, first those already taken (interim conditions).
    let mut failure: Option<(String, String)> = find_condition(&st, "FailureTarget")
        .filter(|c| c.status == "True")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        });
    let mut success = find_condition(&st, "SuccessCriteriaMet").is_some_and(|c| c.status == "True");
    if failure.is_none() && !success {
        let restarts: i32 = if spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            == Some("OnFailure")
        {
            active
                .iter()
                .filter_map(|p| p.status.as_ref())
                .flat_map(|s| {
                    s.init_container_statuses
                        .iter()
                        .flatten()
                        .chain(s.container_statuses.iter().flatten())
                })
                .map(|c| c.restart_count)
                .sum()
        } else {
            0
        };
        let started = st.start_time.as_ref().map(|t| t.0).unwrap_or(now);
        let elapsed = (now.as_millisecond() - started.as_millisecond()) as f64 / 1000.0;
        if let Some(fj) = fail_job {
            failure = Some(fj);
        } else if failed_total > backoff_limit || (restarts > 0 && restarts >= backoff_limit) {
            failure = Some((
                "BackoffLimitExceeded".into(),
                "Job has reached the specified backoff limit".into(),
            ));
        } else if spec
            .active_deadline_seconds
            .is_some_and(|ads| elapsed >= ads as f64)
        {
            failure = Some((
                "DeadlineExceeded".into(),
                "Job was active longer than specified deadline".into(),
            ));
        } else if let Some(ads) = spec.active_deadline_seconds {
            let left = (ads as f64 - elapsed).max(0.0);
            d.requeue_after = Some(Duration::from_millis((left * 1000.0) as u64 + 50));
        }
        if failure.is_none() {
            success = match (indexed, completions) {
                (true, Some(c)) => succeeded_total >= c,
                (_, None) => succeeded_total > 0 && active.is_empty(),
                (false, Some(c)) => succeeded_total >= c,
            };
        }
    }

    let ready = active.iter().filter(|p| is_pod_ready(p)).count() as i32;
    if let Some((reason, msg)) = failure {
        set_condition(&mut st, "FailureTarget", "True", &reason, &msg, &now_t);
        d.delete = active.iter().map(|p| name(p)).collect();
        // Pods being deleted now are failures of this Job.
        for p in &active {
            if has_finalizer(p) && !unc_failed.contains(&uid(p)) {
                d.newly_failed.push(uid(p));
                failed_total += 1;
                d.remove_finalizers.push(name(p));
            }
        }
        set_condition(&mut st, "Failed", "True", &reason, &msg, &now_t);
        finish_status(&mut st, succeeded_total, failed_total, 0, 0, terminating);
        d.requeue_after = None;
        d.status = st;
        return d;
    }
    if success {
        set_condition(
            &mut st,
            "SuccessCriteriaMet",
            "True",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
            &now_t,
        );
        // Pods still running past the target are no longer needed.
        d.delete = active.iter().map(|p| name(p)).collect();
        for p in &active {
            if has_finalizer(p) {
                d.remove_finalizers.push(name(p));
            }
        }
        set_condition(
            &mut st,
            "Complete",
            "True",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
            &now_t,
        );
        st.completion_time = Some(now_t.clone());
        finish_status(&mut st, succeeded_total, failed_total, 0, 0, terminating);
        d.requeue_after = None;
        d.status = st;
        return d;
    }

    // Scale: how many should run now.
    let remaining = d.backoff.remaining(now);
    let blocking_terminating = if replace_terminating { 0 } else { terminating };
    if indexed {
        let c = completions.unwrap_or(0);
        let mut seen: HashSet<i32> = HashSet::new();
        let mut active_ok = 0;
        for p in &active {
            match completion_index(p) {
                Some(i) if i < c && !completed.contains(&i) && seen.insert(i) => active_ok += 1,
                // Duplicates, out of range, or already completed elsewhere.
                _ => d.delete.push(name(p)),
            }
        }
        let want = parallelism.min(c - completed.len() as i32).max(0);
        let room = (want - active_ok - blocking_terminating).max(0);
        if room > 0 && remaining.is_zero() {
            let pending = (0..c).filter(|i| !completed.contains(i) && !seen.contains(i));
            d.create = pending
                .take(room as usize)
                .map(|i| NewPod { index: Some(i) })
                .collect();
        } else if room > 0 {
            d.requeue_after = Some(remaining);
        }
    } else {
        let active_n = active.len() as i32;
        let want = match completions {
            None if succeeded_total > 0 => active_n,
            None => parallelism,
            Some(c) => (c - succeeded_total).clamp(0, parallelism),
        };
        if active_n > want {
            // Prefer deleting pods that are not running yet, then the newest.
            let mut extra: Vec<&&Pod> = active.iter().collect();
            extra.sort_by_key(|p| {
                (
                    phase(p) == "Running",
                    is_pod_ready(p),
                    std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0)),
                )
            });
            d.delete = extra
                .into_iter()
                .take((active_n - want) as usize)
                .map(|p| name(p))
                .collect();
        }
        let room = (want - active_n - blocking_terminating).max(0);
        if room > 0 && remaining.is_zero() {
            d.create = vec![NewPod { index: None }; room as usize];
        } else if room > 0 {
            d.requeue_after = Some(remaining);
        }
    }
    let active_after = active.len() as i32 - d.delete.len() as i32 + d.create.len() as i32;
    finish_status(
        &mut st,
        succeeded_total,
        failed_total,
        active_after.max(0),
        ready,
        terminating,
    );
    d.status = st;
    d
}

fn finish_status(
    st: &mut JobStatus,
    succeeded: i32,
    failed: i32,
    active: i32,
    ready: i32,
    terminating: i32,
) {
    st.succeeded = Some(succeeded);
    st.failed = Some(failed);
    st.active = Some(active);
    st.ready = Some(ready);
    st.terminating = Some(terminating);
    // Everything pending is counted in this status; the finalizers go in this sync.
    st.uncounted_terminated_pods = Some(Default::default());
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
