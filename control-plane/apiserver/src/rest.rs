//! Generic REST verbs over any registered resource (upstream's generic registry store):
//! get, list, create, update, patch, delete, deletecollection.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};
use tracing::debug;

use kelp_api::registry::ResourceInfo;
use kelp_api::{builtin, patch, typecheck};
use kelp_storage::{ListRequest, WriteOutcome};

use crate::app::App;
use crate::authn::UserInfo;
use crate::error::{ApiError, ApiResult};
use crate::filter::Filter;
use crate::objects::{decode, encode, key, list_prefix};
use crate::request::{decode_as, decode_continue, encode_continue, wants_table, Query, Target};
use crate::service_alloc::ServiceAllocator;
use crate::strategy::{self, meta_str, now_rfc3339};
use crate::table;

/// A JSON response with `code`.
pub fn json_response(code: StatusCode, v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    (
        code,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn bytes_response(code: StatusCode, body: Vec<u8>) -> Response {
    (
        code,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// An object response, as a Table when the client asked for one.
pub fn object_response(
    code: StatusCode,
    info: &ResourceInfo,
    headers: &HeaderMap,
    q: &Query,
    obj: &Value,
) -> Response {
    if wants_table(headers) {
        let t = table::table(info, std::slice::from_ref(obj), q, None, None);
        return json_response(code, &t);
    }
    json_response(code, obj)
}

fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append("Warning", v);
        }
    }
    resp
}

fn name_of(t: &Target) -> ApiResult<&str> {
    t.name
        .as_deref()
        .ok_or_else(|| ApiError::method_not_allowed("a resource name is required"))
}

fn group(info: &ResourceInfo) -> &str {
    &info.gvk.group
}

/// Reads one object from the store (a consistent read).
pub async fn read(
    app: &App,
    info: &ResourceInfo,
    ns: Option<&str>,
    name: &str,
) -> ApiResult<(Value, i64)> {
    let k = key(info, ns, name);
    match app.store.get(&k).await? {
        Some(kv) => {
            let v = decode(&kv)
                .map_err(|e| ApiError::internal(format!("stored object is corrupt: {e}")))?;
            Ok((v, kv.mod_revision))
        }
        None => Err(ApiError::not_found(group(info), &info.plural, name)),
    }
}

pub async fn get(app: &App, t: &Target, q: &Query, headers: &HeaderMap) -> ApiResult<Response> {
    let name = name_of(t)?;
    let (obj, _) = read(app, &t.info, t.namespace.as_deref(), name).await?;
    Ok(object_response(StatusCode::OK, &t.info, headers, q, &obj))
}

/// Strict/Warn field validation and type checking of a body before it is used.
fn check_fields(
    info: &ResourceInfo,
    q: &Query,
    obj: &Value,
    body: Option<&[u8]>,
) -> ApiResult<Vec<String>> {
    strategy::check_kind(info, obj)?;
    if let Err(msg) = typecheck::check_type(&info.gvk, obj) {
        return Err(ApiError::bad_request(msg));
    }
    let mode = q.field_validation();
    if mode == "Ignore" {
        return Ok(vec![]);
    }
    let mut msgs: Vec<String> = body
        .map(kelp_api::duplicates::duplicate_fields)
        .unwrap_or_default()
        .iter()
        .map(|f| format!("duplicate field \"{f}\""))
        .collect();
    if let Some(schema) = info.schema_name.as_deref() {
        let unknown = kelp_api::openapi::unknown_fields(schema, obj);
        msgs.extend(unknown.iter().map(|f| format!("unknown field \"{f}\"")));
    }
    if msgs.is_empty() {
        return Ok(vec![]);
    }
    if mode == "Strict" {
        let kind = &info.gvk.kind;
        return Err(ApiError::bad_request(format!(
            "{kind} in version \"{}\" cannot be handled as a {kind}: strict decoding error: {}",
            info.gvk.version,
            msgs.join(", ")
        )));
    }
    Ok(msgs)
}

/// The raw body when it is JSON, for the duplicate-key check (protobuf cannot repeat
/// a field and YAML decoding already rejects repeated keys).
fn json_body<'a>(ct: &str, body: &'a Bytes) -> Option<&'a [u8]> {
    (ct != "application/vnd.kubernetes.protobuf" && !ct.contains("yaml")).then_some(&body[..])
}

