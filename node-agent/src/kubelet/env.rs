//! What a container's config needs from outside the pod: env values from the downward
//! API, ConfigMaps and Secrets, and the pod's volumes prepared on disk. Failures are
//! messages for a `CreateContainerConfigError` waiting state (the worker retries).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, Pod, Secret, Service};
use kelp_cri_api::v1 as cri;
use kube::{Api, Client};

use super::spec;

/// Values of the pod known to the kubelet but not (yet) to the pod object.
#[derive(Debug, Clone, Default)]
pub struct PodContext {
    pub pod_ip: String,
    pub host_ip: String,
    pub node_name: String,
    /// The node's allocatable CPU (cores) and memory (bytes): what `limits.*` of a
    /// container without limits resolve to.
    pub allocatable_cpu: f64,
    pub allocatable_memory: f64,
    /// Service links (`{SVC}_SERVICE_HOST` …): defined before the container's own
    /// variables, which may refer to or override them.
    pub service_env: Vec<(String, String)>,
}

/// Services known to the node (a reflector): service link variables for the kubelet
/// and answers for cluster DNS share one watch.
#[derive(Clone)]
pub struct ServiceCache {
    store: kube::runtime::reflector::Store<Service>,
}

impl std::fmt::Debug for ServiceCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceCache").finish_non_exhaustive()
    }
}

/// Starts a reflector over every `K` in the cluster (runs until the process ends;
/// watch failures are logged and retried with back-off).
pub fn reflect<K>(client: Client) -> kube::runtime::reflector::Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    use futures::StreamExt;
    use kube::runtime::{reflector, watcher, WatchStreamExt};
    let (store, writer) = reflector::store::<K>();
    let stream = reflector::reflector(
        writer,
        watcher::watcher(Api::<K>::all(client), watcher::Config::default()),
    )
    .default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying");
            }
        }
    });
    store
}

impl ServiceCache {
    /// Starts a reflector over every Service (runs until the process ends).
    pub fn start(client: Client) -> Self {
        ServiceCache {
            store: reflect(client),
        }
    }

    /// The reflector's store (every Service of the cluster).
    pub fn store(&self) -> &kube::runtime::reflector::Store<Service> {
        &self.store
    }

    /// The service link variables for `pod` (empty until the first list arrived).
    pub fn env_for(&self, pod: &Pod) -> Vec<(String, String)> {
        let links = pod
            .spec
            .as_ref()
            .and_then(|s| s.enable_service_links)
            .unwrap_or(true);
        service_env(&self.store.state(), spec::namespace(pod), links)
    }
}

fn env_name(s: &str) -> String {
    s.to_uppercase().replace('-', "_")
}

/// Upstream's service link variables (kubelet `getServiceEnvVarMap` +
/// `envvars.FromServices`): the `kubernetes` Service of `default` always, the
/// Services of `namespace` when `enable_service_links`; Services without a ClusterIP
/// (headless, ExternalName) give none. Sorted by Service name.
pub fn service_env(
    services: &[std::sync::Arc<Service>],
    namespace: &str,
    enable_service_links: bool,
) -> Vec<(String, String)> {
    let mut chosen: BTreeMap<&str, &Service> = BTreeMap::new();
    for svc in services {
        let ip = svc
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.as_deref())
            .unwrap_or("");
        if ip.is_empty() || ip == "None" {
            continue;
        }
        let name = svc.metadata.name.as_deref().unwrap_or("");
        let ns = svc.metadata.namespace.as_deref().unwrap_or("");
        if ns == "default" && name == "kubernetes" {
            chosen.entry(name).or_insert(svc);
        } else if ns == namespace && enable_service_links {
            chosen.insert(name, svc);
        }
    }
    let mut out = vec![];
    for (name, svc) in chosen {
        let spec = svc.spec.as_ref().expect("checked above");
        let ip = spec.cluster_ip.clone().unwrap_or_default();
        let ports = spec.ports.as_deref().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        let prefix = env_name(name);
        out.push((format!("{prefix}_SERVICE_HOST"), ip.clone()));
        out.push((format!("{prefix}_SERVICE_PORT"), first.port.to_string()));
        for p in ports {
            if let Some(n) = p.name.as_deref().filter(|n| !n.is_empty()) {
                out.push((
                    format!("{prefix}_SERVICE_PORT_{}", env_name(n)),
                    p.port.to_string(),
                ));
            }
        }
        let host = |port: i32| {
            if ip.contains(':') {
                format!("[{ip}]:{port}")
            } else {
                format!("{ip}:{port}")
            }
        };
        for (i, p) in ports.iter().enumerate() {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            let lower = proto.to_lowercase();
            let url = format!("{lower}://{}", host(p.port));
            if i == 0 {
                out.push((format!("{prefix}_PORT"), url.clone()));
            }
            let pp = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
            out.push((pp.clone(), url));
            out.push((format!("{pp}_PROTO"), lower));
            out.push((format!("{pp}_PORT"), p.port.to_string()));
            out.push((format!("{pp}_ADDR"), ip.clone()));
        }
    }
    out
}

