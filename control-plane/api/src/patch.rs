//! Patch strategies: JSON patch (RFC 6902), merge patch (RFC 7386), Kubernetes strategic
//! merge patch for built-in kinds, and server-side apply with field ownership
//! (`metadata.managedFields` in the FieldsV1 format).
//!
//! Limits of the apply implementation: ownership is tracked per leaf field and per
//! keyed list item, as upstream; sets (`x-kubernetes-list-type: set`) are treated as
//! atomic lists, and conversion between versions is not needed (one version per kind).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use crate::registry::GroupVersionKind;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("the patch is invalid: {0}")]
    Invalid(String),
    #[error("the patch could not be applied: {0}")]
    Failed(String),
}

pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    let p: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| PatchError::Invalid(e.to_string()))?;
    let mut doc = target.clone();
    json_patch::patch(&mut doc, &p).map_err(|e| PatchError::Failed(e.to_string()))?;
    Ok(doc)
}

pub fn merge_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    if !patch.is_object() {
        return Err(PatchError::Invalid(
            "a merge patch must be a JSON object".into(),
        ));
    }
    let mut doc = target.clone();
    json_patch::merge(&mut doc, patch);
    Ok(doc)
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
    )
}

/// How a list at a path merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// Items are maps identified by this key.
    MergeKey(&'static str),
    /// A list of scalars merged as a set.
    MergeSet,
    /// The patch's list replaces the original.
    Replace,
}

/// The upstream `patchStrategy`/`patchMergeKey` of the list at `path` (field names,
/// list indices omitted).
pub fn list_strategy(gvk: &GroupVersionKind, path: &[String]) -> ListStrategy {
    let n = path.len();
    let last = path.last().map(String::as_str).unwrap_or("");
    let parent = if n >= 2 { path[n - 2].as_str() } else { "" };
    match last {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => ListStrategy::MergeKey("name"),
        "volumes" if parent == "spec" => ListStrategy::MergeKey("name"),
        "env" => ListStrategy::MergeKey("name"),
        "volumeMounts" => ListStrategy::MergeKey("mountPath"),
        "volumeDevices" => ListStrategy::MergeKey("devicePath"),
        "hostAliases" => ListStrategy::MergeKey("ip"),
        "topologySpreadConstraints" => ListStrategy::MergeKey("topologyKey"),
        "conditions" => ListStrategy::MergeKey("type"),
        "addresses" if parent == "status" && gvk.kind == "Node" => ListStrategy::MergeKey("type"),
        "ownerReferences" => ListStrategy::MergeKey("uid"),
        "finalizers" if parent == "metadata" => ListStrategy::MergeSet,
        "ports"
            if matches!(
                parent,
                "containers" | "initContainers" | "ephemeralContainers"
            ) =>
        {
            ListStrategy::MergeKey("containerPort")
        }
        "ports" if parent == "spec" && gvk.kind == "Service" => ListStrategy::MergeKey("port"),
        _ => ListStrategy::Replace,
    }
}

enum Merged {
    Value(Value),
    Delete,
}

/// Kubernetes strategic merge patch.
pub fn strategic_merge_patch(
    target: &Value,
    patch: &Value,
    gvk: &GroupVersionKind,
) -> Result<Value, PatchError> {
    if !patch.is_object() {
        return Err(PatchError::Invalid(
            "a strategic merge patch must be a JSON object".into(),
        ));
    }
    let mut path = Vec::new();
    match smp_map(target, patch, gvk, &mut path)? {
        Merged::Value(v) => Ok(v),
        Merged::Delete => Ok(json!({})),
    }
}

