//! Pod spec → CRI configs: the sandbox and container configs the kubelet sends, built
//! without I/O from the pod and what the worker already resolved (env, mounts).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};
use kelp_cri_api::v1 as cri;

/// Labels the kubelet puts on every sandbox and container (upstream's names), so a
/// restarted kubelet finds its pods' sandboxes again.
pub const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
pub const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME_LABEL: &str = "io.kubernetes.container.name";
/// Container annotation with [`super::actions::container_hash`]: a running container
/// whose spec no longer hashes the same is recreated.
pub const CONTAINER_HASH_ANNOTATION: &str = "io.kubernetes.container.hash";
/// Container annotation with the declared ports (JSON), as upstream's kubelet writes it.
pub const CONTAINER_PORTS_ANNOTATION: &str = "io.kubernetes.container.ports";

pub fn name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or("")
}

pub fn namespace(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

pub fn uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or("")
}

/// `NS/NAME`, for logs.
pub fn key(pod: &Pod) -> String {
    format!("{}/{}", namespace(pod), name(pod))
}

/// The pod's directory under the kubelet root: `<root>/pods/<ns>_<name>_<uid>/`. It is
/// the CRI log directory (`<container>/<attempt>.log`) and holds the pod's volumes
/// under `volumes/`.
pub fn pod_dir(root: &Path, pod: &Pod) -> PathBuf {
    root.join("pods")
        .join(format!("{}_{}_{}", namespace(pod), name(pod), uid(pod)))
}

fn pod_labels(pod: &Pod) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = pod
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    labels.insert(POD_NAME_LABEL.into(), name(pod).into());
    labels.insert(POD_NAMESPACE_LABEL.into(), namespace(pod).into());
    labels.insert(POD_UID_LABEL.into(), uid(pod).into());
    labels
}

fn protocol(p: Option<&str>) -> i32 {
    match p {
        Some("UDP") => cri::Protocol::Udp as i32,
        Some("SCTP") => cri::Protocol::Sctp as i32,
        _ => cri::Protocol::Tcp as i32,
    }
}

/// The hostname a pod sees: `spec.hostname`, else its name (at most 63 characters).
pub fn hostname(pod: &Pod) -> String {
    let h = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| name(pod).to_string());
    h.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_string()
}

/// The sandbox config for `pod` (attempt `attempt`, logs under `log_dir`).
pub fn sandbox_config(pod: &Pod, attempt: u32, log_dir: &Path) -> cri::PodSandboxConfig {
    let port_mappings = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .map(|p| cri::PortMapping {
            protocol: protocol(p.protocol.as_deref()),
            container_port: p.container_port,
            host_port: p.host_port.unwrap_or(0),
            host_ip: p.host_ip.clone().unwrap_or_default(),
        })
        .collect();
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name(pod).into(),
            uid: uid(pod).into(),
            namespace: namespace(pod).into(),
            attempt,
        }),
        hostname: hostname(pod),
        log_directory: log_dir.display().to_string(),
        port_mappings,
        labels: pod_labels(pod),
        annotations: pod
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        linux: Some(sandbox_linux(pod)),
        ..Default::default()
    }
}

/// Parses a Kubernetes quantity (`128Mi`, `1G`, `500m`, `2`, `1e3`) to a float.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let suffixes: [(&str, f64); 14] = [
        ("Ki", 1024.0),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
    ];
    for (s, mult) in suffixes {
        if let Some(num) = q.strip_suffix(s) {
            return num.parse::<f64>().ok().map(|n| n * mult);
        }
    }
    if let Some(num) = q.strip_suffix('E') {
        return num.parse::<f64>().ok().map(|n| n * 1e18);
    }
    q.parse::<f64>().ok()
}

/// The CFS period the CPU quota is expressed in (upstream's 100 ms).
const CPU_PERIOD_US: i64 = 100_000;

fn resources(c: &Container) -> Option<cri::LinuxContainerResources> {
    let res = c.resources.as_ref()?;
    let limits = res.limits.as_ref();
    let requests = res.requests.as_ref();
    let get =
        |m: Option<
            &std::collections::BTreeMap<
                String,
                k8s_openapi::apimachinery::pkg::api::resource::Quantity,
            >,
        >,
         k: &str| { m.and_then(|m| m.get(k)).and_then(|q| parse_quantity(&q.0)) };
    let mut r = cri::LinuxContainerResources::default();
    if let Some(m) = get(limits, "memory") {
        r.memory_limit_in_bytes = m.ceil() as i64;
    }
    if let Some(cpu) = get(limits, "cpu") {
        r.cpu_period = CPU_PERIOD_US;
        r.cpu_quota = ((cpu * CPU_PERIOD_US as f64).ceil() as i64).max(1000);
    }
    // Upstream's shares: the request (else the limit, as defaulting copies it) in
    // millicores × 1024 / 1000, at least 2.
    if let Some(cpu) = get(requests, "cpu").or(get(limits, "cpu")) {
        r.cpu_shares = ((cpu * 1024.0).round() as i64).max(2);
    }
    if r == cri::LinuxContainerResources::default() {
        return None;
    }
    Some(r)
}

