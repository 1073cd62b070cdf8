//! What a container's config needs from outside the pod: env values from the downward
//! API, ConfigMaps and Secrets, and the pod's volumes prepared on disk. Failures are
//! messages for a `CreateContainerConfigError` waiting state (the worker retries).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, KeyToPath, Pod, Secret};
use kelp_cri_api::v1 as cri;
use kube::{Api, Client};

use super::spec;

/// Values of the pod known to the kubelet but not (yet) to the pod object.
#[derive(Debug, Clone, Default)]
pub struct PodContext {
    pub pod_ip: String,
    pub host_ip: String,
    pub node_name: String,
}

/// A `$(VAR)` reference expansion over the variables defined so far (upstream's rule:
/// `$$` escapes, unknown references stay as written).
pub fn expand(value: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// `metadata.labels['k']` → `Some(("labels", "k"))`.
fn subscript(path: &str) -> Option<(&str, &str)> {
    let (field, rest) = path.strip_prefix("metadata.")?.split_once("['")?;
    Some((field, rest.strip_suffix("']")?))
}

/// A downward API `fieldRef` value.
pub fn field_ref(pod: &Pod, ctx: &PodContext, path: &str) -> Result<String, String> {
    let spec = pod.spec.as_ref();
    Ok(match path {
        "metadata.name" => spec::name(pod).to_string(),
        "metadata.namespace" => spec::namespace(pod).to_string(),
        "metadata.uid" => spec::uid(pod).to_string(),
        "spec.nodeName" => spec
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| ctx.node_name.clone()),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => ctx.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => ctx.host_ip.clone(),
        other => match subscript(other) {
            Some(("labels", k)) => pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(k).cloned())
                .unwrap_or_default(),
            Some(("annotations", k)) => pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|l| l.get(k).cloned())
                .unwrap_or_default(),
            _ => return Err(format!("unsupported fieldRef fieldPath {other:?}")),
        },
    })
}

/// Fetches and caches ConfigMaps and Secrets of one namespace for one resolution.
struct Lookups<'a> {
    client: &'a Client,
    namespace: &'a str,
    config_maps: BTreeMap<String, Option<BTreeMap<String, String>>>,
    secrets: BTreeMap<String, Option<BTreeMap<String, String>>>,
}

impl<'a> Lookups<'a> {
    fn new(client: &'a Client, namespace: &'a str) -> Self {
        Lookups {
            client,
            namespace,
            config_maps: BTreeMap::new(),
            secrets: BTreeMap::new(),
        }
    }

    /// The ConfigMap's data (binaryData as lossy UTF-8), `None` if absent.
    async fn config_map(&mut self, name: &str) -> Result<Option<BTreeMap<String, String>>, String> {
        if let Some(v) = self.config_maps.get(name) {
            return Ok(v.clone());
        }
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), self.namespace);
        let v = api
            .get_opt(name)
            .await
            .map_err(|e| format!("configmap {name:?}: {e}"))?
            .map(|cm| {
                let mut data = cm.data.unwrap_or_default();
                for (k, b) in cm.binary_data.unwrap_or_default() {
                    data.insert(k, String::from_utf8_lossy(&b.0).into_owned());
                }
                data
            });
        self.config_maps.insert(name.to_string(), v.clone());
        Ok(v)
    }

    async fn config_map_bytes(
        &mut self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        Ok(self
            .config_map(name)
            .await?
            .map(|d| d.into_iter().map(|(k, v)| (k, v.into_bytes())).collect()))
    }

    /// The Secret's data (stringData merged), `None` if absent.
    async fn secret_bytes(
        &mut self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), self.namespace);
        let s = api
            .get_opt(name)
            .await
            .map_err(|e| format!("secret {name:?}: {e}"))?;
        Ok(s.map(|s| {
            let mut data: BTreeMap<String, Vec<u8>> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            for (k, v) in s.string_data.unwrap_or_default() {
                data.insert(k, v.into_bytes());
            }
            data
        }))
    }

    async fn secret(&mut self, name: &str) -> Result<Option<BTreeMap<String, String>>, String> {
        if let Some(v) = self.secrets.get(name) {
            return Ok(v.clone());
        }
        let v = self.secret_bytes(name).await?.map(|d| {
            d.into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                .collect()
        });
        self.secrets.insert(name.to_string(), v.clone());
        Ok(v)
    }
}