/// A downward API `resourceFieldRef` value of container `c`: `limits.cpu`,
/// `requests.memory`, … divided by `divisor` and rounded up, as upstream (CPU by
/// millicores, so `1m` divisors give millicores). Absent limits fall back to the
/// node's allocatable; absent requests to the limits set on the container, else 0.
pub fn resource_field_ref(
    c: &Container,
    ctx: &PodContext,
    resource: &str,
    divisor: Option<&str>,
) -> Result<String, String> {
    let get = |which: &str, name: &str| -> Option<f64> {
        let r = c.resources.as_ref()?;
        let m = if which == "limits" {
            r.limits.as_ref()
        } else {
            r.requests.as_ref()
        }?;
        spec::parse_quantity(&m.get(name)?.0)
    };
    let (which, name) = resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported container resource: {resource:?}"))?;
    let value = match (which, name) {
        ("limits", "cpu") => get("limits", "cpu").unwrap_or(ctx.allocatable_cpu),
        ("limits", "memory") => get("limits", "memory").unwrap_or(ctx.allocatable_memory),
        ("limits", "ephemeral-storage") => get("limits", "ephemeral-storage").unwrap_or(0.0),
        ("requests", n @ ("cpu" | "memory" | "ephemeral-storage")) => get("requests", n)
            .or_else(|| get("limits", n))
            .unwrap_or(0.0),
        _ => return Err(format!("unsupported container resource: {resource:?}")),
    };
    let divisor = match divisor.filter(|d| !d.is_empty()) {
        Some(d) => spec::parse_quantity(d)
            .filter(|d| *d > 0.0)
            .ok_or_else(|| format!("invalid divisor {d:?}"))?,
        None => 1.0,
    };
    let n = if name == "cpu" {
        // Millicores over millicores, as upstream's MilliValue arithmetic.
        ((value * 1000.0).ceil() / (divisor * 1000.0).round()).ceil()
    } else {
        (value.ceil() / divisor.round().max(1.0)).ceil()
    };
    Ok(format!("{}", n as i64))
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

/// `metadata.labels`/`annotations` as a downwardAPI volume file holds them:
/// `key="value"` lines, sorted, values quoted as Go's `%q`.
pub fn format_map(m: Option<&BTreeMap<String, String>>) -> String {
    m.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
        .collect::<Vec<_>>()
        .join("\n")
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
        "metadata.labels" => format_map(pod.metadata.labels.as_ref()),
        "metadata.annotations" => format_map(pod.metadata.annotations.as_ref()),
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

/// The data of a ConfigMap (`data` and `binaryData`) or Secret (`data` and
/// `stringData`), `None` when the object does not exist.
type ObjectData = Option<BTreeMap<String, Vec<u8>>>;

/// (kind, namespace, name).
type ObjectKey = (&'static str, String, String);

/// ConfigMaps and Secrets read recently, shared by the node's pod workers, so the
/// periodic volume refresh of many pods reading one object costs one GET per period.
#[derive(Default)]
pub struct ObjectCache {
    entries: std::sync::Mutex<HashMap<ObjectKey, (Instant, ObjectData)>>,
}

impl ObjectCache {
    fn get(&self, key: &ObjectKey, max_age: Duration) -> Option<ObjectData> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|(at, _)| at.elapsed() <= max_age)
            .map(|(_, d)| d.clone())
    }

    fn put(&self, key: ObjectKey, data: ObjectData) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // Old entries go when the cache is touched, so objects no pod reads are dropped.
        entries.retain(|_, (at, _)| at.elapsed() < Duration::from_secs(300));
        entries.insert(key, (Instant::now(), data));
    }
}