/// The container's Linux security settings from its and its pod's securityContext
/// (the container's fields win, as upstream). Runtimes without Linux isolation (the
/// Wasm runtime) ignore them.
fn security_context(pod: &Pod, c: &Container) -> Option<cri::LinuxContainerSecurityContext> {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let csc = c.security_context.as_ref();
    let run_as_user = csc
        .and_then(|s| s.run_as_user)
        .or(psc.and_then(|s| s.run_as_user));
    let run_as_group = csc
        .and_then(|s| s.run_as_group)
        .or(psc.and_then(|s| s.run_as_group));
    let seccomp = csc
        .and_then(|s| s.seccomp_profile.as_ref())
        .or(psc.and_then(|s| s.seccomp_profile.as_ref()));
    let privileged = csc.and_then(|s| s.privileged).unwrap_or(false);
    Some(cri::LinuxContainerSecurityContext {
        capabilities: csc
            .and_then(|s| s.capabilities.as_ref())
            .map(|caps| cri::Capability {
                add_capabilities: caps.add.clone().unwrap_or_default(),
                drop_capabilities: caps.drop.clone().unwrap_or_default(),
                ..Default::default()
            }),
        privileged,
        namespace_options: Some(namespace_options(pod)),
        run_as_user: run_as_user.map(|value| cri::Int64Value { value }),
        run_as_group: run_as_group.map(|value| cri::Int64Value { value }),
        readonly_rootfs: csc
            .and_then(|s| s.read_only_root_filesystem)
            .unwrap_or(false),
        supplemental_groups: psc
            .and_then(|s| s.supplemental_groups.clone())
            .unwrap_or_default(),
        no_new_privs: csc
            .and_then(|s| s.allow_privilege_escalation)
            .is_some_and(|allow| !allow),
        seccomp: Some(seccomp_profile(seccomp, privileged)),
        ..Default::default()
    })
}

const POD: i32 = cri::NamespaceMode::Pod as i32;
const CONTAINER: i32 = cri::NamespaceMode::Container as i32;
const NODE: i32 = cri::NamespaceMode::Node as i32;

/// CRI's seccomp profile for a pod's `seccompProfile`: none named is Unconfined, as
/// upstream's kubelet without `SeccompDefault`; privileged containers are never
/// filtered.
fn seccomp_profile(
    p: Option<&k8s_openapi::api::core::v1::SeccompProfile>,
    privileged: bool,
) -> cri::SecurityProfile {
    use cri::security_profile::ProfileType;
    let unconfined = cri::SecurityProfile {
        profile_type: ProfileType::Unconfined as i32,
        localhost_ref: String::new(),
    };
    match p {
        _ if privileged => unconfined,
        Some(p) if p.type_ == "RuntimeDefault" => cri::SecurityProfile {
            profile_type: ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        },
        Some(p) if p.type_ == "Localhost" => cri::SecurityProfile {
            profile_type: ProfileType::Localhost as i32,
            localhost_ref: p.localhost_profile.clone().unwrap_or_default(),
        },
        _ => unconfined,
    }
}

/// The pod's namespaces: the node's where `hostNetwork`/`hostPID`/`hostIPC` say so,
/// one PID namespace per container unless `shareProcessNamespace`.
fn namespace_options(pod: &Pod) -> cri::NamespaceOption {
    let spec = pod.spec.as_ref();
    let host = |f: Option<bool>| if f.unwrap_or(false) { NODE } else { POD };
    cri::NamespaceOption {
        network: host(spec.and_then(|s| s.host_network)),
        pid: if spec.and_then(|s| s.host_pid).unwrap_or(false) {
            NODE
        } else if spec
            .and_then(|s| s.share_process_namespace)
            .unwrap_or(false)
        {
            POD
        } else {
            CONTAINER
        },
        ipc: host(spec.and_then(|s| s.host_ipc)),
        ..Default::default()
    }
}

