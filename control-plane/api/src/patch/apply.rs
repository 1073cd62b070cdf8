//! Field ownership (`metadata.managedFields`, FieldsV1) and server-side apply.

use std::collections::{BTreeSet, HashMap};

use serde_json::{json, Map, Value};

use crate::registry::GroupVersionKind;

use super::schema::{ListStrategy, Ty};

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Elem {
    /// `f:name`
    Field(String),
    /// `k:{"name":"web"}`: an item of a keyed list (canonical JSON of its key fields).
    Key(String),
    /// `v:"foo"`: an item of a set (its JSON).
    Value(String),
}

pub(crate) type FieldPath = Vec<Elem>;

/// `.spec.template.spec.containers[name="web"].image`, as upstream prints paths.
pub(crate) fn render_path(p: &[Elem]) -> String {
    let mut s = String::new();
    for e in p {
        match e {
            Elem::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            Elem::Key(k) => {
                let fields: Vec<String> = serde_json::from_str::<Map<String, Value>>(k)
                    .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
                    .unwrap_or_default();
                s.push('[');
                s.push_str(&fields.join(","));
                s.push(']');
            }
            Elem::Value(v) => {
                s.push_str("[=");
                s.push_str(v);
                s.push(']');
            }
        }
    }
    s
}

/// Canonical `k:` JSON: the key fields present in `item`, sorted by name.
fn item_key(item: &Value, keys: &[&str]) -> Option<String> {
    let first = keys.first()?;
    item.get(*first)?;
    let mut present: Vec<(&str, &Value)> = keys
        .iter()
        .filter_map(|k| item.get(*k).filter(|v| !v.is_null()).map(|v| (*k, v)))
        .collect();
    present.sort_by(|a, b| a.0.cmp(b.0));
    let parts: Vec<String> = present
        .iter()
        .map(|(k, v)| format!("{}:{}", Value::String((*k).to_string()), v))
        .collect();
    Some(format!("{{{}}}", parts.join(",")))
}

fn key_matches(item: &Value, key: &str, keys: &[&str]) -> bool {
    item_key(item, keys).as_deref() == Some(key)
}

/// Fields never tracked: identity, server-managed metadata, and status (a
/// subresource of its own).
fn ignored(path: &[Elem]) -> bool {
    match path {
        [Elem::Field(f)] => matches!(f.as_str(), "apiVersion" | "kind" | "status"),
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
        [Elem::Field(f), ..] => f == "status",
        _ => false,
    }
}

/// The fields set in `v`: leaves, keyed list items (the item itself) and set values.
pub(crate) fn field_set(gvk: &GroupVersionKind, v: &Value) -> BTreeSet<FieldPath> {
    let mut out = BTreeSet::new();
    if let Value::Object(m) = v {
        collect_map(m, Ty::root(gvk), &mut Vec::new(), &mut out);
    }
    out
}

fn collect_map(
    m: &Map<String, Value>,
    ty: Ty,
    path: &mut FieldPath,
    out: &mut BTreeSet<FieldPath>,
) {
    for (k, child) in m {
        path.push(Elem::Field(k.clone()));
        if !ignored(path) {
            let info = ty.field(k);
            collect_value(child, info.ty, info.apply_list, path, out);
        }
        path.pop();
    }
}

