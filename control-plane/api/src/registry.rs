//! The resource registry: one table of every served resource. Routing, discovery,
//! OpenAPI, validation and table printing are all derived from it, and kinds can be
//! added at run time (CustomResourceDefinitions build on this).

/// Group, version and kind of an object (`apps`, `v1`, `Deployment`; core group is `""`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupVersionKind {
    pub group: String,
    pub version: String,
    pub kind: String,
}

impl GroupVersionKind {
    pub fn new(group: &str, version: &str, kind: &str) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
        }
    }

    /// `v1` for the core group, `apps/v1` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// A subresource served under `…/{name}/{subresource}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subresource {
    /// `status`, `scale`, `binding`, `log`, `exec`, `eviction`, …
    pub name: String,
    /// The kind sent and returned (`Scale` in group `autoscaling` for `scale`).
    pub kind: GroupVersionKind,
    pub verbs: Vec<String>,
}

/// One served resource (a row of the registry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceInfo {
    /// Group/version/kind of the objects this resource holds.
    pub gvk: GroupVersionKind,
    /// URL segment: `deployments`.
    pub plural: String,
    /// `deployment`.
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub verbs: Vec<String>,
    pub subresources: Vec<Subresource>,
    /// Name of the OpenAPI schema of the kind (`io.k8s.api.apps.v1.Deployment`),
    /// `None` for kinds without a schema (served as free-form objects).
    pub schema_name: Option<String>,
}

impl ResourceInfo {
    /// `DeploymentList`.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.gvk.kind)
    }

    pub fn has_subresource(&self, name: &str) -> bool {
        self.subresources.iter().any(|s| s.name == name)
    }
}
