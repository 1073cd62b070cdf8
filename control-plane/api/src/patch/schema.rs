//! Where lists merge by key: a walk over the generated table of built-in types.
//!
//! A [`Ty`] is a position in an object: the type of the value there, as far as merging
//! is concerned. Starting from the root type of a kind, [`Ty::field`] follows one JSON
//! field and says how the value there merges. Types that contain no keyed list and no
//! set are not in the table: everything below them is plain maps and atomic lists.

use crate::registry::GroupVersionKind;

use super::schema_table::{FIELDS, ROOTS};

/// One row of the generated table.
#[derive(Debug, Clone, Copy)]
pub(super) enum Edge {
    /// A nested object of the named type.
    Nested(&'static str),
    /// A map (`map[string]T`) whose values are of the named type.
    MapOf(&'static str),
    /// A list of objects identified by these key fields (the first is the strategic
    /// merge patch key); items are of the named type when it matters.
    Keyed(&'static [&'static str], Option<&'static str>),
    /// A list of scalars merged as a set.
    Set,
}

/// How a list merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// Items are objects identified by these fields. Strategic merge patch uses the
    /// first one (upstream `patchMergeKey`); apply identifies items by all of them
    /// that are present (upstream `listMapKeys`).
    MergeKeys(&'static [&'static str]),
    /// A list of scalars merged as a set (`patchStrategy: merge` on a primitive list,
    /// `x-kubernetes-list-type: set`).
    MergeSet,
    /// Atomic: the new list replaces the old one.
    Replace,
}

impl ListStrategy {
    /// The strategic merge patch key, if the list merges by key.
    pub fn merge_key(&self) -> Option<&'static str> {
        match self {
            ListStrategy::MergeKeys(keys) => keys.first().copied(),
            _ => None,
        }
    }
}

/// A position in an object's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    /// Nothing below merges specially (plain maps, atomic lists).
    Plain,
    /// A struct of the named type.
    Struct(&'static str),
    /// A map whose values are of the named type.
    MapOf(&'static str),
}

const OBJECT_META: &str = "apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// Kind-specific apply keys (`x-kubernetes-list-map-keys`) where upstream identifies
/// items by more fields than the strategic merge key.
fn apply_keys(ty: &str, field: &str) -> Option<&'static [&'static str]> {
    match (ty.rsplit('.').next().unwrap_or(""), field) {
        ("Container" | "EphemeralContainer", "ports") => Some(&["containerPort", "protocol"]),
        ("ServiceSpec", "ports") => Some(&["port", "protocol"]),
        ("PodSpec", "topologySpreadConstraints") => Some(&["topologyKey", "whenUnsatisfiable"]),
        _ => None,
    }
}

fn lookup(ty: &str, field: &str) -> Option<Edge> {
    FIELDS
        .binary_search_by(|(t, f, _)| (*t, *f).cmp(&(ty, field)))
        .ok()
        .map(|i| FIELDS[i].2)
}

/// What is at one field of a type: the type below, and how a list there merges.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FieldInfo {
    pub ty: Ty,
    /// Strategy for strategic merge patch (first key only).
    pub list: ListStrategy,
    /// Strategy for apply (all `listMapKeys`).
    pub apply_list: ListStrategy,
}

impl Ty {
    /// The root type of a kind. Unknown kinds still get `metadata` typed.
    pub fn root(gvk: &GroupVersionKind) -> Ty {
        let exact = ROOTS
            .iter()
            .find(|(g, v, k, _)| *g == gvk.group && *v == gvk.version && *k == gvk.kind);
        let any_version = || {
            ROOTS
                .iter()
                .find(|(g, _, k, _)| *g == gvk.group && *k == gvk.kind)
        };
        match exact.or_else(any_version) {
            Some((_, _, _, t)) => Ty::Struct(t),
            None => Ty::Struct(""),
        }
    }

    /// Follows field `name`.
    pub fn field(self, name: &str) -> FieldInfo {
        let plain = FieldInfo {
            ty: Ty::Plain,
            list: ListStrategy::Replace,
            apply_list: ListStrategy::Replace,
        };
        match self {
            Ty::Plain => plain,
            Ty::MapOf(t) => FieldInfo {
                ty: Ty::Struct(t),
                ..plain
            },
            Ty::Struct("") if name == "metadata" => FieldInfo {
                ty: Ty::Struct(OBJECT_META),
                ..plain
            },
            Ty::Struct(t) => match lookup(t, name) {
                None => plain,
                Some(Edge::Nested(c)) => FieldInfo {
                    ty: Ty::Struct(c),
                    ..plain
                },
                Some(Edge::MapOf(c)) => FieldInfo {
                    ty: Ty::MapOf(c),
                    ..plain
                },
                Some(Edge::Set) => FieldInfo {
                    ty: Ty::Plain,
                    list: ListStrategy::MergeSet,
                    apply_list: ListStrategy::MergeSet,
                },
                Some(Edge::Keyed(keys, item)) => FieldInfo {
                    ty: item.map(Ty::Struct).unwrap_or(Ty::Plain),
                    list: ListStrategy::MergeKeys(keys),
                    apply_list: ListStrategy::MergeKeys(apply_keys(t, name).unwrap_or(keys)),
                },
            },
        }
    }
}

