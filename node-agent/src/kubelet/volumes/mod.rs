//! The pod's volumes on the node, under `<pod dir>/volumes/<plugin>/<name>`:
//! emptyDir (a directory, or a tmpfs for `medium: Memory` when the agent may mount;
//! `sizeLimit` measured for eviction), hostPath, and the projections — configMap,
//! secret, downwardAPI, projected — written with the [`atomic`] writer and rewritten
//! while the pod runs so updates propagate. Failures are messages for a
//! `CreateContainerConfigError` waiting state (the worker retries).

pub mod atomic;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, KeyToPath, Pod, Volume, VolumeProjection,
};
use kelp_cri_api::v1 as cri;
use kube::Client;
use tracing::{debug, warn};

use self::atomic::FileProjection;
use super::env::{field_ref, resource_field_ref, Lookups, ObjectCache, PodContext};
use super::spec;

/// upstream's `defaultMode` (0644).
const DEFAULT_MODE: u32 = 0o644;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

/// The prepared volumes of a pod.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// Volume name → host directory.
    pub dirs: BTreeMap<String, PathBuf>,
    /// Things the pod should be told about (an event each), e.g. unsupported sources.
    pub warnings: Vec<String>,
}

/// The host directory of volume `v` of the pod in `pod_dir`.
pub fn volume_dir(pod_dir: &Path, v: &Volume) -> PathBuf {
    let plugin = if v.empty_dir.is_some() {
        "kubernetes.io~empty-dir"
    } else if v.config_map.is_some() {
        "kubernetes.io~configmap"
    } else if v.secret.is_some() {
        "kubernetes.io~secret"
    } else if v.downward_api.is_some() {
        "kubernetes.io~downward-api"
    } else if v.projected.is_some() {
        "kubernetes.io~projected"
    } else {
        "kubernetes.io~other"
    };
    pod_dir.join("volumes").join(plugin).join(&v.name)
}

fn mode(m: Option<i32>, default: u32) -> u32 {
    m.map_or(default, |m| (m as u32) & 0o7777)
}

/// Files of a configMap/secret (`data`) with `items` (key → path) or every key.
fn key_files(
    what: &str,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: u32,
    optional: bool,
    out: &mut BTreeMap<String, FileProjection>,
) -> Result<(), String> {
    match items {
        Some(items) => {
            for i in items {
                let Some(d) = data.get(&i.key) else {
                    if optional {
                        continue;
                    }
                    return Err(format!("{what} references non-existent key: {}", i.key));
                };
                out.insert(
                    i.path.clone(),
                    FileProjection {
                        data: d.clone(),
                        mode: mode(i.mode, default_mode),
                    },
                );
            }
        }
        None => {
            for (k, d) in data {
                out.insert(
                    k.clone(),
                    FileProjection {
                        data: d.clone(),
                        mode: default_mode,
                    },
                );
            }
        }
    }
    Ok(())
}

/// Files of downwardAPI items.
fn downward_files(
    pod: &Pod,
    ctx: &PodContext,
    items: &[DownwardAPIVolumeFile],
    default_mode: u32,
    out: &mut BTreeMap<String, FileProjection>,
) -> Result<(), String> {
    for i in items {
        let value = if let Some(f) = &i.field_ref {
            field_ref(pod, ctx, &f.field_path)?
        } else if let Some(r) = &i.resource_field_ref {
            let name = r.container_name.as_deref().unwrap_or("");
            let c = pod
                .spec
                .iter()
                .flat_map(|s| {
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                })
                .find(|c| c.name == name)
                .ok_or_else(|| format!("downwardAPI item {:?}: no container {name:?}", i.path))?;
            resource_field_ref(
                c,
                ctx,
                &r.resource,
                r.divisor.as_ref().map(|d| d.0.as_str()),
            )?
        } else {
            return Err(format!("downwardAPI item {:?} has no source", i.path));
        };
        out.insert(
            i.path.clone(),
            FileProjection {
                data: value.into_bytes(),
                mode: mode(i.mode, default_mode),
            },
        );
    }
    Ok(())
}

