//! Patch strategies, all pure functions over `serde_json::Value`:
//!
//! * [`json_patch`]: RFC 6902 (`application/json-patch+json`), via the `json-patch` crate.
//! * [`merge_patch`]: RFC 7386 (`application/merge-patch+json`): `null` deletes, maps
//!   merge, everything else (lists included) replaces.
//! * [`strategic_merge_patch`]: Kubernetes strategic merge patch for built-in kinds
//!   (`application/strategic-merge-patch+json`): maps merge; lists with a patch merge
//!   key merge by key; primitive lists with `patchStrategy: merge` merge as sets; other
//!   lists replace. Directives: `$patch: delete|replace|merge` (maps and list items,
//!   and a bare `{"$patch": "replace"}` item for a whole list), `$setElementOrder/<f>`,
//!   `$retainKeys`, `$deleteFromPrimitiveList/<f>`; `null` deletes a key.
//! * [`apply`] / [`apply_at`]: server-side apply with field ownership recorded in
//!   `metadata.managedFields` (FieldsV1), and [`record_update`] for ordinary writes.
//!
//! Merge keys come from a table generated from k8s-openapi 0.29 (Kubernetes 1.33), so
//! they follow the field *path* within each kind (container `ports` merge on
//! `containerPort`, Service `spec.ports` on `port`, pod templates inside Deployment,
//! ReplicaSet, DaemonSet, StatefulSet, Job, CronJob and PodTemplate use the PodSpec
//! rules). Kinds the table does not know (custom kinds) get plain merge semantics with
//! `metadata.finalizers`/`ownerReferences` still merged like ObjectMeta.
//!
//! Limits (documented simplifications of upstream behaviour):
//! * Strategic merge patch never rejects a patch for touching keys outside
//!   `$retainKeys`, and `$patch: merge` on a map is accepted as a no-op. Where a list is
//!   `x-kubernetes-list-type: map` without a `patchStrategy` (e.g. container
//!   `resources.claims`) it merges by key instead of replacing.
//! * Apply: no schema-driven defaulting or conversion of the applied configuration
//!   (one version per kind); keyed list items are identified by the list-map keys
//!   present in each item (container ports by `containerPort` and, when given,
//!   `protocol`); granular maps inside atomic lists are not tracked; `status` is never
//!   tracked (no status subresource apply); ownership is per leaf field, keyed item
//!   and set value, without the `.` self-membership of maps upstream records for
//!   Update operations. Objects without managedFields are owned by
//!   `before-first-apply` (operation Update), as upstream.

mod apply;
mod schema;
mod schema_table;
mod strategic;

use serde_json::{Map, Value};

use crate::registry::GroupVersionKind;

pub use apply::{
    apply, apply_at, conflict_message, managers, now_rfc3339, owned_fields, record_update,
    ApplyError, ApplyOutcome, Conflict, BEFORE_FIRST_APPLY,
};
pub use schema::{list_strategy, ListStrategy};

/// Why a patch failed; the message is meant for a `metav1.Status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The patch document is malformed (answer 400 `BadRequest`).
    #[error("{0}")]
    Invalid(String),
    /// The patch is well-formed but cannot be applied to this object (answer 422
    /// `Invalid`), e.g. a failed JSON patch `test` or a missing path.
    #[error("{0}")]
    Failed(String),
}

impl PatchError {
    /// The HTTP status code upstream answers with.
    pub fn code(&self) -> u16 {
        match self {
            PatchError::Invalid(_) => 400,
            PatchError::Failed(_) => 422,
        }
    }
}

/// A patch body: raw bytes, a string, or an already decoded JSON value.
pub trait PatchInput {
    fn to_patch_value(&self) -> Result<Value, PatchError>;
}

impl PatchInput for Value {
    fn to_patch_value(&self) -> Result<Value, PatchError> {
        Ok(self.clone())
    }
}