fn smp_map(
    orig: &Value,
    patch: &Value,
    gvk: &GroupVersionKind,
    path: &mut Vec<String>,
) -> Result<Merged, PatchError> {
    let Some(pm) = patch.as_object() else {
        return Ok(Merged::Value(patch.clone()));
    };
    match pm.get("$patch").and_then(Value::as_str) {
        Some("delete") => return Ok(Merged::Delete),
        Some("replace") => {
            let mut m = pm.clone();
            m.remove("$patch");
            return Ok(Merged::Value(Value::Object(strip_directives(m))));
        }
        Some("merge") | None => {}
        Some(other) => return Err(PatchError::Invalid(format!("unknown patch type: {other}"))),
    }
    let mut result = orig.as_object().cloned().unwrap_or_default();
    let mut orders: Vec<(String, Vec<Value>)> = Vec::new();
    let mut deletions: Vec<(String, Vec<Value>)> = Vec::new();
    let mut retain: Option<Vec<String>> = None;
    for (k, pv) in pm {
        if k == "$patch" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            orders.push((
                field.to_string(),
                pv.as_array().cloned().unwrap_or_default(),
            ));
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            deletions.push((
                field.to_string(),
                pv.as_array().cloned().unwrap_or_default(),
            ));
            continue;
        }
        if k == "$retainKeys" {
            retain = Some(
                pv.as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            );
            continue;
        }
        path.push(k.clone());
        match pv {
            Value::Null => {
                result.remove(k);
            }
            Value::Object(_) => {
                let o = result.get(k).cloned().unwrap_or(Value::Null);
                match smp_map(&o, pv, gvk, path)? {
                    Merged::Value(v) => {
                        result.insert(k.clone(), v);
                    }
                    Merged::Delete => {
                        result.remove(k);
                    }
                }
            }
            Value::Array(items) => {
                let o = result
                    .get(k)
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let merged = smp_list(&o, items, list_strategy(gvk, path), gvk, path)?;
                result.insert(k.clone(), Value::Array(merged));
            }
            other => {
                result.insert(k.clone(), other.clone());
            }
        }
        path.pop();
    }
    for (field, vals) in deletions {
        if let Some(Value::Array(list)) = result.get_mut(&field) {
            list.retain(|x| !vals.contains(x));
        }
    }
    for (field, order) in orders {
        path.push(field.clone());
        let strategy = list_strategy(gvk, path);
        path.pop();
        if let Some(Value::Array(list)) = result.get_mut(&field) {
            reorder(list, &order, strategy);
        }
    }
    if let Some(keys) = retain {
        result.retain(|k, _| keys.contains(k));
    }
    Ok(Merged::Value(Value::Object(result)))
}

fn strip_directives(mut m: Map<String, Value>) -> Map<String, Value> {
    m.retain(|k, _| !k.starts_with('$'));
    m
}

fn key_of<'a>(item: &'a Value, key: &str) -> Option<&'a Value> {
    item.get(key)
}

fn smp_list(
    orig: &[Value],
    patch: &[Value],
    strategy: ListStrategy,
    gvk: &GroupVersionKind,
    path: &mut Vec<String>,
) -> Result<Vec<Value>, PatchError> {
    match strategy {
        ListStrategy::Replace => Ok(patch
            .iter()
            .map(|v| match v {
                Value::Object(m) => Value::Object(strip_directives(m.clone())),
                other => other.clone(),
            })
            .collect()),
        ListStrategy::MergeSet => {
            let mut out = orig.to_vec();
            for v in patch {
                if !out.contains(v) {
                    out.push(v.clone());
                }
            }
            Ok(out)
        }
        ListStrategy::MergeKey(key) => {
            // `[{"$patch": "replace"}, …]` replaces the whole list.
            if patch.iter().any(|p| {
                p.get("$patch").and_then(Value::as_str) == Some("replace") && p.get(key).is_none()
            }) {
                return Ok(patch
                    .iter()
                    .filter(|p| p.get("$patch").is_none())
                    .cloned()
                    .collect());
            }
            let mut out = orig.to_vec();
            for p in patch {
                let Some(kv) = key_of(p, key).cloned() else {
                    return Err(PatchError::Invalid(format!(
                        "map in a list with merge key {key:?} has no {key:?}"
                    )));
                };
                let pos = out.iter().position(|o| key_of(o, key) == Some(&kv));
                if p.get("$patch").and_then(Value::as_str) == Some("delete") {
                    if let Some(i) = pos {
                        out.remove(i);
                    }
                    continue;
                }
                match pos {
                    Some(i) => match smp_map(&out[i], p, gvk, path)? {
                        Merged::Value(v) => out[i] = v,
                        Merged::Delete => {
                            out.remove(i);
                        }
                    },
                    None => {
                        if let Merged::Value(v) = smp_map(&Value::Null, p, gvk, path)? {
                            out.push(v);
                        }
                    }
                }
            }
            Ok(out)
        }
    }
}

