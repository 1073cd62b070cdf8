//! OpenAPI v3 documents generated from the k8s-openapi types the server serves (their
//! schemars schemas), and strict field validation against the same schemas.
//!
//! kubectl 1.32 decides to use server-side validation (`fieldValidation=Strict`) when
//! a group-version document has a `patch` operation carrying
//! `x-kubernetes-group-version-kind` and a `fieldValidation` parameter; `kubectl
//! explain` resolves kinds through the schema-level GVK extension.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use crate::registry::ResourceInfo;

const REF_PREFIX: &str = "#/components/schemas/";

fn generate_all() -> Map<String, Value> {
    use k8s_openapi::api::{
        apps, authentication, authorization, autoscaling, batch, coordination, core, discovery,
        events, node, policy,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta;
    let mut g = schemars::generate::SchemaSettings::openapi3().into_generator();
    macro_rules! add {
        ($($t:ty),* $(,)?) => { $( let _ = g.subschema_for::<$t>(); )* };
    }
    add!(
        core::v1::Namespace,
        core::v1::Pod,
        core::v1::Node,
        core::v1::Service,
        core::v1::Endpoints,
        core::v1::ConfigMap,
        core::v1::Secret,
        core::v1::ServiceAccount,
        core::v1::Event,
        core::v1::Binding,
        events::v1::Event,
        coordination::v1::Lease,
        node::v1::RuntimeClass,
        discovery::v1::EndpointSlice,
        apps::v1::Deployment,
        apps::v1::ReplicaSet,
        apps::v1::DaemonSet,
        apps::v1::StatefulSet,
        apps::v1::ControllerRevision,
        batch::v1::Job,
        batch::v1::CronJob,
        autoscaling::v1::Scale,
        policy::v1::Eviction,
        policy::v1::PodDisruptionBudget,
        authorization::v1::SelfSubjectAccessReview,
        authorization::v1::SelfSubjectRulesReview,
        authorization::v1::SubjectAccessReview,
        authentication::v1::SelfSubjectReview,
        authentication::v1::TokenReview,
        meta::v1::DeleteOptions,
        meta::v1::Status,
    );
    g.take_definitions(true)
}

/// Every schema, by upstream dotted name (built once).
pub fn definitions() -> &'static Map<String, Value> {
    static DEFS: OnceLock<Map<String, Value>> = OnceLock::new();
    DEFS.get_or_init(generate_all)
}

fn refs_in(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                if let Some(name) = r.strip_prefix(REF_PREFIX) {
                    out.push(name.to_string());
                }
            }
            for c in m.values() {
                refs_in(c, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|c| refs_in(c, out)),
        _ => {}
    }
}

/// Schemas reachable from `roots`.
fn closure(roots: &[String]) -> BTreeSet<String> {
    let defs = definitions();
    let mut seen = BTreeSet::new();
    let mut queue: VecDeque<String> = roots.iter().cloned().collect();
    while let Some(n) = queue.pop_front() {
        if !seen.insert(n.clone()) {
            continue;
        }
        if let Some(s) = defs.get(&n) {
            let mut found = Vec::new();
            refs_in(s, &mut found);
            queue.extend(found);
        }
    }
    seen
}

fn param(name: &str) -> Value {
    json!({"name": name, "in": "query", "uniqueItems": true, "schema": {"type": "string", "uniqueItems": true}})
}

fn gvk_ext(info: &ResourceInfo) -> Value {
    json!({"group": info.gvk.group, "version": info.gvk.version, "kind": info.gvk.kind})
}

fn op(info: &ResourceInfo, action: &str, id: &str, schema_ref: &Value, params: &[&str]) -> Value {
    json!({
        "operationId": id,
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk_ext(info),
        "parameters": params.iter().map(|p| param(p)).collect::<Vec<_>>(),
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema_ref}}}},
    })
}

fn schema_ref(info: &ResourceInfo) -> Value {
    match &info.schema_name {
        Some(n) if definitions().contains_key(n) => json!({"$ref": format!("{REF_PREFIX}{n}")}),
        _ => json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
    }
}

fn gv_prefix(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    }
}

