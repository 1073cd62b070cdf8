//! Per-kind rules applied on create and update (upstream's `RESTCreateStrategy` and
//! `RESTUpdateStrategy`): what the server sets, what a client may not change, and
//! validation. Pure functions over JSON; the handlers do the I/O.

use base64::Engine;
use chrono::{SecondsFormat, Utc};
use rand::Rng;
use serde_json::{json, Map, Value};

use kelp_api::registry::ResourceInfo;
use kelp_api::validation::{self, FieldError};
use kelp_api::{builtin, defaults};

use crate::error::{ApiError, ApiResult};

pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

pub fn meta(v: &Value) -> Option<&Map<String, Value>> {
    v.get("metadata").and_then(Value::as_object)
}

pub fn meta_mut(v: &mut Value) -> &mut Map<String, Value> {
    if !v.get("metadata").is_some_and(Value::is_object) {
        if let Some(o) = v.as_object_mut() {
            o.insert("metadata".into(), json!({}));
        }
    }
    v.get_mut("metadata")
        .and_then(Value::as_object_mut)
        .expect("metadata is an object")
}

pub fn meta_str<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    meta(v).and_then(|m| m.get(field)).and_then(Value::as_str)
}

/// Kinds whose objects carry `metadata.generation` (those with a spec).
fn has_generation(info: &ResourceInfo) -> bool {
    !matches!(
        info.gvk.kind.as_str(),
        "ConfigMap"
            | "Secret"
            | "ServiceAccount"
            | "Endpoints"
            | "EndpointSlice"
            | "Event"
            | "Lease"
    )
}

const GENERATE_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn generated_suffix() -> String {
    let mut rng = rand::rng();
    (0..5)
        .map(|_| GENERATE_CHARS[rng.random_range(0..GENERATE_CHARS.len())] as char)
        .collect()
}

/// Checks that the body's kind/apiVersion (if given) are the resource's, and sets them.
pub fn check_type(info: &ResourceInfo, obj: &mut Value) -> ApiResult<()> {
    check_kind(info, obj)?;
    let o = obj.as_object_mut().expect("checked: an object");
    o.insert("apiVersion".into(), json!(info.gvk.api_version()));
    o.insert("kind".into(), json!(info.gvk.kind));
    Ok(())
}

/// The checks of [`check_type`] without filling in the type.
pub fn check_kind(info: &ResourceInfo, obj: &Value) -> ApiResult<()> {
    let Some(o) = obj.as_object() else {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    };
    let want_av = info.gvk.api_version();
    let kind = o.get("kind").and_then(Value::as_str).unwrap_or("");
    let av = o.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if !kind.is_empty() && kind != info.gvk.kind {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            info.gvk.kind
        )));
    }
    if !av.is_empty() && av != want_av {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({want_av})"
        )));
    }
    Ok(())
}

/// Server-set fields and defaults for a new object (upstream `PrepareForCreate` +
/// `BeforeCreate` + defaulting), then validation.
pub fn prepare_create(
    info: &ResourceInfo,
    namespace: Option<&str>,
    obj: &mut Value,
) -> ApiResult<()> {
    check_type(info, obj)?;
    {
        let m = meta_mut(obj);
        if info.namespaced {
            match (m.get("namespace").and_then(Value::as_str), namespace) {
                (Some(body_ns), Some(url_ns)) if !body_ns.is_empty() && body_ns != url_ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {}
            }
            if let Some(ns) = namespace {
                m.insert("namespace".into(), json!(ns));
            }
        } else {
            m.remove("namespace");
        }
        let name = m
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() {
            if let Some(prefix) = m
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty())
            {
                let prefix = if prefix.len() > 58 {
                    &prefix[..58]
                } else {
                    prefix
                };
                let generated = format!("{prefix}{}", generated_suffix());
                m.insert("name".into(), json!(generated));
            }
        }
        m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        m.insert("creationTimestamp".into(), json!(now_rfc3339()));
        m.remove("resourceVersion");
        m.remove("deletionTimestamp");
        m.remove("deletionGracePeriodSeconds");
        m.remove("selfLink");
        if has_generation(info) {
            m.insert("generation".into(), json!(1));
        } else {
            m.remove("generation");
        }
    }
    reset_status_on_create(info, obj);
    if info.gvk.group == "batch" && info.gvk.kind == "Job" {
        generate_job_selector(obj);
    }
    normalize(info, obj)?;
    defaults::apply(&info.gvk, obj);
    if info.gvk.group.is_empty() && info.gvk.kind == "Pod" {
        let qos = obj
            .get("spec")
            .map(defaults::pod_qos_class)
            .unwrap_or("BestEffort");
        if let Some(s) = obj.get_mut("status").and_then(Value::as_object_mut) {
            s.insert("qosClass".into(), json!(qos));
        }
    }
    validate(info, obj, None)
}

