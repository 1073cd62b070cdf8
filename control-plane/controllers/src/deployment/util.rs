//! The Deployment controller's pure decisions (upstream
//! pkg/controller/deployment/util/deployment_util.go, rolling.go, sync.go): surge and
//! unavailability arithmetic, which ReplicaSet is the new one, revisions, how far to
//! scale each ReplicaSet, the status and its conditions. No I/O here.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
const ROLLBACK_TO: &str = "deprecated.deployment.rollback.to";

// Condition reasons, as upstream names them (kubectl matches on some).
pub const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
pub const TIMED_OUT: &str = "ProgressDeadlineExceeded";
pub const RS_UPDATED: &str = "ReplicaSetUpdated";
pub const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
pub const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
pub const PAUSED: &str = "DeploymentPaused";
pub const RESUMED: &str = "DeploymentResumed";
pub const MIN_AVAILABLE: &str = "MinimumReplicasAvailable";
pub const MIN_UNAVAILABLE: &str = "MinimumReplicasUnavailable";

pub fn spec_replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

pub fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn rs_status(rs: &ReplicaSet) -> (i32, i32, i32) {
    rs.status
        .as_ref()
        .map(|s| {
            (
                s.replicas,
                s.ready_replicas.unwrap_or(0),
                s.available_replicas.unwrap_or(0),
            )
        })
        .unwrap_or((0, 0, 0))
}

pub fn is_rolling(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate")
}

/// An int-or-percent scaled against `total` (upstream `GetScaledValueFromIntOrPercent`).
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Result<i32, String> {
    match v {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let p: i64 = s
                .strip_suffix('%')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("invalid value for IntOrString: invalid value {s:?}"))?;
            let num = p * i64::from(total);
            let v = if round_up {
                (num + 99).div_euclid(100)
            } else {
                num.div_euclid(100)
            };
            Ok(v as i32)
        }
    }
}

/// (maxSurge, maxUnavailable) as absolute numbers for `desired` replicas; never both 0
/// (upstream `ResolveFenceposts`).
pub fn resolve_fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    desired: i32,
) -> (i32, i32) {
    let zero = IntOrString::Int(0);
    let surge = scaled_value(max_surge.unwrap_or(&zero), desired, true).unwrap_or(0);
    let mut unavailable =
        scaled_value(max_unavailable.unwrap_or(&zero), desired, false).unwrap_or(0);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable)
}

fn fenceposts(d: &Deployment) -> (i32, i32) {
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let pct25 = IntOrString::String("25%".into());
    resolve_fenceposts(
        Some(ru.and_then(|r| r.max_surge.as_ref()).unwrap_or(&pct25)),
        Some(
            ru.and_then(|r| r.max_unavailable.as_ref())
                .unwrap_or(&pct25),
        ),
        spec_replicas(d),
    )
}

pub fn max_surge(d: &Deployment) -> i32 {
    if !is_rolling(d) {
        return 0;
    }
    fenceposts(d).0
}

pub fn max_unavailable(d: &Deployment) -> i32 {
    let replicas = spec_replicas(d);
    if !is_rolling(d) || replicas == 0 {
        return 0;
    }
    fenceposts(d).1.min(replicas)
}

/// The template without the `pod-template-hash` label (what a Deployment's template is
/// compared with).
pub fn template_without_hash(t: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = t.clone();
    if let Some(m) = t.metadata.as_mut() {
        if let Some(l) = m.labels.as_mut() {
            l.remove(POD_TEMPLATE_HASH);
            if l.is_empty() {
                m.labels = None;
            }
        }
        // Not part of the template's identity (kubectl sends `creationTimestamp: null`).
        m.creation_timestamp = None;
    }
    t
}

/// Upstream `EqualIgnoreHash`.
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    template_without_hash(a) == template_without_hash(b)
}

fn fnv32a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The `pod-template-hash` of a template (upstream `ComputeHash`: FNV-32a of the
/// template and the collision count, in the consonant-digit alphabet of
/// `rand.SafeEncodeString` so it never spells words).
pub fn compute_hash(t: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(&template_without_hash(t)).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(c.to_string().as_bytes());
    }
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    fnv32a(&bytes)
        .to_string()
        .bytes()
        .map(|b| ALPHANUMS[b as usize % ALPHANUMS.len()] as char)
        .collect()
}