fn reorder(list: &mut Vec<Value>, order: &[Value], strategy: ListStrategy) {
    let ident = |v: &Value| -> Value {
        match strategy {
            ListStrategy::MergeKey(k) => v.get(k).cloned().unwrap_or(Value::Null),
            _ => v.clone(),
        }
    };
    let order_ids: Vec<Value> = order.iter().map(&ident).collect();
    let mut ordered: Vec<Value> = Vec::with_capacity(list.len());
    for id in &order_ids {
        if let Some(i) = list.iter().position(|v| ident(v) == *id) {
            ordered.push(list.remove(i));
        }
    }
    ordered.append(list);
    *list = ordered;
}

// ---------------------------------------------------------------------------------
// Field ownership (managedFields) and server-side apply.
// ---------------------------------------------------------------------------------

/// One element of a field path in FieldsV1 terms.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Elem {
    /// `f:name`
    Field(String),
    /// `k:{"name":"web"}` (an item of a keyed list)
    Key(String),
}

type FieldPath = Vec<Elem>;

fn render_path(p: &FieldPath) -> String {
    let mut s = String::new();
    for e in p {
        match e {
            Elem::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            Elem::Key(k) => {
                s.push('[');
                s.push_str(k);
                s.push(']');
            }
        }
    }
    s
}

/// Fields never tracked: identity and server-managed metadata, and status.
fn ignored(path: &[Elem]) -> bool {
    match path {
        [Elem::Field(f)] if f == "apiVersion" || f == "kind" || f == "status" => true,
        [Elem::Field(m), Elem::Field(f), ..] if m == "metadata" => matches!(
            f.as_str(),
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "managedFields"
                | "selfLink"
                | "deletionTimestamp"
                | "deletionGracePeriodSeconds"
        ),
        [Elem::Field(f), ..] if f == "status" => true,
        _ => false,
    }
}

fn names(path: &[Elem]) -> Vec<String> {
    path.iter()
        .filter_map(|e| match e {
            Elem::Field(f) => Some(f.clone()),
            Elem::Key(_) => None,
        })
        .collect()
}

/// The leaf fields (and keyed list items) set in `v`.
fn field_set(gvk: &GroupVersionKind, v: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    collect(gvk, v, &mut Vec::new(), &mut out);
    out.retain(|p| !ignored(p));
    out
}

fn collect(gvk: &GroupVersionKind, v: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                path.push(Elem::Field(k.clone()));
                if !ignored(path) {
                    collect(gvk, child, path, out);
                }
                path.pop();
            }
        }
        Value::Array(items) => match list_strategy(gvk, &names(path)) {
            ListStrategy::MergeKey(key) if items.iter().all(|i| i.get(key).is_some()) => {
                for item in items {
                    let k = format!(
                        "{{\"{key}\":{}}}",
                        item.get(key).cloned().unwrap_or(Value::Null)
                    );
                    path.push(Elem::Key(k));
                    out.insert(path.clone());
                    collect(gvk, item, path, out);
                    path.pop();
                }
            }
            _ => {
                out.insert(path.clone());
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
}

/// The value at a field path, if present.
fn value_at<'a>(gvk: &GroupVersionKind, v: &'a Value, path: &[Elem]) -> Option<&'a Value> {
    let mut cur = v;
    let mut names_so_far: Vec<String> = Vec::new();
    for e in path {
        match e {
            Elem::Field(f) => {
                cur = cur.get(f)?;
                names_so_far.push(f.clone());
            }
            Elem::Key(k) => {
                let ListStrategy::MergeKey(key) = list_strategy(gvk, &names_so_far) else {
                    return None;
                };
                let want: Value = serde_json::from_str::<Value>(k).ok()?.get(key)?.clone();
                cur = cur.as_array()?.iter().find(|i| i.get(key) == Some(&want))?;
            }
        }
    }
    Some(cur)
}