fn collect_value(
    v: &Value,
    ty: Ty,
    list: ListStrategy,
    path: &mut FieldPath,
    out: &mut BTreeSet<FieldPath>,
) {
    match v {
        Value::Null => {}
        Value::Object(m) if !m.is_empty() => collect_map(m, ty, path, out),
        Value::Array(items) => match list {
            ListStrategy::MergeKeys(keys) if items.iter().all(|i| item_key(i, keys).is_some()) => {
                for item in items {
                    let Some(k) = item_key(item, keys) else {
                        continue;
                    };
                    path.push(Elem::Key(k));
                    out.insert(path.clone());
                    if let Value::Object(m) = item {
                        collect_map(m, ty, path, out);
                    }
                    path.pop();
                }
            }
            ListStrategy::MergeSet if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
                for item in items {
                    path.push(Elem::Value(item.to_string()));
                    out.insert(path.clone());
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

/// The strategies along a path: for each element, the list strategy of the field it
/// names (used to find keyed items).
fn walk_types(gvk: &GroupVersionKind, path: &[Elem]) -> Vec<(Ty, ListStrategy)> {
    let mut ty = Ty::root(gvk);
    let mut out = Vec::with_capacity(path.len());
    let mut list = ListStrategy::Replace;
    for e in path {
        if let Elem::Field(f) = e {
            let info = ty.field(f);
            ty = info.ty;
            list = info.apply_list;
        }
        out.push((ty, list));
    }
    out
}

/// The value at a field path, if present.
pub(crate) fn value_at<'a>(
    gvk: &GroupVersionKind,
    v: &'a Value,
    path: &[Elem],
) -> Option<&'a Value> {
    let types = walk_types(gvk, path);
    let mut cur = v;
    for (i, e) in path.iter().enumerate() {
        cur = match e {
            Elem::Field(f) => cur.get(f)?,
            Elem::Key(k) => {
                let ListStrategy::MergeKeys(keys) = types[i].1 else {
                    return None;
                };
                cur.as_array()?.iter().find(|it| key_matches(it, k, keys))?
            }
            Elem::Value(val) => cur.as_array()?.iter().find(|it| it.to_string() == *val)?,
        };
    }
    Some(cur)
}

/// Removes the field at `path` (a map key, a keyed item or a set value).
fn remove_at(gvk: &GroupVersionKind, v: &mut Value, path: &[Elem]) {
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    let types = walk_types(gvk, path);
    let mut cur = v;
    for (i, e) in parent_path.iter().enumerate() {
        let next = match e {
            Elem::Field(f) => cur.get_mut(f),
            Elem::Key(k) => {
                let ListStrategy::MergeKeys(keys) = types[i].1 else {
                    return;
                };
                cur.as_array_mut()
                    .and_then(|a| a.iter_mut().find(|it| key_matches(it, k, keys)))
            }
            Elem::Value(_) => None,
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match last {
        Elem::Field(f) => {
            if let Some(m) = cur.as_object_mut() {
                m.shift_remove(f);
            }
        }
        Elem::Key(k) => {
            if let (ListStrategy::MergeKeys(keys), Some(a)) =
                (types[path.len() - 1].1, cur.as_array_mut())
            {
                a.retain(|it| !key_matches(it, k, keys));
            }
        }
        Elem::Value(val) => {
            if let Some(a) = cur.as_array_mut() {
                a.retain(|it| it.to_string().as_str() != val.as_str());
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// FieldsV1 encoding.
// ---------------------------------------------------------------------------------

fn elem_key(e: &Elem) -> String {
    match e {
        Elem::Field(f) => format!("f:{f}"),
        Elem::Key(k) => format!("k:{k}"),
        Elem::Value(v) => format!("v:{v}"),
    }
}

/// Encodes a set of paths as FieldsV1: nested maps of `f:`/`k:`/`v:` elements, with
/// `.` marking a member that also has children.
pub(crate) fn to_fields_v1(set: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for p in set {
        let mut cur = &mut root;
        for e in p {
            let entry = cur
                .entry(elem_key(e))
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(m) = entry else {
                break;
            };
            cur = m;
        }
    }
    // Mark members with children.
    fn mark(m: &mut Map<String, Value>, prefix: &mut FieldPath, set: &BTreeSet<FieldPath>) {
        for (k, v) in m.iter_mut() {
            let Some(e) = parse_elem(k) else {
                continue;
            };
            prefix.push(e);
            if let Value::Object(child) = v {
                if !child.is_empty() {
                    mark(child, prefix, set);
                    if set.contains(prefix) {
                        child.insert(".".into(), json!({}));
                        child.sort_keys();
                    }
                }
            }
            prefix.pop();
        }
    }
    mark(&mut root, &mut Vec::new(), set);
    Value::Object(root)
}

fn parse_elem(k: &str) -> Option<Elem> {
    if let Some(f) = k.strip_prefix("f:") {
        Some(Elem::Field(f.to_string()))
    } else if let Some(key) = k.strip_prefix("k:") {
        // Canonicalize the key JSON (sorted fields, compact).
        let m: Map<String, Value> = serde_json::from_str(key).ok()?;
        let mut parts: Vec<(String, Value)> = m.into_iter().collect();
        parts.sort_by(|a, b| a.0.cmp(&b.0));
        let s: Vec<String> = parts
            .iter()
            .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), v))
            .collect();
        Some(Elem::Key(format!("{{{}}}", s.join(","))))
    } else if let Some(v) = k.strip_prefix("v:") {
        let parsed: Value = serde_json::from_str(v).ok()?;
        Some(Elem::Value(parsed.to_string()))
    } else {
        None
    }
}

/// Decodes FieldsV1 into a set of paths (unknown or malformed elements are skipped).
pub(crate) fn from_fields_v1(v: &Value) -> BTreeSet<FieldPath> {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
        let Some(m) = v.as_object() else {
            return;
        };
        for (k, child) in m {
            if k == "." {
                if !path.is_empty() {
                    out.insert(path.clone());
                }
                continue;
            }
            let Some(e) = parse_elem(k) else {
                continue;
            };
            path.push(e);
            if child.as_object().is_none_or(|c| c.is_empty()) {
                out.insert(path.clone());
            } else {
                walk(child, path, out);
            }
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

// ---------------------------------------------------------------------------------
// managedFields entries.
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: Option<String>,
    subresource: Option<String>,
    fields: BTreeSet<FieldPath>,
}

impl Entry {
    fn is(&self, manager: &str, operation: &str) -> bool {
        self.manager == manager && self.operation == operation && self.subresource.is_none()
    }
}

fn str_field(e: &Value, k: &str) -> Option<String> {
    e.get(k).and_then(Value::as_str).map(str::to_string)
}

fn read_entries(obj: &Value) -> Vec<Entry> {
    let Some(list) = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    list.iter()
        .filter(|e| e.is_object())
        .map(|e| Entry {
            manager: str_field(e, "manager").unwrap_or_default(),
            operation: str_field(e, "operation").unwrap_or_else(|| "Update".into()),
            api_version: str_field(e, "apiVersion").unwrap_or_default(),
            time: str_field(e, "time"),
            subresource: str_field(e, "subresource"),
            fields: e.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
        })
        .collect()
}

fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut m = Map::new();
            m.insert("manager".into(), json!(e.manager));
            m.insert("operation".into(), json!(e.operation));
            m.insert("apiVersion".into(), json!(e.api_version));
            if let Some(t) = &e.time {
                m.insert("time".into(), json!(t));
            }
            m.insert("fieldsType".into(), json!("FieldsV1"));
            m.insert("fieldsV1".into(), to_fields_v1(&e.fields));
            if let Some(s) = &e.subresource {
                m.insert("subresource".into(), json!(s));
            }
            Value::Object(m)
        })
        .collect();
    let Some(obj) = obj.as_object_mut() else {
        return;
    };
    let meta = obj
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(m) = meta.as_object_mut() {
        if list.is_empty() {
            m.shift_remove("managedFields");
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

/// Manager recorded for fields of objects that existed before any tracking.
pub const BEFORE_FIRST_APPLY: &str = "before-first-apply";

/// Entries of `live`; an object without any gets one `before-first-apply` Update
/// entry owning everything, as upstream.
fn entries_or_default(gvk: &GroupVersionKind, live: &Value) -> Vec<Entry> {
    let entries = read_entries(live);
    if !entries.is_empty() {
        return entries;
    }
    let fields = field_set(gvk, live);
    if fields.is_empty() {
        return entries;
    }
    vec![Entry {
        manager: BEFORE_FIRST_APPLY.into(),
        operation: "Update".into(),
        api_version: gvk.api_version(),
        time: None,
        subresource: None,
        fields,
    }]
}

/// `2006-01-02T15:04:05Z`, the timestamp format of managedFields.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

// ---------------------------------------------------------------------------------
// Ordinary writes.
// ---------------------------------------------------------------------------------

/// Records an ordinary write (create, update, patch) by `manager` with `operation`
/// (normally `"Update"`): the fields it set or changed become its own and leave every
/// other manager's set; fields that no longer exist leave every set. `now` is the
/// RFC 3339 time stored in the entry. Call it with `old: None` for creates.
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    operation: &str,
    now: &str,
) {
    let gvk = gvk_of(new);
    let mut entries = match old {
        Some(o) => entries_or_default(&gvk, o),
        None => Vec::new(),
    };
    let new_set = field_set(&gvk, new);
    // Whole sections are usually untouched (a binding changes `spec.nodeName`, not
    // `spec.containers`): one deep comparison of a field-only prefix of up to two
    // levels settles every path under it, instead of a schema walk per leaf.
    let mut same_prefix: HashMap<(&str, Option<&str>), bool> = HashMap::new();
    let mut changed: BTreeSet<FieldPath> = BTreeSet::new();
    for p in &new_set {
        let Some(o) = old else {
            changed.insert(p.clone());
            continue;
        };
        let section = match (p.first(), p.get(1)) {
            (Some(Elem::Field(a)), Some(Elem::Field(b))) if p.len() > 2 => {
                Some((a.as_str(), Some(b.as_str())))
            }
            (Some(Elem::Field(a)), _) => Some((a.as_str(), None)),
            _ => None,
        };
        let unchanged_section = section.is_some_and(|(a, b)| {
            *same_prefix.entry((a, b)).or_insert_with(|| {
                let (x, y) = (o.get(a), new.get(a));
                match b {
                    None => x == y,
                    Some(b) => x.and_then(|x| x.get(b)) == y.and_then(|y| y.get(b)),
                }
            })
        });
        if !unchanged_section && value_at(&gvk, o, p) != value_at(&gvk, new, p) {
            changed.insert(p.clone());
        }
    }
    for e in entries.iter_mut() {
        e.fields.retain(|p| new_set.contains(p));
        if !e.is(manager, operation) {
            e.fields.retain(|p| !changed.contains(p));
        }
    }
    if !changed.is_empty() {
        match entries.iter_mut().find(|e| e.is(manager, operation)) {
            Some(e) => {
                e.fields.extend(changed);
                e.time = Some(now.to_string());
                e.api_version = gvk.api_version();
            }
            None => entries.push(Entry {
                manager: manager.to_string(),
                operation: operation.to_string(),
                api_version: gvk.api_version(),
                time: Some(now.to_string()),
                subresource: None,
                fields: changed,
            }),
        }
    }
    write_entries(new, &entries);
}

// ---------------------------------------------------------------------------------
// Server-side apply.
// ---------------------------------------------------------------------------------

/// A field another manager owns that an apply would change.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conflict {
    /// The other manager (`kubectl-client-side-apply`).
    pub manager: String,
    /// Its operation (`Apply` or `Update`).
    pub operation: String,
    /// The API version it wrote with (`apps/v1`).
    pub api_version: String,
    /// The path, as upstream prints it: `.spec.replicas`,
    /// `.spec.template.spec.containers[name="web"].image`.
    pub field: String,
}

impl Conflict {
    /// How upstream names the manager: `"kubectl"` for appliers,
    /// `"kubectl-client-side-apply" using apps/v1` for Update managers.
    pub fn manager_display(&self) -> String {
        if self.operation == "Update" {
            format!("\"{}\" using {}", self.manager, self.api_version)
        } else {
            format!("\"{}\"", self.manager)
        }
    }

    /// The `StatusCause` of a 409: `{type: FieldManagerConflict, message, field}`.
    pub fn cause(&self) -> Value {
        json!({
            "type": "FieldManagerConflict",
            "message": format!("conflict with {}", self.manager_display()),
            "field": self.field,
        })
    }
}

/// The upstream message of an apply conflict (`Apply failed with 1 conflict: …`).
pub fn conflict_message(conflicts: &[Conflict]) -> String {
    match conflicts {
        [c] => format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            c.manager_display(),
            c.field
        ),
        _ => {
            let mut by_manager: Vec<(String, Vec<&str>)> = Vec::new();
            for c in conflicts {
                let m = c.manager_display();
                match by_manager.iter_mut().find(|(k, _)| *k == m) {
                    Some((_, v)) => v.push(&c.field),
                    None => by_manager.push((m, vec![&c.field])),
                }
            }
            by_manager.sort_by(|a, b| a.0.cmp(&b.0));
            let mut lines = Vec::new();
            for (m, fields) in by_manager {
                lines.push(format!("conflicts with {m}:"));
                lines.extend(fields.iter().map(|f| format!("- {f}")));
            }
            format!(
                "Apply failed with {} conflicts: {}",
                conflicts.len(),
                lines.join("\n")
            )
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// Fields owned by other managers would change (answer 409 with one
    /// `FieldManagerConflict` cause per item, see [`Conflict::cause`]).
    #[error("{}", conflict_message(.0))]
    Conflict(Vec<Conflict>),
    /// The applied configuration is unusable (answer 400).
    #[error("{0}")]
    Invalid(String),
}

/// The result of a successful apply.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyOutcome {
    /// The new object, with `metadata.managedFields` updated.
    pub object: Value,
    /// True when there was no live object (answer 201).
    pub created: bool,
    /// Conflicts overridden by `force` (ownership moved to the applier).
    pub forced: Vec<Conflict>,
}

/// Server-side apply by `manager` over `live` (None: the object does not exist yet),
/// stamping entries with the current time. See [`apply_at`].
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
) -> Result<ApplyOutcome, ApplyError> {
    apply_at(live, applied, manager, force, &now_rfc3339())
}

/// Server-side apply with an explicit timestamp for the managedFields entry.
///
/// * The applied configuration's fields become `manager`'s (operation `Apply`).
/// * A field it sets to a value different from the live one while another manager
///   owns it is a conflict: an error unless `force`, in which case ownership moves.
///   Fields set to the same value become shared.
/// * Fields `manager` applied before but not now are removed from the object unless
///   another manager owns them too.
/// * Maps merge, keyed lists merge by key, sets merge as sets, other lists replace.
pub fn apply_at(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    now: &str,
) -> Result<ApplyOutcome, ApplyError> {
    let Some(applied_map) = applied.as_object() else {
        return Err(ApplyError::Invalid(
            "the applied configuration must be an object".into(),
        ));
    };
    if manager.is_empty() {
        return Err(ApplyError::Invalid(
            "fieldManager: Required value: is required for apply patch".into(),
        ));
    }
    for k in ["apiVersion", "kind"] {
        if applied_map
            .get(k)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(ApplyError::Invalid(format!(
                "{k} must be set in the applied configuration"
            )));
        }
    }
    let gvk = gvk_of(applied);
    let empty = json!({});
    let live_v = live.unwrap_or(&empty);
    if !live_v.is_object() {
        return Err(ApplyError::Invalid(
            "the live object is not an object".into(),
        ));
    }
    let mut entries = entries_or_default(&gvk, live_v);
    let applied_set = field_set(&gvk, applied);
    let prev_set: BTreeSet<FieldPath> = entries
        .iter()
        .filter(|e| e.is(manager, "Apply"))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();

    // Conflicts: fields this apply sets to a different value that others own.
    let mut conflicts: Vec<Conflict> = Vec::new();
    let mut taken: BTreeSet<FieldPath> = BTreeSet::new();
    for p in &applied_set {
        if matches!(p.last(), Some(Elem::Key(_) | Elem::Value(_))) {
            continue;
        }
        let Some(live_val) = value_at(&gvk, live_v, p) else {
            continue;
        };
        if Some(live_val) == value_at(&gvk, applied, p) {
            continue;
        }
        for e in &entries {
            if e.manager == manager || !e.fields.contains(p) {
                continue;
            }
            conflicts.push(Conflict {
                manager: e.manager.clone(),
                operation: e.operation.clone(),
                api_version: e.api_version.clone(),
                field: render_path(p),
            });
            taken.insert(p.clone());
        }
    }
    conflicts.sort();
    conflicts.dedup();
    if !conflicts.is_empty() && !force {
        return Err(ApplyError::Conflict(conflicts));
    }

    let mut result = merge_applied(live_v, applied, Ty::root(&gvk));

    // Ownership moves for forced conflicts.
    for e in entries.iter_mut() {
        if e.manager != manager {
            e.fields.retain(|p| !taken.contains(p));
        }
    }
    // Fields this manager applied before but not now go, unless others own them.
    let others: BTreeSet<FieldPath> = entries
        .iter()
        .filter(|e| !e.is(manager, "Apply"))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    let mut dropped: Vec<&FieldPath> = prev_set
        .iter()
        .filter(|p| !applied_set.contains(*p) && !others.contains(*p))
        // Keep an item while another manager owns something inside it.
        .filter(|p| {
            !matches!(p.last(), Some(Elem::Key(_)))
                || !others.iter().any(|o| o.len() > p.len() && o.starts_with(p))
        })
        .collect();
    // Descendants of a dropped item go with it (removing its key fields first would
    // make the item unfindable).
    let dropped_items: Vec<FieldPath> = dropped
        .iter()
        .filter(|p| matches!(p.last(), Some(Elem::Key(_))))
        .map(|p| (*p).clone())
        .collect();
    dropped.retain(|p| {
        !dropped_items
            .iter()
            .any(|i| p.len() > i.len() && p.starts_with(i))
    });
    dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in dropped {
        if value_at(&gvk, &result, p).is_none() {
            continue;
        }
        remove_at(&gvk, &mut result, p);
        prune_empty_parents(&gvk, &mut result, p, live_v, &others, &applied_set);
    }

    entries.retain(|e| !e.is(manager, "Apply"));
    // Appliers go after Update managers, like upstream keeps them in write order.
    entries.push(Entry {
        manager: manager.to_string(),
        operation: "Apply".into(),
        api_version: gvk.api_version(),
        time: Some(now.to_string()),
        subresource: None,
        fields: applied_set,
    });
    // Nobody keeps fields the object no longer has.
    let present = field_set(&gvk, &result);
    for e in entries.iter_mut() {
        e.fields
            .retain(|p| present.contains(p) || value_at(&gvk, &result, p).is_some());
    }
    write_entries(&mut result, &entries);
    Ok(ApplyOutcome {
        object: result,
        created: live.is_none(),
        forced: if force { conflicts } else { Vec::new() },
    })
}

/// After removing `removed`, maps left empty by the removal (and owned by nobody) go
/// too, up to but not including top-level fields.
fn prune_empty_parents(
    gvk: &GroupVersionKind,
    obj: &mut Value,
    removed: &[Elem],
    live: &Value,
    others: &BTreeSet<FieldPath>,
    applied: &BTreeSet<FieldPath>,
) {
    let mut end = removed.len();
    while end > 2 {
        end -= 1;
        let parent = &removed[..end];
        if !matches!(parent.last(), Some(Elem::Field(_))) {
            return;
        }
        let empty = value_at(gvk, obj, parent)
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty);
        let owned = others.contains(parent) || applied.contains(parent);
        let was_empty = value_at(gvk, live, parent)
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty);
        if !empty || owned || was_empty {
            return;
        }
        remove_at(gvk, obj, parent);
    }
}

