//! Node registration and heartbeat: the Node object (labels, capacity, addresses,
//! nodeInfo, runtime handlers, conditions) and the Lease in `kube-node-lease` that
//! says the node is alive.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeRuntimeHandler,
    NodeRuntimeHandlerFeatures, NodeSpec, NodeStatus, NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tracing::{debug, info, warn};

use super::KubeletConfig;

/// The kubelet version the node reports (the API level Kelp follows).
pub const KUBELET_VERSION: &str = "v1.32.0-kelp";
/// Where node leases live.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// The taint a node registers with under `--cloud-provider external`; the
/// cloud-controller-manager removes it once it initialized the Node.
pub const UNINITIALIZED_TAINT: &str = "node.cloudprovider.kubernetes.io/uninitialized";
/// The conditions this kubelet writes; others on the Node (the route controller's
/// `NetworkUnavailable`) are kept as they are.
const OWN_CONDITIONS: &[&str] = &["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"];

/// Parses upstream's `--register-with-taints` syntax: `KEY[=VALUE]:EFFECT`,
/// comma-separated.
pub fn parse_taints(spec: &str) -> Result<Vec<Taint>, String> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (kv, effect) = item
            .rsplit_once(':')
            .ok_or_else(|| format!("taint {item:?}: want KEY[=VALUE]:EFFECT"))?;
        if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            return Err(format!(
                "taint {item:?}: effect {effect:?} is not NoSchedule, PreferNoSchedule or NoExecute"
            ));
        }
        let (key, value) = match kv.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (kv, None),
        };
        if key.is_empty() {
            return Err(format!("taint {item:?}: empty key"));
        }
        out.push(Taint {
            key: key.into(),
            value,
            effect: effect.into(),
            time_added: None,
        });
    }
    Ok(out)
}

/// With an external cloud provider the addresses are the provider's once the Node
/// has any (upstream's kubelet does the same): left out of the status patch, they
/// stay as they are.
pub fn leave_provider_addresses(
    cfg: &KubeletConfig,
    old: Option<&NodeStatus>,
    status: &mut NodeStatus,
) {
    let has_addresses = old
        .and_then(|s| s.addresses.as_ref())
        .is_some_and(|a| !a.is_empty());
    if cfg.external_cloud_provider && has_addresses {
        status.addresses = None;
    }
}

/// The taints a new Node is created with.
pub fn registration_taints(cfg: &KubeletConfig) -> Vec<Taint> {
    let mut t = cfg.register_with_taints.clone();
    if cfg.external_cloud_provider && !t.iter().any(|t| t.key == UNINITIALIZED_TAINT) {
        t.push(Taint {
            key: UNINITIALIZED_TAINT.into(),
            value: Some("true".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        });
    }
    t
}

/// Facts about the machine the node runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    pub hostname: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub kernel_version: String,
    pub os_image: String,
    pub machine_id: String,
    pub boot_id: String,
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// `MemTotal` of a `/proc/meminfo` text, in bytes.
pub fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `PRETTY_NAME` of an os-release text.
fn pretty_name(os_release: &str) -> Option<String> {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
}

/// The machine's hostname (lowercase, as upstream's node names).
pub fn hostname() -> String {
    read_trimmed("/proc/sys/kernel/hostname")
        .or_else(|| read_trimmed("/etc/hostname"))
        .unwrap_or_else(|| "localhost".into())
        .to_lowercase()
}

impl HostFacts {
    pub fn detect() -> Self {
        HostFacts {
            hostname: hostname(),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            memory_bytes: std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| mem_total(&m))
                .unwrap_or(0),
            kernel_version: read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_default(),
            os_image: std::fs::read_to_string("/etc/os-release")
                .ok()
                .and_then(|s| pretty_name(&s))
                .unwrap_or_else(|| "Linux".into()),
            machine_id: read_trimmed("/etc/machine-id").unwrap_or_default(),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id").unwrap_or_default(),
        }
    }
}

/// Rust's architecture names → Go's (what `kubernetes.io/arch` holds).
pub fn go_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// The Node's labels.
pub fn node_labels(cfg: &KubeletConfig) -> BTreeMap<String, String> {
    let mut l = cfg.node_labels.clone();
    l.insert("kubernetes.io/os".into(), "linux".into());
    l.insert(
        "kubernetes.io/arch".into(),
        go_arch(std::env::consts::ARCH).into(),
    );
    l.insert("kubernetes.io/hostname".into(), cfg.node_name.clone());
    l.insert("beta.kubernetes.io/os".into(), "linux".into());
    l.insert(
        "beta.kubernetes.io/arch".into(),
        go_arch(std::env::consts::ARCH).into(),
    );
    l
}