/// The strategic-merge strategy of the list at `path` (JSON field names from the
/// object root, list positions omitted) in objects of `gvk`.
pub fn list_strategy(gvk: &GroupVersionKind, path: &[&str]) -> ListStrategy {
    let mut ty = Ty::root(gvk);
    let mut strategy = ListStrategy::Replace;
    for name in path {
        let info = ty.field(name);
        ty = info.ty;
        strategy = info.list;
    }
    strategy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted() {
        for w in FIELDS.windows(2) {
            assert!((w[0].0, w[0].1) < (w[1].0, w[1].1), "{:?} {:?}", w[0], w[1]);
        }
    }

    #[test]
    fn merge_keys_by_path() {
        let gvk = |g: &str, v: &str, k: &str| GroupVersionKind::new(g, v, k);
        let deploy = gvk("apps", "v1", "Deployment");
        let pod = gvk("", "v1", "Pod");
        let cron = gvk("batch", "v1", "CronJob");
        let svc = gvk("", "v1", "Service");
        let node = gvk("", "v1", "Node");
        let key = |k: &'static [&'static str]| ListStrategy::MergeKeys(k);
        let cases: Vec<(GroupVersionKind, &str, ListStrategy)> = vec![
            (pod.clone(), "spec.containers", key(&["name"])),
            (pod.clone(), "spec.initContainers", key(&["name"])),
            (pod.clone(), "spec.ephemeralContainers", key(&["name"])),
            (pod.clone(), "spec.volumes", key(&["name"])),
            (pod.clone(), "spec.imagePullSecrets", key(&["name"])),
            (pod.clone(), "spec.hostAliases", key(&["ip"])),
            (
                pod.clone(),
                "spec.topologySpreadConstraints",
                key(&["topologyKey"]),
            ),
            (pod.clone(), "spec.resourceClaims", key(&["name"])),
            (pod.clone(), "spec.schedulingGates", key(&["name"])),
            (pod.clone(), "spec.tolerations", ListStrategy::Replace),
            (pod.clone(), "spec.readinessGates", ListStrategy::Replace),
            (pod.clone(), "spec.containers.env", key(&["name"])),
            (
                pod.clone(),
                "spec.containers.envFrom",
                ListStrategy::Replace,
            ),
            (
                pod.clone(),
                "spec.containers.ports",
                key(&["containerPort"]),
            ),
            (
                pod.clone(),
                "spec.containers.volumeMounts",
                key(&["mountPath"]),
            ),
            (
                pod.clone(),
                "spec.containers.volumeDevices",
                key(&["devicePath"]),
            ),
            (pod.clone(), "spec.containers.args", ListStrategy::Replace),
            (pod.clone(), "status.conditions", key(&["type"])),
            (pod.clone(), "status.podIPs", key(&["ip"])),
            (pod.clone(), "metadata.finalizers", ListStrategy::MergeSet),
            (pod.clone(), "metadata.ownerReferences", key(&["uid"])),
            (
                deploy.clone(),
                "spec.template.spec.containers",
                key(&["name"]),
            ),
            (
                deploy.clone(),
                "spec.template.spec.containers.ports",
                key(&["containerPort"]),
            ),
            (
                deploy.clone(),
                "spec.template.metadata.finalizers",
                ListStrategy::MergeSet,
            ),
            (deploy.clone(), "status.conditions", key(&["type"])),
            (
                cron.clone(),
                "spec.jobTemplate.spec.template.spec.containers.env",
                key(&["name"]),
            ),
            (svc.clone(), "spec.ports", key(&["port"])),
            (svc.clone(), "spec.ports.ports", ListStrategy::Replace),
            (node.clone(), "spec.taints", ListStrategy::Replace),
            (node.clone(), "spec.podCIDRs", ListStrategy::MergeSet),
            (node.clone(), "status.addresses", key(&["type"])),
            (node.clone(), "status.conditions", key(&["type"])),
            (
                gvk("apps", "v1", "StatefulSet"),
                "spec.template.spec.volumes",
                key(&["name"]),
            ),
            (
                gvk("apps", "v1", "DaemonSet"),
                "spec.template.spec.containers",
                key(&["name"]),
            ),
            (
                gvk("apps", "v1", "ReplicaSet"),
                "spec.template.spec.containers",
                key(&["name"]),
            ),
            (
                gvk("batch", "v1", "Job"),
                "spec.template.spec.containers",
                key(&["name"]),
            ),
            (
                gvk("batch", "v1", "Job"),
                "status.conditions",
                key(&["type"]),
            ),
            (gvk("", "v1", "ServiceAccount"), "secrets", key(&["name"])),
            (
                gvk("", "v1", "ServiceAccount"),
                "imagePullSecrets",
                ListStrategy::Replace,
            ),
            (
                gvk("example.com", "v1", "Widget"),
                "metadata.finalizers",
                ListStrategy::MergeSet,
            ),
            (
                gvk("example.com", "v1", "Widget"),
                "spec.containers",
                ListStrategy::Replace,
            ),
            (
                gvk("", "v1", "PodTemplate"),
                "template.spec.containers",
                key(&["name"]),
            ),
        ];
        for (g, path, want) in cases {
            let p: Vec<&str> = path.split('.').collect();
            assert_eq!(list_strategy(&g, &p), want, "{} {path}", g.kind);
        }
        // Apply identifies items by every list-map key.
        let ports = Ty::root(&pod)
            .field("spec")
            .ty
            .field("containers")
            .ty
            .field("ports");
        assert_eq!(
            ports.apply_list,
            ListStrategy::MergeKeys(&["containerPort", "protocol"])
        );
    }
}
