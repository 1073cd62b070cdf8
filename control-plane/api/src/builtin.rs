//! The built-in resources Kelp serves: one row per resource.

use crate::registry::{GroupVersionKind, ResourceInfo, Subresource};

const CRUD: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const CREATE_ONLY: &[&str] = &["create"];

struct Row {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    categories: &'static [&'static str],
    verbs: &'static [&'static str],
    subresources: &'static [&'static str],
    schema: &'static str,
}

const fn row(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    schema: &'static str,
) -> Row {
    Row {
        group,
        version,
        kind,
        plural,
        namespaced,
        short: &[],
        categories: &[],
        verbs: CRUD,
        subresources: &[],
        schema,
    }
}

impl Row {
    const fn short(mut self, s: &'static [&'static str]) -> Self {
        self.short = s;
        self
    }
    const fn all(mut self) -> Self {
        self.categories = &["all"];
        self
    }
    const fn sub(mut self, s: &'static [&'static str]) -> Self {
        self.subresources = s;
        self
    }
    const fn verbs(mut self, v: &'static [&'static str]) -> Self {
        self.verbs = v;
        self
    }
    const fn create_only(mut self) -> Self {
        self.verbs = CREATE_ONLY;
        self
    }
}

const ROWS: &[Row] = &[
    // core/v1
    row(
        "",
        "v1",
        "Namespace",
        "namespaces",
        false,
        "io.k8s.api.core.v1.Namespace",
    )
    .short(&["ns"])
    .sub(&["status", "finalize"]),
    row("", "v1", "Pod", "pods", true, "io.k8s.api.core.v1.Pod")
        .short(&["po"])
        .all()
        .sub(&[
            "status",
            "binding",
            "eviction",
            "log",
            "exec",
            "attach",
            "portforward",
        ]),
    row("", "v1", "Node", "nodes", false, "io.k8s.api.core.v1.Node")
        .short(&["no"])
        .sub(&["status"]),
    row(
        "",
        "v1",
        "Service",
        "services",
        true,
        "io.k8s.api.core.v1.Service",
    )
    .short(&["svc"])
    .all()
    .sub(&["status"]),
    row(
        "",
        "v1",
        "Endpoints",
        "endpoints",
        true,
        "io.k8s.api.core.v1.Endpoints",
    )
    .short(&["ep"]),
    row(
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        true,
        "io.k8s.api.core.v1.ConfigMap",
    )
    .short(&["cm"]),
    row(
        "",
        "v1",
        "Secret",
        "secrets",
        true,
        "io.k8s.api.core.v1.Secret",
    ),
    row(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        true,
        "io.k8s.api.core.v1.ServiceAccount",
    )
    .short(&["sa"]),
    row(
        "",
        "v1",
        "Event",
        "events",
        true,
        "io.k8s.api.core.v1.Event",
    )
    .short(&["ev"]),
    // events.k8s.io/v1
    row(
        "events.k8s.io",
        "v1",
        "Event",
        "events",
        true,
        "io.k8s.api.events.v1.Event",
    )
    .short(&["ev"]),
    // coordination.k8s.io/v1
    row(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        true,
        "io.k8s.api.coordination.v1.Lease",
    ),
    // node.k8s.io/v1
    row(
        "node.k8s.io",
        "v1",
        "RuntimeClass",
        "runtimeclasses",
        false,
        "io.k8s.api.node.v1.RuntimeClass",
    ),
    // discovery.k8s.io/v1
    row(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        true,
        "io.k8s.api.discovery.v1.EndpointSlice",
    ),
    // apps/v1
    row(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        true,
        "io.k8s.api.apps.v1.Deployment",
    )
    .short(&["deploy"])
    .all()
    .sub(&["status", "scale"]),
    row(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        true,
        "io.k8s.api.apps.v1.ReplicaSet",
    )
    .short(&["rs"])
    .all()
    .sub(&["status", "scale"]),
    row(
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        true,
        "io.k8s.api.apps.v1.DaemonSet",
    )
    .short(&["ds"])
    .all()
    .sub(&["status"]),
    row(
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        true,
        "io.k8s.api.apps.v1.StatefulSet",
    )
    .short(&["sts"])
    .all()
    .sub(&["status", "scale"]),
    row(
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        true,
        "io.k8s.api.apps.v1.ControllerRevision",
    ),
    // batch/v1
    row(
        "batch",
        "v1",
        "Job",
        "jobs",
        true,
        "io.k8s.api.batch.v1.Job",
    )
    .all()
    .sub(&["status"]),
    row(
        "batch",
        "v1",
        "CronJob",
        "cronjobs",
        true,
        "io.k8s.api.batch.v1.CronJob",
    )
    .short(&["cj"])
    .all()
    .sub(&["status"]),
    // policy/v1
    row(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        true,
        "io.k8s.api.policy.v1.PodDisruptionBudget",
    )
    .short(&["pdb"])
    .sub(&["status"]),
    // authorization.k8s.io/v1 (virtual: answered, never stored)
    row(
        "authorization.k8s.io",
        "v1",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
        false,
        "io.k8s.api.authorization.v1.SelfSubjectAccessReview",
    )
    .create_only(),
    row(
        "authorization.k8s.io",
        "v1",
        "SelfSubjectRulesReview",
        "selfsubjectrulesreviews",
        false,
        "io.k8s.api.authorization.v1.SelfSubjectRulesReview",
    )
    .create_only(),
    row(
        "authorization.k8s.io",
        "v1",
        "SubjectAccessReview",
        "subjectaccessreviews",
        false,
        "io.k8s.api.authorization.v1.SubjectAccessReview",
    )
    .create_only(),
    row(
        "authentication.k8s.io",
        "v1",
        "SelfSubjectReview",
        "selfsubjectreviews",
        false,
        "io.k8s.api.authentication.v1.SelfSubjectReview",
    )
    .create_only(),
    // Served from the kubelets' summaries (metrics-server's API, built in).
    row(
        "metrics.k8s.io",
        "v1beta1",
        "NodeMetrics",
        "nodes",
        false,
        "io.k8s.metrics.pkg.apis.metrics.v1beta1.NodeMetrics",
    )
    .verbs(&["get", "list"]),
    row(
        "metrics.k8s.io",
        "v1beta1",
        "PodMetrics",
        "pods",
        true,
        "io.k8s.metrics.pkg.apis.metrics.v1beta1.PodMetrics",
    )
    .verbs(&["get", "list"]),
];

