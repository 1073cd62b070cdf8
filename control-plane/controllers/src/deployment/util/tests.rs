use super::*;
use k8s_openapi::api::apps::v1::{
    DeploymentSpec, DeploymentStrategy, ReplicaSetSpec, ReplicaSetStatus, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

fn ts(secs: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + secs).unwrap()
}

fn template(image: &str) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some([("app".to_string(), "web".to_string())].into()),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                image: Some(image.into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

fn deployment(replicas: i32, surge: IntOrString, unavailable: IntOrString) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some("web".into()),
            generation: Some(1),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            template: template("v2"),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(surge),
                    max_unavailable: Some(unavailable),
                }),
            }),
            progress_deadline_seconds: Some(600),
            revision_history_limit: Some(1),
            ..Default::default()
        }),
        status: None,
    }
}

fn rs(
    name: &str,
    image: &str,
    replicas: i32,
    available: i32,
    created: i64,
    revision: i64,
) -> ReplicaSet {
    let mut t = template(image);
    t.metadata
        .as_mut()
        .unwrap()
        .labels
        .as_mut()
        .unwrap()
        .insert(POD_TEMPLATE_HASH.into(), format!("h-{name}"));
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(name.into()),
            creation_timestamp: Some(Time(ts(created))),
            annotations: Some([(REVISION.to_string(), revision.to_string())].into()),
            generation: Some(1),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            template: Some(t),
            ..Default::default()
        }),
        status: Some(ReplicaSetStatus {
            replicas,
            ready_replicas: Some(available),
            available_replicas: Some(available),
            observed_generation: Some(1),
            ..Default::default()
        }),
    }
}

fn pct(s: &str) -> IntOrString {
    IntOrString::String(s.into())
}

#[test]
fn fenceposts_round_surge_up_and_unavailable_down() {
    assert_eq!(
        resolve_fenceposts(Some(&pct("25%")), Some(&pct("25%")), 10),
        (3, 2)
    );
    assert_eq!(
        resolve_fenceposts(Some(&pct("25%")), Some(&pct("25%")), 1),
        (1, 0)
    );
    assert_eq!(
        resolve_fenceposts(Some(&IntOrString::Int(0)), Some(&IntOrString::Int(0)), 5),
        (0, 1),
        "both zero: one may be unavailable"
    );
    assert_eq!(
        resolve_fenceposts(Some(&pct("0%")), Some(&pct("50%")), 3),
        (0, 1)
    );
    assert!(scaled_value(&pct("abc"), 10, true).is_err());
    // maxUnavailable is capped at the replica count.
    let d = deployment(2, IntOrString::Int(1), IntOrString::Int(5));
    assert_eq!(max_unavailable(&d), 2);
}

#[test]
fn new_replica_set_grows_within_max_surge() {
    let d = deployment(10, pct("25%"), pct("25%"));
    let old = rs("old", "v1", 10, 10, 0, 1);
    let new = rs("new", "v2", 0, 0, 10, 2);
    // 10 + 3 surge allowed, 10 running: the new set may take 3.
    assert_eq!(new_rs_new_replicas(&d, &[&old, &new], &new), 3);
    let new3 = rs("new", "v2", 3, 0, 10, 2);
    assert_eq!(new_rs_new_replicas(&d, &[&old, &new3], &new3), 3);
    // Never past spec.replicas.
    let old1 = rs("old", "v1", 1, 1, 0, 1);
    let new9 = rs("new", "v2", 9, 9, 10, 2);
    assert_eq!(new_rs_new_replicas(&d, &[&old1, &new9], &new9), 10);
}