fn node_condition(
    old: Option<&NodeStatus>,
    now: &Time,
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
) -> NodeCondition {
    let since = old
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == kind))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    NodeCondition {
        type_: kind.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(since),
    }
}

/// How many pods the node can address: `max_pods`, or fewer when the node's pod
/// range is smaller (a /24 holds 253 pods: the network, gateway and broadcast
/// addresses are not handed out).
pub fn pod_capacity(max_pods: u32, pod_cidr: Option<&str>) -> u32 {
    let Some(prefix) = pod_cidr
        .and_then(|c| c.split_once('/'))
        .filter(|(ip, _)| ip.parse::<std::net::Ipv4Addr>().is_ok())
        .and_then(|(_, p)| p.parse::<u32>().ok())
        .filter(|p| *p <= 32)
    else {
        return max_pods;
    };
    let size = 1u64 << (32 - prefix);
    max_pods.min(size.saturating_sub(3).min(u64::from(u32::MAX)) as u32)
}

/// The node's status at `now` (transition times kept from `old`); `pod_cidr` is the
/// Node's `spec.podCIDR`, bounding its pod capacity.
pub fn node_status(
    cfg: &KubeletConfig,
    facts: &HostFacts,
    handlers: &[String],
    runtime_version: &str,
    old: Option<&NodeStatus>,
    pod_cidr: Option<&str>,
    now: Timestamp,
) -> NodeStatus {
    let now = Time(Timestamp::from_second(now.as_second()).unwrap_or(now));
    let resources: BTreeMap<String, Quantity> = [
        ("cpu", facts.cpus.to_string()),
        ("memory", format!("{}Ki", facts.memory_bytes / 1024)),
        ("pods", pod_capacity(cfg.max_pods, pod_cidr).to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v)))
    .collect();
    let arch = go_arch(std::env::consts::ARCH).to_string();
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: cfg.node_ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: facts.hostname.clone(),
            },
        ]),
        conditions: Some(
            vec![
                node_condition(
                    old,
                    &now,
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                ),
                node_condition(
                    old,
                    &now,
                    "DiskPressure",
                    "False",
                    "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure",
                ),
                node_condition(
                    old,
                    &now,
                    "PIDPressure",
                    "False",
                    "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available",
                ),
                node_condition(
                    old,
                    &now,
                    "Ready",
                    "True",
                    "KubeletReady",
                    "kubelet is posting ready status",
                ),
            ]
            .into_iter()
            .chain(
                old.and_then(|s| s.conditions.as_ref())
                    .into_iter()
                    .flatten()
                    .filter(|c| !OWN_CONDITIONS.contains(&c.type_.as_str()))
                    .cloned(),
            )
            .collect(),
        ),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(cfg.kubelet_port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: arch,
            boot_id: facts.boot_id.clone(),
            container_runtime_version: runtime_version.into(),
            kernel_version: facts.kernel_version.clone(),
            kube_proxy_version: KUBELET_VERSION.into(),
            kubelet_version: KUBELET_VERSION.into(),
            machine_id: facts.machine_id.clone(),
            operating_system: "linux".into(),
            os_image: facts.os_image.clone(),
            system_uuid: facts.machine_id.clone(),
            swap: None,
        }),
        runtime_handlers: Some(
            handlers
                .iter()
                .map(|h| NodeRuntimeHandler {
                    name: Some(h.clone()),
                    features: Some(NodeRuntimeHandlerFeatures {
                        recursive_read_only_mounts: Some(false),
                        user_namespaces: Some(false),
                    }),
                })
                .collect(),
        ),
        ..Default::default()
    }
}

/// Node registration and heartbeats for one node.
pub struct NodeAgent {
    pub(crate) cfg: KubeletConfig,
    pub(crate) facts: HostFacts,
    pub(crate) handlers: Vec<String>,
    pub(crate) runtime_version: String,
    nodes: Api<Node>,
    leases: Api<Lease>,
}

impl NodeAgent {
    pub fn new(
        client: Client,
        cfg: KubeletConfig,
        handlers: Vec<String>,
        runtime_version: String,
    ) -> Self {
        NodeAgent {
            facts: HostFacts::detect(),
            cfg,
            handlers,
            runtime_version,
            nodes: Api::all(client.clone()),
            leases: Api::namespaced(client, LEASE_NAMESPACE),
        }
    }