pub fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub fn max_revision(rss: &[&ReplicaSet]) -> i64 {
    rss.iter().map(|rs| revision_of(rs)).max().unwrap_or(0)
}

fn created(rs: &ReplicaSet) -> (Option<Timestamp>, String) {
    (
        rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
        rs.metadata.name.clone().unwrap_or_default(),
    )
}

/// The oldest ReplicaSet whose template equals the Deployment's (upstream
/// `FindNewReplicaSet`), and every other one.
pub fn split_new_old<'a>(
    d: &Deployment,
    rss: &[&'a ReplicaSet],
) -> (Option<&'a ReplicaSet>, Vec<&'a ReplicaSet>) {
    let mut sorted: Vec<&ReplicaSet> = rss.to_vec();
    sorted.sort_by_key(|a| created(a));
    let template = d
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let new = sorted.iter().copied().find(|rs| {
        rs.spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .is_some_and(|t| equal_ignore_hash(t, &template))
    });
    let old = sorted
        .into_iter()
        .filter(|rs| new.is_none_or(|n| !std::ptr::eq(*rs, n)))
        .collect();
    (new, old)
}

/// Replicas of the new ReplicaSet for this step of the rollout (upstream `NewRSNewReplicas`).
pub fn new_rs_new_replicas(d: &Deployment, all: &[&ReplicaSet], new_rs: &ReplicaSet) -> i32 {
    let replicas = spec_replicas(d);
    if !is_rolling(d) {
        return replicas;
    }
    let current: i32 = all.iter().map(|rs| rs_replicas(rs)).sum();
    let max_total = replicas + max_surge(d);
    if current >= max_total {
        return rs_replicas(new_rs);
    }
    let up = (max_total - current).min(replicas - rs_replicas(new_rs));
    rs_replicas(new_rs) + up
}

/// The old ReplicaSets to scale down in a rolling update, as (name, new replicas): first
/// the unhealthy replicas of old sets, then available ones down to `replicas -
/// maxUnavailable` available in total (upstream `reconcileOldReplicaSets`).
pub fn scale_down_old(
    d: &Deployment,
    new_rs: Option<&ReplicaSet>,
    old: &[&ReplicaSet],
) -> Vec<(String, i32)> {
    let old_pods: i32 = old.iter().map(|rs| rs_replicas(rs)).sum();
    if old_pods == 0 {
        return Vec::new();
    }
    let new_replicas = new_rs.map(rs_replicas).unwrap_or(0);
    let all_pods = old_pods + new_replicas;
    let min_available = spec_replicas(d) - max_unavailable(d);
    let new_unavailable = new_replicas - new_rs.map(|rs| rs_status(rs).2).unwrap_or(0);
    let max_scaled_down = all_pods - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return Vec::new();
    }
    let mut sorted: Vec<&ReplicaSet> = old.to_vec();
    sorted.sort_by_key(|a| created(a));
    let mut sizes: BTreeMap<String, i32> = BTreeMap::new();
    // 1. Unhealthy replicas go first: removing them costs no availability.
    let mut cleaned = 0;
    for rs in &sorted {
        if cleaned >= max_scaled_down {
            break;
        }
        let replicas = rs_replicas(rs);
        let available = rs_status(rs).2;
        if replicas == 0 || replicas <= available {
            continue;
        }
        let down = (max_scaled_down - cleaned).min(replicas - available);
        sizes.insert(
            rs.metadata.name.clone().unwrap_or_default(),
            replicas - down,
        );
        cleaned += down;
    }
    // 2. Then available ones, keeping `replicas - maxUnavailable` available.
    let size = |rs: &ReplicaSet, sizes: &BTreeMap<String, i32>| {
        sizes
            .get(rs.metadata.name.as_deref().unwrap_or(""))
            .copied()
            .unwrap_or_else(|| rs_replicas(rs))
    };
    let available: i32 = old.iter().map(|rs| rs_status(rs).2).sum::<i32>()
        + new_rs.map(|rs| rs_status(rs).2).unwrap_or(0);
    if available > min_available {
        let total = available - min_available;
        let mut done = 0;
        for rs in &sorted {
            if done >= total {
                break;
            }
            let replicas = size(rs, &sizes);
            if replicas == 0 {
                continue;
            }
            let down = replicas.min(total - done);
            sizes.insert(
                rs.metadata.name.clone().unwrap_or_default(),
                replicas - down,
            );
            done += down;
        }
    }
    sorted
        .iter()
        .filter_map(|rs| {
            let name = rs.metadata.name.clone().unwrap_or_default();
            let s = *sizes.get(&name)?;
            (s != rs_replicas(rs)).then_some((name, s))
        })
        .collect()
}