/// What a projection volume (configMap, secret, downwardAPI, projected) holds now;
/// `None` for other kinds.
async fn projection(
    l: &mut Lookups<'_>,
    pod: &Pod,
    ctx: &PodContext,
    v: &Volume,
    warnings: &mut Vec<String>,
) -> Result<Option<BTreeMap<String, FileProjection>>, String> {
    let mut out = BTreeMap::new();
    if let Some(cm) = &v.config_map {
        let dm = mode(cm.default_mode, DEFAULT_MODE);
        let optional = cm.optional.unwrap_or(false);
        match l.config_map_bytes(&cm.name).await? {
            Some(d) => key_files(
                &format!("configmap {:?}", cm.name),
                &d,
                cm.items.as_ref(),
                dm,
                optional,
                &mut out,
            )?,
            None if optional => {}
            None => return Err(format!("configmap {:?} not found", cm.name)),
        }
    } else if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let dm = mode(s.default_mode, DEFAULT_MODE);
        let optional = s.optional.unwrap_or(false);
        match l.secret_bytes(&name).await? {
            Some(d) => key_files(
                &format!("secret {name:?}"),
                &d,
                s.items.as_ref(),
                dm,
                optional,
                &mut out,
            )?,
            None if optional => {}
            None => return Err(format!("secret {name:?} not found")),
        }
    } else if let Some(d) = &v.downward_api {
        let dm = mode(d.default_mode, DEFAULT_MODE);
        downward_files(pod, ctx, d.items.as_deref().unwrap_or(&[]), dm, &mut out)?;
    } else if let Some(p) = &v.projected {
        let dm = mode(p.default_mode, DEFAULT_MODE);
        for src in p.sources.iter().flatten() {
            project_source(l, pod, ctx, &v.name, src, dm, &mut out, warnings).await?;
        }
    } else {
        return Ok(None);
    }
    Ok(Some(out))
}

#[allow(clippy::too_many_arguments)] // one source needs the whole projection's context
async fn project_source(
    l: &mut Lookups<'_>,
    pod: &Pod,
    ctx: &PodContext,
    volume: &str,
    src: &VolumeProjection,
    dm: u32,
    out: &mut BTreeMap<String, FileProjection>,
    warnings: &mut Vec<String>,
) -> Result<(), String> {
    if let Some(cm) = &src.config_map {
        let optional = cm.optional.unwrap_or(false);
        match l.config_map_bytes(&cm.name).await? {
            Some(d) => key_files(
                &format!("configmap {:?}", cm.name),
                &d,
                cm.items.as_ref(),
                dm,
                optional,
                out,
            )?,
            None if optional => {}
            None => return Err(format!("configmap {:?} not found", cm.name)),
        }
    } else if let Some(s) = &src.secret {
        let optional = s.optional.unwrap_or(false);
        match l.secret_bytes(&s.name).await? {
            Some(d) => key_files(
                &format!("secret {:?}", s.name),
                &d,
                s.items.as_ref(),
                dm,
                optional,
                out,
            )?,
            None if optional => {}
            None => return Err(format!("secret {:?} not found", s.name)),
        }
    } else if let Some(d) = &src.downward_api {
        downward_files(pod, ctx, d.items.as_deref().unwrap_or(&[]), dm, out)?;
    } else if let Some(t) = &src.service_account_token {
        // `serviceaccounts/token` is not served yet: the rest of the volume works,
        // this file is missing, and the pod is told so.
        warnings.push(format!(
            "projected volume {volume:?}: serviceAccountToken source (path {:?}) is not supported yet; the token file is not written",
            t.path
        ));
    } else if src.cluster_trust_bundle.is_some() {
        warnings.push(format!(
            "projected volume {volume:?}: clusterTrustBundle sources are not supported; skipped"
        ));
    }
    Ok(())
}

/// Whether `path` is a mount point (listed in /proc/self/mounts).
fn is_mount_point(path: &Path) -> bool {
    let p = path.display().to_string();
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(p.as_str()))
        })
        .unwrap_or(false)
}

/// Whether this process may mount (root): a tmpfs is tried only then.
fn may_mount() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// An emptyDir with `medium: Memory`: a tmpfs sized to `sizeLimit` when the agent may
/// mount; else the directory stays on disk (the limit is still enforced by eviction).
fn mount_tmpfs(dir: &Path, size_limit: Option<u64>) {
    if is_mount_point(dir) || !may_mount() {
        return;
    }
    let mut opts = "mode=0777".to_string();
    if let Some(s) = size_limit {
        opts.push_str(&format!(",size={s}"));
    }
    match std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
        .arg(dir)
        .stderr(std::process::Stdio::piped())
        .output()
    {
        Ok(o) if o.status.success() => debug!(dir = %dir.display(), "tmpfs mounted"),
        Ok(o) => {
            warn!(dir = %dir.display(), error = %String::from_utf8_lossy(&o.stderr).trim(), "cannot mount a tmpfs; the memory emptyDir stays on disk")
        }
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "cannot run mount; the memory emptyDir stays on disk")
        }
    }
}

