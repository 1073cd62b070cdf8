//! Defaulting as upstream's `SetDefaults_*` functions do it, on JSON objects.

use serde_json::{json, Map, Value};

use crate::registry::GroupVersionKind;

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Map<String, Value>> {
    let m = v.as_object_mut()?;
    let e = m
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if e.is_null() {
        *e = Value::Object(Map::new());
    }
    e.as_object_mut()
}

fn set_default(m: &mut Map<String, Value>, key: &str, value: Value) {
    match m.get(key) {
        None | Some(Value::Null) => {
            m.insert(key.to_string(), value);
        }
        _ => {}
    }
}

/// Applies the defaults of `gvk` to `obj` in place.
pub fn apply(gvk: &GroupVersionKind, obj: &mut Value) {
    match (gvk.group.as_str(), gvk.kind.as_str()) {
        ("", "Pod") => {
            if let Some(spec) = obj_mut(obj, "spec") {
                default_pod_spec(spec);
                admit_pod(spec);
            }
        }
        ("", "Namespace") => {
            if let Some(status) = obj_mut(obj, "status") {
                set_default(status, "phase", json!("Active"));
            }
            if let Some(spec) = obj_mut(obj, "spec") {
                set_default(spec, "finalizers", json!(["kubernetes"]));
            }
        }
        ("", "Service") => {
            if let Some(spec) = obj_mut(obj, "spec") {
                default_service_spec(spec);
            }
        }
        ("", "Secret") => {
            if let Some(m) = obj.as_object_mut() {
                set_default(m, "type", json!("Opaque"));
            }
        }
        ("apps", kind @ ("Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet")) => {
            let kind = kind.to_string();
            if let Some(spec) = obj_mut(obj, "spec") {
                if kind != "DaemonSet" {
                    set_default(spec, "replicas", json!(1));
                }
                if kind != "ReplicaSet" {
                    set_default(spec, "revisionHistoryLimit", json!(10));
                }
                match kind.as_str() {
                    "Deployment" => {
                        set_default(spec, "progressDeadlineSeconds", json!(600));
                        let strategy = spec.entry("strategy").or_insert_with(|| json!({}));
                        if let Some(s) = strategy.as_object_mut() {
                            set_default(s, "type", json!("RollingUpdate"));
                            if s.get("type") == Some(&json!("RollingUpdate")) {
                                let ru = s.entry("rollingUpdate").or_insert_with(|| json!({}));
                                if let Some(ru) = ru.as_object_mut() {
                                    set_default(ru, "maxUnavailable", json!("25%"));
                                    set_default(ru, "maxSurge", json!("25%"));
                                }
                            }
                        }
                    }
                    "DaemonSet" => {
                        let strategy = spec.entry("updateStrategy").or_insert_with(|| json!({}));
                        if let Some(s) = strategy.as_object_mut() {
                            set_default(s, "type", json!("RollingUpdate"));
                            if s.get("type") == Some(&json!("RollingUpdate")) {
                                let ru = s.entry("rollingUpdate").or_insert_with(|| json!({}));
                                if let Some(ru) = ru.as_object_mut() {
                                    set_default(ru, "maxUnavailable", json!(1));
                                    set_default(ru, "maxSurge", json!(0));
                                }
                            }
                        }
                    }
                    "StatefulSet" => {
                        set_default(spec, "podManagementPolicy", json!("OrderedReady"));
                        let strategy = spec.entry("updateStrategy").or_insert_with(|| json!({}));
                        if let Some(s) = strategy.as_object_mut() {
                            set_default(s, "type", json!("RollingUpdate"));
                            if s.get("type") == Some(&json!("RollingUpdate")) {
                                let ru = s.entry("rollingUpdate").or_insert_with(|| json!({}));
                                if let Some(ru) = ru.as_object_mut() {
                                    set_default(ru, "partition", json!(0));
                                }
                            }
                        }
                        set_default(
                            spec,
                            "persistentVolumeClaimRetentionPolicy",
                            json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
                        );
                    }
                    _ => {}
                }
                default_template(spec);
            }
        }
        ("batch", "Job") => {
            if let Some(spec) = obj_mut(obj, "spec") {
                default_job_spec(spec);
            }
        }
        ("batch", "CronJob") => {
            if let Some(spec) = obj_mut(obj, "spec") {
                set_default(spec, "concurrencyPolicy", json!("Allow"));
                set_default(spec, "suspend", json!(false));
                set_default(spec, "successfulJobsHistoryLimit", json!(3));
                set_default(spec, "failedJobsHistoryLimit", json!(1));
                if let Some(js) = spec
                    .entry("jobTemplate")
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .map(|jt| jt.entry("spec").or_insert_with(|| json!({})))
                    .and_then(Value::as_object_mut)
                {
                    default_job_spec(js);
                }
            }
        }
        _ => {}
    }
}

fn default_job_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "parallelism", json!(1));
    set_default(spec, "backoffLimit", json!(6));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    if spec.get("completions").is_none() && spec.get("parallelism") == Some(&json!(1)) {
        spec.insert("completions".into(), json!(1));
    }
    default_template(spec);
}