#[test]
fn old_replica_sets_shrink_within_max_unavailable_unhealthy_first() {
    let d = deployment(10, pct("25%"), pct("25%"));
    // 10 old available, new set of 3 not yet available: min available 8, so 2 may go.
    let old = rs("old", "v1", 10, 10, 0, 1);
    let new = rs("new", "v2", 3, 0, 10, 2);
    assert_eq!(
        scale_down_old(&d, Some(&new), &[&old]),
        [("old".to_string(), 8)]
    );
    // New set available: down to the 8 - 3 = 5 others needed... bounded by maxScaledDown.
    let new_ok = rs("new", "v2", 3, 3, 10, 2);
    assert_eq!(
        scale_down_old(&d, Some(&new_ok), &[&old]),
        [("old".to_string(), 5)]
    );
    // Unhealthy old replicas go first even when nothing available may be lost.
    let mut sick = rs("sick", "v0", 4, 0, 0, 1);
    sick.status.as_mut().unwrap().replicas = 4;
    let healthy = rs("old", "v1", 8, 8, 5, 2);
    let new0 = rs("new", "v2", 0, 0, 10, 3);
    let plan = scale_down_old(&d, Some(&new0), &[&sick, &healthy]);
    assert_eq!(plan, [("sick".to_string(), 0)]);
}

#[test]
fn the_new_replica_set_is_the_oldest_with_the_same_template_and_revisions_count_up() {
    let d = deployment(3, pct("25%"), pct("25%"));
    let a = rs("a", "v1", 0, 0, 0, 1);
    let b = rs("b", "v2", 3, 3, 10, 2);
    let c = rs("c", "v2", 0, 0, 20, 3);
    let (new, old) = split_new_old(&d, &[&c, &a, &b]);
    assert_eq!(new.unwrap().metadata.name.as_deref(), Some("b"));
    assert_eq!(old.len(), 2);
    assert_eq!(max_revision(&old), 3);

    // Rolling back to an old template makes it the new set with the next revision,
    // and records the revision it had.
    let mut back = d.clone();
    back.spec.as_mut().unwrap().template = template("v1");
    let (new, old) = split_new_old(&back, &[&a, &b, &c]);
    assert_eq!(new.unwrap().metadata.name.as_deref(), Some("a"));
    let mut a2 = a.clone();
    assert!(set_new_rs_annotations(
        &back,
        &mut a2,
        max_revision(&old) + 1,
        true
    ));
    let anns = a2.metadata.annotations.unwrap();
    assert_eq!(anns[REVISION], "4");
    assert_eq!(anns[REVISION_HISTORY], "1");
}

#[test]
fn hash_is_stable_ignores_its_own_label_and_changes_with_collisions() {
    let t = template("v1");
    let h = compute_hash(&t, None);
    assert_eq!(h, compute_hash(&t, None));
    let mut labelled = t.clone();
    labelled
        .metadata
        .as_mut()
        .unwrap()
        .labels
        .as_mut()
        .unwrap()
        .insert(POD_TEMPLATE_HASH.into(), h.clone());
    assert_eq!(compute_hash(&labelled, None), h);
    assert_ne!(compute_hash(&t, Some(1)), h);
    assert_ne!(compute_hash(&template("v2"), None), h);
    assert!(h
        .bytes()
        .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)));
}

#[test]
fn scaling_spreads_proportionally_over_active_sets() {
    // Mid-rollout 10 → 20 replicas: old 8 and new 5 (max-replicas annotation 13).
    let mut d = deployment(20, IntOrString::Int(3), IntOrString::Int(2));
    d.status = Some(DeploymentStatus {
        replicas: Some(13),
        ..Default::default()
    });
    let mut old = rs("old", "v1", 8, 8, 0, 1);
    let mut new = rs("new", "v2", 5, 0, 10, 2);
    for r in [&mut old, &mut new] {
        set_replicas_annotations(r, 10, 13);
    }
    assert!(is_scaling_event(&d, &[&old, &new]));
    let plan = proportional_scale(&d, Some(&new), &[&old]);
    let total: i32 = plan.iter().map(|(_, n)| n).sum();
    assert_eq!(total, 23, "20 + maxSurge 3 in all: {plan:?}");
    let get = |n: &str| plan.iter().find(|(x, _)| x == n).unwrap().1;
    // 8 * 23/13 ≈ 14, 5 * 23/13 ≈ 9.
    assert_eq!((get("old"), get("new")), (14, 9));

    // One active set simply takes the new size.
    let only = rs("only", "v2", 3, 3, 0, 1);
    let d5 = deployment(5, pct("25%"), pct("25%"));
    assert_eq!(
        proportional_scale(&d5, Some(&only), &[]),
        [("only".to_string(), 5)]
    );
}

