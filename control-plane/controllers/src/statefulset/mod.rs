//! The StatefulSet controller (upstream `pkg/controller/statefulset`): stable pod
//! names `NAME-0…N-1` with hostname and subdomain, ordered or parallel management,
//! RollingUpdate with partition or OnDelete across ControllerRevisions, and status.
//! (volumeClaimTemplates are not provisioned: Kelp has no PersistentVolumes yet.)

pub mod decide;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::ResourceExt;

use crate::history::{self, HASH_LABEL};
use crate::informer::{drive, reflect};
use crate::ops::{self, error_policy, is_status};
use crate::util::{
    controller_ref, is_controlled_by, is_pod_available, is_pod_ready, is_terminating,
};
use crate::{Context, ControllerError, ControllerFuture};

use decide::{decide, Member, Plan, Step};

pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

struct StsController {
    client: kube::Client,
    events: crate::events::Recorder,
    pods: Store<Pod>,
    revisions: Store<ControllerRevision>,
}

pub fn run(ctx: Context) -> ControllerFuture {
    Box::pin(async move {
        let client = ctx.client.clone();
        let (sets, set_events) = reflect(
            Api::<StatefulSet>::all(client.clone()),
            watcher::Config::default(),
        );
        let (pods, pod_events) = ctx.pods.reflect();
        let (revisions, rev_events) = reflect(
            Api::<ControllerRevision>::all(client.clone()),
            watcher::Config::default(),
        );
        drive(rev_events);
        let state = Arc::new(StsController {
            events: crate::events::Recorder::new(client.clone(), "statefulset-controller"),
            client,
            pods,
            revisions,
        });
        Controller::for_stream(set_events, sets)
            .owns_stream(pod_events)
            .run(reconcile, error_policy, state)
            .for_each(|_| async {})
            .await;
        Ok(())
    })
}

/// `NAME-ORDINAL` → ORDINAL, for pods of the set named `set`.
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let rest = pod.strip_prefix(set)?.strip_prefix('-')?;
    rest.parse()
        .ok()
        .filter(|o: &i32| *o >= 0 && rest == o.to_string())
}

/// The template a revision stored (its `$patch` marker removed).
fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = rev.data.as_ref()?.0.pointer("/spec/template")?.clone();
    if let Some(o) = t.as_object_mut() {
        o.remove("$patch");
    }
    serde_json::from_value(t).ok()
}