fn singular(kind: &str) -> String {
    kind.to_ascii_lowercase()
}

fn subresource(parent: &GroupVersionKind, name: &str) -> Subresource {
    let (kind, verbs): (GroupVersionKind, &[&str]) = match name {
        "status" => (parent.clone(), &["get", "patch", "update"]),
        "scale" => (
            GroupVersionKind::new("autoscaling", "v1", "Scale"),
            &["get", "patch", "update"],
        ),
        "binding" => (GroupVersionKind::new("", "v1", "Binding"), &["create"]),
        "eviction" => (
            GroupVersionKind::new("policy", "v1", "Eviction"),
            &["create"],
        ),
        "finalize" => (parent.clone(), &["update"]),
        "log" => (GroupVersionKind::new("", "v1", "Pod"), &["get"]),
        "exec" => (
            GroupVersionKind::new("", "v1", "PodExecOptions"),
            &["create", "get"],
        ),
        "attach" => (
            GroupVersionKind::new("", "v1", "PodAttachOptions"),
            &["create", "get"],
        ),
        "portforward" => (
            GroupVersionKind::new("", "v1", "PodPortForwardOptions"),
            &["create", "get"],
        ),
        _ => (parent.clone(), &["get"]),
    };
    Subresource {
        name: name.to_string(),
        kind,
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
    }
}

/// Every built-in resource, in a stable order.
pub fn resources() -> Vec<ResourceInfo> {
    ROWS.iter()
        .map(|r| {
            let gvk = GroupVersionKind::new(r.group, r.version, r.kind);
            ResourceInfo {
                subresources: r
                    .subresources
                    .iter()
                    .map(|s| subresource(&gvk, s))
                    .collect(),
                gvk,
                plural: r.plural.to_string(),
                singular: singular(r.kind),
                namespaced: r.namespaced,
                short_names: r.short.iter().map(|s| s.to_string()).collect(),
                categories: r.categories.iter().map(|s| s.to_string()).collect(),
                verbs: r.verbs.iter().map(|s| s.to_string()).collect(),
                schema_name: Some(r.schema.to_string()),
            }
        })
        .collect()
}

/// Resources that are answered by the server and never stored (reviews).
pub fn is_virtual(info: &ResourceInfo) -> bool {
    info.verbs.len() == 1 && info.verbs[0] == "create"
}

/// The storage key prefix of a resource, as kube-apiserver lays it out
/// (`/registry/pods/`, `/registry/services/specs/`, `/registry/minions/`).
pub fn storage_prefix(info: &ResourceInfo) -> String {
    let g = info.gvk.group.as_str();
    match (g, info.plural.as_str()) {
        ("", "services") => "/registry/services/specs/".into(),
        ("", "endpoints") => "/registry/services/endpoints/".into(),
        ("", "nodes") => "/registry/minions/".into(),
        ("", p)
        | (
            "apps"
            | "batch"
            | "policy"
            | "coordination.k8s.io"
            | "node.k8s.io"
            | "discovery.k8s.io",
            p,
        ) => {
            format!("/registry/{p}/")
        }
        // events.k8s.io shares nothing with core events here: kept apart (no conversion yet).
        (g, p) => format!("/registry/{g}/{p}/"),
    }
}