fn remove_at(gvk: &GroupVersionKind, v: &mut Value, path: &[Elem]) {
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    let mut names_so_far: Vec<String> = Vec::new();
    let mut cur = v;
    for e in parent_path {
        let next = match e {
            Elem::Field(f) => {
                names_so_far.push(f.clone());
                cur.get_mut(f)
            }
            Elem::Key(k) => {
                let ListStrategy::MergeKey(key) = list_strategy(gvk, &names_so_far) else {
                    return;
                };
                let Some(want) = serde_json::from_str::<Value>(k)
                    .ok()
                    .and_then(|w| w.get(key).cloned())
                else {
                    return;
                };
                cur.as_array_mut()
                    .and_then(|a| a.iter_mut().find(|i| i.get(key) == Some(&want)))
            }
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last {
        Elem::Field(f) => {
            if let Some(m) = cur.as_object_mut() {
                m.remove(f);
            }
        }
        Elem::Key(k) => {
            let ListStrategy::MergeKey(key) = list_strategy(gvk, &names_so_far) else {
                return;
            };
            let Some(want) = serde_json::from_str::<Value>(k)
                .ok()
                .and_then(|w| w.get(key).cloned())
            else {
                return;
            };
            if let Some(a) = cur.as_array_mut() {
                a.retain(|i| i.get(key) != Some(&want));
            }
        }
    }
}

fn to_fields_v1(set: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for p in set {
        let mut cur = &mut root;
        for (i, e) in p.iter().enumerate() {
            let k = match e {
                Elem::Field(f) => format!("f:{f}"),
                Elem::Key(k) => format!("k:{k}"),
            };
            let entry = cur.entry(k).or_insert_with(|| json!({}));
            let m = match entry.as_object_mut() {
                Some(m) => m,
                None => break,
            };
            if i == p.len() - 1 && matches!(e, Elem::Key(_)) {
                m.entry(".").or_insert_with(|| json!({}));
            }
            cur = m;
        }
    }
    Value::Object(root)
}

fn from_fields_v1(v: &Value) -> BTreeSet<FieldPath> {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
        let Some(m) = v.as_object() else { return };
        if m.is_empty() {
            if !path.is_empty() {
                out.insert(path.clone());
            }
            return;
        }
        for (k, child) in m {
            if k == "." {
                out.insert(path.clone());
                continue;
            }
            let e = if let Some(f) = k.strip_prefix("f:") {
                Elem::Field(f.to_string())
            } else if let Some(key) = k.strip_prefix("k:") {
                Elem::Key(key.to_string())
            } else {
                continue;
            };
            path.push(e);
            walk(child, path, out);
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    fields: BTreeSet<FieldPath>,
    subresource: Option<String>,
}

fn read_entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| Entry {
                    manager: e
                        .get("manager")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    operation: e
                        .get("operation")
                        .and_then(Value::as_str)
                        .unwrap_or("Update")
                        .to_string(),
                    api_version: e
                        .get("apiVersion")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    time: e
                        .get("time")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    fields: e.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
                    subresource: e
                        .get("subresource")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(&e.fields),
            });
            if let Some(s) = &e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn gvk_of(obj: &Value) -> GroupVersionKind {
    let av = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("v1");
    let (g, v) = av.split_once('/').unwrap_or(("", av));
    GroupVersionKind::new(g, v, obj.get("kind").and_then(Value::as_str).unwrap_or(""))
}

/// Records an ordinary write by `manager` (operation `Update`): the fields it changed
/// become its own and leave other managers' sets.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    operation: &str,
    now: &str,
) {
    let gvk = gvk_of(new);
    let mut entries = old.map(read_entries).unwrap_or_default();
    let new_set = field_set(&gvk, new);
    let old_set = old.map(|o| field_set(&gvk, o)).unwrap_or_default();
    let changed: BTreeSet<FieldPath> = new_set
        .iter()
        .filter(|p| {
            !old_set.contains(*p)
                || old.and_then(|o| value_at(&gvk, o, p)) != value_at(&gvk, new, p)
        })
        .cloned()
        .collect();
    // Fields that no longer exist belong to nobody.
    for e in entries.iter_mut() {
        e.fields.retain(|p| new_set.contains(p));
    }
    if changed.is_empty() {
        write_entries(new, &entries);
        return;
    }
    for e in entries.iter_mut() {
        if e.manager != manager || e.operation != operation {
            e.fields.retain(|p| !changed.contains(p));
        }
    }
    let api_version = new
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    match entries
        .iter_mut()
        .find(|e| e.manager == manager && e.operation == operation && e.subresource.is_none())
    {
        Some(e) => {
            e.fields.extend(changed);
            e.time = now.to_string();
        }
        None => entries.push(Entry {
            manager: manager.to_string(),
            operation: operation.to_string(),
            api_version,
            time: now.to_string(),
            fields: changed,
            subresource: None,
        }),
    }
    write_entries(new, &entries);
}

/// A field another manager owns that an apply would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    /// `.spec.replicas`
    pub field: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("apply conflicts with other field managers")]
    Conflict(Vec<Conflict>),
    #[error("invalid applied configuration: {0}")]
    Invalid(String),
}

