//! Objects in the store: keys, encoding, and the resource registry lookup.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

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
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    serde_json::to_vec(&v).unwrap_or_default()
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