fn annotation(rs: &ReplicaSet, key: &str) -> Option<i32> {
    rs.metadata.annotations.as_ref()?.get(key)?.parse().ok()
}

/// Whether a scaling (not a template change) is under way: an active ReplicaSet was
/// sized for a different `spec.replicas` (upstream `isScalingEvent`).
pub fn is_scaling_event(d: &Deployment, all: &[&ReplicaSet]) -> bool {
    all.iter()
        .filter(|rs| rs_replicas(rs) > 0)
        .filter_map(|rs| annotation(rs, DESIRED_REPLICAS))
        .any(|desired| desired != spec_replicas(d))
}

/// Sizes for every ReplicaSet after a scaling of the Deployment (upstream `scale`):
/// one active set takes the new size; otherwise a rolling Deployment spreads the
/// difference in proportion to each set's size.
pub fn proportional_scale(
    d: &Deployment,
    new_rs: Option<&ReplicaSet>,
    old: &[&ReplicaSet],
) -> Vec<(String, i32)> {
    let replicas = spec_replicas(d);
    let name = |rs: &ReplicaSet| rs.metadata.name.clone().unwrap_or_default();
    // The one active (or the latest) ReplicaSet simply takes the Deployment's size.
    let mut newest_first: Vec<&ReplicaSet> = old.to_vec();
    newest_first.sort_by_key(|a| std::cmp::Reverse(created(a)));
    let mut all: Vec<&ReplicaSet> = newest_first.clone();
    if let Some(n) = new_rs {
        all.push(n);
    }
    let active: Vec<&ReplicaSet> = all
        .iter()
        .copied()
        .filter(|rs| rs_replicas(rs) > 0)
        .collect();
    let active_or_latest = match active.len() {
        0 => new_rs.or(newest_first.first().copied()),
        1 => Some(active[0]),
        _ => None,
    };
    if let Some(rs) = active_or_latest {
        return if rs_replicas(rs) == replicas {
            Vec::new()
        } else {
            vec![(name(rs), replicas)]
        };
    }
    // The new set is saturated: the old ones can go.
    if let Some(n) = new_rs {
        let (_, _, available) = rs_status(n);
        if annotation(n, DESIRED_REPLICAS) == Some(replicas)
            && rs_replicas(n) == replicas
            && available == replicas
        {
            return active
                .iter()
                .filter(|rs| !std::ptr::eq(**rs, n))
                .map(|rs| (name(rs), 0))
                .collect();
        }
    }
    if !is_rolling(d) {
        return Vec::new();
    }
    let current: i32 = active.iter().map(|rs| rs_replicas(rs)).sum();
    let allowed = if replicas > 0 {
        replicas + max_surge(d)
    } else {
        0
    };
    let to_add = allowed - current;
    let mut ordered = active.clone();
    // Larger first; among equals, newer first when growing and older first when shrinking.
    if to_add > 0 {
        ordered.sort_by(|a, b| {
            rs_replicas(b)
                .cmp(&rs_replicas(a))
                .then_with(|| created(b).cmp(&created(a)))
        });
    } else {
        ordered.sort_by(|a, b| {
            rs_replicas(b)
                .cmp(&rs_replicas(a))
                .then_with(|| created(a).cmp(&created(b)))
        });
    }
    let status_replicas = d
        .status
        .as_ref()
        .map(|s| s.replicas.unwrap_or(0))
        .unwrap_or(0);
    let mut added = 0;
    let mut sizes: Vec<(String, i32, i32)> = Vec::new();
    for rs in &ordered {
        let r = rs_replicas(rs);
        let mut size = r;
        if to_add != 0 && r != 0 && to_add != added {
            let fraction = if replicas == 0 {
                -r
            } else {
                let annotated = annotation(rs, MAX_REPLICAS).unwrap_or(status_replicas);
                if annotated == 0 {
                    0
                } else {
                    let new_size = f64::from(r) * f64::from(allowed) / f64::from(annotated);
                    new_size.round() as i32 - r
                }
            };
            let left = to_add - added;
            let proportion = if to_add > 0 {
                fraction.min(left)
            } else {
                fraction.max(left)
            };
            size = r + proportion;
            added += proportion;
        }
        sizes.push((name(rs), r, size));
    }
    if to_add != 0 && added != to_add {
        if let Some(first) = sizes.first_mut() {
            first.2 = (first.2 + to_add - added).max(0);
        }
    }
    sizes
        .into_iter()
        .filter(|(_, old, new)| old != new)
        .map(|(n, _, new)| (n, new))
        .collect()
}