/// Merges an applied configuration for `gvk` the way apply does: maps merge, keyed
/// lists merge by key, other lists are atomic.
fn apply_merge(live: &Value, applied: &Value, gvk: &GroupVersionKind) -> Value {
    let mut path = Vec::new();
    match smp_map(live, applied, gvk, &mut path) {
        Ok(Merged::Value(v)) => v,
        _ => applied.clone(),
    }
}

/// Server-side apply by `manager` over `live` (None: the object does not exist yet).
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    now: &str,
) -> Result<Value, ApplyError> {
    if !applied.is_object() {
        return Err(ApplyError::Invalid(
            "the applied configuration must be an object".into(),
        ));
    }
    let gvk = gvk_of(applied);
    let empty = json!({});
    let live_v = live.unwrap_or(&empty);
    let mut entries = read_entries(live_v);
    let applied_set = field_set(&gvk, applied);
    let prev_set: BTreeSet<FieldPath> = entries
        .iter()
        .filter(|e| e.manager == manager && e.operation == "Apply")
        .flat_map(|e| e.fields.iter().cloned())
        .collect();

    // Conflicts: fields this apply sets to a different value that others own.
    let mut conflicts = Vec::new();
    let mut taken: BTreeSet<FieldPath> = BTreeSet::new();
    for p in &applied_set {
        let live_val = value_at(&gvk, live_v, p);
        let new_val = value_at(&gvk, applied, p);
        let differs =
            live_val.is_some() && live_val != new_val && !matches!(p.last(), Some(Elem::Key(_)));
        for e in &entries {
            if e.manager == manager || !e.fields.contains(p) {
                continue;
            }
            if differs {
                conflicts.push(Conflict {
                    manager: e.manager.clone(),
                    field: render_path(p),
                });
            }
            if differs || force {
                taken.insert(p.clone());
            }
        }
    }
    if !conflicts.is_empty() && !force {
        conflicts.sort_by(|a, b| a.field.cmp(&b.field));
        conflicts.dedup();
        return Err(ApplyError::Conflict(conflicts));
    }

    let mut result = apply_merge(live_v, applied, &gvk);
    // Fields this manager applied before but not now are removed unless others own them.
    let others: BTreeSet<FieldPath> = entries
        .iter()
        .filter(|e| !(e.manager == manager && e.operation == "Apply"))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    let mut dropped: Vec<&FieldPath> = prev_set
        .iter()
        .filter(|p| !applied_set.contains(*p) && !others.contains(*p))
        .collect();
    // Remove deepest paths first so parents are still there when children go.
    dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in dropped {
        remove_at(&gvk, &mut result, p);
    }
    prune_empty_maps(&mut result, live_v);

    for e in entries.iter_mut() {
        if e.manager != manager {
            e.fields.retain(|p| !taken.contains(p));
        }
    }
    let api_version = applied
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    entries.retain(|e| !(e.manager == manager && e.operation == "Apply"));
    entries.push(Entry {
        manager: manager.to_string(),
        operation: "Apply".into(),
        api_version,
        time: now.to_string(),
        fields: applied_set,
        subresource: None,
    });
    if result.get("metadata").is_none() {
        result["metadata"] = json!({});
    }
    write_entries(&mut result, &entries);
    Ok(result)
}

/// Removing an applied field can leave `{}` where the live object had none.
fn prune_empty_maps(v: &mut Value, live: &Value) {
    if let Value::Object(m) = v {
        let keys: Vec<String> = m.keys().cloned().collect();
        for k in keys {
            let live_child = live.get(&k).unwrap_or(&Value::Null);
            if let Some(child) = m.get_mut(&k) {
                prune_empty_maps(child, live_child);
                let was_empty_live = live_child.as_object().is_some_and(|o| o.is_empty());
                if child.as_object().is_some_and(|o| o.is_empty())
                    && !was_empty_live
                    && k != "metadata"
                    && !live_child.is_object()
                {
                    m.remove(&k);
                }
            }
        }
    }
}