fn build_gv(group: &str, version: &str, resources: &[&ResourceInfo]) -> Value {
    let prefix = gv_prefix(group, version);
    let mut paths = Map::new();
    let write_params: &[&str] = &["dryRun", "fieldManager", "fieldValidation", "pretty"];
    let patch_params: &[&str] = &[
        "dryRun",
        "fieldManager",
        "fieldValidation",
        "force",
        "pretty",
    ];
    for info in resources {
        let sref = schema_ref(info);
        let kind = &info.gvk.kind;
        let (coll, item) = if info.namespaced {
            (
                format!("{prefix}/namespaces/{{namespace}}/{}", info.plural),
                format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", info.plural),
            )
        } else {
            (
                format!("{prefix}/{}", info.plural),
                format!("{prefix}/{}/{{name}}", info.plural),
            )
        };
        let verbs: BTreeSet<&str> = info.verbs.iter().map(String::as_str).collect();
        let mut c = Map::new();
        if verbs.contains("list") {
            c.insert(
                "get".into(),
                op(
                    info,
                    "list",
                    &format!("list{kind}"),
                    &sref,
                    &[
                        "labelSelector",
                        "fieldSelector",
                        "limit",
                        "continue",
                        "resourceVersion",
                        "watch",
                    ],
                ),
            );
        }
        if verbs.contains("create") {
            c.insert(
                "post".into(),
                op(info, "post", &format!("create{kind}"), &sref, write_params),
            );
        }
        if verbs.contains("deletecollection") {
            c.insert(
                "delete".into(),
                op(
                    info,
                    "deletecollection",
                    &format!("deleteCollection{kind}"),
                    &sref,
                    &["labelSelector", "fieldSelector"],
                ),
            );
        }
        paths.insert(coll, Value::Object(c));
        if verbs.contains("get") {
            let mut i = Map::new();
            i.insert(
                "get".into(),
                op(info, "get", &format!("read{kind}"), &sref, &["pretty"]),
            );
            i.insert(
                "put".into(),
                op(info, "put", &format!("replace{kind}"), &sref, write_params),
            );
            i.insert(
                "patch".into(),
                op(info, "patch", &format!("patch{kind}"), &sref, patch_params),
            );
            i.insert(
                "delete".into(),
                op(
                    info,
                    "delete",
                    &format!("delete{kind}"),
                    &sref,
                    &["dryRun", "gracePeriodSeconds", "propagationPolicy"],
                ),
            );
            paths.insert(item.clone(), Value::Object(i));
        }
        for s in &info.subresources {
            let mut i = Map::new();
            let sub_ref = if s.name == "scale" {
                json!({"$ref": format!("{REF_PREFIX}io.k8s.api.autoscaling.v1.Scale")})
            } else {
                sref.clone()
            };
            for v in &s.verbs {
                let (method, action) = match v.as_str() {
                    "get" => ("get", "get"),
                    "update" => ("put", "put"),
                    "patch" => ("patch", "patch"),
                    "create" => ("post", "post"),
                    _ => continue,
                };
                let mut o = op(
                    info,
                    action,
                    &format!("{action}{kind}{}", s.name),
                    &sub_ref,
                    patch_params,
                );
                o["x-kubernetes-group-version-kind"] =
                    json!({"group": s.kind.group, "version": s.kind.version, "kind": s.kind.kind});
                i.insert(method.into(), o);
            }
            paths.insert(format!("{item}/{}", s.name), Value::Object(i));
        }
    }
    let mut roots: Vec<String> = resources
        .iter()
        .filter_map(|i| i.schema_name.clone())
        .collect();
    roots.push("io.k8s.api.autoscaling.v1.Scale".into());
    roots.push("io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions".into());
    roots.push("io.k8s.apimachinery.pkg.apis.meta.v1.Status".into());
    let mut schemas = Map::new();
    for name in closure(&roots) {
        if let Some(s) = definitions().get(&name) {
            let mut s = s.clone();
            // Top-level kinds carry their GVK, as upstream's documents do.
            let kinds: Vec<Value> = resources
                .iter()
                .filter(|i| i.schema_name.as_deref() == Some(name.as_str()))
                .map(|i| gvk_ext(i))
                .collect();
            if !kinds.is_empty() {
                s["x-kubernetes-group-version-kind"] = Value::Array(kinds);
            }
            schemas.insert(name, s);
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

/// The served OpenAPI v3 documents, serialized once.
pub struct OpenApiDocs {
    root: Vec<u8>,
    /// `api/v1` / `apis/apps/v1` → serialized document.
    docs: BTreeMap<String, Vec<u8>>,
}

fn hash_hex(bytes: &[u8]) -> String {
    // FNV-1a, 64 bit: a change detector for client caches, not a security boundary.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016X}")
}

impl OpenApiDocs {
    pub fn build(resources: &[ResourceInfo]) -> Self {
        let mut groups: BTreeMap<(String, String), Vec<&ResourceInfo>> = BTreeMap::new();
        for r in resources {
            groups
                .entry((r.gvk.group.clone(), r.gvk.version.clone()))
                .or_default()
                .push(r);
        }
        let mut docs = BTreeMap::new();
        let mut root_paths = Map::new();
        for ((g, v), rs) in groups {
            let key = gv_prefix(&g, &v).trim_start_matches('/').to_string();
            let body = serde_json::to_vec(&build_gv(&g, &v, &rs)).unwrap_or_default();
            root_paths.insert(
                key.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={}", hash_hex(&body))}),
            );
            docs.insert(key, body);
        }
        let root = serde_json::to_vec(&json!({"paths": root_paths})).unwrap_or_default();
        OpenApiDocs { root, docs }
    }

    pub fn root(&self) -> Vec<u8> {
        self.root.clone()
    }

    /// The document for `api/v1` or `apis/G/V`.
    pub fn group_version(&self, path: &str) -> Option<Vec<u8>> {
        self.docs.get(path.trim_matches('/')).cloned()
    }
}

fn resolve(s: &Value) -> &Value {
    let mut cur = s;
    for _ in 0..16 {
        if let Some(r) = cur
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix(REF_PREFIX))
        {
            match definitions().get(r) {
                Some(d) => cur = d,
                None => return cur,
            }
        } else if let Some(Value::Array(all)) = cur.get("allOf") {
            if all.len() == 1 && cur.get("properties").is_none() {
                cur = &all[0];
            } else {
                return cur;
            }
        } else {
            return cur;
        }
    }
    cur
}

/// JSON paths of fields in `obj` that the schema `schema_name` does not define
/// (`spec.template.spec.containers[0].imagee`).
pub fn unknown_fields(schema_name: &str, obj: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(s) = definitions().get(schema_name) {
        walk(s, obj, "", &mut out);
    }
    out
}

fn walk(schema: &Value, v: &Value, path: &str, out: &mut Vec<String>) {
    let s = resolve(schema);
    if s.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(props)) = s.get("properties") {
                for (k, child) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    match props.get(k) {
                        Some(ps) => walk(ps, child, &p, out),
                        None => out.push(p),
                    }
                }
            } else if let Some(ap) = s.get("additionalProperties").filter(|a| a.is_object()) {
                for (k, child) in m {
                    walk(ap, child, &format!("{path}[{k}]"), out);
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = s.get("items") {
                for (i, child) in items.iter().enumerate() {
                    walk(is, child, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"any/key": "x"}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}},
              "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i",
                "resources": {"limits": {"memory": "1Gi"}}}]}}}})
    }

    #[test]
    fn strict_fields() {
        assert_eq!(
            unknown_fields("io.k8s.api.apps.v1.Deployment", &deploy()),
            Vec::<String>::new()
        );
        let mut d = deploy();
        d["spec"]["template"]["spec"]["containers"][0]["imagee"] = json!("x");
        d["spec"]["foo"] = json!(1);
        d["bogus"] = json!(true);
        let mut got = unknown_fields("io.k8s.api.apps.v1.Deployment", &d);
        got.sort();
        assert_eq!(
            got,
            vec![
                "bogus",
                "spec.foo",
                "spec.template.spec.containers[0].imagee"
            ]
        );
    }

    #[test]
    fn documents_have_what_kubectl_needs() {
        let docs = OpenApiDocs::build(&crate::builtin::resources());
        let root: Value = serde_json::from_slice(&docs.root()).unwrap();
        assert!(root["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap()
            .starts_with("/openapi/v3/apis/apps/v1?hash="));
        let gv: Value =
            serde_json::from_slice(&docs.group_version("apis/apps/v1").unwrap()).unwrap();
        let patch =
            &gv["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"],
            json!({"group": "apps", "version": "v1", "kind": "Deployment"})
        );
        assert!(patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation"));
        let schema = &gv["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            schema["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        assert!(
            gv["components"]["schemas"]["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]
                .is_object()
        );
    }
}