/// Copies the Deployment's annotations (but its own bookkeeping ones) onto the new
/// ReplicaSet, sets its revision, and records a superseded revision in the history.
/// Returns whether anything changed (upstream `SetNewReplicaSetAnnotations`).
pub fn set_new_rs_annotations(
    d: &Deployment,
    rs: &mut ReplicaSet,
    new_revision: i64,
    exists: bool,
) -> bool {
    let skip = [
        LAST_APPLIED,
        REVISION,
        REVISION_HISTORY,
        DESIRED_REPLICAS,
        MAX_REPLICAS,
        ROLLBACK_TO,
    ];
    let anns = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut changed = false;
    for (k, v) in d.metadata.annotations.iter().flatten() {
        if skip.contains(&k.as_str()) || anns.get(k) == Some(v) {
            continue;
        }
        anns.insert(k.clone(), v.clone());
        changed = true;
    }
    let old = anns.get(REVISION).cloned().unwrap_or_default();
    let old_int: i64 = if old.is_empty() {
        0
    } else {
        match old.parse() {
            Ok(v) => v,
            Err(_) => return changed,
        }
    };
    if old_int < new_revision {
        anns.insert(REVISION.into(), new_revision.to_string());
        changed = true;
        if !old.is_empty() && exists {
            let history = match anns.get(REVISION_HISTORY) {
                Some(h) if !h.is_empty() => format!("{h},{old}"),
                _ => old.clone(),
            };
            anns.insert(REVISION_HISTORY.into(), history);
        }
    }
    if !exists {
        changed |= set_replicas_annotations(rs, spec_replicas(d), spec_replicas(d) + max_surge(d));
    }
    changed
}

/// Sets the desired/max replicas annotations; returns whether they changed.
pub fn set_replicas_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    let anns = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut changed = false;
    for (k, v) in [(DESIRED_REPLICAS, desired), (MAX_REPLICAS, max)] {
        let v = v.to_string();
        if anns.get(k) != Some(&v) {
            anns.insert(k.into(), v);
            changed = true;
        }
    }
    changed
}

pub fn has_progress_deadline(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .is_some_and(|s| s != i32::MAX)
}

pub fn condition<'a>(s: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    s.conditions.as_ref()?.iter().find(|c| c.type_ == type_)
}

pub fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Upstream `SetDeploymentCondition`: same status and reason is no change; same status
/// keeps the transition time.
pub fn set_condition(s: &mut DeploymentStatus, mut c: DeploymentCondition) {
    if let Some(cur) = condition(s, &c.type_) {
        if cur.status == c.status && cur.reason == c.reason {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time.clone();
        }
    }
    let mut conds: Vec<DeploymentCondition> = s
        .conditions
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|x| x.type_ != c.type_)
        .collect();
    conds.push(c);
    s.conditions = Some(conds);
}

pub fn remove_condition(s: &mut DeploymentStatus, type_: &str) {
    if let Some(c) = s.conditions.as_mut() {
        c.retain(|x| x.type_ != type_);
    }
}