/// Unmounts every mount under `pod_dir` (tmpfs emptyDirs) before it is removed.
pub fn unmount_all(pod_dir: &Path) {
    let prefix = format!("{}/", pod_dir.display());
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    for point in mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| p.starts_with(&prefix))
    {
        // Lazily (MNT_DETACH): the runtime may still hold a handle on the directory
        // for a moment after the container is removed.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(point)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The emptyDir's `sizeLimit` in bytes.
pub fn size_limit(v: &Volume) -> Option<u64> {
    let q = v.empty_dir.as_ref()?.size_limit.as_ref()?;
    spec::parse_quantity(&q.0).map(|b| b.ceil() as u64)
}

/// Prepares every volume of the pod and returns their host directories: emptyDir
/// (created once, kept across restarts), projections (written now), hostPath.
pub async fn prepare(
    client: &Client,
    cache: Option<&ObjectCache>,
    pod: &Pod,
    pod_dir: &Path,
    ctx: &PodContext,
) -> Result<Prepared, String> {
    let mut l = Lookups::new(client, spec::namespace(pod), cache);
    let mut out = Prepared::default();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let dir = volume_dir(pod_dir, v);
        if let Some(e) = &v.empty_dir {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            if e.medium.as_deref() == Some("Memory") {
                mount_tmpfs(&dir, size_limit(v));
            }
        } else if let Some(h) = &v.host_path {
            out.dirs.insert(v.name.clone(), PathBuf::from(&h.path));
            continue;
        } else {
            match projection(&mut l, pod, ctx, v, &mut out.warnings).await? {
                Some(files) => {
                    atomic::write(&dir, &files)?;
                }
                // Not supported (persistentVolumeClaim, …): mounting it fails clearly.
                None => continue,
            }
        }
        out.dirs.insert(v.name.clone(), dir);
    }
    Ok(out)
}

/// Rewrites the projection volumes with data at most `max_age` old from `cache` (a
/// running pod sees ConfigMap, Secret and label/annotation updates). A volume whose
/// source cannot be read keeps its content, as upstream's. Returns the names of the
/// volumes that changed.
pub async fn refresh(
    client: &Client,
    cache: &ObjectCache,
    max_age: std::time::Duration,
    pod: &Pod,
    pod_dir: &Path,
    ctx: &PodContext,
) -> Vec<String> {
    let mut l = Lookups::cached(client, spec::namespace(pod), cache, max_age);
    let mut changed = Vec::new();
    let mut warnings = Vec::new();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let dir = volume_dir(pod_dir, v);
        if !dir.exists() {
            continue;
        }
        match projection(&mut l, pod, ctx, v, &mut warnings).await {
            Ok(Some(files)) => match atomic::write(&dir, &files) {
                Ok(true) => changed.push(v.name.clone()),
                Ok(false) => {}
                Err(e) => warn!(volume = %v.name, error = %e, "cannot update volume"),
            },
            Ok(None) => {}
            Err(e) => debug!(volume = %v.name, error = %e, "volume source unavailable; kept"),
        }
    }
    changed
}

/// Whether the pod has volumes whose content follows API objects.
pub fn has_projections(pod: &Pod) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .any(|v| {
            v.config_map.is_some()
                || v.secret.is_some()
                || v.downward_api.is_some()
                || v.projected.is_some()
        })
}

/// Bytes used under `dir` (allocated blocks, as `du`), not following symlinks.
pub fn usage(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            }
            total += m.blocks() * 512;
        }
    }
    total
}

/// The first emptyDir over its `sizeLimit`, with upstream's eviction message.
pub fn over_limit(pod: &Pod, pod_dir: &Path) -> Option<String> {
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let Some(limit) = size_limit(v) else { continue };
        let used = usage(&volume_dir(pod_dir, v));
        if exceeds(used, limit) {
            let shown = v
                .empty_dir
                .as_ref()
                .and_then(|e| e.size_limit.as_ref())
                .map(|q| q.0.clone())
                .unwrap_or_default();
            return Some(format!(
                "Usage of EmptyDir volume {:?} exceeds the limit {shown:?}. ",
                v.name
            ));
        }
    }
    None
}

/// upstream evicts when usage is strictly above the limit.
pub fn exceeds(used: u64, limit: u64) -> bool {
    used > limit
}

