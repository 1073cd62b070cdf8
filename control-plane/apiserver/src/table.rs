//! `meta.k8s.io/v1` Table responses built from the kind's printer columns.

use chrono::Utc;
use serde_json::{json, Map, Value};

use kelp_api::registry::ResourceInfo;
use kelp_api::table::{columns, row};

use crate::request::Query;

/// A Table of `objects`; `includeObject` picks what each row carries.
pub fn table(
    info: &ResourceInfo,
    objects: &[Value],
    q: &Query,
    revision: Option<i64>,
    next: Option<&str>,
) -> Value {
    let now = Utc::now();
    let cols: Vec<Value> = columns(&info.gvk).iter().map(|c| c.to_json()).collect();
    let include = q.get("includeObject").unwrap_or("Metadata");
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut r = json!({"cells": row(&info.gvk, o, now)});
            match include {
                "None" => {}
                "Object" => {
                    r["object"] = o.clone();
                }
                _ => {
                    r["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o.get("metadata").cloned().unwrap_or(Value::Object(Map::new())),
                    });
                }
            }
            r
        })
        .collect();
    let mut meta = Map::new();
    if let Some(r) = revision {
        meta.insert("resourceVersion".into(), json!(r.to_string()));
    }
    if let Some(n) = next {
        meta.insert("continue".into(), json!(n));
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": cols, "rows": rows})
}
