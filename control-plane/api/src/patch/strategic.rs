//! Kubernetes strategic merge patch (upstream `apimachinery/pkg/util/strategicpatch`).

use serde_json::{Map, Value};

use super::schema::{ListStrategy, Ty};
use super::PatchError;

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVE: &str = "$deleteFromPrimitiveList/";

/// The result of merging a patch value into an original value.
enum Merged {
    Value(Value),
    /// `$patch: delete`: the key goes away.
    Delete,
}

/// Merges the patch map `patch` into `orig` (any value; non-maps count as absent).
pub(super) fn merge_map(
    orig: &Value,
    patch: &Map<String, Value>,
    ty: Ty,
) -> Result<Value, PatchError> {
    match merge_map_inner(orig, patch, ty)? {
        Merged::Value(v) => Ok(v),
        Merged::Delete => Ok(Value::Object(Map::new())),
    }
}

fn directive(m: &Map<String, Value>) -> Result<Option<&str>, PatchError> {
    match m.get(DIRECTIVE) {
        None => Ok(None),
        Some(Value::String(s)) if matches!(s.as_str(), "delete" | "replace" | "merge") => {
            Ok(Some(s.as_str()))
        }
        Some(other) => Err(PatchError::Invalid(format!(
            "unknown patch type: {other} in map: {}",
            Value::Object(m.clone())
        ))),
    }
}

fn string_list(field: &str, v: &Value) -> Result<Vec<Value>, PatchError> {
    match v {
        Value::Array(a) => Ok(a.clone()),
        Value::Null => Ok(Vec::new()),
        other => Err(PatchError::Invalid(format!(
            "{field} must be a list, got {other}"
        ))),
    }
}

fn merge_map_inner(orig: &Value, patch: &Map<String, Value>, ty: Ty) -> Result<Merged, PatchError> {
    match directive(patch)? {
        Some("delete") => return Ok(Merged::Delete),
        Some("replace") => {
            // The patch (without the directive) is the new map; directives below it
            // still apply against nothing.
            let mut p = patch.clone();
            p.remove(DIRECTIVE);
            return merge_map_inner(&Value::Null, &p, ty);
        }
        _ => {}
    }
    let mut result = orig.as_object().cloned().unwrap_or_default();

    // `$retainKeys`: drop every key of the original not listed.
    if let Some(keys) = patch.get(RETAIN_KEYS) {
        let keys = string_list(RETAIN_KEYS, keys)?;
        let keep: Vec<&str> = keys.iter().filter_map(Value::as_str).collect();
        result.retain(|k, _| keep.contains(&k.as_str()));
    }
    // `$deleteFromPrimitiveList/<field>`: remove values from the original list first.
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix(DELETE_PRIMITIVE) {
            let gone = string_list(k, v)?;
            if let Some(Value::Array(list)) = result.get_mut(field) {
                list.retain(|x| !gone.contains(x));
            }
        }
    }

    for (k, pv) in patch {
        if k.starts_with('$') {
            continue;
        }
        let info = ty.field(k);
        match pv {
            Value::Null => {
                result.remove(k);
            }
            Value::Object(pm) => {
                let o = result.get(k).unwrap_or(&Value::Null);
                match merge_map_inner(o, pm, info.ty)? {
                    Merged::Value(v) => {
                        result.insert(k.clone(), v);
                    }
                    Merged::Delete => {
                        result.remove(k);
                    }
                }
            }
            Value::Array(items) => {
                let o: &[Value] = result
                    .get(k)
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                let merged = merge_list(o, items, info.list, info.ty)?;
                result.insert(k.clone(), Value::Array(merged));
            }
            other => {
                result.insert(k.clone(), other.clone());
            }
        }
    }

    // `$setElementOrder/<field>`: order the merged list like the client's list.
    for (k, order) in patch {
        if let Some(field) = k.strip_prefix(SET_ORDER) {
            let order = string_list(k, order)?;
            let original: &[Value] = orig
                .get(field)
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let strategy = ty.field(field).list;
            if let Some(Value::Array(list)) = result.get_mut(field) {
                *list = set_element_order(list, &order, original, strategy);
            }
        }
    }
    Ok(Merged::Value(Value::Object(result)))
}

/// A patch value placed where the original has nothing: nulls and directives are
/// resolved against an empty original.
fn fresh(v: &Value, ty: Ty, strategy: ListStrategy) -> Result<Option<Value>, PatchError> {
    Ok(match v {
        Value::Object(m) => match merge_map_inner(&Value::Null, m, ty)? {
            Merged::Value(v) => Some(v),
            Merged::Delete => None,
        },
        Value::Array(items) => Some(Value::Array(merge_list(&[], items, strategy, ty)?)),
        other => Some(other.clone()),
    })
}