/// The sandbox's Linux settings: its namespaces and pod-level security context.
fn sandbox_linux(pod: &Pod) -> cri::LinuxPodSandboxConfig {
    let spec = pod.spec.as_ref();
    let psc = spec.and_then(|s| s.security_context.as_ref());
    cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(namespace_options(pod)),
            run_as_user: psc
                .and_then(|s| s.run_as_user)
                .map(|value| cri::Int64Value { value }),
            run_as_group: psc
                .and_then(|s| s.run_as_group)
                .map(|value| cri::Int64Value { value }),
            supplemental_groups: psc
                .and_then(|s| s.supplemental_groups.clone())
                .unwrap_or_default(),
            seccomp: Some(seccomp_profile(
                psc.and_then(|s| s.seccomp_profile.as_ref()),
                false,
            )),
            ..Default::default()
        }),
        sysctls: psc
            .and_then(|s| s.sysctls.as_ref())
            .map(|v| {
                v.iter()
                    .map(|s| (s.name.clone(), s.value.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        ..Default::default()
    }
}

/// The container config for `c` in `pod`, attempt `attempt`, with resolved env and
/// mounts.
pub fn container_config(
    pod: &Pod,
    c: &Container,
    attempt: u32,
    envs: Vec<cri::KeyValue>,
    mounts: Vec<cri::Mount>,
) -> cri::ContainerConfig {
    let mut labels = HashMap::from([
        (POD_NAME_LABEL.to_string(), name(pod).to_string()),
        (POD_NAMESPACE_LABEL.to_string(), namespace(pod).to_string()),
        (POD_UID_LABEL.to_string(), uid(pod).to_string()),
        (CONTAINER_NAME_LABEL.to_string(), c.name.clone()),
    ]);
    labels.retain(|_, v| !v.is_empty());
    let mut annotations = HashMap::from([
        (
            "io.kubernetes.container.restartCount".to_string(),
            attempt.to_string(),
        ),
        (
            CONTAINER_HASH_ANNOTATION.to_string(),
            super::actions::container_hash(c),
        ),
    ]);
    if let Some(ports) = c.ports.as_ref().filter(|p| !p.is_empty()) {
        if let Ok(json) = serde_json::to_string(ports) {
            annotations.insert(CONTAINER_PORTS_ANNOTATION.into(), json);
        }
    }
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: c.name.clone(),
            attempt,
        }),
        image: Some(cri::ImageSpec {
            image: c.image.clone().unwrap_or_default(),
            ..Default::default()
        }),
        command: c.command.clone().unwrap_or_default(),
        args: c.args.clone().unwrap_or_default(),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs,
        mounts,
        labels,
        annotations,
        log_path: format!("{}/{attempt}.log", c.name),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        linux: Some(cri::LinuxContainerConfig {
            resources: resources(c),
            security_context: security_context(pod, c),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn pod() -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("web".into());
        p.metadata.namespace = Some("apps".into());
        p.metadata.uid = Some("u-1".into());
        p.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        p.spec = Some(PodSpec {
            containers: vec![Container {
                name: "srv".into(),
                image: Some("reg/http:v1".into()),
                args: Some(vec!["--port".into(), "8080".into()]),
                ports: Some(vec![ContainerPort {
                    container_port: 8080,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                resources: Some(ResourceRequirements {
                    limits: Some(
                        [
                            ("memory".to_string(), Quantity("64Mi".into())),
                            ("cpu".to_string(), Quantity("250m".into())),
                        ]
                        .into(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        });
        p
    }

    #[test]
    fn sandbox_config_carries_identity_ports_and_log_dir() {
        let p = pod();
        let dir = pod_dir(Path::new("/k"), &p);
        assert_eq!(dir, PathBuf::from("/k/pods/apps_web_u-1"));
        let sb = sandbox_config(&p, 2, &dir);
        let md = sb.metadata.unwrap();
        assert_eq!(
            (md.name.as_str(), md.namespace.as_str(), md.uid.as_str()),
            ("web", "apps", "u-1")
        );
        assert_eq!(md.attempt, 2);
        assert_eq!(sb.hostname, "web");
        assert_eq!(sb.log_directory, "/k/pods/apps_web_u-1");
        assert_eq!(sb.port_mappings.len(), 1);
        assert_eq!(sb.port_mappings[0].container_port, 8080);
        assert_eq!(sb.labels[POD_UID_LABEL], "u-1");
        assert_eq!(sb.labels["app"], "web");
    }

    #[test]
    fn container_config_carries_args_limits_ports_and_log_path() {
        let p = pod();
        let c = &p.spec.as_ref().unwrap().containers[0];
        let cfg = container_config(&p, c, 3, vec![], vec![]);
        assert_eq!(cfg.metadata.as_ref().unwrap().attempt, 3);
        assert_eq!(cfg.log_path, "srv/3.log");
        assert_eq!(cfg.args, vec!["--port", "8080"]);
        assert_eq!(cfg.image.unwrap().image, "reg/http:v1");
        let r = cfg.linux.unwrap().resources.unwrap();
        assert_eq!(r.memory_limit_in_bytes, 64 << 20);
        assert_eq!((r.cpu_quota, r.cpu_period), (25_000, 100_000));
        let ports: serde_json::Value =
            serde_json::from_str(&cfg.annotations[CONTAINER_PORTS_ANNOTATION]).unwrap();
        assert_eq!(ports[0]["containerPort"], 8080);
        assert_eq!(cfg.labels[CONTAINER_NAME_LABEL], "srv");
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("128Mi"), Some(134217728.0));
        assert_eq!(parse_quantity("1G"), Some(1e9));
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("x"), None);
    }
}