/// Fetches ConfigMaps and Secrets of one namespace for one resolution (each object
/// once), optionally through an [`ObjectCache`] that may answer with data up to
/// `max_age` old.
pub(super) struct Lookups<'a> {
    client: &'a Client,
    namespace: &'a str,
    shared: Option<(&'a ObjectCache, Duration)>,
    local: BTreeMap<(&'static str, String), ObjectData>,
}

impl<'a> Lookups<'a> {
    /// Fresh reads (a container start sees current data); they refresh `cache`.
    pub(super) fn new(
        client: &'a Client,
        namespace: &'a str,
        cache: Option<&'a ObjectCache>,
    ) -> Self {
        Lookups {
            client,
            namespace,
            shared: cache.map(|c| (c, Duration::ZERO)),
            local: BTreeMap::new(),
        }
    }

    /// Reads that accept cached data up to `max_age` old (periodic refreshes).
    pub(super) fn cached(
        client: &'a Client,
        namespace: &'a str,
        cache: &'a ObjectCache,
        max_age: Duration,
    ) -> Self {
        Lookups {
            client,
            namespace,
            shared: Some((cache, max_age)),
            local: BTreeMap::new(),
        }
    }

    async fn fetch(&mut self, kind: &'static str, name: &str) -> Result<ObjectData, String> {
        if let Some(v) = self.local.get(&(kind, name.to_string())) {
            return Ok(v.clone());
        }
        let key = (kind, self.namespace.to_string(), name.to_string());
        let cached = self
            .shared
            .filter(|(_, age)| !age.is_zero())
            .and_then(|(c, age)| c.get(&key, age));
        let v = match cached {
            Some(v) => v,
            None => {
                let v = if kind == "configmap" {
                    let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), self.namespace);
                    api.get_opt(name)
                        .await
                        .map_err(|e| format!("configmap {name:?}: {e}"))?
                        .map(|cm| {
                            let mut data: BTreeMap<String, Vec<u8>> = cm
                                .data
                                .unwrap_or_default()
                                .into_iter()
                                .map(|(k, v)| (k, v.into_bytes()))
                                .collect();
                            for (k, b) in cm.binary_data.unwrap_or_default() {
                                data.insert(k, b.0);
                            }
                            data
                        })
                } else {
                    let api: Api<Secret> = Api::namespaced(self.client.clone(), self.namespace);
                    api.get_opt(name)
                        .await
                        .map_err(|e| format!("secret {name:?}: {e}"))?
                        .map(|s| super::pull_secrets::secret_data(s).1)
                };
                if let Some((c, _)) = self.shared {
                    c.put(key, v.clone());
                }
                v
            }
        };
        self.local.insert((kind, name.to_string()), v.clone());
        Ok(v)
    }

    /// The ConfigMap's `data` and `binaryData` as bytes.
    pub(super) async fn config_map_bytes(&mut self, name: &str) -> Result<ObjectData, String> {
        self.fetch("configmap", name).await
    }

    /// The Secret's `data` (with `stringData` merged).
    pub(super) async fn secret_bytes(&mut self, name: &str) -> Result<ObjectData, String> {
        self.fetch("secret", name).await
    }

    fn text(d: ObjectData) -> Option<BTreeMap<String, String>> {
        d.map(|d| {
            d.into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                .collect()
        })
    }

    /// As text (env values): binary values as lossy UTF-8.
    async fn config_map(&mut self, name: &str) -> Result<Option<BTreeMap<String, String>>, String> {
        Ok(Self::text(self.config_map_bytes(name).await?))
    }

    async fn secret(&mut self, name: &str) -> Result<Option<BTreeMap<String, String>>, String> {
        Ok(Self::text(self.secret_bytes(name).await?))
    }
}