fn merge_list(
    orig: &[Value],
    patch: &[Value],
    strategy: ListStrategy,
    item_ty: Ty,
) -> Result<Vec<Value>, PatchError> {
    match strategy {
        ListStrategy::Replace => Ok(patch.to_vec()),
        ListStrategy::MergeSet => {
            // `[{"$patch": "replace"}, …]` is not valid for scalars; upstream rejects maps here.
            if let Some(m) = patch.iter().find(|v| v.is_object()) {
                if m.get(DIRECTIVE).and_then(Value::as_str) == Some("replace") {
                    return Ok(patch.iter().filter(|v| !v.is_object()).cloned().collect());
                }
                return Err(PatchError::Invalid(format!(
                    "unable to merge a map into a list of scalars: {m}"
                )));
            }
            let mut out = orig.to_vec();
            for v in patch {
                if !out.contains(v) {
                    out.push(v.clone());
                }
            }
            Ok(out)
        }
        ListStrategy::MergeKeys(keys) => {
            let key = keys.first().copied().unwrap_or("name");
            merge_keyed(orig, patch, key, item_ty)
        }
    }
}

fn merge_keyed(
    orig: &[Value],
    patch: &[Value],
    key: &str,
    item_ty: Ty,
) -> Result<Vec<Value>, PatchError> {
    // A bare `{"$patch": "replace"}` item replaces the whole list with the others.
    let replace_all = patch.iter().any(|p| {
        p.as_object().is_some_and(|m| {
            m.get(DIRECTIVE).and_then(Value::as_str) == Some("replace") && !m.contains_key(key)
        })
    });
    let base: &[Value] = if replace_all { &[] } else { orig };
    let mut out = base.to_vec();
    for p in patch {
        let Some(pm) = p.as_object() else {
            return Err(PatchError::Invalid(format!(
                "unable to merge a scalar ({p}) into a list of maps with merge key {key:?}"
            )));
        };
        let d = directive(pm)?;
        let Some(kv) = pm.get(key) else {
            if d.is_some() && pm.len() == 1 {
                // A list-level directive (`replace` handled above, `merge` is the default).
                continue;
            }
            return Err(PatchError::Invalid(format!(
                "map: {p} does not contain declared merge key: {key}"
            )));
        };
        let pos = out.iter().position(|o| o.get(key) == Some(kv));
        match (d, pos) {
            (Some("delete"), Some(i)) => {
                out.remove(i);
            }
            (Some("delete"), None) => {}
            (_, Some(i)) => match merge_map_inner(&out[i], pm, item_ty)? {
                Merged::Value(v) => out[i] = v,
                Merged::Delete => {
                    out.remove(i);
                }
            },
            (_, None) => {
                if let Some(v) = fresh(p, item_ty, ListStrategy::Replace)? {
                    out.push(v);
                }
            }
        }
    }
    Ok(out)
}

/// Upstream `normalizeElementOrder`: items named in `order` come in that order; the
/// others keep their relative server order and are interleaved by server position.
fn set_element_order(
    merged: &[Value],
    order: &[Value],
    server: &[Value],
    strategy: ListStrategy,
) -> Vec<Value> {
    let ident = |v: &Value| -> Value {
        match strategy.merge_key() {
            Some(k) => v.get(k).cloned().unwrap_or(Value::Null),
            None => v.clone(),
        }
    };
    let order_ids: Vec<Value> = order.iter().map(ident).collect();
    let server_ids: Vec<Value> = server.iter().map(ident).collect();
    let server_pos = |v: &Value| server_ids.iter().position(|s| *s == ident(v));
    let mut in_patch: Vec<(usize, Value)> = Vec::new();
    let mut server_only: Vec<Value> = Vec::new();
    for v in merged {
        match order_ids.iter().position(|o| *o == ident(v)) {
            Some(i) => in_patch.push((i, v.clone())),
            None => server_only.push(v.clone()),
        }
    }
    in_patch.sort_by_key(|(i, _)| *i);
    let right: Vec<Value> = in_patch.into_iter().map(|(_, v)| v).collect();
    server_only.sort_by_key(|v| server_pos(v).unwrap_or(usize::MAX));
    let left = server_only;
    // Upstream `mergeSortedSlice`.
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(left.len() + right.len());
    while i < left.len() || j < right.len() {
        if i >= left.len() {
            out.push(right[j].clone());
            j += 1;
        } else if j >= right.len() {
            out.push(left[i].clone());
            i += 1;
        } else {
            match (server_pos(&left[i]), server_pos(&right[j])) {
                (Some(l), Some(r)) if l < r => {
                    out.push(left[i].clone());
                    i += 1;
                }
                _ => {
                    out.push(right[j].clone());
                    j += 1;
                }
            }
        }
    }
    out
}