/// Upstream's job strategy `generateSelector`: unless `spec.manualSelector` is true,
/// the selector is the job's uid and the template carries the matching labels (the
/// `batch.kubernetes.io/` ones and their legacy short forms).
fn generate_job_selector(obj: &mut Value) {
    if obj.pointer("/spec/manualSelector") == Some(&json!(true)) {
        return;
    }
    let uid = meta_str(obj, "uid").unwrap_or("").to_string();
    let name = meta_str(obj, "name").unwrap_or("").to_string();
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    spec.insert(
        "selector".into(),
        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
    );
    let Some(tpl) = spec.get_mut("template").and_then(Value::as_object_mut) else {
        return;
    };
    let tm = tpl.entry("metadata").or_insert_with(|| json!({}));
    if !tm.is_object() {
        *tm = json!({});
    }
    let labels = tm
        .as_object_mut()
        .expect("object")
        .entry("labels")
        .or_insert_with(|| json!({}));
    if !labels.is_object() {
        *labels = json!({});
    }
    let l = labels.as_object_mut().expect("object");
    l.insert("batch.kubernetes.io/controller-uid".into(), json!(uid));
    l.insert("batch.kubernetes.io/job-name".into(), json!(name));
    l.insert("controller-uid".into(), json!(uid));
    l.insert("job-name".into(), json!(name));
}

fn reset_status_on_create(info: &ResourceInfo, obj: &mut Value) {
    let Some(o) = obj.as_object_mut() else { return };
    match (info.gvk.group.as_str(), info.gvk.kind.as_str()) {
        ("", "Pod") => {
            o.insert("status".into(), json!({"phase": "Pending"}));
        }
        ("", "Namespace") => {
            o.insert("status".into(), json!({"phase": "Active"}));
        }
        ("", "Node") => {
            // Kubelets register nodes with their status; keep what they send.
        }
        ("", "Service") => {
            o.insert("status".into(), json!({"loadBalancer": {}}));
        }
        _ if info.has_subresource("status") => {
            o.insert("status".into(), json!({}));
        }
        _ => {}
    }
}

