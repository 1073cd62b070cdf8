//! POST `pods/{name}/eviction` (upstream `pkg/registry/core/pod/storage/eviction.go`):
//! deletes the pod unless that would violate its PodDisruptionBudget. A pod that is
//! already terminal, pending or being deleted goes without a budget check; otherwise
//! the single matching budget must allow a disruption, which is taken (one less
//! `disruptionsAllowed`, the pod recorded in `disruptedPods`) before the delete. A
//! budget that forbids it answers 429 as upstream does, and `kubectl drain` retries.

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{json, Value};

use kelp_api::selector::LabelSelector;

use crate::app::App;
use crate::error::{ApiError, ApiResult};
use crate::objects::list_prefix;
use crate::request::{content_type, decode_as, Query, Target};
use crate::rest::{delete_object, guaranteed_update, json_response, read, DeleteOptions};
use crate::strategy::now_rfc3339;

const VIOLATION: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

fn too_many_requests(cause: String) -> ApiError {
    ApiError::new(429, "TooManyRequests", VIOLATION).with_details(json!({
        "causes": [{"reason": "DisruptionBudget", "message": cause}]
    }))
}

/// Upstream `canIgnorePDB`.
fn can_ignore_pdb(pod: &Value) -> bool {
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("Pending");
    matches!(phase, "Succeeded" | "Failed" | "Pending")
        || pod.pointer("/metadata/deletionTimestamp").is_some()
}

fn is_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Ready")
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

fn i64_at(v: &Value, p: &str) -> i64 {
    v.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}

