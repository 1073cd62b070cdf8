//! ControllerRevisions for DaemonSets and StatefulSets (upstream
//! `pkg/controller/history`): each distinct pod template is stored once, as the
//! patch `{"spec":{"template":{…,"$patch":"replace"}}}`, named `SET-HASH`, with a
//! revision number one past the highest; old ones beyond `revisionHistoryLimit` that
//! no pod uses are deleted.

use std::collections::HashSet;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use crate::ops::is_status;
use crate::util::hash_value;
use crate::ControllerError;

pub const HASH_LABEL: &str = "controller-revision-hash";

/// The data a revision stores for a template.
pub fn revision_data(template: &PodTemplateSpec) -> serde_json::Value {
    let mut t = serde_json::to_value(template).unwrap_or_default();
    if let Some(o) = t.as_object_mut() {
        o.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": t}})
}

/// The hash of a template (with the set's collision count).
pub fn template_hash(template: &PodTemplateSpec, collisions: Option<i32>) -> String {
    hash_value(
        &serde_json::to_value(template).unwrap_or_default(),
        collisions,
    )
}

/// Finds or creates the revision of `template` among `owned`; returns it and the
/// revisions as they are afterwards.
pub async fn ensure_revision(
    api: &Api<ControllerRevision>,
    set_name: &str,
    owner: OwnerReference,
    labels: std::collections::BTreeMap<String, String>,
    template: &PodTemplateSpec,
    collisions: Option<i32>,
    owned: &[ControllerRevision],
) -> Result<ControllerRevision, ControllerError> {
    let hash = template_hash(template, collisions);
    let data = revision_data(template);
    if let Some(existing) = owned.iter().find(|r| {
        r.metadata.labels.as_ref().and_then(|l| l.get(HASH_LABEL)) == Some(&hash)
            && r.data.as_ref().map(|d| &d.0) == Some(&data)
    }) {
        return Ok(existing.clone());
    }
    let next = owned.iter().map(|r| r.revision).max().unwrap_or(0) + 1;
    let mut labels = labels;
    labels.insert(HASH_LABEL.into(), hash.clone());
    let rev = ControllerRevision {
        metadata: ObjectMeta {
            name: Some(format!("{set_name}-{hash}")),
            namespace: api_namespace(owned),
            labels: Some(labels),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        data: Some(RawExtension(data)),
        revision: next,
    };
    match api.create(&PostParams::default(), &rev).await {
        Ok(r) => Ok(r),
        // Created by an earlier pass the cache has not shown yet.
        Err(e) if is_status(&e, 409) => Ok(api.get(&format!("{set_name}-{hash}")).await?),
        Err(e) => Err(e.into()),
    }
}

fn api_namespace(owned: &[ControllerRevision]) -> Option<String> {
    owned.first().and_then(|r| r.metadata.namespace.clone())
}

/// Deletes the oldest revisions beyond `limit` whose hash no live pod carries.
pub async fn truncate(
    api: &Api<ControllerRevision>,
    owned: &[ControllerRevision],
    in_use: &HashSet<String>,
    limit: i32,
) -> Result<(), ControllerError> {
    let mut unused: Vec<&ControllerRevision> = owned
        .iter()
        .filter(|r| {
            let name = r.metadata.name.clone().unwrap_or_default();
            let hash = r
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(HASH_LABEL))
                .cloned()
                .unwrap_or_default();
            !in_use.contains(&name) && !in_use.contains(&hash)
        })
        .collect();
    let excess = unused.len() as i64 - i64::from(limit.max(0));
    if excess <= 0 {
        return Ok(());
    }
    unused.sort_by_key(|r| r.revision);
    for r in unused.into_iter().take(excess as usize) {
        let name = r.metadata.name.clone().unwrap_or_default();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