fn default_template(spec: &mut Map<String, Value>) {
    if let Some(ps) = spec
        .get_mut("template")
        .and_then(Value::as_object_mut)
        .map(|t| t.entry("spec").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    {
        default_pod_spec(ps);
    }
}

fn default_service_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "type", json!("ClusterIP"));
    set_default(spec, "sessionAffinity", json!("None"));
    if spec.get("type") != Some(&json!("ExternalName")) {
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
        set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
        set_default(spec, "ipFamilies", json!(["IPv4"]));
    }
    let typ = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if typ == "NodePort" || typ == "LoadBalancer" {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if let Some(Value::Array(ports)) = spec.get_mut("ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                set_default(p, "targetPort", port);
            }
        }
    }
}

fn image_pull_policy(image: &str) -> &'static str {
    // Upstream: `:latest` or no tag (and no digest) ⇒ Always.
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_container(c: &mut Map<String, Value>) {
    let image = c
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    set_default(c, "imagePullPolicy", json!(image_pull_policy(&image)));
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "resources", json!({}));
    if let Some(Value::Array(ports)) = c.get_mut("ports") {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
            set_default(p, "timeoutSeconds", json!(1));
            set_default(p, "periodSeconds", json!(10));
            set_default(p, "successThreshold", json!(1));
            set_default(p, "failureThreshold", json!(3));
            if let Some(h) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
                set_default(h, "path", json!("/"));
                set_default(h, "scheme", json!("HTTP"));
            }
        }
    }
    // Requests default to limits when only limits are given.
    if let Some(res) = c.get_mut("resources").and_then(Value::as_object_mut) {
        if let Some(Value::Object(limits)) = res.get("limits").cloned() {
            let req = res.entry("requests").or_insert_with(|| json!({}));
            if let Some(req) = req.as_object_mut() {
                for (k, v) in limits {
                    req.entry(k).or_insert(v);
                }
            }
        }
    }
}

/// Upstream `SetDefaults_PodSpec` plus the admission defaults every cluster applies
/// (service account, default tolerations).
pub fn default_pod_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "enableServiceLinks", json!(true));
    set_default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    set_default(spec, "priority", json!(0));
    for field in ["initContainers", "containers"] {
        if let Some(Value::Array(cs)) = spec.get_mut(field) {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                default_container(c);
            }
        }
    }
    if let Some(Value::Array(vols)) = spec.get_mut("volumes") {
        for v in vols.iter_mut().filter_map(Value::as_object_mut) {
            for (src, field) in [
                ("configMap", "defaultMode"),
                ("secret", "defaultMode"),
                ("downwardAPI", "defaultMode"),
                ("projected", "defaultMode"),
            ] {
                if let Some(s) = v.get_mut(src).and_then(Value::as_object_mut) {
                    set_default(s, field, json!(420));
                }
            }
        }
    }
}

/// What admission adds to every pod (not to templates): the service account and the
/// DefaultTolerationSeconds tolerations.
pub fn admit_pod(spec: &mut Map<String, Value>) {
    let sa = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .or_else(|| spec.get("serviceAccount").and_then(Value::as_str))
        .unwrap_or("default")
        .to_string();
    set_default(spec, "serviceAccountName", json!(sa));
    set_default(spec, "serviceAccount", json!(sa));
    // DefaultTolerationSeconds admission: tolerate not-ready/unreachable for 300 s.
    let tolerations = spec.entry("tolerations").or_insert_with(|| json!([]));
    if let Some(list) = tolerations.as_array_mut() {
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            let present = list.iter().any(|t| {
                t.get("key").and_then(Value::as_str) == Some(key)
                    && t.get("effect")
                        .and_then(Value::as_str)
                        .is_none_or(|e| e == "NoExecute")
            });
            if !present {
                list.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
            }
        }
    }
}

/// The pod's QoS class from its containers' requests and limits (upstream `GetPodQOS`).
pub fn pod_qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .filter_map(|f| spec.get(*f).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        if req.is_some_and(|r| !r.is_empty()) || lim.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for r in ["cpu", "memory"] {
            let l = lim.and_then(|l| l.get(r));
            let q = req.and_then(|q| q.get(r)).or(l);
            if l.is_none() || q != l {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_defaults() {
        let mut p = json!({"spec": {"containers": [{"name": "a", "image": "nginx", "ports": [{"containerPort": 80}]}]}});
        apply(&GroupVersionKind::new("", "v1", "Pod"), &mut p);
        assert_eq!(p["spec"]["restartPolicy"], "Always");
        assert_eq!(p["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(p["spec"]["containers"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(p["spec"]["tolerations"].as_array().unwrap().len(), 2);
        assert_eq!(image_pull_policy("reg:5000/app:v1"), "IfNotPresent");
        assert_eq!(image_pull_policy("reg:5000/app"), "Always");
    }

    #[test]
    fn deployment_defaults() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x:1"}]}}}});
        apply(&GroupVersionKind::new("apps", "v1", "Deployment"), &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(d["spec"]["template"]["spec"]["dnsPolicy"], "ClusterFirst");
    }
}