pub async fn evict(
    app: &App,
    t: &Target,
    q: &Query,
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult<Response> {
    let name = t.name.clone().unwrap_or_default();
    let ns = t.namespace.clone().unwrap_or_default();
    let eviction = decode_as(&content_type(headers), body)?;
    if let Some(n) = eviction.pointer("/metadata/name").and_then(Value::as_str) {
        if !n.is_empty() && n != name {
            return Err(ApiError::bad_request(format!(
                "name in URL does not match name in Eviction object ({name} vs {n})"
            )));
        }
    }
    let delete_body = eviction
        .get("deleteOptions")
        .filter(|v| !v.is_null())
        .map(|v| Bytes::from(serde_json::to_vec(v).unwrap_or_default()))
        .unwrap_or_default();
    let opts = DeleteOptions::parse(q, &delete_body)?;
    let (pod, _) = read(app, &t.info, Some(&ns), &name).await?;

    if !can_ignore_pdb(&pod) {
        take_disruption(app, &ns, &name, &pod, q).await?;
    }
    if !q.dry_run() {
        if pod.pointer("/metadata/deletionTimestamp").is_none() {
            mark_disruption_target(app, t, &ns, &name, q).await?;
        }
        delete_object(app, &t.info, Some(&ns), &name, &opts).await?;
    }
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

/// Upstream (PodDisruptionConditions): the pod learns why it goes before it is
/// deleted, so a Job's podFailurePolicy can match `DisruptionTarget`.
async fn mark_disruption_target(
    app: &App,
    t: &Target,
    ns: &str,
    name: &str,
    q: &Query,
) -> ApiResult<()> {
    let mut mutate = |current: &Value| -> ApiResult<Value> {
        let mut next = current.clone();
        let mut conds: Vec<Value> = next["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.get("type").and_then(Value::as_str) != Some("DisruptionTarget"))
            .collect();
        conds.push(json!({
            "type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
            "message": "Eviction API: evicting", "lastProbeTime": null,
            "lastTransitionTime": now_rfc3339(),
        }));
        next["status"]["conditions"] = json!(conds);
        if let Some(m) = next.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        Ok(next)
    };
    guaranteed_update(
        app,
        &t.info,
        Some(ns),
        name,
        Some("status"),
        q,
        Some("kube-apiserver"),
        &mut mutate,
    )
    .await?;
    Ok(())
}

/// Checks the pod's budget and records the disruption (upstream `checkAndDecrement`).
async fn take_disruption(
    app: &App,
    ns: &str,
    pod_name: &str,
    pod: &Value,
    q: &Query,
) -> ApiResult<()> {
    let Some(info) = app.registry.get("policy", "v1", "poddisruptionbudgets") else {
        return Ok(());
    };
    let labels = pod.pointer("/metadata/labels").and_then(Value::as_object);
    let (items, _) = app.cache.list(&list_prefix(&info, Some(ns))).await;
    let matching: Vec<String> = items
        .iter()
        .filter(|i| {
            let sel = i
                .value
                .pointer("/spec/selector")
                .cloned()
                .unwrap_or(Value::Null);
            LabelSelector::from_label_selector_json(&sel)
                .map(|s| s.matches_value(labels))
                .unwrap_or(false)
        })
        .filter_map(|i| {
            i.value
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect();
    let pdb_name = match matching.as_slice() {
        [] => return Ok(()),
        [one] => one.clone(),
        _ => {
            return Err(ApiError::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ))
        }
    };
    let ready = is_ready(pod);
    let mut mutate = |current: &Value| -> ApiResult<Value> {
        let healthy = i64_at(current, "/status/currentHealthy");
        let desired = i64_at(current, "/status/desiredHealthy");
        // An unready pod may go while the budget is met (IfHealthyBudget, the
        // default unhealthyPodEvictionPolicy): nothing to take.
        if !ready && healthy >= desired && desired > 0 {
            return Ok(current.clone());
        }
        if i64_at(current, "/status/observedGeneration") < i64_at(current, "/metadata/generation") {
            return Err(too_many_requests(format!(
                "The disruption budget {pdb_name} is still being processed by the server."
            )));
        }
        let allowed = i64_at(current, "/status/disruptionsAllowed");
        if allowed < 0 {
            return Err(ApiError::forbidden("pdb disruptions allowed is negative"));
        }
        let disrupted = current
            .pointer("/status/disruptedPods")
            .and_then(Value::as_object)
            .map(|m| m.len())
            .unwrap_or(0);
        if disrupted > 2000 {
            return Err(ApiError::forbidden(
                "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
            ));
        }
        if allowed == 0 {
            return Err(too_many_requests(format!(
                "The disruption budget {pdb_name} needs {desired} healthy pods and has {healthy} currently"
            )));
        }
        let mut next = current.clone();
        next["status"]["disruptionsAllowed"] = json!(allowed - 1);
        if !next["status"]["disruptedPods"].is_object() {
            next["status"]["disruptedPods"] = json!({});
        }
        next["status"]["disruptedPods"][pod_name] = json!(now_rfc3339());
        if allowed - 1 == 0 {
            let mut conds: Vec<Value> = next["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|c| c.get("type").and_then(Value::as_str) != Some("DisruptionAllowed"))
                .collect();
            conds.push(json!({
                "type": "DisruptionAllowed", "status": "False", "reason": "InsufficientPods",
                "message": "", "lastTransitionTime": now_rfc3339(),
                "observedGeneration": i64_at(current, "/metadata/generation"),
            }));
            next["status"]["conditions"] = json!(conds);
        }
        if let Some(m) = next.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        Ok(next)
    };
    guaranteed_update(
        app,
        &info,
        Some(ns),
        &pdb_name.clone(),
        Some("status"),
        q,
        Some("kube-apiserver"),
        &mut mutate,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_pods_skip_the_budget() {
        assert!(can_ignore_pdb(&json!({"status": {"phase": "Succeeded"}})));
        assert!(can_ignore_pdb(&json!({"status": {"phase": "Pending"}})));
        assert!(can_ignore_pdb(
            &json!({"metadata": {"deletionTimestamp": "x"}, "status": {"phase": "Running"}})
        ));
        assert!(!can_ignore_pdb(&json!({"status": {"phase": "Running"}})));
        let e = too_many_requests(
            "The disruption budget b needs 2 healthy pods and has 2 currently".into(),
        );
        assert_eq!(e.code, 429);
        assert_eq!(e.message, VIOLATION);
    }
}