fn set_pod(sts: &StatefulSet, template: &PodTemplateSpec, ordinal: i32, revision: &str) -> Pod {
    let name = format!("{}-{ordinal}", sts.name_any());
    let mut meta = template.metadata.clone().unwrap_or_default();
    let mut spec = template.spec.clone().unwrap_or_default();
    let mut labels = meta.labels.take().unwrap_or_default();
    labels.insert(HASH_LABEL.into(), revision.into());
    labels.insert(POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    spec.hostname = Some(name.clone());
    if let Some(svc) = sts
        .spec
        .as_ref()
        .and_then(|s| s.service_name.clone())
        .filter(|s| !s.is_empty())
    {
        spec.subdomain = Some(svc);
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: sts.namespace(),
            labels: Some(labels),
            annotations: meta.annotations.take(),
            owner_references: Some(vec![controller_ref(sts)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

async fn reconcile(
    sts: Arc<StatefulSet>,
    st: Arc<StsController>,
) -> Result<Action, ControllerError> {
    for ready in [
        st.pods.wait_until_ready().await,
        st.revisions.wait_until_ready().await,
    ] {
        ready.map_err(|e| ControllerError::Other(e.to_string()))?;
    }
    if sts.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = sts.namespace().unwrap_or_default();
    let uid = sts.uid().unwrap_or_default();
    let set_name = sts.name_any();
    let spec = sts.spec.clone().unwrap_or_default();
    let revs: Vec<ControllerRevision> = st
        .revisions
        .state()
        .into_iter()
        .filter(|r| {
            r.metadata.namespace.as_deref() == Some(ns.as_str())
                && is_controlled_by(&r.metadata, &uid)
        })
        .map(|r| (*r).clone())
        .collect();
    let rev_api: Api<ControllerRevision> = Api::namespaced(st.client.clone(), &ns);
    let collisions = sts.status.as_ref().and_then(|s| s.collision_count);
    let update_rev = history::ensure_revision(
        &rev_api,
        &set_name,
        controller_ref(sts.as_ref()),
        spec.selector.match_labels.clone().unwrap_or_default(),
        &spec.template,
        collisions,
        &revs,
    )
    .await?;
    let update_name = update_rev.name_any();
    let current_name = sts
        .status
        .as_ref()
        .and_then(|s| s.current_revision.clone())
        .filter(|n| {
            revs.iter()
                .any(|r| r.metadata.name.as_deref() == Some(n.as_str()))
        })
        .unwrap_or_else(|| update_name.clone());
    let current_template = revs
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(current_name.as_str()))
        .and_then(template_of)
        .unwrap_or_else(|| spec.template.clone());

    let owned: Vec<Arc<Pod>> = st
        .pods
        .state()
        .into_iter()
        .filter(|p| {
            p.metadata.namespace.as_deref() == Some(ns.as_str())
                && is_controlled_by(&p.metadata, &uid)
        })
        .collect();
    let members: Vec<Member> = owned
        .iter()
        .filter_map(|p| {
            Some(Member {
                ordinal: ordinal_of(&set_name, p.metadata.name.as_deref()?)?,
                pod: p.as_ref(),
                revision: p
                    .metadata
                    .labels
                    .as_ref()?
                    .get(HASH_LABEL)
                    .cloned()
                    .unwrap_or_default(),
            })
        })
        .collect();
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let plan = Plan {
        replicas: spec.replicas.unwrap_or(1),
        start_ordinal: spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0),
        ordered: spec.pod_management_policy.as_deref() != Some("Parallel"),
        partition: match strategy.type_.as_deref() {
            Some("OnDelete") => None,
            _ => Some(
                strategy
                    .rolling_update
                    .and_then(|r| r.partition)
                    .unwrap_or(0),
            ),
        },
        update_revision: update_name.clone(),
    };
    let steps = decide(&plan, &members);
    let pods_api: Api<Pod> = Api::namespaced(st.client.clone(), &ns);
    for step in &steps {
        match step {
            Step::Create {
                ordinal,
                update_revision,
            } => {
                let pod = if *update_revision {
                    set_pod(&sts, &spec.template, *ordinal, &update_name)
                } else {
                    set_pod(&sts, &current_template, *ordinal, &current_name)
                };
                match ops::create_pod(&pods_api, &pod).await {
                    Ok(_) => st.events.record(
                        sts.as_ref(),
                        false,
                        "SuccessfulCreate",
                        format!(
                            "create Pod {} in StatefulSet {set_name} successful",
                            pod.name_any()
                        ),
                    ),
                    // Still terminating from a previous life: wait for it to go.
                    Err(e) if is_status(&e, 409) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Step::Delete { name } => {
                ops::delete_pod(&pods_api, name).await?;
                st.events.record(
                    sts.as_ref(),
                    false,
                    "SuccessfulDelete",
                    format!("delete Pod {name} in StatefulSet {set_name} successful"),
                );
            }
        }
    }

    let now = Timestamp::now();
    let live: Vec<&Member> = members.iter().filter(|m| !is_terminating(m.pod)).collect();
    let updated = live.iter().filter(|m| m.revision == update_name).count() as i32;
    let in_range = |m: &&&Member| {
        m.ordinal >= plan.start_ordinal && m.ordinal < plan.start_ordinal + plan.replicas
    };
    let complete = steps.is_empty()
        && updated == plan.replicas
        && live.iter().filter(in_range).count() as i32 == plan.replicas
        && live.len() as i32 == plan.replicas;
    let current_name = if complete {
        update_name.clone()
    } else {
        current_name
    };
    let status = StatefulSetStatus {
        replicas: live.len() as i32,
        ready_replicas: Some(live.iter().filter(|m| is_pod_ready(m.pod)).count() as i32),
        available_replicas: Some(
            live.iter()
                .filter(|m| is_pod_available(m.pod, spec.min_ready_seconds.unwrap_or(0), now))
                .count() as i32,
        ),
        current_replicas: Some(live.iter().filter(|m| m.revision == current_name).count() as i32),
        updated_replicas: Some(updated),
        current_revision: Some(current_name),
        update_revision: Some(update_name.clone()),
        observed_generation: sts.metadata.generation,
        collision_count: collisions,
        conditions: sts.status.as_ref().and_then(|s| s.conditions.clone()),
    };
    if sts.status.as_ref() != Some(&status) {
        let mut next = (*sts).clone();
        next.status = Some(status);
        Api::<StatefulSet>::namespaced(st.client.clone(), &ns)
            .replace_status(&set_name, &PostParams::default(), &next)
            .await?;
    }
    let in_use: HashSet<String> = members
        .iter()
        .map(|m| m.revision.clone())
        .chain([update_name])
        .collect();
    history::truncate(
        &rev_api,
        &revs,
        &in_use,
        spec.revision_history_limit.unwrap_or(10),
    )
    .await?;
    Ok(Action::requeue(Duration::from_secs(if steps.is_empty() {
        300
    } else {
        5
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_from_names() {
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-12"), Some(12));
        assert_eq!(ordinal_of("web", "web-01"), None);
        assert_eq!(ordinal_of("web", "webx-1"), None);
        assert_eq!(ordinal_of("web", "web-a"), None);
    }
}
