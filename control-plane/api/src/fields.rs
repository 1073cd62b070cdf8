//! Which fields each kind supports in field selectors, and their values
//! (upstream's `GetAttrs`/`ToSelectableFields`).

use serde_json::Value;

use crate::registry::GroupVersionKind;

/// The value of `field` on `obj`, or `Err(())` if the kind does not support selecting on it.
#[allow(clippy::result_unit_err)]
pub fn field_value(gvk: &GroupVersionKind, obj: &Value, field: &str) -> Result<String, ()> {
    let s = |p: &str| {
        obj.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    match field {
        "metadata.name" => return Ok(s("/metadata/name")),
        "metadata.namespace" => return Ok(s("/metadata/namespace")),
        _ => {}
    }
    let v = match (gvk.group.as_str(), gvk.kind.as_str(), field) {
        ("", "Pod", "spec.nodeName") => s("/spec/nodeName"),
        ("", "Pod", "spec.restartPolicy") => s("/spec/restartPolicy"),
        ("", "Pod", "spec.schedulerName") => s("/spec/schedulerName"),
        ("", "Pod", "spec.serviceAccountName") => s("/spec/serviceAccountName"),
        ("", "Pod", "spec.hostNetwork") => obj
            .pointer("/spec/hostNetwork")
            .and_then(Value::as_bool)
            .unwrap_or(false)
            .to_string(),
        ("", "Pod", "status.phase") => s("/status/phase"),
        ("", "Pod", "status.podIP") => s("/status/podIP"),
        ("", "Pod", "status.nominatedNodeName") => s("/status/nominatedNodeName"),
        ("", "Node", "spec.unschedulable") => obj
            .pointer("/spec/unschedulable")
            .and_then(Value::as_bool)
            .unwrap_or(false)
            .to_string(),
        ("", "Namespace", "status.phase") => s("/status/phase"),
        ("", "Secret", "type") => s("/type"),
        ("", "Event", f) => match f {
            "involvedObject.kind" => s("/involvedObject/kind"),
            "involvedObject.namespace" => s("/involvedObject/namespace"),
            "involvedObject.name" => s("/involvedObject/name"),
            "involvedObject.uid" => s("/involvedObject/uid"),
            "involvedObject.apiVersion" => s("/involvedObject/apiVersion"),
            "involvedObject.resourceVersion" => s("/involvedObject/resourceVersion"),
            "involvedObject.fieldPath" => s("/involvedObject/fieldPath"),
            "reason" => s("/reason"),
            "reportingComponent" => s("/reportingComponent"),
            "source" => s("/source/component"),
            "type" => s("/type"),
            _ => return Err(()),
        },
        ("events.k8s.io", "Event", f) => match f {
            "regarding.kind" => s("/regarding/kind"),
            "regarding.namespace" => s("/regarding/namespace"),
            "regarding.name" => s("/regarding/name"),
            "regarding.uid" => s("/regarding/uid"),
            "reason" => s("/reason"),
            "reportingController" => s("/reportingController"),
            "type" => s("/type"),
            _ => return Err(()),
        },
        ("apps", "ReplicaSet", "status.replicas") => obj
            .pointer("/status/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .to_string(),
        ("batch", "Job", "status.successful") => obj
            .pointer("/status/succeeded")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .to_string(),
        _ => return Err(()),
    };
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_fields() {
        let gvk = GroupVersionKind::new("", "v1", "Pod");
        let p = json!({"metadata": {"name": "a", "namespace": "d"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        assert_eq!(field_value(&gvk, &p, "spec.nodeName"), Ok("n1".into()));
        assert_eq!(field_value(&gvk, &p, "status.phase"), Ok("Running".into()));
        assert_eq!(field_value(&gvk, &p, "metadata.namespace"), Ok("d".into()));
        assert!(field_value(&gvk, &p, "spec.bogus").is_err());
    }
}