async fn env_value(
    l: &mut Lookups<'_>,
    pod: &Pod,
    ctx: &PodContext,
    vars: &BTreeMap<String, String>,
    e: &EnvVar,
) -> Result<Option<String>, String> {
    if let Some(v) = &e.value {
        return Ok(Some(expand(v, vars)));
    }
    let Some(from) = &e.value_from else {
        return Ok(Some(String::new()));
    };
    if let Some(f) = &from.field_ref {
        return field_ref(pod, ctx, &f.field_path).map(Some);
    }
    if let Some(r) = &from.config_map_key_ref {
        let optional = r.optional.unwrap_or(false);
        return match l.config_map(&r.name).await? {
            Some(d) => match d.get(&r.key) {
                Some(v) => Ok(Some(v.clone())),
                None if optional => Ok(None),
                None => Err(format!(
                    "couldn't find key {} in ConfigMap {}/{}",
                    r.key, l.namespace, r.name
                )),
            },
            None if optional => Ok(None),
            None => Err(format!("configmap {:?} not found", r.name)),
        };
    }
    if let Some(r) = &from.secret_key_ref {
        let optional = r.optional.unwrap_or(false);
        return match l.secret(&r.name).await? {
            Some(d) => match d.get(&r.key) {
                Some(v) => Ok(Some(v.clone())),
                None if optional => Ok(None),
                None => Err(format!(
                    "couldn't find key {} in Secret {}/{}",
                    r.key, l.namespace, r.name
                )),
            },
            None if optional => Ok(None),
            None => Err(format!("secret {:?} not found", r.name)),
        };
    }
    Err(format!(
        "env {:?}: resourceFieldRef is not supported yet",
        e.name
    ))
}

/// The container's environment: `envFrom` first, then `env` in order (later entries
/// win, `$(VAR)` expands over what came before), as upstream.
pub async fn resolve_env(
    client: &Client,
    pod: &Pod,
    c: &Container,
    ctx: &PodContext,
) -> Result<Vec<cri::KeyValue>, String> {
    let mut l = Lookups::new(client, spec::namespace(pod));
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut set = |vars: &mut BTreeMap<String, String>, k: String, v: String| {
        if !vars.contains_key(&k) {
            order.push(k.clone());
        }
        vars.insert(k, v);
    };
    for src in c.env_from.iter().flatten() {
        let prefix = src.prefix.clone().unwrap_or_default();
        let data = if let Some(r) = &src.config_map_ref {
            match l.config_map(&r.name).await? {
                Some(d) => d,
                None if r.optional.unwrap_or(false) => continue,
                None => return Err(format!("configmap {:?} not found", r.name)),
            }
        } else if let Some(r) = &src.secret_ref {
            match l.secret(&r.name).await? {
                Some(d) => d,
                None if r.optional.unwrap_or(false) => continue,
                None => return Err(format!("secret {:?} not found", r.name)),
            }
        } else {
            continue;
        };
        for (k, v) in data {
            set(&mut vars, format!("{prefix}{k}"), v);
        }
    }
    for e in c.env.iter().flatten() {
        if let Some(v) = env_value(&mut l, pod, ctx, &vars, e).await? {
            set(&mut vars, e.name.clone(), v);
        }
    }
    Ok(order
        .into_iter()
        .map(|k| cri::KeyValue {
            value: vars.get(&k).cloned().unwrap_or_default(),
            key: k,
        })
        .collect())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

/// Writes `files` (key → content) into `dir` (keys, or `items` key → path), replacing
/// what was there.
fn write_files(
    dir: &Path,
    files: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
) -> Result<(), String> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let wanted: Vec<(String, String)> = match items {
        Some(items) => items
            .iter()
            .map(|i| (i.key.clone(), i.path.clone()))
            .collect(),
        None => files.keys().map(|k| (k.clone(), k.clone())).collect(),
    };
    for (key, rel) in wanted {
        if rel.split('/').any(|p| p == ".." || p.is_empty()) {
            return Err(format!("invalid volume item path {rel:?}"));
        }
        let Some(content) = files.get(&key) else {
            return Err(format!("volume key {key:?} not found"));
        };
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, content).map_err(io(&path))?;
    }
    Ok(())
}