impl PatchInput for [u8] {
    fn to_patch_value(&self) -> Result<Value, PatchError> {
        serde_json::from_slice(self)
            .map_err(|e| PatchError::Invalid(format!("error decoding patch: {e}")))
    }
}

impl PatchInput for Vec<u8> {
    fn to_patch_value(&self) -> Result<Value, PatchError> {
        self.as_slice().to_patch_value()
    }
}

impl PatchInput for str {
    fn to_patch_value(&self) -> Result<Value, PatchError> {
        self.as_bytes().to_patch_value()
    }
}

impl PatchInput for String {
    fn to_patch_value(&self) -> Result<Value, PatchError> {
        self.as_bytes().to_patch_value()
    }
}

/// RFC 6902 JSON patch. `patch` is the body (bytes or a decoded value).
pub fn json_patch<P: PatchInput + ?Sized>(target: &Value, patch: &P) -> Result<Value, PatchError> {
    let patch = patch.to_patch_value()?;
    if !patch.is_array() {
        return Err(PatchError::Invalid(
            "error decoding patch: a JSON patch must be a list of operations".into(),
        ));
    }
    let ops: json_patch::Patch = serde_json::from_value(patch)
        .map_err(|e| PatchError::Invalid(format!("error decoding patch: {e}")))?;
    let mut doc = target.clone();
    json_patch::patch(&mut doc, &ops).map_err(|e| PatchError::Failed(e.to_string()))?;
    Ok(doc)
}

/// RFC 7386 JSON merge patch. Kubernetes objects are maps, so the patch must be one.
pub fn merge_patch<P: PatchInput + ?Sized>(target: &Value, patch: &P) -> Result<Value, PatchError> {
    let patch = patch.to_patch_value()?;
    if !patch.is_object() {
        return Err(PatchError::Invalid(
            "error decoding patch: a merge patch must be a JSON object".into(),
        ));
    }
    Ok(merge_value(target, &patch))
}

/// RFC 7386 `MergePatch(Target, Patch)`, keeping the target's key order.
fn merge_value(target: &Value, patch: &Value) -> Value {
    let Value::Object(pm) = patch else {
        return patch.clone();
    };
    let mut out: Map<String, Value> = target.as_object().cloned().unwrap_or_default();
    for (k, pv) in pm {
        if pv.is_null() {
            out.shift_remove(k);
        } else {
            let merged = merge_value(out.get(k).unwrap_or(&Value::Null), pv);
            out.insert(k.clone(), merged);
        }
    }
    Value::Object(out)
}

/// Kubernetes strategic merge patch of `target` (an object of kind `gvk`).
pub fn strategic_merge_patch<P: PatchInput + ?Sized>(
    target: &Value,
    patch: &P,
    gvk: &GroupVersionKind,
) -> Result<Value, PatchError> {
    let patch = patch.to_patch_value()?;
    let Value::Object(pm) = &patch else {
        return Err(PatchError::Invalid(
            "error decoding patch: a strategic merge patch must be a JSON object".into(),
        ));
    };
    strategic::merge_map(target, pm, schema::Ty::root(gvk))
}

/// Built-in kinds accept strategic merge patch; other kinds answer 415, as upstream
/// does for custom resources.
pub fn supports_strategic(gvk: &GroupVersionKind) -> bool {
    matches!(
        gvk.group.as_str(),
        "" | "apps"
            | "batch"
            | "policy"
            | "coordination.k8s.io"
            | "node.k8s.io"
            | "discovery.k8s.io"
            | "events.k8s.io"
            | "autoscaling"
            | "networking.k8s.io"
            | "rbac.authorization.k8s.io"
            | "storage.k8s.io"
            | "scheduling.k8s.io"
            | "admissionregistration.k8s.io"
            | "apiextensions.k8s.io"
            | "apiregistration.k8s.io"
            | "certificates.k8s.io"
            | "flowcontrol.apiserver.k8s.io"
            | "resource.k8s.io"
            | "authentication.k8s.io"
            | "authorization.k8s.io"
    )
}

#[cfg(test)]
mod tests;