async fn env_value(
    l: &mut Lookups<'_>,
    pod: &Pod,
    c: &Container,
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
    if let Some(r) = &from.resource_field_ref {
        let target = match r.container_name.as_deref().filter(|n| !n.is_empty()) {
            Some(n) => pod
                .spec
                .iter()
                .flat_map(|s| {
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                })
                .find(|x| x.name == n)
                .ok_or_else(|| format!("env {:?}: no container {n:?}", e.name))?,
            None => c,
        };
        let divisor = r.divisor.as_ref().map(|d| d.0.as_str());
        return resource_field_ref(target, ctx, &r.resource, divisor).map(Some);
    }
    Err(format!("env {:?}: unsupported valueFrom", e.name))
}

/// The container's environment: `envFrom` first, then `env` in order (later entries
/// win, `$(VAR)` expands over what came before), as upstream.
pub async fn resolve_env(
    client: &Client,
    cache: Option<&ObjectCache>,
    pod: &Pod,
    c: &Container,
    ctx: &PodContext,
) -> Result<Vec<cri::KeyValue>, String> {
    let mut l = Lookups::new(client, spec::namespace(pod), cache);
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut set = |vars: &mut BTreeMap<String, String>, k: String, v: String| {
        if !vars.contains_key(&k) {
            order.push(k.clone());
        }
        vars.insert(k, v);
    };
    for (k, v) in &ctx.service_env {
        set(&mut vars, k.clone(), v.clone());
    }
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
        if let Some(v) = env_value(&mut l, pod, c, ctx, &vars, e).await? {
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
        p.metadata.annotations = Some([("a/b".to_string(), "v".to_string())].into());
        p.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            service_account_name: Some("sa".into()),
            ..Default::default()
        });
        let ctx = PodContext {
            pod_ip: "10.0.0.5".into(),
            host_ip: "192.168.1.2".into(),
            node_name: "n1".into(),
            ..Default::default()
        };
        let f = |path: &str| field_ref(&p, &ctx, path);
        assert_eq!(f("metadata.name").unwrap(), "p");
        assert_eq!(f("metadata.namespace").unwrap(), "ns");
        assert_eq!(f("metadata.uid").unwrap(), "u");
        assert_eq!(f("status.podIP").unwrap(), "10.0.0.5");
        assert_eq!(f("status.hostIP").unwrap(), "192.168.1.2");
        assert_eq!(f("spec.nodeName").unwrap(), "n1");
        assert_eq!(f("metadata.labels['app']").unwrap(), "web");
        assert_eq!(f("metadata.labels['absent']").unwrap(), "");
        assert_eq!(f("metadata.labels").unwrap(), "app=\"web\"");
        assert_eq!(f("metadata.annotations['a/b']").unwrap(), "v");
        assert_eq!(f("spec.serviceAccountName").unwrap(), "sa");
        assert!(f("spec.bogus").is_err());
    }

    #[test]
    fn resource_field_refs_default_as_upstream() {
        use k8s_openapi::api::core::v1::ResourceRequirements;
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        let q = |v: &str| Quantity(v.into());
        let c = Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                limits: Some(
                    [
                        ("cpu".to_string(), q("500m")),
                        ("memory".to_string(), q("128Mi")),
                    ]
                    .into(),
                ),
                requests: Some([("cpu".to_string(), q("250m"))].into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let bare = Container::default();
        let ctx = PodContext {
            allocatable_cpu: 2.0,
            allocatable_memory: 8.0 * 1024.0 * 1024.0 * 1024.0,
            ..Default::default()
        };
        let cases: Vec<(&Container, &str, Option<&str>, &str)> = vec![
            (&c, "limits.cpu", None, "1"), // 0.5 core rounds up
            (&c, "limits.cpu", Some("1m"), "500"),
            (&c, "requests.cpu", Some("1m"), "250"),
            (&c, "limits.memory", None, "134217728"),
            (&c, "limits.memory", Some("1Mi"), "128"),
            (&c, "requests.memory", Some("1Mi"), "128"), // requests default to limits
            (&bare, "limits.cpu", None, "2"),            // node allocatable
            (&bare, "limits.memory", Some("1Gi"), "8"),
            (&bare, "requests.cpu", None, "0"),
        ];
        for (c, res, div, want) in cases {
            assert_eq!(
                resource_field_ref(c, &ctx, res, div).unwrap(),
                want,
                "{} {res} {div:?}",
                c.name
            );
        }
        assert!(resource_field_ref(&c, &ctx, "limits.gpu", None).is_err());
        assert!(resource_field_ref(&c, &ctx, "limits.cpu", Some("0")).is_err());
    }

    #[test]
    fn the_object_cache_answers_within_max_age() {
        let c = ObjectCache::default();
        let key = ("configmap", "ns".to_string(), "cm".to_string());
        assert_eq!(c.get(&key, Duration::from_secs(5)), None);
        let data: ObjectData = Some([("k".to_string(), b"v".to_vec())].into());
        c.put(key.clone(), data.clone());
        assert_eq!(c.get(&key, Duration::from_secs(5)), Some(data));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.get(&key, Duration::from_millis(1)), None);
        // An absent object is cached as absent.
        c.put(key.clone(), None);
        assert_eq!(c.get(&key, Duration::from_secs(5)), Some(None));
    }

    #[test]
    fn service_links_as_upstream() {
        let svc = |ns: &str, name: &str, ip: &str, ports: serde_json::Value| {
            std::sync::Arc::new(
                serde_json::from_value::<Service>(serde_json::json!({
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {"clusterIP": ip, "ports": ports}
                }))
                .unwrap(),
            )
        };
        let all = vec![
            svc(
                "default",
                "kubernetes",
                "10.43.0.1",
                serde_json::json!([{"name": "https", "port": 443}]),
            ),
            svc(
                "web",
                "my-svc",
                "10.43.0.20",
                serde_json::json!([
                    {"port": 80},
                    {"name": "dns-udp", "port": 53, "protocol": "UDP"}
                ]),
            ),
            svc("web", "headless", "None", serde_json::json!([{"port": 80}])),
            svc(
                "other",
                "elsewhere",
                "10.43.0.30",
                serde_json::json!([{"port": 80}]),
            ),
        ];
        let env: BTreeMap<String, String> = service_env(&all, "web", true).into_iter().collect();
        let expect = [
            ("KUBERNETES_SERVICE_HOST", "10.43.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
            ("KUBERNETES_PORT", "tcp://10.43.0.1:443"),
            ("KUBERNETES_PORT_443_TCP", "tcp://10.43.0.1:443"),
            ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
            ("KUBERNETES_PORT_443_TCP_PORT", "443"),
            ("KUBERNETES_PORT_443_TCP_ADDR", "10.43.0.1"),
            ("MY_SVC_SERVICE_HOST", "10.43.0.20"),
            ("MY_SVC_SERVICE_PORT", "80"),
            ("MY_SVC_SERVICE_PORT_DNS_UDP", "53"),
            ("MY_SVC_PORT", "tcp://10.43.0.20:80"),
            ("MY_SVC_PORT_80_TCP", "tcp://10.43.0.20:80"),
            ("MY_SVC_PORT_53_UDP", "udp://10.43.0.20:53"),
            ("MY_SVC_PORT_53_UDP_PROTO", "udp"),
            ("MY_SVC_PORT_53_UDP_PORT", "53"),
            ("MY_SVC_PORT_53_UDP_ADDR", "10.43.0.20"),
        ];
        for (k, v) in expect {
            assert_eq!(env.get(k).map(String::as_str), Some(v), "{k}");
        }
        assert!(!env
            .keys()
            .any(|k| k.starts_with("HEADLESS") || k.starts_with("ELSEWHERE")));
        // enableServiceLinks: false keeps only the master service.
        let env = service_env(&all, "web", false);
        assert!(env.iter().all(|(k, _)| k.starts_with("KUBERNETES_")));
        assert_eq!(env.len(), 8);
    }
}
