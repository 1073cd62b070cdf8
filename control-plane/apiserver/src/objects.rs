//! Objects in the store: keys, encoding, and the resource registry lookup.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use kelp_api::builtin;
use kelp_api::registry::ResourceInfo;
use kelp_storage::KeyValue;

/// Decodes a stored value, setting `metadata.resourceVersion` from the store revision
/// (the store never holds it: the revision is the version).
pub fn decode(kv: &KeyValue) -> Result<Value, serde_json::Error> {
    let mut v: Value = serde_json::from_slice(&kv.value)?;
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert(
            "resourceVersion".into(),
            Value::String(kv.mod_revision.to_string()),
        );
    }
    Ok(v)
}

/// Encodes an object for the store, without its resourceVersion.
pub fn encode(v: &Value) -> Vec<u8> {
    serde_json::to_vec(&WithoutVersion(v)).unwrap_or_default()
}

/// Serializes an object as it is but for `metadata.resourceVersion` (no copy of the
/// object made to remove it).
struct WithoutVersion<'a>(&'a Value);

impl Serialize for WithoutVersion<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Some(top) = self.0.as_object() else {
            return self.0.serialize(s);
        };
        let mut map = s.serialize_map(Some(top.len()))?;
        for (k, v) in top {
            match (k.as_str(), v.as_object()) {
                ("metadata", Some(meta)) => {
                    map.serialize_entry(k, &MetadataWithoutVersion(meta))?
                }
                _ => map.serialize_entry(k, v)?,
            }
        }
        map.end()
    }
}

struct MetadataWithoutVersion<'a>(&'a serde_json::Map<String, Value>);

impl Serialize for MetadataWithoutVersion<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let fields = self.0.iter().filter(|(k, _)| *k != "resourceVersion");
        let mut map = s.serialize_map(None)?;
        for (k, v) in fields {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Where a resource's objects live.
pub fn key(info: &ResourceInfo, namespace: Option<&str>, name: &str) -> String {
    let prefix = builtin::storage_prefix(info);
    match namespace {
        Some(ns) if info.namespaced => format!("{prefix}{ns}/{name}"),
        _ => format!("{prefix}{name}"),
    }
}

/// The prefix of a list (all namespaces when `namespace` is `None`).
pub fn list_prefix(info: &ResourceInfo, namespace: Option<&str>) -> String {
    let prefix = builtin::storage_prefix(info);
    match namespace {
        Some(ns) if info.namespaced => format!("{prefix}{ns}/"),
        _ => prefix,
    }
}

/// The table of served resources; kinds can be added at run time.
#[derive(Default)]
pub struct Registry {
    inner: RwLock<RegistryInner>,
}

#[derive(Default)]
struct RegistryInner {
    all: Vec<Arc<ResourceInfo>>,
    by_path: HashMap<(String, String, String), Arc<ResourceInfo>>,
}

impl Registry {
    pub fn with_builtins() -> Self {
        let r = Registry::default();
        for info in builtin::resources() {
            r.add(info);
        }
        r
    }

    /// Adds (or replaces) a resource.
    pub fn add(&self, info: ResourceInfo) {
        let info = Arc::new(info);
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let k = (
            info.gvk.group.clone(),
            info.gvk.version.clone(),
            info.plural.clone(),
        );
        inner.all.retain(|i| {
            (
                i.gvk.group.as_str(),
                i.gvk.version.as_str(),
                i.plural.as_str(),
            ) != (k.0.as_str(), k.1.as_str(), k.2.as_str())
        });
        inner.all.push(info.clone());
        inner.by_path.insert(k, info);
    }

    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceInfo>> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .by_path
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<ResourceInfo>> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .all
            .clone()
    }

    /// The resource holding objects of `kind` in `group`.
    pub fn by_kind(&self, group: &str, kind: &str) -> Option<Arc<ResourceInfo>> {
        self.all()
            .into_iter()
            .find(|i| i.gvk.group == group && i.gvk.kind == kind && !builtin::is_virtual(i))
    }

    /// Groups with their versions, in registration order (core group `""` included).
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for i in self.all() {
            match out.iter_mut().find(|(g, _)| *g == i.gvk.group) {
                Some((_, vs)) => {
                    if !vs.contains(&i.gvk.version) {
                        vs.push(i.gvk.version.clone());
                    }
                }
                None => out.push((i.gvk.group.clone(), vec![i.gvk.version.clone()])),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn encode_drops_only_the_resource_version() {
        let obj = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "a", "resourceVersion": "42", "labels": {"resourceVersion": "x"}},
            "spec": {"resourceVersion": "kept"},
        });
        let back: Value = serde_json::from_slice(&encode(&obj)).unwrap();
        assert_eq!(
            back,
            json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "a", "labels": {"resourceVersion": "x"}},
                "spec": {"resourceVersion": "kept"},
            })
        );
        let kv = KeyValue {
            key: "/registry/pods/ns/a".into(),
            value: encode(&obj),
            create_revision: 40,
            mod_revision: 42,
        };
        assert_eq!(decode(&kv).unwrap(), obj);
    }
}