/// Replica counts and the Available condition (upstream `calculateStatus`).
pub fn calculate_status(
    d: &Deployment,
    new_rs: Option<&ReplicaSet>,
    all: &[&ReplicaSet],
    now: Timestamp,
) -> DeploymentStatus {
    let available: i32 = all.iter().map(|rs| rs_status(rs).2).sum();
    let total: i32 = all.iter().map(|rs| rs_replicas(rs)).sum();
    let old = d.status.clone().unwrap_or_default();
    let nonzero = |n: i32| (n != 0).then_some(n);
    let mut s = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: nonzero(all.iter().map(|rs| rs_status(rs).0).sum()),
        updated_replicas: nonzero(new_rs.map(|rs| rs_status(rs).0).unwrap_or(0)),
        ready_replicas: nonzero(all.iter().map(|rs| rs_status(rs).1).sum()),
        available_replicas: nonzero(available),
        unavailable_replicas: nonzero((total - available).max(0)),
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
        terminating_replicas: None,
    };
    if available >= spec_replicas(d) - max_unavailable(d) {
        set_condition(
            &mut s,
            new_condition(
                "Available",
                "True",
                MIN_AVAILABLE,
                "Deployment has minimum availability.".into(),
                now,
            ),
        );
    } else {
        set_condition(
            &mut s,
            new_condition(
                "Available",
                "False",
                MIN_UNAVAILABLE,
                "Deployment does not have minimum availability.".into(),
                now,
            ),
        );
    }
    s
}

fn n(v: Option<i32>) -> i32 {
    v.unwrap_or(0)
}

/// Upstream `DeploymentComplete`.
pub fn is_complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let r = spec_replicas(d);
    n(s.updated_replicas) == r
        && n(s.replicas) == r
        && n(s.available_replicas) == r
        && s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// Upstream `DeploymentProgressing`: more updated, fewer old, more ready or available.
pub fn is_progressing(d: &Deployment, s: &DeploymentStatus) -> bool {
    let old = d.status.clone().unwrap_or_default();
    let old_old = n(old.replicas) - n(old.updated_replicas);
    let new_old = n(s.replicas) - n(s.updated_replicas);
    n(s.updated_replicas) > n(old.updated_replicas)
        || new_old < old_old
        || n(s.ready_replicas) > n(old.ready_replicas)
        || n(s.available_replicas) > n(old.available_replicas)
}

/// Upstream `DeploymentTimedOut`.
pub fn is_timed_out(d: &Deployment, s: &DeploymentStatus, now: Timestamp) -> bool {
    if !has_progress_deadline(d) {
        return false;
    }
    let Some(c) = condition(s, "Progressing") else {
        return false;
    };
    match c.reason.as_deref() {
        Some(NEW_RS_AVAILABLE) => false,
        Some(TIMED_OUT) => true,
        _ => {
            let deadline = i64::from(
                d.spec
                    .as_ref()
                    .and_then(|s| s.progress_deadline_seconds)
                    .unwrap_or(600),
            );
            c.last_update_time
                .as_ref()
                .is_some_and(|t| t.0.as_millisecond() + deadline * 1000 < now.as_millisecond())
        }
    }
}