    /// Creates the Node (or brings the labels of an existing one up to date) and
    /// writes its status.
    pub async fn register(&self) -> Result<Node, kube::Error> {
        let name = &self.cfg.node_name;
        let labels = node_labels(&self.cfg);
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(labels.clone()),
                ..Default::default()
            },
            // Taints only at creation, as upstream: an existing Node's taints belong
            // to whoever set or removed them since (the cloud-controller-manager).
            spec: Some(NodeSpec {
                taints: Some(registration_taints(&self.cfg)).filter(|t| !t.is_empty()),
                ..Default::default()
            }),
            ..Default::default()
        };
        match self.nodes.create(&PostParams::default(), &node).await {
            Ok(_) => info!(node = %name, "node registered"),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let patch = serde_json::json!({"metadata": {"labels": labels}});
                self.nodes
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                info!(node = %name, "node already registered; labels updated");
            }
            Err(e) => return Err(e),
        }
        self.update_status().await
    }

    /// Writes the node's status (status subresource, merge patch).
    pub async fn update_status(&self) -> Result<Node, kube::Error> {
        let name = &self.cfg.node_name;
        let node = self.nodes.get_opt(name).await?;
        let pod_cidr = node
            .as_ref()
            .and_then(|n| n.spec.as_ref())
            .and_then(|s| s.pod_cidr.clone());
        let old = node.and_then(|n| n.status);
        let mut status = node_status(
            &self.cfg,
            &self.facts,
            &self.handlers,
            &self.runtime_version,
            old.as_ref(),
            pod_cidr.as_deref(),
            Timestamp::now(),
        );
        leave_provider_addresses(&self.cfg, old.as_ref(), &mut status);
        let patch = serde_json::json!({ "status": status });
        self.nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
    }

    /// Renews (or creates) the node's Lease.
    pub async fn renew_lease(&self, node_uid: Option<&str>) -> Result<(), kube::Error> {
        let name = &self.cfg.node_name;
        let now = MicroTime(Timestamp::now());
        let duration = self.cfg.lease_duration.as_secs() as i32;
        let patch = serde_json::json!({"spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": duration,
            "renewTime": now,
        }});
        match self
            .leases
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(LEASE_NAMESPACE.into()),
                        owner_references: node_uid.map(|uid| {
                            vec![OwnerReference {
                                api_version: "v1".into(),
                                kind: "Node".into(),
                                name: name.clone(),
                                uid: uid.to_string(),
                                ..Default::default()
                            }]
                        }),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(name.clone()),
                        lease_duration_seconds: Some(duration),
                        renew_time: Some(now),
                        ..Default::default()
                    }),
                };
                self.leases.create(&PostParams::default(), &lease).await?;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Registers (retrying until it succeeds), then renews the lease and the node
    /// status on their intervals, forever.
    pub async fn run(self) {
        let mut delay = Duration::from_millis(200);
        let node = loop {
            match self.register().await {
                Ok(n) => break n,
                Err(e) => {
                    warn!(error = %e, node = %self.cfg.node_name, "node registration failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        };
        let uid = node.metadata.uid.clone();
        let mut lease = tokio::time::interval(self.cfg.lease_renew_interval);
        let mut status = tokio::time::interval(self.cfg.node_status_interval);
        status.tick().await; // registration just wrote it
        loop {
            tokio::select! {
                _ = lease.tick() => {
                    if let Err(e) = self.renew_lease(uid.as_deref()).await {
                        warn!(error = %e, "lease renewal failed");
                    } else {
                        debug!(node = %self.cfg.node_name, "lease renewed");
                    }
                }
                _ = status.tick() => {
                    if let Err(e) = self.update_status().await {
                        warn!(error = %e, "node status update failed");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_with_taints_syntax_and_the_cloud_taint() {
        let t = parse_taints("dedicated=edge:NoSchedule, gpu:NoExecute").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            (
                t[0].key.as_str(),
                t[0].value.as_deref(),
                t[0].effect.as_str()
            ),
            ("dedicated", Some("edge"), "NoSchedule")
        );
        assert_eq!((t[1].key.as_str(), t[1].value.as_deref()), ("gpu", None));
        for bad in ["x", "x=y:Sometimes", ":NoSchedule"] {
            assert!(parse_taints(bad).is_err(), "{bad}");
        }
        let mut cfg = KubeletConfig::new("n1", "/tmp/k");
        assert!(registration_taints(&cfg).is_empty());
        cfg.external_cloud_provider = true;
        cfg.register_with_taints = t;
        // The first status carries the kubelet's addresses; later ones leave the
        // provider's alone.
        let facts = HostFacts::detect();
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let mut first = node_status(&cfg, &facts, &[], "x", None, None, now);
        leave_provider_addresses(&cfg, None, &mut first);
        assert!(first.addresses.is_some());
        let mut later = node_status(&cfg, &facts, &[], "x", Some(&first), None, now);
        leave_provider_addresses(&cfg, Some(&first), &mut later);
        assert!(later.addresses.is_none());
        let keys: Vec<String> = registration_taints(&cfg)
            .into_iter()
            .map(|t| t.key)
            .collect();
        assert_eq!(keys, ["dedicated", "gpu", UNINITIALIZED_TAINT]);
    }

    #[test]
    fn conditions_of_others_are_kept() {
        let cfg = KubeletConfig::new("n1", "/tmp/k");
        let facts = HostFacts::detect();
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let mut old = node_status(&cfg, &facts, &[], "x", None, None, now);
        old.conditions.as_mut().unwrap().push(NodeCondition {
            type_: "NetworkUnavailable".into(),
            status: "False".into(),
            reason: Some("RouteCreated".into()),
            ..Default::default()
        });
        let new = node_status(&cfg, &facts, &[], "x", Some(&old), None, now);
        let types: Vec<&str> = new
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(
            types,
            [
                "MemoryPressure",
                "DiskPressure",
                "PIDPressure",
                "Ready",
                "NetworkUnavailable"
            ]
        );
    }

    #[test]
    fn pod_capacity_follows_the_pod_range() {
        assert_eq!(pod_capacity(10_000, None), 10_000);
        assert_eq!(pod_capacity(10_000, Some("10.42.0.0/24")), 253);
        assert_eq!(pod_capacity(10_000, Some("10.42.0.0/20")), 4093);
        assert_eq!(pod_capacity(110, Some("10.42.0.0/20")), 110);
        assert_eq!(
            pod_capacity(10_000, Some("fd00::/64")),
            10_000,
            "IPv6 ranges are not counted"
        );
        assert_eq!(pod_capacity(10_000, Some("junk")), 10_000);
    }

    #[test]
    fn facts_parsing() {
        assert_eq!(
            mem_total("MemTotal:       16314436 kB\nMemFree: 1 kB\n"),
            Some(16314436 * 1024)
        );
        assert_eq!(
            pretty_name("NAME=x\nPRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\n").as_deref(),
            Some("Debian GNU/Linux 13 (trixie)")
        );
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("aarch64"), "arm64");
    }

    #[test]
    fn status_reports_capacity_handlers_and_ready() {
        let cfg = KubeletConfig::new("n1", "/tmp/k");
        let facts = HostFacts {
            hostname: "h".into(),
            cpus: 4,
            memory_bytes: 8 << 30,
            kernel_version: "6.1".into(),
            os_image: "Debian".into(),
            machine_id: "m".into(),
            boot_id: "b".into(),
        };
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let s = node_status(
            &cfg,
            &facts,
            &["wasm".into()],
            "kelp-wasm://0.1.0",
            None,
            None,
            now,
        );
        let cap = s.capacity.as_ref().unwrap();
        assert_eq!(cap["cpu"].0, "4");
        assert_eq!(cap["memory"].0, "8388608Ki");
        assert_eq!(cap["pods"].0, "10000");
        let ready = s
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("True", Some("KubeletReady"))
        );
        let info = s.node_info.as_ref().unwrap();
        assert_eq!(info.kubelet_version, KUBELET_VERSION);
        assert_eq!(info.container_runtime_version, "kelp-wasm://0.1.0");
        assert_eq!(
            s.runtime_handlers.as_ref().unwrap()[0].name.as_deref(),
            Some("wasm")
        );
        // Transition times stay while the condition holds.
        let later = node_status(
            &cfg,
            &facts,
            &["wasm".into()],
            "x",
            Some(&s),
            Some("10.42.3.0/24"),
            Timestamp::from_second(1_700_000_100).unwrap(),
        );
        assert_eq!(
            later.capacity.as_ref().unwrap()["pods"].0,
            "253",
            "a /24 addresses 253 pods"
        );
        let r2 = later
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(r2.last_transition_time, ready.last_transition_time);
        assert_ne!(r2.last_heartbeat_time, ready.last_heartbeat_time);
    }
}
