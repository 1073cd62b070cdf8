//! The writes controllers share: create/delete tolerant of races, finalizer removal
//! under a resourceVersion precondition, and the error policy.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use serde_json::json;

use crate::ControllerError;

/// The field manager our writes are recorded under.
pub const MANAGER: &str = "kube-controller-manager";

pub fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Deletes a pod; already gone is success.
pub async fn delete_pod(api: &Api<Pod>, name: &str) -> Result<(), ControllerError> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub async fn create_pod(api: &Api<Pod>, pod: &Pod) -> Result<Pod, kube::Error> {
    api.create(&PostParams::default(), pod).await
}

/// Removes `finalizer` from the pod, guarded by the cached resourceVersion (a
/// conflict means the cache is stale: the caller requeues). A pod already gone or
/// without the finalizer is fine.
pub async fn remove_finalizer(
    api: &Api<Pod>,
    pod: &Pod,
    finalizer: &str,
) -> Result<(), ControllerError> {
    let Some(fins) = pod.metadata.finalizers.as_ref() else {
        return Ok(());
    };
    if !fins.iter().any(|f| f == finalizer) {
        return Ok(());
    }
    let rest: Vec<&String> = fins.iter().filter(|f| *f != finalizer).collect();
    let patch = json!({"metadata": {
        "finalizers": rest,
        "resourceVersion": pod.metadata.resource_version,
    }});
    let name = pod.metadata.name.as_deref().unwrap_or("");
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Requeue after a failed reconcile: conflicts quickly, other errors with a pause.
pub fn error_policy<K, C>(_obj: Arc<K>, err: &ControllerError, _ctx: Arc<C>) -> Action {
    match err {
        ControllerError::Api(e) if is_status(e, 409) => Action::requeue(Duration::from_millis(200)),
        _ => {
            tracing::warn!(error = %err, "reconcile failed; retrying");
            Action::requeue(Duration::from_secs(2))
        }
    }
}