#[test]
fn status_and_conditions_follow_the_rollout() {
    let d = deployment(3, pct("25%"), pct("25%"));
    let new = rs("new", "v2", 3, 3, 10, 2);
    let s = rollout_status(&d, Some(&new), &[&new], ts(0));
    assert_eq!(s.replicas, Some(3));
    assert_eq!(s.updated_replicas, Some(3));
    assert_eq!(s.available_replicas, Some(3));
    assert_eq!(s.unavailable_replicas, None);
    assert_eq!(s.observed_generation, Some(1));
    assert!(is_complete(&d, &s));
    let avail = condition(&s, "Available").unwrap();
    assert_eq!(
        (avail.status.as_str(), avail.reason.as_deref()),
        ("True", Some(MIN_AVAILABLE))
    );
    let prog = condition(&s, "Progressing").unwrap();
    assert_eq!(prog.reason.as_deref(), Some(NEW_RS_AVAILABLE));

    // Mid-rollout with no progress past the deadline: ProgressDeadlineExceeded.
    let mut stuck = d.clone();
    stuck.spec.as_mut().unwrap().progress_deadline_seconds = Some(10);
    let old = rs("old", "v1", 3, 3, 0, 1);
    let new0 = rs("new", "v2", 1, 0, 10, 2);
    let s1 = rollout_status(&stuck, Some(&new0), &[&old, &new0], ts(0));
    assert_eq!(
        condition(&s1, "Progressing").unwrap().reason.as_deref(),
        Some(RS_UPDATED)
    );
    stuck.status = Some(s1.clone());
    assert_eq!(requeue_stuck_after(&stuck, &s1, ts(4)), Some(6000));
    let s2 = rollout_status(&stuck, Some(&new0), &[&old, &new0], ts(11));
    let c = condition(&s2, "Progressing").unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_deref()),
        ("False", Some(TIMED_OUT))
    );

    // Not enough available: Available=False.
    let none = rs("new", "v2", 3, 0, 10, 2);
    let s3 = calculate_status(&d, Some(&none), &[&none], ts(0));
    assert_eq!(condition(&s3, "Available").unwrap().status, "False");
    assert_eq!(s3.unavailable_replicas, Some(3));
}

#[test]
fn history_beyond_the_limit_is_cleaned_oldest_revision_first() {
    let d = deployment(3, pct("25%"), pct("25%"));
    let r1 = rs("r1", "v0", 0, 0, 0, 1);
    let r2 = rs("r2", "v1", 0, 0, 5, 2);
    let busy = rs("r3", "v3", 1, 1, 6, 3);
    let clean = history_to_clean(&d, &[&r2, &r1, &busy]);
    let names: Vec<_> = clean
        .iter()
        .map(|r| r.metadata.name.clone().unwrap())
        .collect();
    // Limit 1 of 3 old: two oldest revisions (r1, r2) go; both are scaled to zero.
    assert_eq!(names, ["r1", "r2"]);
}

#[test]
fn a_replica_set_failure_shows_on_the_deployment_until_it_clears() {
    use k8s_openapi::api::apps::v1::ReplicaSetCondition;
    let d = deployment(3, pct("25%"), pct("25%"));
    let mut new = rs("new", "v2", 3, 0, 10, 2);
    new.status.as_mut().unwrap().conditions = Some(vec![ReplicaSetCondition {
        type_: "ReplicaFailure".into(),
        status: "True".into(),
        reason: Some("FailedCreate".into()),
        message: Some("quota exceeded".into()),
        last_transition_time: Some(Time(ts(0))),
    }]);
    let s = rollout_status(&d, Some(&new), &[&new], ts(1));
    let c = condition(&s, "ReplicaFailure").expect("ReplicaFailure reported");
    assert_eq!(c.reason.as_deref(), Some("FailedCreate"));
    let mut d2 = d.clone();
    d2.status = Some(s);
    new.status.as_mut().unwrap().conditions = None;
    let s2 = rollout_status(&d2, Some(&new), &[&new], ts(2));
    assert!(condition(&s2, "ReplicaFailure").is_none());
}