/// Namespace lifecycle admission: no new objects in a missing or terminating namespace.
async fn check_namespace(app: &App, info: &ResourceInfo, ns: Option<&str>) -> ApiResult<()> {
    let Some(ns) = ns.filter(|_| info.namespaced) else {
        return Ok(());
    };
    let nsinfo = app
        .registry
        .get("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("no namespaces"))?;
    let k = key(&nsinfo, None, ns);
    let obj = match app.cache.get(&k).await {
        Some(o) => Some(o.value.clone()),
        None => app.store.get(&k).await?.and_then(|kv| decode(&kv).ok()),
    };
    match obj {
        None => Err(ApiError::not_found("", "namespaces", ns)),
        Some(o) if o.pointer("/metadata/deletionTimestamp").is_some() || o.pointer("/status/phase") == Some(&json!("Terminating")) => {
            Err(ApiError::forbidden(format!(
                "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                info.plural,
                "",
            ))
            .with_details(json!({"name": ns, "kind": info.plural, "causes": [{"reason": "NamespaceTerminating", "message": format!("namespace {ns} is being terminated"), "field": "metadata.namespace"}]})))
        }
        Some(_) => Ok(()),
    }
}

/// Creates an object (POST to a collection).
pub async fn create(
    app: &App,
    t: &Target,
    q: &Query,
    headers: &HeaderMap,
    body: &Bytes,
    user: &UserInfo,
) -> ApiResult<Response> {
    let ct = crate::request::content_type(headers);
    let obj = decode_as(&ct, body)?;
    if builtin::is_virtual(&t.info) {
        return crate::reviews::create(app, &t.info, obj, user).await;
    }
    if t.info.namespaced && t.namespace.is_none() {
        return Err(ApiError::method_not_allowed(format!(
            "POST to all namespaces is not allowed: create {} in a namespace",
            t.info.plural
        )));
    }
    let warnings = check_fields(&t.info, q, &obj, json_body(&ct, body))?;
    let created = create_object(
        app,
        &t.info,
        t.namespace.as_deref(),
        obj,
        q,
        &q.field_manager(default_manager(headers)),
        "Update",
    )
    .await?;
    Ok(with_warnings(
        object_response(StatusCode::CREATED, &t.info, headers, q, &created),
        &warnings,
    ))
}

fn default_manager(headers: &HeaderMap) -> &str {
    // Upstream derives the default manager from the User-Agent's program name.
    headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
}

/// The create pipeline shared by POST and server-side apply.
pub async fn create_object(
    app: &App,
    info: &ResourceInfo,
    ns: Option<&str>,
    mut obj: Value,
    q: &Query,
    manager: &str,
    operation: &str,
) -> ApiResult<Value> {
    strategy::prepare_create(info, ns, &mut obj)?;
    check_namespace(app, info, ns).await?;
    patch::record_update(None, &mut obj, manager, operation, &now_rfc3339());
    let name = meta_str(&obj, "name").unwrap_or("").to_string();
    let held = if is_service(info) {
        app.services.allocate_create(&mut obj, q.dry_run()).await?
    } else {
        Default::default()
    };
    if q.dry_run() {
        return Ok(obj);
    }
    let k = key(info, ns, &name);
    let outcome = app.store.create(&k, encode(&obj)).await;
    if !matches!(outcome, Ok(WriteOutcome::Done(_))) && !held.is_empty() {
        app.services.release(&held).await;
    }
    match outcome? {
        WriteOutcome::Done(kv) => {
            debug!(key = %k, revision = kv.mod_revision, "created");
            Ok(with_revision(obj, kv.mod_revision))
        }
        WriteOutcome::Conflict(_) => {
            Err(ApiError::already_exists(group(info), &info.plural, &name))
        }
    }
}

/// The object as written, with the revision the store gave it (what decoding the
/// stored bytes would give, without decoding them).
fn with_revision(mut obj: Value, revision: i64) -> Value {
    strategy::meta_mut(&mut obj).insert("resourceVersion".into(), json!(revision.to_string()));
    obj
}

fn is_service(info: &ResourceInfo) -> bool {
    info.gvk.group.is_empty() && info.gvk.kind == "Service"
}

/// How an update computes the desired object from the current one.
pub type Mutation<'a> = dyn FnMut(&Value) -> ApiResult<Value> + Send + 'a;

/// The read-modify-write loop (upstream `GuaranteedUpdate`): retries on conflicts
/// unless the caller pinned a resourceVersion; skips unchanged writes; deletes an
/// object whose last finalizer was removed while it was being deleted.
// The loop needs the object's coordinates, the write options and the mutation; a
// struct for them would only move the same eight names elsewhere.
#[allow(clippy::too_many_arguments)]
pub async fn guaranteed_update(
    app: &App,
    info: &ResourceInfo,
    ns: Option<&str>,
    name: &str,
    sub: Option<&str>,
    q: &Query,
    manager: Option<&str>,
    mutate: &mut Mutation<'_>,
) -> ApiResult<Value> {
    let k = key(info, ns, name);
    let service_spec = is_service(info) && sub.is_none();
    // The first attempt starts from the watch cache's copy (upstream's cached existing
    // object): no store read and no decoding. The write is conditional on its revision,
    // so a stale copy only costs a retry from the store; anything a stale copy could
    // decide wrongly without writing (a failed mutation, a pinned resourceVersion, no
    // change) is decided again on the stored object.
    let mut from_cache = !service_spec;
    // The stored object as a conflicting write returned it.
    let mut conflicted: Option<(Value, i64)> = None;
    for _ in 0..64 {
        let cached = if std::mem::take(&mut from_cache) {
            app.cache.get(&k).await
        } else {
            None
        };
        let stale_ok = cached.is_some();
        let (current, rev) = match (cached, conflicted.take()) {
            (Some(o), _) => (o.value.clone(), o.revision),
            (None, Some(f)) => f,
            (None, None) => read(app, info, ns, name).await?,
        };
        let mut desired = match mutate(&current) {
            Ok(d) => d,
            Err(_) if stale_ok => continue,
            Err(e) => return Err(e),
        };
        if service_spec {
            ServiceAllocator::patch_allocated(&current, &mut desired);
        }
        let pinned = meta_str(&desired, "resourceVersion").map(str::to_string);
        if let Some(p) = &pinned {
            if *p != rev.to_string() {
                if stale_ok {
                    continue;
                }
                return Err(ApiError::conflict(group(info), &info.plural, name));
            }
        }
        if let Some(body_name) = meta_str(&desired, "name") {
            if body_name != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                )));
            }
        }
        let mut new = match strategy::prepare_update(info, sub, &current, desired) {
            Ok(n) => n,
            Err(_) if stale_ok => continue,
            Err(e) => return Err(e),
        };
        if let Some(manager) = manager {
            patch::record_update(Some(&current), &mut new, manager, "Update", &now_rfc3339());
        }
        if strategy::unchanged(&current, &new) {
            if stale_ok {
                continue;
            }
            return Ok(current);
        }
        let (fresh, stale) = if service_spec && new.pointer("/metadata/deletionTimestamp").is_none()
        {
            app.services
                .allocate_update(&current, &mut new, q.dry_run())
                .await?
        } else {
            Default::default()
        };
        if q.dry_run() {
            return Ok(new);
        }
        let empty = |p: &str| {
            new.pointer(p)
                .and_then(Value::as_array)
                .is_none_or(|f| f.is_empty())
        };
        let finalizers_empty =
            empty("/metadata/finalizers") && (!is_namespace(info) || empty("/spec/finalizers"));
        if new.pointer("/metadata/deletionTimestamp").is_some()
            && finalizers_empty
            && !graceful_pending(info, &new)
        {
            match app.store.delete(&k, Some(rev)).await? {
                WriteOutcome::Done(kv) => {
                    if is_service(info) {
                        app.services.release(&app.services.held_by(&current)).await;
                    }
                    let mut gone = new;
                    strategy::meta_mut(&mut gone)
                        .insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
                    return Ok(gone);
                }
                WriteOutcome::Conflict(_) if pinned.is_none() => continue,
                WriteOutcome::Conflict(_) => {
                    return Err(ApiError::conflict(group(info), &info.plural, name))
                }
            }
        }
        let outcome = app.store.update(&k, encode(&new), rev).await;
        match &outcome {
            Ok(WriteOutcome::Done(_)) => app.services.release(&stale).await,
            _ => app.services.release(&fresh).await,
        }
        match outcome? {
            WriteOutcome::Done(kv) => return Ok(with_revision(new, kv.mod_revision)),
            WriteOutcome::Conflict(None) => {
                return Err(ApiError::not_found(group(info), &info.plural, name))
            }
            WriteOutcome::Conflict(Some(kv)) if pinned.is_none() => {
                conflicted = decode(&kv).ok().map(|v| (v, kv.mod_revision));
                continue;
            }
            WriteOutcome::Conflict(Some(_)) => {
                return Err(ApiError::conflict(group(info), &info.plural, name))
            }
        }
    }
    Err(ApiError::conflict_msg(
        group(info),
        &info.plural,
        name,
        "too many concurrent updates",
    ))
}