/// Prepares the pod's volumes under `<pod dir>/volumes/` and returns each volume's
/// host directory: emptyDir (created once, kept across restarts), configMap and
/// secret (written at each call: a container start sees current data), hostPath.
pub async fn prepare_volumes(
    client: &Client,
    pod: &Pod,
    pod_dir: &Path,
) -> Result<BTreeMap<String, PathBuf>, String> {
    let mut l = Lookups::new(client, spec::namespace(pod));
    let mut out = BTreeMap::new();
    let volumes = pod.spec.iter().flat_map(|s| s.volumes.iter().flatten());
    for v in volumes {
        let base = pod_dir.join("volumes");
        let dir = if v.empty_dir.is_some() {
            let d = base.join("kubernetes.io~empty-dir").join(&v.name);
            std::fs::create_dir_all(&d).map_err(io(&d))?;
            d
        } else if let Some(cm) = &v.config_map {
            let d = base.join("kubernetes.io~configmap").join(&v.name);
            match l.config_map_bytes(&cm.name).await? {
                Some(files) => write_files(&d, &files, cm.items.as_ref())?,
                None if cm.optional.unwrap_or(false) => write_files(&d, &BTreeMap::new(), None)?,
                None => return Err(format!("configmap {:?} not found", cm.name)),
            }
            d
        } else if let Some(s) = &v.secret {
            let d = base.join("kubernetes.io~secret").join(&v.name);
            let name = s.secret_name.clone().unwrap_or_default();
            match l.secret_bytes(&name).await? {
                Some(files) => write_files(&d, &files, s.items.as_ref())?,
                None if s.optional.unwrap_or(false) => write_files(&d, &BTreeMap::new(), None)?,
                None => return Err(format!("secret {name:?} not found")),
            }
            d
        } else if let Some(h) = &v.host_path {
            PathBuf::from(&h.path)
        } else {
            // Not supported yet (downwardAPI, projected, …): mounting it fails clearly.
            continue;
        };
        out.insert(v.name.clone(), dir);
    }
    Ok(out)
}

/// The CRI mounts of `c` over prepared `volumes`.
pub fn mounts(
    c: &Container,
    volumes: &BTreeMap<String, PathBuf>,
) -> Result<Vec<cri::Mount>, String> {
    c.volume_mounts
        .iter()
        .flatten()
        .map(|m| {
            let base = volumes.get(&m.name).ok_or_else(|| {
                format!(
                    "volume {:?} of mount {:?} is missing or of an unsupported type",
                    m.name, m.mount_path
                )
            })?;
            let host = match m.sub_path.as_deref().filter(|p| !p.is_empty()) {
                Some(sub) if sub.split('/').any(|p| p == "..") => {
                    return Err(format!("subPath {sub:?} must not contain '..'"))
                }
                Some(sub) => {
                    let p = base.join(sub);
                    std::fs::create_dir_all(&p).map_err(io(&p))?;
                    p
                }
                None => base.clone(),
            };
            Ok(cri::Mount {
                container_path: m.mount_path.clone(),
                host_path: host.display().to_string(),
                readonly: m.read_only.unwrap_or(false),
                ..Default::default()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_upstream_rules() {
        let vars: BTreeMap<String, String> = [("A".to_string(), "x".to_string())].into();
        assert_eq!(expand("$(A)-$(B)", &vars), "x-$(B)");
        assert_eq!(expand("$$(A)", &vars), "$(A)");
        assert_eq!(expand("a$b", &vars), "a$b");
        assert_eq!(expand("$(A", &vars), "$(A");
    }

    #[test]
    fn field_refs() {
        let mut p = Pod::default();
        p.metadata.name = Some("p".into());
        p.metadata.namespace = Some("ns".into());
        p.metadata.uid = Some("u".into());
        p.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        let ctx = PodContext {
            pod_ip: "10.0.0.5".into(),
            host_ip: "192.168.1.2".into(),
            node_name: "n1".into(),
        };
        let f = |path: &str| field_ref(&p, &ctx, path);
        assert_eq!(f("metadata.name").unwrap(), "p");
        assert_eq!(f("metadata.namespace").unwrap(), "ns");
        assert_eq!(f("metadata.uid").unwrap(), "u");
        assert_eq!(f("status.podIP").unwrap(), "10.0.0.5");
        assert_eq!(f("status.hostIP").unwrap(), "192.168.1.2");
        assert_eq!(f("spec.nodeName").unwrap(), "n1");
        assert_eq!(f("metadata.labels['app']").unwrap(), "web");
        assert!(f("spec.bogus").is_err());
    }
}