/// The managers and their operations (for tests and describe-like output).
pub fn managers(obj: &Value) -> BTreeMap<String, String> {
    read_entries(obj)
        .into_iter()
        .map(|e| (e.manager, e.operation))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy() -> GroupVersionKind {
        GroupVersionKind::new("apps", "v1", "Deployment")
    }

    #[test]
    fn smp_container_image_by_name() {
        let orig = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "nginx:1", "ports": [{"containerPort": 80}]},
            {"name": "side", "image": "busybox"}]}}}});
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "web"}, {"name": "side"}],
            "containers": [{"name": "web", "image": "nginx:2"}]}}}});
        let out = strategic_merge_patch(&orig, &patch, &deploy()).unwrap();
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs[0]["image"], "nginx:2");
        assert_eq!(cs[0]["ports"][0]["containerPort"], 80);
        assert_eq!(cs[1]["image"], "busybox");
    }

    #[test]
    fn smp_directives() {
        let node = GroupVersionKind::new("", "v1", "Node");
        let out = strategic_merge_patch(
            &json!({"spec": {"unschedulable": true}}),
            &json!({"spec": {"unschedulable": null}}),
            &node,
        )
        .unwrap();
        assert_eq!(out, json!({"spec": {}}));
        let orig = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}}}});
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "$patch": "delete"}]}}}});
        let out = strategic_merge_patch(&orig, &patch, &deploy()).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "b", "image": "y"}])
        );
        let orig = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}]}]}}}});
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}]}]}}}});
        let out = strategic_merge_patch(&orig, &patch, &deploy()).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][0]["env"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let out = strategic_merge_patch(
            &json!({"metadata": {"finalizers": ["a"]}}),
            &json!({"metadata": {"finalizers": ["b"]}}),
            &deploy(),
        )
        .unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
    }

    #[test]
    fn apply_create_reapply_and_conflict() {
        let cm = |data: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data});
        let first = apply(
            None,
            &cm(json!({"a": "1", "b": "2"})),
            "kubectl",
            false,
            "t",
        )
        .unwrap();
        assert_eq!(first["data"], json!({"a": "1", "b": "2"}));
        assert_eq!(
            managers(&first).get("kubectl").map(String::as_str),
            Some("Apply")
        );
        // Dropping a key the manager applied removes it.
        let second = apply(Some(&first), &cm(json!({"a": "1"})), "kubectl", false, "t").unwrap();
        assert_eq!(second["data"], json!({"a": "1"}));
        // Another manager changing an owned field conflicts; force takes it over.
        let err = apply(Some(&second), &cm(json!({"a": "9"})), "other", false, "t").unwrap_err();
        assert!(
            matches!(err, ApplyError::Conflict(ref c) if c[0].field == ".data.a" && c[0].manager == "kubectl")
        );
        let forced = apply(Some(&second), &cm(json!({"a": "9"})), "other", true, "t").unwrap();
        assert_eq!(forced["data"]["a"], "9");
    }

    #[test]
    fn update_takes_ownership() {
        let mut obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
        record_update(None, &mut obj, "kubectl-create", "Update", "t");
        let applied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "2"}});
        assert!(apply(Some(&obj), &applied, "kubectl", false, "t").is_err());
        let mut next = obj.clone();
        next["data"]["a"] = json!("3");
        record_update(Some(&obj), &mut next, "editor", "Update", "t");
        let m = managers(&next);
        assert!(m.contains_key("editor"));
        assert!(!m.contains_key("kubectl-create"), "{m:?}");
    }

    #[test]
    fn json_and_merge() {
        let out = json_patch(
            &json!({"a": 1}),
            &json!([{"op": "replace", "path": "/a", "value": 2}]),
        )
        .unwrap();
        assert_eq!(out, json!({"a": 2}));
        let out = merge_patch(&json!({"a": {"b": 1, "c": 2}}), &json!({"a": {"b": null}})).unwrap();
        assert_eq!(out, json!({"a": {"c": 2}}));
        assert!(json_patch(
            &json!({}),
            &json!([{"op": "test", "path": "/x", "value": 1}])
        )
        .is_err());
    }
}