/// The CRI mounts of `c` over prepared volume `dirs`.
pub fn mounts(c: &Container, dirs: &BTreeMap<String, PathBuf>) -> Result<Vec<cri::Mount>, String> {
    c.volume_mounts
        .iter()
        .flatten()
        .map(|m| {
            let base = dirs.get(&m.name).ok_or_else(|| {
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
    use k8s_openapi::api::core::v1::{
        ContainerPort, DownwardAPIVolumeSource, EmptyDirVolumeSource, ObjectFieldSelector, PodSpec,
        ResourceFieldSelector, ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn kp(key: &str, path: &str, mode: Option<i32>) -> KeyToPath {
        KeyToPath {
            key: key.into(),
            path: path.into(),
            mode,
        }
    }

    #[test]
    fn items_select_keys_with_modes() {
        let data: BTreeMap<String, Vec<u8>> = [
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"2".to_vec()),
        ]
        .into();
        let mut out = BTreeMap::new();
        key_files("cm", &data, None, 0o600, false, &mut out).unwrap();
        assert_eq!(out.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(out["a"].mode, 0o600);

        let mut out = BTreeMap::new();
        let items = vec![kp("a", "dir/x", Some(0o400)), kp("b", "y", None)];
        key_files("cm", &data, Some(&items), 0o644, false, &mut out).unwrap();
        assert_eq!(out["dir/x"].data, b"1");
        assert_eq!(out["dir/x"].mode, 0o400);
        assert_eq!(out["y"].mode, 0o644);

        let missing = vec![kp("zz", "z", None)];
        let mut out = BTreeMap::new();
        assert!(key_files("cm", &data, Some(&missing), 0o644, false, &mut out).is_err());
        assert!(key_files("cm", &data, Some(&missing), 0o644, true, &mut out).is_ok());
        assert!(out.is_empty());
    }

    #[test]
    fn downward_api_files() {
        let mut p = Pod::default();
        p.metadata.name = Some("p".into());
        p.metadata.labels = Some(
            [
                ("b".to_string(), "2".to_string()),
                ("a".to_string(), "x\"y".to_string()),
            ]
            .into(),
        );
        p.spec = Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                ports: Some(vec![ContainerPort::default()]),
                resources: Some(ResourceRequirements {
                    limits: Some([("memory".to_string(), Quantity("64Mi".into()))].into()),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            volumes: Some(vec![Volume {
                name: "d".into(),
                downward_api: Some(DownwardAPIVolumeSource::default()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let ctx = PodContext {
            allocatable_cpu: 4.0,
            ..Default::default()
        };
        let items = vec![
            DownwardAPIVolumeFile {
                path: "labels".into(),
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.labels".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            DownwardAPIVolumeFile {
                path: "mem".into(),
                mode: Some(0o400),
                resource_field_ref: Some(ResourceFieldSelector {
                    container_name: Some("c".into()),
                    resource: "limits.memory".into(),
                    divisor: Some(Quantity("1Mi".into())),
                }),
                ..Default::default()
            },
            DownwardAPIVolumeFile {
                path: "cpu".into(),
                resource_field_ref: Some(ResourceFieldSelector {
                    container_name: Some("c".into()),
                    resource: "limits.cpu".into(),
                    divisor: Some(Quantity("1m".into())),
                }),
                ..Default::default()
            },
        ];
        let mut out = BTreeMap::new();
        downward_files(&p, &ctx, &items, 0o644, &mut out).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out["labels"].data),
            "a=\"x\\\"y\"\nb=\"2\""
        );
        assert_eq!(out["mem"].data, b"64");
        assert_eq!(out["mem"].mode, 0o400);
        // No CPU limit: the node's allocatable (4 cores) in millicores.
        assert_eq!(out["cpu"].data, b"4000");
    }

    #[test]
    fn size_limits_and_usage() {
        let v = Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("1Mi".into())),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(size_limit(&v), Some(1 << 20));
        assert!(!exceeds(1 << 20, 1 << 20));
        assert!(exceeds((1 << 20) + 1, 1 << 20));

        let t = tempfile::tempdir().unwrap();
        let p = Pod {
            spec: Some(PodSpec {
                volumes: Some(vec![v.clone()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let dir = volume_dir(t.path(), &v);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/small"), vec![1u8; 4096]).unwrap();
        assert_eq!(over_limit(&p, t.path()), None);
        std::fs::write(dir.join("big"), vec![1u8; 2 << 20]).unwrap();
        assert!(usage(&dir) >= 2 << 20);
        assert_eq!(
            over_limit(&p, t.path()).as_deref(),
            Some("Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". ")
        );
    }
}