/// A pod being deleted gracefully stays until its kubelet confirms (grace 0).
fn graceful_pending(info: &ResourceInfo, obj: &Value) -> bool {
    is_pod(info)
        && obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty())
        && obj
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            > 0
}

fn is_namespace(info: &ResourceInfo) -> bool {
    info.gvk.group.is_empty() && info.gvk.kind == "Namespace"
}

fn is_pod(info: &ResourceInfo) -> bool {
    info.gvk.group.is_empty() && info.gvk.kind == "Pod"
}

/// PUT: replace an object (or its status).
pub async fn update(
    app: &App,
    t: &Target,
    q: &Query,
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult<Response> {
    let name = name_of(t)?.to_string();
    let ct = crate::request::content_type(headers);
    let obj = decode_as(&ct, body)?;
    let warnings = check_fields(&t.info, q, &obj, json_body(&ct, body))?;
    let manager = q.field_manager(default_manager(headers));
    let mut body_obj = Some(obj);
    let mut mutate = |_: &Value| -> ApiResult<Value> {
        // The body is the desired state; retries (only when unpinned) reuse it.
        Ok(body_obj.clone().unwrap_or(Value::Null))
    };
    let sub = t.subresource.as_deref();
    let out = guaranteed_update(
        app,
        &t.info,
        t.namespace.as_deref(),
        &name,
        sub,
        q,
        Some(&manager),
        &mut mutate,
    )
    .await?;
    body_obj.take();
    Ok(with_warnings(
        object_response(StatusCode::OK, &t.info, headers, q, &out),
        &warnings,
    ))
}

/// PATCH: JSON patch, merge patch, strategic merge patch or server-side apply.
pub async fn patch(
    app: &App,
    t: &Target,
    q: &Query,
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult<Response> {
    let name = name_of(t)?.to_string();
    let ct = crate::request::content_type(headers);
    if body.len() > crate::request::MAX_BODY {
        return Err(ApiError::too_large());
    }
    let info = t.info.clone();
    let ns = t.namespace.clone();
    let sub = t.subresource.clone();
    match ct.as_str() {
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
            return apply(app, t, q, headers, body).await;
        }
        "application/json-patch+json"
        | "application/merge-patch+json"
        | "application/strategic-merge-patch+json" => {}
        other => return Err(ApiError::unsupported_media_type(other)),
    }
    if ct == "application/strategic-merge-patch+json"
        && !kelp_api::patch::supports_strategic(&info.gvk)
    {
        return Err(ApiError::unsupported_media_type(&ct));
    }
    let patch_value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    let manager = q.field_manager(default_manager(headers));
    let mut warnings = Vec::new();
    let mut mutate = |current: &Value| -> ApiResult<Value> {
        let mut base = current.clone();
        // A patch carries a resourceVersion only as a precondition.
        strategy::meta_mut(&mut base).remove("resourceVersion");
        let out = match ct.as_str() {
            "application/json-patch+json" => patch::json_patch(&base, &patch_value),
            "application/merge-patch+json" => patch::merge_patch(&base, &patch_value),
            _ => patch::strategic_merge_patch(&base, &patch_value, &info.gvk),
        }
        .map_err(|e| match e.code() {
            // An undecodable patch document is a bad request; one that fails to apply
            // is invalid (as upstream answers).
            400 => ApiError::bad_request(e.to_string()),
            _ => ApiError::new(422, "Invalid", e.to_string())
                .with_details(json!({"name": name, "kind": info.gvk.kind})),
        })?;
        warnings = check_fields(&info, q, &out, None)?;
        Ok(out)
    };
    let out = guaranteed_update(
        app,
        &info,
        ns.as_deref(),
        &name,
        sub.as_deref(),
        q,
        Some(&manager),
        &mut mutate,
    )
    .await?;
    Ok(with_warnings(
        object_response(StatusCode::OK, &t.info, headers, q, &out),
        &warnings,
    ))
}

/// Server-side apply: creates the object when missing (201), else merges with field
/// ownership; conflicts with other managers are 409 unless `force=true`.
async fn apply(
    app: &App,
    t: &Target,
    q: &Query,
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult<Response> {
    let name = name_of(t)?.to_string();
    let Some(manager) = q.get("fieldManager").map(str::to_string) else {
        return Err(ApiError::bad_request(
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        ));
    };
    let applied = decode_as("application/apply-patch+yaml", body)?;
    let mut applied = applied;
    strategy::check_type(&t.info, &mut applied)?;
    let warnings = check_fields(&t.info, q, &applied, Some(body))?;
    let force = q.flag("force");
    let info = t.info.clone();
    let ns = t.namespace.clone();
    let (current, _) = match read(app, &info, ns.as_deref(), &name).await {
        Ok(x) => (Some(x.0), x.1),
        Err(e) if e.code == 404 => (None, 0),
        Err(e) => return Err(e),
    };
    if current.is_none() {
        let outcome = patch::apply_at(None, &applied, &manager, force, &now_rfc3339())
            .map_err(|e| apply_error(&info, &name, e))?;
        let mut obj = outcome.object;
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("name".into(), json!(name));
        }
        let mf = obj.pointer("/metadata/managedFields").cloned();
        strategy::prepare_create(&info, ns.as_deref(), &mut obj)?;
        if let Some(mf) = mf {
            strategy::meta_mut(&mut obj).insert("managedFields".into(), mf);
        }
        check_namespace(app, &info, ns.as_deref()).await?;
        if q.dry_run() {
            return Ok(with_warnings(
                object_response(StatusCode::CREATED, &info, headers, q, &obj),
                &warnings,
            ));
        }
        let k = key(&info, ns.as_deref(), &name);
        return match app.store.create(&k, encode(&obj)).await? {
            WriteOutcome::Done(kv) => {
                let v = decode(&kv).map_err(|e| ApiError::internal(e.to_string()))?;
                Ok(with_warnings(
                    object_response(StatusCode::CREATED, &info, headers, q, &v),
                    &warnings,
                ))
            }
            // Lost a race with a create: apply again over it.
            WriteOutcome::Conflict(_) => Err(ApiError::conflict(group(&info), &info.plural, &name)),
        };
    }
    let mut mutate = |current: &Value| -> ApiResult<Value> {
        let mut base = current.clone();
        strategy::meta_mut(&mut base).remove("resourceVersion");
        patch::apply_at(Some(&base), &applied, &manager, force, &now_rfc3339())
            .map(|outcome| outcome.object)
            .map_err(|e| apply_error(&info, &name, e))
    };
    // Apply records its own managedFields entry.
    let out = guaranteed_update(
        app,
        &info,
        ns.as_deref(),
        &name,
        t.subresource.as_deref(),
        q,
        None,
        &mut mutate,
    )
    .await?;
    Ok(with_warnings(
        object_response(StatusCode::OK, &info, headers, q, &out),
        &warnings,
    ))
}

fn apply_error(info: &ResourceInfo, name: &str, e: patch::ApplyError) -> ApiError {
    match e {
        patch::ApplyError::Conflict(conflicts) => {
            let causes: Vec<Value> = conflicts
                .iter()
                .map(|c| json!({"type": "FieldManagerConflict", "reason": "FieldManagerConflict", "message": format!("conflict with \"{}\"", c.manager), "field": c.field}))
                .collect();
            let lines: Vec<String> = conflicts.iter().map(|c| format!("- {}", c.field)).collect();
            let managers: Vec<&str> = conflicts.iter().map(|c| c.manager.as_str()).collect();
            ApiError::new(
                409,
                "Conflict",
                format!(
                    "Apply failed with {} conflict{}: conflict with \"{}\": {}",
                    conflicts.len(),
                    if conflicts.len() == 1 { "" } else { "s" },
                    managers.first().copied().unwrap_or(""),
                    lines.join("\n")
                ),
            )
            .with_details(json!({"name": name, "group": info.gvk.group, "kind": info.plural, "causes": causes}))
        }
        other => ApiError::bad_request(other.to_string()),
    }
}

/// DeleteOptions from the body (kubectl, kube-rs) or the query (python).
#[derive(Debug, Default)]
pub struct DeleteOptions {
    pub grace_period: Option<i64>,
    pub propagation: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

impl DeleteOptions {
    pub fn parse(q: &Query, body: &Bytes) -> ApiResult<Self> {
        let mut o = DeleteOptions {
            grace_period: q.get("gracePeriodSeconds").and_then(|s| s.parse().ok()),
            propagation: q.get("propagationPolicy").map(str::to_string),
            dry_run: q.dry_run(),
            ..Default::default()
        };
        if q.flag("orphanDependents") {
            o.propagation = Some("Orphan".into());
        }
        if !body.is_empty() {
            let v: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?;
            if let Some(g) = v.get("gracePeriodSeconds").and_then(Value::as_i64) {
                o.grace_period = Some(g);
            }
            if let Some(p) = v.get("propagationPolicy").and_then(Value::as_str) {
                o.propagation = Some(p.to_string());
            }
            if v.get("orphanDependents") == Some(&Value::Bool(true)) {
                o.propagation = Some("Orphan".into());
            }
            if let Some(u) = v.pointer("/preconditions/uid").and_then(Value::as_str) {
                o.precondition_uid = Some(u.to_string());
            }
            if let Some(r) = v
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
            {
                o.precondition_rv = Some(r.to_string());
            }
            if let Some(d) = v.get("dryRun").and_then(Value::as_array) {
                o.dry_run |= d.iter().any(|x| x == "All");
            }
        }
        if let Some(p) = &o.propagation {
            if !["Foreground", "Background", "Orphan"].contains(&p.as_str()) {
                return Err(ApiError::new(422, "Invalid", format!("DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \"{p}\": supported values: \"Foreground\", \"Background\", \"Orphan\"")));
            }
        }
        Ok(o)
    }
}

/// Whether the server answers a delete with the object (true) or a Status.
fn returns_deleted_object(info: &ResourceInfo) -> bool {
    info.gvk.group.is_empty()
        && matches!(
            info.gvk.kind.as_str(),
            "Pod" | "Service" | "Namespace" | "Node"
        )
}

pub async fn delete(
    app: &App,
    t: &Target,
    q: &Query,
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult<Response> {
    let name = name_of(t)?.to_string();
    let opts = DeleteOptions::parse(q, body)?;
    let (obj, finished) = delete_object(app, &t.info, t.namespace.as_deref(), &name, &opts).await?;
    if finished && !returns_deleted_object(&t.info) {
        let uid = meta_str(&obj, "uid").unwrap_or("");
        let mut details = json!({"name": name, "kind": t.info.plural, "uid": uid});
        if !t.info.gvk.group.is_empty() {
            details["group"] = json!(t.info.gvk.group);
        }
        return Ok(json_response(
            StatusCode::OK,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
        ));
    }
    // 202: the deletion is accepted but not finished (graceful or finalizers pending).
    let code = if finished {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok(object_response(code, &t.info, headers, q, &obj))
}

/// Deletes an object, honouring preconditions, graceful deletion (pods), finalizers
/// and the propagation policy. Returns the last state and whether it is gone.
pub async fn delete_object(
    app: &App,
    info: &ResourceInfo,
    ns: Option<&str>,
    name: &str,
    opts: &DeleteOptions,
) -> ApiResult<(Value, bool)> {
    for _ in 0..64 {
        let (current, rev) = read(app, info, ns, name).await?;
        if let Some(uid) = &opts.precondition_uid {
            let have = meta_str(&current, "uid").unwrap_or("");
            if have != uid {
                return Err(ApiError::conflict_msg(
                    group(info),
                    &info.plural,
                    name,
                    &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {have}"),
                ));
            }
        }
        if let Some(prv) = &opts.precondition_rv {
            if *prv != rev.to_string() {
                return Err(ApiError::conflict_msg(
                    group(info),
                    &info.plural,
                    name,
                    &format!("Precondition failed: ResourceVersion in precondition: {prv}, ResourceVersion in object meta: {rev}"),
                ));
            }
        }
        let mut next = current.clone();
        let already = current.pointer("/metadata/deletionTimestamp").is_some();
        // Finalizers from the propagation policy.
        let mut finalizers: Vec<Value> = current
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let policy = opts
            .propagation
            .clone()
            .unwrap_or_else(|| default_propagation(info));
        let add = match policy.as_str() {
            "Foreground" => Some("foregroundDeletion"),
            "Orphan" => Some("orphan"),
            _ => None,
        };
        let mut finalizers_changed = false;
        if let Some(f) = add {
            if !already
                && app.has_dependents(info, &current).await
                && !finalizers.iter().any(|x| x == f)
            {
                finalizers.push(json!(f));
                finalizers_changed = true;
            }
        }
        // Graceful deletion of pods bound to a node: the kubelet finishes it.
        let pod_grace = if is_pod(info)
            && current
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty())
        {
            let spec_grace = current
                .pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(30);
            let g = opts.grace_period.unwrap_or(spec_grace).max(0);
            // A pod that never started can go at once.
            let phase = current
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .unwrap_or("");
            if phase == "Succeeded" || phase == "Failed" {
                0
            } else {
                g
            }
        } else {
            0
        };
        if pod_grace > 0 || !finalizers.is_empty() {
            if already && !finalizers_changed {
                // Shortening the grace period is allowed (a force delete), nothing else.
                let cur_grace = current
                    .pointer("/metadata/deletionGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                if pod_grace >= cur_grace {
                    return Ok((current, false));
                }
            }
            let m = strategy::meta_mut(&mut next);
            let deadline = chrono::Utc::now() + chrono::Duration::seconds(pod_grace);
            if !already || pod_grace > 0 {
                m.insert(
                    "deletionTimestamp".into(),
                    json!(deadline.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                );
            }
            m.insert("deletionGracePeriodSeconds".into(), json!(pod_grace));
            if !finalizers.is_empty() {
                m.insert("finalizers".into(), json!(finalizers));
            }
            if info.gvk.group.is_empty() && info.gvk.kind == "Namespace" {
                if let Some(o) = next.as_object_mut() {
                    o.insert("status".into(), json!({"phase": "Terminating"}));
                }
            }
            if opts.dry_run {
                return Ok((next, false));
            }
            let k = key(info, ns, name);
            match app.store.update(&k, encode(&next), rev).await? {
                WriteOutcome::Done(kv) => {
                    return Ok((
                        decode(&kv).map_err(|e| ApiError::internal(e.to_string()))?,
                        false,
                    ))
                }
                WriteOutcome::Conflict(_) => continue,
            }
        }
        if info.gvk.group.is_empty() && info.gvk.kind == "Namespace" {
            // Namespaces always go through Terminating: spec.finalizers ("kubernetes")
            // hold them until their content is gone.
            let spec_fin = current
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
            if spec_fin {
                if already {
                    return Ok((current, false));
                }
                let m = strategy::meta_mut(&mut next);
                m.insert("deletionTimestamp".into(), json!(now_rfc3339()));
                m.insert("deletionGracePeriodSeconds".into(), json!(0));
                if let Some(o) = next.as_object_mut() {
                    o.insert("status".into(), json!({"phase": "Terminating"}));
                }
                if opts.dry_run {
                    return Ok((next, false));
                }
                let k = key(info, ns, name);
                match app.store.update(&k, encode(&next), rev).await? {
                    WriteOutcome::Done(kv) => {
                        return Ok((
                            decode(&kv).map_err(|e| ApiError::internal(e.to_string()))?,
                            false,
                        ));
                    }
                    WriteOutcome::Conflict(_) => continue,
                }
            }
        }
        if opts.dry_run {
            return Ok((current, true));
        }
        let k = key(info, ns, name);
        match app.store.delete(&k, Some(rev)).await? {
            WriteOutcome::Done(kv) => {
                if is_service(info) {
                    app.services.release(&app.services.held_by(&current)).await;
                }
                let mut gone = current;
                strategy::meta_mut(&mut gone)
                    .insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
                return Ok((gone, true));
            }
            WriteOutcome::Conflict(None) => {
                return Err(ApiError::not_found(group(info), &info.plural, name))
            }
            WriteOutcome::Conflict(Some(_)) => continue,
        }
    }
    Err(ApiError::conflict_msg(
        group(info),
        &info.plural,
        name,
        "too many concurrent updates",
    ))
}

fn default_propagation(_info: &ResourceInfo) -> String {
    "Background".into()
}

/// DELETE on a collection: deletes every matching object.
pub async fn delete_collection(
    app: &App,
    t: &Target,
    q: &Query,
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult<Response> {
    let opts = DeleteOptions::parse(q, body)?;
    let filter = Filter::from_query(&t.info, q)?;
    let (items, rev) = app
        .cache
        .list(&list_prefix(&t.info, t.namespace.as_deref()))
        .await;
    let mut deleted = Vec::new();
    for item in items {
        if !filter.matches(&t.info, &item.value) {
            continue;
        }
        let name = meta_str(&item.value, "name").unwrap_or("").to_string();
        let ns = meta_str(&item.value, "namespace").map(str::to_string);
        match delete_object(app, &t.info, ns.as_deref(), &name, &opts).await {
            Ok((v, _)) => deleted.push(v),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let list = json!({"kind": t.info.list_kind(), "apiVersion": t.info.gvk.api_version(), "metadata": {"resourceVersion": rev.to_string()}, "items": deleted});
    let _ = headers;
    Ok(json_response(StatusCode::OK, &list))
}

/// GET on a collection.
pub async fn list(app: &App, t: &Target, q: &Query, headers: &HeaderMap) -> ApiResult<Response> {
    let info = &t.info;
    let filter = Filter::from_query(info, q)?;
    let prefix = list_prefix(info, t.namespace.as_deref());
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let rv = q.get("resourceVersion");
    let cont = q.get("continue");
    let table = wants_table(headers);
    // Served from the store when paging (exact revision semantics), else from the
    // watch cache after it has caught up with the store (a consistent read).
    let mut from_store = cont.is_some()
        || (limit.is_some() && rv != Some("0"))
        || q.get("resourceVersionMatch") == Some("Exact");
    if !from_store && rv.is_none() {
        // A consistent read: the cache must have caught up with the store, else the
        // store answers.
        let current = app.store.current_revision().await?;
        from_store = !app.cache.wait_for(current, Duration::from_secs(3)).await;
    }
    let (items, revision, next, remaining): (
        Vec<Arc<crate::watch_cache::CachedObject>>,
        i64,
        Option<String>,
        Option<i64>,
    ) = if from_store {
        let (start_after, at) = match cont {
            Some(c) => {
                let (r, s) = decode_continue(c)?;
                (Some(s), Some(r))
            }
            None => (
                None,
                rv.and_then(|r| r.parse::<i64>().ok())
                    .filter(|r| *r > 0 && q.get("resourceVersionMatch") == Some("Exact")),
            ),
        };
        let mut out = Vec::new();
        let mut start_after = start_after;
        let mut at = at;
        let want = limit.unwrap_or(usize::MAX);
        let mut next = None;
        let mut remaining = None;
        loop {
            let page = app
                    .store
                    .list(ListRequest { prefix: prefix.clone(), revision: at, limit: Some(want.saturating_sub(out.len()).clamp(1, 10_000)), start_after: start_after.clone() })
                    .await
                    .map_err(|e| match e {
                        kelp_storage::StoreError::Compacted { .. } if cont.is_some() => ApiError::gone(
                            "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue value from the error to get a list snapshot at a more recent version.",
                        ),
                        other => other.into(),
                    })?;
            at = Some(page.revision);
            let last = page.items.last().map(|kv| kv.key.clone());
            for kv in &page.items {
                if let Ok(v) = decode(kv) {
                    if filter.matches(info, &v) {
                        out.push(Arc::new(crate::watch_cache::CachedObject::new(
                            v,
                            kv.mod_revision,
                        )));
                    }
                }
            }
            if page.remaining == 0 || last.is_none() {
                break;
            }
            start_after = last;
            if out.len() >= want {
                next = start_after
                    .clone()
                    .map(|k| encode_continue(page.revision, &k));
                if filter.is_empty() {
                    remaining = Some(page.remaining);
                }
                break;
            }
        }
        (out, at.unwrap_or(0), next, remaining)
    } else {
        let (all, revision) = app.cache.list(&prefix).await;
        let items = all
            .into_iter()
            .filter(|o| filter.matches(info, &o.value))
            .collect();
        (items, revision, None, None)
    };
    if table {
        let values: Vec<Value> = items.iter().map(|o| o.value.clone()).collect();
        let t = table::table(info, &values, q, Some(revision), next.as_deref());
        return Ok(json_response(StatusCode::OK, &t));
    }
    let mut meta = json!({"resourceVersion": revision.to_string()});
    if let Some(n) = &next {
        meta["continue"] = json!(n);
    }
    if let Some(r) = remaining {
        meta["remainingItemCount"] = json!(r);
    }
    let mut body = Vec::with_capacity(64 + items.len() * 512);
    body.extend_from_slice(b"{\"kind\":");
    body.extend_from_slice(
        serde_json::to_string(&info.list_kind())
            .unwrap_or_default()
            .as_bytes(),
    );
    body.extend_from_slice(b",\"apiVersion\":");
    body.extend_from_slice(
        serde_json::to_string(&info.gvk.api_version())
            .unwrap_or_default()
            .as_bytes(),
    );
    body.extend_from_slice(b",\"metadata\":");
    body.extend_from_slice(meta.to_string().as_bytes());
    body.extend_from_slice(b",\"items\":[");
    for (i, o) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(o.json());
    }
    body.extend_from_slice(b"]}");
    Ok(bytes_response(StatusCode::OK, body))
}