/// Merges an applied configuration into the live object: maps merge, keyed lists
/// merge by key (new items appended), sets union, other lists are replaced. Nulls in
/// the applied configuration set nothing.
fn merge_applied(live: &Value, applied: &Value, ty: Ty) -> Value {
    let (Some(lm), Some(am)) = (live.as_object(), applied.as_object()) else {
        return strip_nulls(applied);
    };
    let mut out = lm.clone();
    for (k, av) in am {
        if av.is_null() {
            continue;
        }
        let info = ty.field(k);
        let merged = match (out.get(k), av) {
            (Some(lv @ Value::Object(_)), Value::Object(_)) => merge_applied(lv, av, info.ty),
            (Some(Value::Array(litems)), Value::Array(aitems)) => {
                Value::Array(merge_applied_list(litems, aitems, info.apply_list, info.ty))
            }
            _ => strip_nulls(av),
        };
        out.insert(k.clone(), merged);
    }
    Value::Object(out)
}

fn merge_applied_list(live: &[Value], applied: &[Value], list: ListStrategy, ty: Ty) -> Vec<Value> {
    match list {
        ListStrategy::MergeKeys(keys)
            if applied.iter().all(|i| item_key(i, keys).is_some())
                && live.iter().all(|i| item_key(i, keys).is_some()) =>
        {
            let mut out = live.to_vec();
            for a in applied {
                let k = item_key(a, keys);
                match out.iter().position(|l| item_key(l, keys) == k) {
                    Some(i) => out[i] = merge_applied(&out[i], a, ty),
                    None => out.push(strip_nulls(a)),
                }
            }
            out
        }
        ListStrategy::MergeSet => {
            let mut out = live.to_vec();
            for a in applied {
                if !out.contains(a) {
                    out.push(a.clone());
                }
            }
            out
        }
        _ => applied.iter().map(strip_nulls).collect(),
    }
}

fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

/// Managers and operations recorded on `obj`, in order (`[("kubectl", "Apply")]`).
pub fn managers(obj: &Value) -> Vec<(String, String)> {
    read_entries(obj)
        .into_iter()
        .map(|e| (e.manager, e.operation))
        .collect()
}

/// The fields `manager` owns with `operation`, printed like upstream paths (sorted).
pub fn owned_fields(obj: &Value, manager: &str, operation: &str) -> Vec<String> {
    read_entries(obj)
        .into_iter()
        .filter(|e| e.manager == manager && e.operation == operation)
        .flat_map(|e| e.fields.into_iter())
        .map(|p| render_path(&p))
        .collect()
}