/// The status after a rollout step, with the Progressing condition (upstream
/// `syncRolloutStatus`).
pub fn rollout_status(
    d: &Deployment,
    new_rs: Option<&ReplicaSet>,
    all: &[&ReplicaSet],
    now: Timestamp,
) -> DeploymentStatus {
    let mut s = calculate_status(d, new_rs, all, now);
    if !has_progress_deadline(d) {
        remove_condition(&mut s, "Progressing");
    }
    let current = condition(&s, "Progressing").cloned();
    let complete_already = n(s.replicas) == n(s.updated_replicas)
        && current.as_ref().and_then(|c| c.reason.as_deref()) == Some(NEW_RS_AVAILABLE);
    let rs_name = new_rs.and_then(|rs| rs.metadata.name.clone());
    if has_progress_deadline(d) && !complete_already {
        if is_complete(d, &s) {
            let msg = match &rs_name {
                Some(n) => format!("ReplicaSet \"{n}\" has successfully progressed."),
                None => "Deployment has successfully progressed.".into(),
            };
            set_condition(
                &mut s,
                new_condition("Progressing", "True", NEW_RS_AVAILABLE, msg, now),
            );
        } else if is_progressing(d, &s) {
            let msg = match &rs_name {
                Some(n) => format!("ReplicaSet \"{n}\" is progressing."),
                None => format!(
                    "Deployment \"{}\" is progressing.",
                    d.metadata.name.as_deref().unwrap_or("")
                ),
            };
            let mut c = new_condition("Progressing", "True", RS_UPDATED, msg, now);
            // Progress refreshes lastUpdateTime (the deadline clock), not the transition.
            if let Some(cur) = &current {
                if cur.status == "True" {
                    c.last_transition_time = cur.last_transition_time.clone();
                }
                remove_condition(&mut s, "Progressing");
            }
            set_condition(&mut s, c);
        } else if is_timed_out(d, &s, now) {
            let msg = match &rs_name {
                Some(n) => format!("ReplicaSet \"{n}\" has timed out progressing."),
                None => format!(
                    "Deployment \"{}\" has timed out progressing.",
                    d.metadata.name.as_deref().unwrap_or("")
                ),
            };
            set_condition(
                &mut s,
                new_condition("Progressing", "False", TIMED_OUT, msg, now),
            );
        }
    }
    match replica_failure(new_rs, all) {
        Some(c) => set_condition(&mut s, c),
        None => remove_condition(&mut s, "ReplicaFailure"),
    }
    s
}

/// A ReplicaSet's `ReplicaFailure` (the new one's first), as the Deployment reports it
/// (upstream `getReplicaFailures`).
fn replica_failure(
    new_rs: Option<&ReplicaSet>,
    all: &[&ReplicaSet],
) -> Option<DeploymentCondition> {
    new_rs
        .into_iter()
        .chain(all.iter().copied())
        .find_map(|rs| {
            let c = rs
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "ReplicaFailure")?;
            Some(DeploymentCondition {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                last_update_time: c.last_transition_time.clone(),
                last_transition_time: c.last_transition_time.clone(),
            })
        })
}

/// When to look again at a rollout that is not progressing, to time it out.
pub fn requeue_stuck_after(d: &Deployment, s: &DeploymentStatus, now: Timestamp) -> Option<i64> {
    let c = condition(s, "Progressing")?;
    if !has_progress_deadline(d) || is_complete(d, s) || c.reason.as_deref() == Some(TIMED_OUT) {
        return None;
    }
    let deadline = i64::from(d.spec.as_ref()?.progress_deadline_seconds?);
    let from = c.last_update_time.as_ref()?.0.as_millisecond();
    Some((from + deadline * 1000 - now.as_millisecond()).max(0))
}

/// Old ReplicaSets beyond `revisionHistoryLimit`, oldest revision first, that may go
/// (no replicas, status caught up, not already being deleted).
pub fn history_to_clean<'a>(d: &Deployment, old: &[&'a ReplicaSet]) -> Vec<&'a ReplicaSet> {
    let Some(limit) = d.spec.as_ref().and_then(|s| s.revision_history_limit) else {
        return Vec::new();
    };
    let mut alive: Vec<&ReplicaSet> = old
        .iter()
        .copied()
        .filter(|rs| rs.metadata.deletion_timestamp.is_none())
        .collect();
    let diff = alive.len() as i64 - i64::from(limit);
    if diff <= 0 {
        return Vec::new();
    }
    alive.sort_by(|a, b| {
        revision_of(a)
            .cmp(&revision_of(b))
            .then_with(|| created(a).cmp(&created(b)))
    });
    alive
        .into_iter()
        .take(diff as usize)
        .filter(|rs| {
            let st = rs.status.clone().unwrap_or_default();
            st.replicas == 0
                && rs_replicas(rs) == 0
                && rs.metadata.generation.unwrap_or(0) <= st.observed_generation.unwrap_or(0)
        })
        .collect()
}

#[cfg(test)]
mod tests;
