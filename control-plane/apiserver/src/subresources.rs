//! Subresources with their own shapes: `scale` (autoscaling/v1 Scale over a workload's
//! replicas), `pods/binding` (the scheduler's assignment) and `namespaces/finalize`.

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{json, Value};

use kelp_api::patch;
use kelp_api::registry::ResourceInfo;
use kelp_api::table::selector_string;

use crate::app::App;
use crate::error::{ApiError, ApiResult};
use crate::request::{content_type, decode_as, Query, Target};
use crate::rest::{guaranteed_update, json_response, read};
use crate::strategy::now_rfc3339;

/// The Scale view of a workload.
pub fn scale_of(info: &ResourceInfo, obj: &Value) -> Value {
    let m = obj.get("metadata").cloned().unwrap_or(json!({}));
    let mut meta = json!({});
    for f in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = m.get(f) {
            meta[f] = v.clone();
        }
    }
    let _ = info;
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": meta,
        "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0)},
        "status": {
            "replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": selector_string(obj.pointer("/spec/selector")),
        },
    })
}

pub async fn get_scale(app: &App, t: &Target) -> ApiResult<Response> {
    let name = t.name.as_deref().unwrap_or("");
    let (obj, _) = read(app, &t.info, t.namespace.as_deref(), name).await?;
    Ok(json_response(StatusCode::OK, &scale_of(&t.info, &obj)))
}

/// PUT or PATCH of `/scale`: the new Scale's `spec.replicas` goes to the workload.
pub async fn write_scale(
    app: &App,
    t: &Target,
    q: &Query,
    headers: &HeaderMap,
    body: &Bytes,
    is_patch: bool,
) -> ApiResult<Response> {
    let name = t.name.clone().unwrap_or_default();
    let ct = content_type(headers);
    let patch_value: Value = if is_patch {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?
    } else {
        decode_as(&ct, body)?
    };
    let info = t.info.clone();
    let mut mutate = |current: &Value| -> ApiResult<Value> {
        let scale = scale_of(&info, current);
        let new_scale = if is_patch {
            let mut base = scale.clone();
            if let Some(m) = base.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            match ct.as_str() {
                "application/json-patch+json" => patch::json_patch(&base, &patch_value),
                _ => patch::merge_patch(&base, &patch_value),
            }
            .map_err(|e| match e.code() {
                400 => ApiError::bad_request(e.to_string()),
                _ => ApiError::new(422, "Invalid", e.to_string()),
            })?
        } else {
            patch_value.clone()
        };
        let replicas = new_scale
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if replicas < 0 {
            return Err(ApiError::invalid(
                "autoscaling",
                "Scale",
                &name,
                &[kelp_api::validation::FieldError::invalid(
                    "spec.replicas",
                    &json!(replicas),
                    "must be greater than or equal to 0",
                )],
            ));
        }
        let mut next = current.clone();
        next["spec"]["replicas"] = json!(replicas);
        // A Scale's resourceVersion is the workload's: a precondition when set.
        match new_scale
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
        {
            Some(rv) if !rv.is_empty() => next["metadata"]["resourceVersion"] = json!(rv),
            _ => {
                if let Some(m) = next.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
            }
        }
        Ok(next)
    };
    let manager = q.field_manager("kubectl");
    let out = guaranteed_update(
        app,
        &t.info,
        t.namespace.as_deref(),
        &name,
        None,
        q,
        Some(&manager),
        &mut mutate,
    )
    .await?;
    Ok(json_response(StatusCode::OK, &scale_of(&t.info, &out)))
}

/// POST `pods/{name}/binding`: assign the pod to a node, once.
pub async fn bind(
    app: &App,
    t: &Target,
    q: &Query,
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult<Response> {
    let name = t.name.clone().unwrap_or_default();
    let binding = decode_as(&content_type(headers), body)?;
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if node.is_empty() {
        return Err(ApiError::invalid(
            "",
            "Binding",
            &name,
            &[kelp_api::validation::FieldError::required("target.name")],
        ));
    }
    let mut mutate = |current: &Value| -> ApiResult<Value> {
        if current.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::conflict_msg(
                "",
                "pods",
                &name,
                "pod is being deleted, cannot be assigned to a host",
            ));
        }
        if let Some(existing) = current
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            return Err(ApiError::conflict_msg(
                "",
                "pods",
                &name,
                &format!("pod {name} is already assigned to node \"{existing}\""),
            ));
        }
        let mut next = current.clone();
        next["spec"]["nodeName"] = json!(node);
        if let Some(m) = next.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
            if let Some(Value::Object(ann)) = binding.pointer("/metadata/annotations") {
                let a = m.entry("annotations").or_insert_with(|| json!({}));
                if let Some(a) = a.as_object_mut() {
                    for (k, v) in ann {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        // PodScheduled=True, set together with the node as upstream's binding does.
        let conds = next["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut conds: Vec<Value> = conds
            .into_iter()
            .filter(|c| c.get("type") != Some(&json!("PodScheduled")))
            .collect();
        conds.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_rfc3339()}));
        next["status"]["conditions"] = json!(conds);
        Ok(next)
    };
    guaranteed_update(
        app,
        &t.info,
        t.namespace.as_deref(),
        &name,
        Some("binding"),
        q,
        Some("kube-scheduler"),
        &mut mutate,
    )
    .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

/// PUT `namespaces/{name}/finalize`: only `spec.finalizers` changes.
pub async fn finalize(
    app: &App,
    t: &Target,
    q: &Query,
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult<Response> {
    let name = t.name.clone().unwrap_or_default();
    let new = decode_as(&content_type(headers), body)?;
    let fins = new
        .pointer("/spec/finalizers")
        .cloned()
        .unwrap_or(json!([]));
    let mut mutate = |current: &Value| -> ApiResult<Value> {
        let mut next = current.clone();
        next["spec"]["finalizers"] = fins.clone();
        if let Some(m) = next.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        Ok(next)
    };
    let out = guaranteed_update(
        app,
        &t.info,
        None,
        &name,
        Some("finalize"),
        q,
        Some("kelp"),
        &mut mutate,
    )
    .await?;
    Ok(json_response(StatusCode::OK, &out))
}