/// Conversions every write goes through (Secret `stringData` folds into `data`;
/// namespaces always carry the immutable `kubernetes.io/metadata.name` label).
fn normalize(info: &ResourceInfo, obj: &mut Value) -> ApiResult<()> {
    if info.gvk.group.is_empty() && info.gvk.kind == "Namespace" {
        if let Some(name) = meta_str(obj, "name").map(str::to_string) {
            let m = meta_mut(obj);
            let labels = m.entry("labels").or_insert_with(|| json!({}));
            if !labels.is_object() {
                *labels = json!({});
            }
            if let Some(l) = labels.as_object_mut() {
                l.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
        }
    }
    if info.gvk.group.is_empty() && info.gvk.kind == "Secret" {
        if let Some(Value::Object(sd)) = obj.as_object_mut().and_then(|o| o.remove("stringData")) {
            let o = obj.as_object_mut().expect("checked object");
            let data = o.entry("data").or_insert_with(|| json!({}));
            if data.is_null() {
                *data = json!({});
            }
            if let Some(data) = data.as_object_mut() {
                for (k, v) in sd {
                    let s = v.as_str().unwrap_or("").to_string();
                    data.insert(
                        k,
                        json!(base64::engine::general_purpose::STANDARD.encode(s)),
                    );
                }
            }
        }
        if let Some(Value::Object(data)) = obj.get("data") {
            for (k, v) in data {
                let ok = v
                    .as_str()
                    .is_some_and(|s| base64::engine::general_purpose::STANDARD.decode(s).is_ok());
                if !ok {
                    return Err(ApiError::bad_request(format!(
                        "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at input byte 0 (data[{k}])"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Upstream's update rules: immutable metadata, status/spec separation between the
/// main resource and `/status`, generation bumps on spec changes, then validation.
pub fn prepare_update(
    info: &ResourceInfo,
    sub: Option<&str>,
    old: &Value,
    new: Value,
) -> ApiResult<Value> {
    let mut new = new;
    check_type(info, &mut new)?;
    let mut result = match sub {
        Some("status") => {
            // Only status changes through /status.
            let mut r = old.clone();
            if let (Some(o), Some(st)) = (r.as_object_mut(), new.get("status")) {
                o.insert("status".into(), st.clone());
            }
            r
        }
        Some("binding") => {
            // The node, the PodScheduled condition and binding annotations only.
            let mut r = old.clone();
            r["spec"]["nodeName"] = new
                .pointer("/spec/nodeName")
                .cloned()
                .unwrap_or(Value::Null);
            r["status"] = new.get("status").cloned().unwrap_or(json!({}));
            if let Some(a) = new.pointer("/metadata/annotations") {
                r["metadata"]["annotations"] = a.clone();
            }
            r
        }
        Some("finalize") => {
            let mut r = old.clone();
            r["spec"]["finalizers"] = new
                .pointer("/spec/finalizers")
                .cloned()
                .unwrap_or(json!([]));
            r
        }
        _ => {
            if info.has_subresource("status") {
                if let Some(o) = new.as_object_mut() {
                    match old.get("status") {
                        Some(st) => {
                            o.insert("status".into(), st.clone());
                        }
                        None => {
                            o.remove("status");
                        }
                    }
                }
            }
            new
        }
    };
    // Immutable metadata.
    if let (Some(om), Some(nm)) = (
        meta(old).cloned(),
        result.get_mut("metadata").and_then(Value::as_object_mut),
    ) {
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "namespace",
            "name",
        ] {
            match om.get(f) {
                Some(v) => {
                    nm.insert(f.into(), v.clone());
                }
                None => {
                    nm.remove(f);
                }
            }
        }
        if has_generation(info) {
            let gen = om.get("generation").and_then(Value::as_i64).unwrap_or(1);
            nm.insert("generation".into(), json!(gen));
        } else {
            nm.remove("generation");
        }
    }
    normalize(info, &mut result)?;
    defaults::apply(&info.gvk, &mut result);
    if has_generation(info) && sub.is_none() && old.get("spec") != result.get("spec") {
        let gen = meta(old)
            .and_then(|m| m.get("generation"))
            .and_then(Value::as_i64)
            .unwrap_or(1);
        meta_mut(&mut result).insert("generation".into(), json!(gen + 1));
    }
    validate(info, &result, Some(old))?;
    Ok(result)
}

fn validate(info: &ResourceInfo, obj: &Value, old: Option<&Value>) -> ApiResult<()> {
    let mut errs: Vec<FieldError> = Vec::new();
    if let Some(m) = meta(obj) {
        errs.extend(validation::validate_object_meta(
            &info.gvk,
            m,
            info.namespaced,
        ));
    } else {
        errs.push(FieldError::required("metadata.name"));
    }
    errs.extend(validation::validate(&info.gvk, obj));
    if let Some(old) = old {
        errs.extend(immutable_fields(info, old, obj));
    }
    if errs.is_empty() {
        Ok(())
    } else {
        let name = meta_str(obj, "name").unwrap_or("").to_string();
        Err(ApiError::invalid(
            &info.gvk.group,
            &info.gvk.kind,
            &name,
            &errs,
        ))
    }
}

fn immutable_fields(info: &ResourceInfo, old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match (info.gvk.group.as_str(), info.gvk.kind.as_str()) {
        ("apps", _)
            if old.pointer("/spec/selector") != new.pointer("/spec/selector")
                && info.gvk.kind != "ControllerRevision" =>
        {
            errs.push(FieldError::immutable(
                "spec.selector",
                new.pointer("/spec/selector").unwrap_or(&Value::Null),
            ));
        }
        ("", "Pod") => {
            // Only images, activeDeadlineSeconds, tolerations (additions) and the
            // grace period may change on a pod's spec.
            let strip = |v: &Value| {
                let mut s = v.get("spec").cloned().unwrap_or(Value::Null);
                for f in ["containers", "initContainers"] {
                    if let Some(Value::Array(cs)) = s.get_mut(f) {
                        for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                            c.remove("image");
                        }
                    }
                }
                if let Some(o) = s.as_object_mut() {
                    o.remove("activeDeadlineSeconds");
                    o.remove("tolerations");
                    o.remove("terminationGracePeriodSeconds");
                    // Binding sets nodeName once.
                    if old.pointer("/spec/nodeName").is_none() {
                        o.remove("nodeName");
                    }
                }
                s
            };
            if strip(old) != strip(new) {
                errs.push(FieldError::forbidden(
                    "spec",
                    "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                ));
            }
        }
        ("batch", "Job") if old.pointer("/spec/template") != new.pointer("/spec/template") => {
            errs.push(FieldError::immutable(
                "spec.template",
                new.pointer("/spec/template").unwrap_or(&Value::Null),
            ));
        }
        ("", "Service") => {
            let oc = old
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .unwrap_or("");
            let nc = new
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .unwrap_or("");
            if !oc.is_empty() && oc != nc {
                errs.push(FieldError::immutable("spec.clusterIP", &json!(nc)));
            }
        }
        _ => {}
    }
    if builtin::is_virtual(info) {
        errs.clear();
    }
    errs
}

/// Ignoring `resourceVersion` and `managedFields` timestamps, are the two the same
/// object? Unchanged writes are skipped, as upstream does.
pub fn unchanged(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
            if let Some(Value::Array(mf)) = m.get_mut("managedFields") {
                for e in mf.iter_mut().filter_map(Value::as_object_mut) {
                    e.remove("time");
                }
            }
        }
        v
    };
    strip(old) == strip(new)
}
