//! Server-side printing (`meta.k8s.io/v1` Table): the columns and cells kubectl shows,
//! following upstream's printers, with human-readable ages computed here (kubectl does
//! not format times).

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::registry::GroupVersionKind;

/// One column definition.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: &'static str,
    pub typ: &'static str,
    pub format: &'static str,
    pub description: &'static str,
    /// 0: default output; 1: `-o wide` only.
    pub priority: u8,
}

const fn col(name: &'static str, typ: &'static str, priority: u8) -> Column {
    Column {
        name,
        typ,
        format: "",
        description: "",
        priority,
    }
}

const fn name_col() -> Column {
    Column {
        name: "Name",
        typ: "string",
        format: "name",
        description: "Name must be unique within a namespace. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
        priority: 0,
    }
}

const AGE: Column = Column {
    name: "Age",
    typ: "string",
    format: "",
    description: "CreationTimestamp is a timestamp representing the server time when this object was created.",
    priority: 0,
};

impl Column {
    pub fn to_json(&self) -> Value {
        json!({"name": self.name, "type": self.typ, "format": self.format, "description": self.description, "priority": self.priority})
    }
}

/// The columns for a kind.
pub fn columns(gvk: &GroupVersionKind) -> Vec<Column> {
    match (gvk.group.as_str(), gvk.kind.as_str()) {
        ("", "Pod") => vec![
            name_col(),
            col("Ready", "string", 0),
            col("Status", "string", 0),
            col("Restarts", "string", 0),
            AGE,
            col("IP", "string", 1),
            col("Node", "string", 1),
            col("Nominated Node", "string", 1),
            col("Readiness Gates", "string", 1),
        ],
        ("apps", "Deployment") => vec![
            name_col(),
            col("Ready", "string", 0),
            col("Up-to-date", "integer", 0),
            col("Available", "integer", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        ("apps", "ReplicaSet") => vec![
            name_col(),
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        ("apps", "DaemonSet") => vec![
            name_col(),
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            col("Up-to-date", "integer", 0),
            col("Available", "integer", 0),
            col("Node Selector", "string", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        ("apps", "StatefulSet") => vec![
            name_col(),
            col("Ready", "string", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
        ],
        ("batch", "Job") => vec![
            name_col(),
            col("Status", "string", 0),
            col("Completions", "string", 0),
            col("Duration", "string", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        ("batch", "CronJob") => vec![
            name_col(),
            col("Schedule", "string", 0),
            col("Timezone", "string", 0),
            col("Suspend", "boolean", 0),
            col("Active", "integer", 0),
            col("Last Schedule", "string", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        ("", "Node") => vec![
            name_col(),
            col("Status", "string", 0),
            col("Roles", "string", 0),
            AGE,
            col("Version", "string", 0),
            col("Internal-IP", "string", 1),
            col("External-IP", "string", 1),
            col("OS-Image", "string", 1),
            col("Kernel-Version", "string", 1),
            col("Container-Runtime", "string", 1),
        ],
        ("", "Service") => vec![
            name_col(),
            col("Type", "string", 0),
            col("Cluster-IP", "string", 0),
            col("External-IP", "string", 0),
            col("Port(s)", "string", 0),
            AGE,
            col("Selector", "string", 1),
        ],
        ("", "Namespace") => vec![name_col(), col("Status", "string", 0), AGE],
        ("", "ConfigMap") => vec![name_col(), col("Data", "integer", 0), AGE],
        ("", "Secret") => vec![
            name_col(),
            col("Type", "string", 0),
            col("Data", "integer", 0),
            AGE,
        ],
        ("", "ServiceAccount") => vec![name_col(), col("Secrets", "integer", 0), AGE],
        ("", "Endpoints") => vec![name_col(), col("Endpoints", "string", 0), AGE],
        ("discovery.k8s.io", "EndpointSlice") => vec![
            name_col(),
            col("AddressType", "string", 0),
            col("Ports", "string", 0),
            col("Endpoints", "string", 0),
            AGE,
        ],
        ("", "Event") => vec![
            col("Last Seen", "string", 0),
            col("Type", "string", 0),
            col("Reason", "string", 0),
            Column {
                name: "Object",
                typ: "string",
                format: "",
                description: "",
                priority: 0,
            },
            col("Message", "string", 0),
            col("Source", "string", 1),
            col("First Seen", "string", 1),
            col("Count", "string", 1),
            name_col_prio1(),
        ],
        ("coordination.k8s.io", "Lease") => vec![name_col(), col("Holder", "string", 0), AGE],
        ("node.k8s.io", "RuntimeClass") => vec![name_col(), col("Handler", "string", 0), AGE],
        ("policy", "PodDisruptionBudget") => vec![
            name_col(),
            col("Min Available", "string", 0),
            col("Max Unavailable", "string", 0),
            col("Allowed Disruptions", "integer", 0),
            AGE,
        ],
        _ => vec![name_col(), AGE],
    }
}

const fn name_col_prio1() -> Column {
    Column {
        name: "Name",
        typ: "string",
        format: "name",
        description: "",
        priority: 1,
    }
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn i(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn none_if_empty(s: String) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s
    }
}

/// Upstream `duration.HumanDuration`.
pub fn human_duration(d: chrono::Duration) -> String {
    let secs = d.num_seconds();
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    if secs < 60 * 2 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        let days = hours / 24;
        return if h == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{h}h")
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        let y = hours / 24 / 365;
        return if dy == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{dy}d")
        };
    }
    format!("{}y", hours / 24 / 365)
}

fn age(ts: &str, now: DateTime<Utc>) -> String {
    match DateTime::parse_from_rfc3339(ts) {
        Ok(t) => human_duration(now - t.with_timezone(&Utc)),
        Err(_) => "<unknown>".into(),
    }
}

fn containers_images(spec: &Value) -> (String, String) {
    let cs = spec
        .get("containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = cs.iter().map(|c| s(c, "/name")).collect();
    let images: Vec<&str> = cs.iter().map(|c| s(c, "/image")).collect();
    (names.join(","), images.join(","))
}

/// Renders a metav1.LabelSelector as `a=b,c in (d)`.
pub fn selector_string(sel: Option<&Value>) -> String {
    let Some(sel) = sel else { return String::new() };
    let mut parts = Vec::new();
    if let Some(Value::Object(ml)) = sel.get("matchLabels") {
        for (k, v) in ml {
            parts.push(format!("{k}={}", v.as_str().unwrap_or("")));
        }
    }
    if let Some(Value::Array(exprs)) = sel.get("matchExpressions") {
        for e in exprs {
            let key = s(e, "/key");
            let vals: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            match s(e, "/operator") {
                "In" => parts.push(format!("{key} in ({})", vals.join(","))),
                "NotIn" => parts.push(format!("{key} notin ({})", vals.join(","))),
                "Exists" => parts.push(key.to_string()),
                "DoesNotExist" => parts.push(format!("!{key}")),
                _ => {}
            }
        }
    }
    parts.join(",")
}

fn pod_row(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let containers = obj
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(Vec::len)
        .unwrap_or(0);
    let statuses = obj
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ready = statuses
        .iter()
        .filter(|c| c.get("ready") == Some(&Value::Bool(true)))
        .count();
    let mut restarts = 0;
    let mut last_restart: Option<DateTime<Utc>> = None;
    let mut reason = {
        let r = s(obj, "/status/reason");
        if r.is_empty() {
            s(obj, "/status/phase").to_string()
        } else {
            r.to_string()
        }
    };
    if reason.is_empty() {
        reason = "Pending".into();
    }
    // Init containers first, as upstream's printer does.
    let init_total = obj
        .pointer("/spec/initContainers")
        .and_then(Value::as_array)
        .map(Vec::len)
        .unwrap_or(0);
    let mut initializing = false;
    if let Some(inits) = obj
        .pointer("/status/initContainerStatuses")
        .and_then(Value::as_array)
    {
        for (idx, c) in inits.iter().enumerate() {
            restarts += i(c, "/restartCount");
            if c.pointer("/state/terminated/exitCode")
                .and_then(Value::as_i64)
                == Some(0)
            {
                continue;
            }
            initializing = true;
            if let Some(t) = c.pointer("/state/terminated") {
                let r = s(t, "/reason");
                reason = if r.is_empty() {
                    format!("Init:ExitCode:{}", i(t, "/exitCode"))
                } else {
                    format!("Init:{r}")
                };
            } else if let Some(w) = c.pointer("/state/waiting") {
                let r = s(w, "/reason");
                reason = if !r.is_empty() && r != "PodInitializing" {
                    format!("Init:{r}")
                } else {
                    format!("Init:{idx}/{init_total}")
                };
            } else {
                reason = format!("Init:{idx}/{init_total}");
            }
            break;
        }
    }
    if !initializing {
        let mut has_running = false;
        for c in statuses.iter().rev() {
            restarts += i(c, "/restartCount");
            if let Some(t) = c
                .pointer("/lastState/terminated/finishedAt")
                .and_then(Value::as_str)
            {
                if let Ok(t) = DateTime::parse_from_rfc3339(t) {
                    let t = t.with_timezone(&Utc);
                    if last_restart.is_none_or(|l| t > l) {
                        last_restart = Some(t);
                    }
                }
            }
            if let Some(w) = c.pointer("/state/waiting") {
                let r = s(w, "/reason");
                if !r.is_empty() {
                    reason = r.to_string();
                }
            } else if let Some(t) = c.pointer("/state/terminated") {
                let r = s(t, "/reason");
                reason = if !r.is_empty() {
                    r.to_string()
                } else if t.get("signal").and_then(Value::as_i64).unwrap_or(0) != 0 {
                    format!("Signal:{}", i(t, "/signal"))
                } else {
                    format!("ExitCode:{}", i(t, "/exitCode"))
                };
            } else if c.get("ready") == Some(&Value::Bool(true))
                && c.pointer("/state/running").is_some()
            {
                has_running = true;
            }
        }
        if reason == "Completed" && has_running {
            reason = "Running".into();
        }
    }
    if obj.pointer("/metadata/deletionTimestamp").is_some() {
        reason = if s(obj, "/status/reason") == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    let restarts_cell = match last_restart {
        Some(t) if restarts > 0 => format!("{restarts} ({} ago)", human_duration(now - t)),
        _ => restarts.to_string(),
    };
    let gates = obj
        .pointer("/spec/readinessGates")
        .and_then(Value::as_array)
        .map(Vec::len)
        .unwrap_or(0);
    let gates_cell = if gates == 0 {
        "<none>".to_string()
    } else {
        let conds = obj
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let true_gates = obj
            .pointer("/spec/readinessGates")
            .and_then(Value::as_array)
            .map(|g| {
                g.iter()
                    .filter(|gate| {
                        let t = s(gate, "/conditionType");
                        conds
                            .iter()
                            .any(|c| s(c, "/type") == t && s(c, "/status") == "True")
                    })
                    .count()
            })
            .unwrap_or(0);
        format!("{true_gates}/{gates}")
    };
    vec![
        json!(s(obj, "/metadata/name")),
        json!(format!("{ready}/{containers}")),
        json!(reason),
        json!(restarts_cell),
        json!(age(s(obj, "/metadata/creationTimestamp"), now)),
        json!(none_if_empty(s(obj, "/status/podIP").to_string())),
        json!(none_if_empty(s(obj, "/spec/nodeName").to_string())),
        json!(none_if_empty(
            s(obj, "/status/nominatedNodeName").to_string()
        )),
        json!(gates_cell),
    ]
}

fn service_ports(obj: &Value) -> String {
    let ports = obj
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let parts: Vec<String> = ports
        .iter()
        .map(|p| {
            let port = i(p, "/port");
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) if np != 0 => format!("{port}:{np}/{proto}"),
                _ => format!("{port}/{proto}"),
            }
        })
        .collect();
    none_if_empty(parts.join(","))
}

fn node_row(obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let conds = obj
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut status: Vec<String> = Vec::new();
    match conds.iter().find(|c| s(c, "/type") == "Ready") {
        Some(c) if s(c, "/status") == "True" => status.push("Ready".into()),
        Some(_) => status.push("NotReady".into()),
        None => status.push("Unknown".into()),
    }
    if obj.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
        status.push("SchedulingDisabled".into());
    }
    let mut roles: Vec<String> = obj
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|l| {
            l.keys()
                .filter_map(|k| {
                    k.strip_prefix("node-role.kubernetes.io/")
                        .map(str::to_string)
                })
                .filter(|r| !r.is_empty())
                .collect()
        })
        .unwrap_or_default();
    roles.sort();
    let addr = |t: &str| {
        obj.pointer("/status/addresses")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|x| s(x, "/type") == t))
            .map(|x| s(x, "/address").to_string())
            .unwrap_or_default()
    };
    vec![
        json!(s(obj, "/metadata/name")),
        json!(status.join(",")),
        json!(none_if_empty(roles.join(","))),
        json!(age(s(obj, "/metadata/creationTimestamp"), now)),
        json!(s(obj, "/status/nodeInfo/kubeletVersion")),
        json!(none_if_empty(addr("InternalIP"))),
        json!(none_if_empty(addr("ExternalIP"))),
        json!(none_if_empty(
            s(obj, "/status/nodeInfo/osImage").to_string()
        )),
        json!(none_if_empty(
            s(obj, "/status/nodeInfo/kernelVersion").to_string()
        )),
        json!(none_if_empty(
            s(obj, "/status/nodeInfo/containerRuntimeVersion").to_string()
        )),
    ]
}

fn count_keys(obj: &Value, fields: &[&str]) -> i64 {
    fields
        .iter()
        .filter_map(|f| obj.get(*f).and_then(Value::as_object))
        .map(|m| m.len() as i64)
        .sum()
}

/// The cells of one row, matching [`columns`] for the same kind.
pub fn row(gvk: &GroupVersionKind, obj: &Value, now: DateTime<Utc>) -> Vec<Value> {
    let name = json!(s(obj, "/metadata/name"));
    let created = json!(age(s(obj, "/metadata/creationTimestamp"), now));
    match (gvk.group.as_str(), gvk.kind.as_str()) {
        ("", "Pod") => pod_row(obj, now),
        ("", "Node") => node_row(obj, now),
        ("apps", "Deployment") => {
            let (c, im) =
                containers_images(obj.pointer("/spec/template/spec").unwrap_or(&Value::Null));
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    i(obj, "/status/readyReplicas"),
                    i(obj, "/spec/replicas")
                )),
                json!(i(obj, "/status/updatedReplicas")),
                json!(i(obj, "/status/availableReplicas")),
                created,
                json!(c),
                json!(im),
                json!(none_if_empty(selector_string(
                    obj.pointer("/spec/selector")
                ))),
            ]
        }
        ("apps", "ReplicaSet") => {
            let (c, im) =
                containers_images(obj.pointer("/spec/template/spec").unwrap_or(&Value::Null));
            vec![
                name,
                json!(i(obj, "/spec/replicas")),
                json!(i(obj, "/status/replicas")),
                json!(i(obj, "/status/readyReplicas")),
                created,
                json!(c),
                json!(im),
                json!(none_if_empty(selector_string(
                    obj.pointer("/spec/selector")
                ))),
            ]
        }
        ("apps", "DaemonSet") => {
            let (c, im) =
                containers_images(obj.pointer("/spec/template/spec").unwrap_or(&Value::Null));
            let ns = obj
                .pointer("/spec/template/spec/nodeSelector")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                name,
                json!(i(obj, "/status/desiredNumberScheduled")),
                json!(i(obj, "/status/currentNumberScheduled")),
                json!(i(obj, "/status/numberReady")),
                json!(i(obj, "/status/updatedNumberScheduled")),
                json!(i(obj, "/status/numberAvailable")),
                json!(none_if_empty(ns)),
                created,
                json!(c),
                json!(im),
                json!(none_if_empty(selector_string(
                    obj.pointer("/spec/selector")
                ))),
            ]
        }
        ("apps", "StatefulSet") => {
            let (c, im) =
                containers_images(obj.pointer("/spec/template/spec").unwrap_or(&Value::Null));
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    i(obj, "/status/readyReplicas"),
                    i(obj, "/spec/replicas")
                )),
                created,
                json!(c),
                json!(im),
            ]
        }
        ("batch", "Job") => {
            let (c, im) =
                containers_images(obj.pointer("/spec/template/spec").unwrap_or(&Value::Null));
            let conds = obj
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let has = |t: &str| {
                conds
                    .iter()
                    .any(|c| s(c, "/type") == t && s(c, "/status") == "True")
            };
            let status = if has("Complete") {
                "Complete"
            } else if has("Failed") {
                "Failed"
            } else if obj.pointer("/metadata/deletionTimestamp").is_some() {
                "Terminating"
            } else if has("Suspended") {
                "Suspended"
            } else {
                "Running"
            };
            let completions = match obj.pointer("/spec/completions").and_then(Value::as_i64) {
                Some(n) => format!("{}/{n}", i(obj, "/status/succeeded")),
                None => format!(
                    "{}/1 of {}",
                    i(obj, "/status/succeeded"),
                    i(obj, "/spec/parallelism")
                ),
            };
            let duration = match (
                obj.pointer("/status/startTime")
                    .and_then(Value::as_str)
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok()),
                obj.pointer("/status/completionTime")
                    .and_then(Value::as_str)
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok()),
            ) {
                (Some(st), Some(ct)) => human_duration(ct - st),
                (Some(st), None) => human_duration(now - st.with_timezone(&Utc)),
                _ => String::new(),
            };
            vec![
                name,
                json!(status),
                json!(completions),
                json!(duration),
                created,
                json!(c),
                json!(im),
                json!(none_if_empty(selector_string(
                    obj.pointer("/spec/selector")
                ))),
            ]
        }
        ("batch", "CronJob") => {
            let (c, im) = containers_images(
                obj.pointer("/spec/jobTemplate/spec/template/spec")
                    .unwrap_or(&Value::Null),
            );
            let last = obj
                .pointer("/status/lastScheduleTime")
                .and_then(Value::as_str)
                .map(|t| age(t, now))
                .unwrap_or_else(|| "<none>".into());
            vec![
                name,
                json!(s(obj, "/spec/schedule")),
                json!(none_if_empty(s(obj, "/spec/timeZone").to_string())),
                json!(obj
                    .pointer("/spec/suspend")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)),
                json!(obj
                    .pointer("/status/active")
                    .and_then(Value::as_array)
                    .map(Vec::len)
                    .unwrap_or(0)),
                json!(last),
                created,
                json!(c),
                json!(im),
                json!(none_if_empty(selector_string(
                    obj.pointer("/spec/jobTemplate/spec/selector")
                ))),
            ]
        }
        ("", "Service") => {
            let typ = s(obj, "/spec/type");
            let typ = if typ.is_empty() { "ClusterIP" } else { typ };
            let mut external: Vec<String> = obj
                .pointer("/spec/externalIPs")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            if typ == "LoadBalancer" {
                let lb: Vec<String> = obj
                    .pointer("/status/loadBalancer/ingress")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .map(|x| {
                                if !s(x, "/ip").is_empty() {
                                    s(x, "/ip").to_string()
                                } else {
                                    s(x, "/hostname").to_string()
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                external.extend(lb);
                if external.is_empty() {
                    external.push("<pending>".into());
                }
            } else if typ == "ExternalName" {
                external.push(s(obj, "/spec/externalName").to_string());
            }
            let sel = obj
                .pointer("/spec/selector")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                name,
                json!(typ),
                json!(none_if_empty(s(obj, "/spec/clusterIP").to_string())),
                json!(none_if_empty(external.join(","))),
                json!(service_ports(obj)),
                created,
                json!(none_if_empty(sel)),
            ]
        }
        ("", "Namespace") => vec![name, json!(s(obj, "/status/phase")), created],
        ("", "ConfigMap") => vec![
            name,
            json!(count_keys(obj, &["data", "binaryData"])),
            created,
        ],
        ("", "Secret") => vec![
            name,
            json!(s(obj, "/type")),
            json!(count_keys(obj, &["data"])),
            created,
        ],
        ("", "ServiceAccount") => vec![
            name,
            json!(obj
                .get("secrets")
                .and_then(Value::as_array)
                .map(Vec::len)
                .unwrap_or(0)),
            created,
        ],
        ("", "Endpoints") => {
            let mut eps = Vec::new();
            for subset in obj
                .get("subsets")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
            {
                let ports: Vec<i64> = subset
                    .get("ports")
                    .and_then(Value::as_array)
                    .map(|p| p.iter().map(|p| i(p, "/port")).collect())
                    .unwrap_or_default();
                for a in subset
                    .get("addresses")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
                {
                    if ports.is_empty() {
                        eps.push(s(&a, "/ip").to_string());
                    }
                    for p in &ports {
                        eps.push(format!("{}:{p}", s(&a, "/ip")));
                    }
                }
            }
            let shown = if eps.len() > 3 {
                format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
            } else {
                eps.join(",")
            };
            vec![name, json!(none_if_empty(shown)), created]
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            let ports: Vec<String> = obj
                .get("ports")
                .and_then(Value::as_array)
                .map(|p| p.iter().map(|p| i(p, "/port").to_string()).collect())
                .unwrap_or_default();
            let addrs: Vec<String> = obj
                .get("endpoints")
                .and_then(Value::as_array)
                .map(|e| {
                    e.iter()
                        .flat_map(|e| {
                            e.get("addresses")
                                .and_then(Value::as_array)
                                .cloned()
                                .unwrap_or_default()
                        })
                        .filter_map(|a| a.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let shown = if addrs.len() > 3 {
                format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
            } else {
                addrs.join(",")
            };
            vec![
                name,
                json!(s(obj, "/addressType")),
                json!(none_if_empty(ports.join(","))),
                json!(none_if_empty(shown)),
                created,
            ]
        }
        ("", "Event") => {
            let last = [
                "/lastTimestamp",
                "/eventTime",
                "/firstTimestamp",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .map(|p| s(obj, p))
            .find(|t| !t.is_empty())
            .unwrap_or("");
            let first = [
                "/firstTimestamp",
                "/eventTime",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .map(|p| s(obj, p))
            .find(|t| !t.is_empty())
            .unwrap_or("");
            let object = format!(
                "{}/{}",
                s(obj, "/involvedObject/kind").to_ascii_lowercase(),
                s(obj, "/involvedObject/name")
            );
            let source = {
                let c = s(obj, "/source/component");
                let c = if c.is_empty() {
                    s(obj, "/reportingComponent")
                } else {
                    c
                };
                let h = s(obj, "/source/host");
                if h.is_empty() {
                    c.to_string()
                } else {
                    format!("{c}, {h}")
                }
            };
            vec![
                json!(age(last, now)),
                json!(s(obj, "/type")),
                json!(s(obj, "/reason")),
                json!(object),
                json!(s(obj, "/message")),
                json!(source),
                json!(age(first, now)),
                json!(i(obj, "/count").max(1).to_string()),
                name,
            ]
        }
        ("coordination.k8s.io", "Lease") => {
            vec![name, json!(s(obj, "/spec/holderIdentity")), created]
        }
        ("node.k8s.io", "RuntimeClass") => vec![name, json!(s(obj, "/handler")), created],
        ("policy", "PodDisruptionBudget") => {
            let show = |p: &str| match obj.pointer(p) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => "N/A".into(),
            };
            vec![
                name,
                json!(show("/spec/minAvailable")),
                json!(show("/spec/maxUnavailable")),
                json!(i(obj, "/status/disruptionsAllowed")),
                created,
            ]
        }
        _ => vec![name, created],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human() {
        let d = chrono::Duration::seconds;
        assert_eq!(human_duration(d(5)), "5s");
        assert_eq!(human_duration(d(119)), "119s");
        assert_eq!(human_duration(d(150)), "2m30s");
        assert_eq!(human_duration(d(3600)), "60m");
        assert_eq!(human_duration(d(4 * 3600 + 60)), "4h1m");
        assert_eq!(human_duration(d(30 * 3600)), "30h");
        assert_eq!(human_duration(d(3 * 86400 + 3600)), "3d1h");
        assert_eq!(human_duration(d(100 * 86400)), "100d");
    }

    #[test]
    fn columns_match_rows() {
        let now = Utc::now();
        let obj = json!({"metadata": {"name": "x", "creationTimestamp": "2020-01-01T00:00:00Z"}});
        for (g, k) in [
            ("", "Pod"),
            ("", "Node"),
            ("apps", "Deployment"),
            ("apps", "ReplicaSet"),
            ("apps", "DaemonSet"),
            ("apps", "StatefulSet"),
            ("batch", "Job"),
            ("batch", "CronJob"),
            ("", "Service"),
            ("", "Namespace"),
            ("", "ConfigMap"),
            ("", "Secret"),
            ("", "ServiceAccount"),
            ("", "Endpoints"),
            ("discovery.k8s.io", "EndpointSlice"),
            ("", "Event"),
            ("coordination.k8s.io", "Lease"),
            ("node.k8s.io", "RuntimeClass"),
            ("policy", "PodDisruptionBudget"),
            ("x", "Other"),
        ] {
            let gvk = GroupVersionKind::new(g, "v1", k);
            assert_eq!(columns(&gvk).len(), row(&gvk, &obj, now).len(), "{k}");
        }
    }
}
