//! Type checking of built-in objects: the JSON must decode into the upstream Go type
//! (k8s-openapi's Rust mirror). Mismatches are what kube-apiserver reports as
//! `X in version "v1" cannot be handled as a X: json: cannot unmarshal …`.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::registry::GroupVersionKind;

fn check<T: DeserializeOwned>(v: &Value) -> Result<(), String> {
    T::deserialize(v).map(|_| ()).map_err(|e| e.to_string())
}

/// `Err(message)` if `obj` does not decode as `gvk`'s type; `Ok` for unknown kinds.
pub fn check_type(gvk: &GroupVersionKind, obj: &Value) -> Result<(), String> {
    use k8s_openapi::api::{apps, batch, coordination, core, discovery, events, node, policy};
    let r = match (gvk.group.as_str(), gvk.kind.as_str()) {
        ("", "Namespace") => check::<core::v1::Namespace>(obj),
        ("", "Pod") => check::<core::v1::Pod>(obj),
        ("", "Node") => check::<core::v1::Node>(obj),
        ("", "Service") => check::<core::v1::Service>(obj),
        ("", "Endpoints") => check::<core::v1::Endpoints>(obj),
        ("", "ConfigMap") => check::<core::v1::ConfigMap>(obj),
        ("", "Secret") => check::<core::v1::Secret>(obj),
        ("", "ServiceAccount") => check::<core::v1::ServiceAccount>(obj),
        ("", "Event") => check::<core::v1::Event>(obj),
        ("events.k8s.io", "Event") => check::<events::v1::Event>(obj),
        ("coordination.k8s.io", "Lease") => check::<coordination::v1::Lease>(obj),
        ("node.k8s.io", "RuntimeClass") => check::<node::v1::RuntimeClass>(obj),
        ("discovery.k8s.io", "EndpointSlice") => check::<discovery::v1::EndpointSlice>(obj),
        ("apps", "Deployment") => check::<apps::v1::Deployment>(obj),
        ("apps", "ReplicaSet") => check::<apps::v1::ReplicaSet>(obj),
        ("apps", "DaemonSet") => check::<apps::v1::DaemonSet>(obj),
        ("apps", "StatefulSet") => check::<apps::v1::StatefulSet>(obj),
        ("apps", "ControllerRevision") => check::<apps::v1::ControllerRevision>(obj),
        ("batch", "Job") => check::<batch::v1::Job>(obj),
        ("batch", "CronJob") => check::<batch::v1::CronJob>(obj),
        ("policy", "PodDisruptionBudget") => check::<policy::v1::PodDisruptionBudget>(obj),
        _ => Ok(()),
    };
    // Go's decoder never fails on a missing field; that is validation's job (422).
    let r = match r {
        Err(e) if e.starts_with("missing field") => Ok(()),
        other => other,
    };
    r.map_err(|e| {
        format!(
            "{kind} in version \"{v}\" cannot be handled as a {kind}: {e}",
            kind = gvk.kind,
            v = gvk.version
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn catches_wrong_types() {
        let gvk = GroupVersionKind::new("apps", "v1", "Deployment");
        let ok = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "a"},
            "spec": {"replicas": 2, "selector": {}, "template": {}}});
        assert!(check_type(&gvk, &ok).is_ok());
        let bad = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "a"},
            "spec": {"replicas": "two", "selector": {}, "template": {}}});
        let e = check_type(&gvk, &bad).unwrap_err();
        assert!(
            e.starts_with("Deployment in version \"v1\" cannot be handled as a Deployment"),
            "{e}"
        );
    }
}
