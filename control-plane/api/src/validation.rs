//! Object validation with upstream's field paths and wording. Each check returns
//! [`FieldError`]s; the API server turns them into a 422 `Invalid` Status whose causes
//! are these errors.

use serde_json::{Map, Value};

use crate::registry::GroupVersionKind;

/// One field-level validation failure (a `StatusCause`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueDuplicate`, `FieldValueNotSupported`,
    /// `FieldValueForbidden`, `FieldValueTooLong`.
    pub reason: &'static str,
    /// `spec.containers[0].name`
    pub field: String,
    /// `Required value`, `Invalid value: "x": …`
    pub message: String,
}

impl FieldError {
    pub fn required(field: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueRequired",
            field: field.into(),
            message: "Required value".into(),
        }
    }
    pub fn required_detail(field: impl Into<String>, detail: &str) -> Self {
        Self {
            reason: "FieldValueRequired",
            field: field.into(),
            message: format!("Required value: {detail}"),
        }
    }
    pub fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> Self {
        Self {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {}: {detail}", go_value(value)),
        }
    }
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        Self {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: format!("Duplicate value: {}", go_value(value)),
        }
    }
    pub fn not_supported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
        Self {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: {}: supported values: {}",
                go_value(value),
                list.join(", ")
            ),
        }
    }
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        Self {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {detail}"),
        }
    }
    pub fn immutable(field: impl Into<String>, value: &Value) -> Self {
        Self::invalid(field, value, "field is immutable")
    }

    /// `metadata.name: Invalid value: "x": …` as upstream joins them in the Status message.
    pub fn render(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}

/// How Go's `%q`/`%v` would print a value in an error message.
fn go_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";

fn is_alnum_lower(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn label_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && is_alnum_lower(b[0])
        && is_alnum_lower(b[b.len() - 1])
        && b.iter().all(|&c| is_alnum_lower(c) || c == b'-')
}

/// Upstream `IsDNS1123Label`: the messages, in order, for a value that fails.
pub fn dns1123_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !label_ok(value) {
        errs.push(format!(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '{DNS1123_LABEL_FMT}')"
        ));
    }
    errs
}

/// Upstream `IsDNS1123Subdomain`.
pub fn dns1123_subdomain(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 253 {
        errs.push("must be no more than 253 characters".to_string());
    }
    if value.is_empty() || !value.split('.').all(label_ok) {
        errs.push(format!(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '{DNS1123_SUBDOMAIN_FMT}')"
        ));
    }
    errs
}

/// Upstream `IsDNS1035Label` (Service names).
pub fn dns1035_label(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    let b = value.as_bytes();
    let ok = !b.is_empty()
        && b[0].is_ascii_lowercase()
        && is_alnum_lower(b[b.len() - 1])
        && b.iter().all(|&c| is_alnum_lower(c) || c == b'-');
    if !ok {
        errs.push(format!(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '{DNS1035_LABEL_FMT}')"
        ));
    }
    errs
}

/// Upstream `IsQualifiedName` (label and annotation keys).
pub fn qualified_name(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let (prefix, name) = match value.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, value),
    };
    if name.matches('/').count() > 0 {
        errs.push("a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')".to_string());
        return errs;
    }
    if let Some(p) = prefix {
        if p.is_empty() {
            errs.push("prefix part must be non-empty".to_string());
        } else {
            for e in dns1123_subdomain(p) {
                errs.push(format!("prefix part {e}"));
            }
        }
    }
    if name.is_empty() {
        errs.push("name part must be non-empty".to_string());
    } else {
        if name.len() > 63 {
            errs.push("name part must be no more than 63 characters".to_string());
        }
        if !label_value_chars_ok(name) {
            errs.push("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".to_string());
        }
    }
    errs
}

fn label_value_chars_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
}

/// Upstream `IsValidLabelValue`.
pub fn label_value(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !value.is_empty() && !label_value_chars_ok(value) {
        errs.push("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".to_string());
    }
    errs
}

/// Which name rule a kind's `metadata.name` follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    Subdomain,
    Label,
    Dns1035,
    /// Any non-empty name without `/` or `%` (path segment names), e.g. RBAC objects.
    PathSegment,
}

pub fn name_rule(gvk: &GroupVersionKind) -> NameRule {
    match (gvk.group.as_str(), gvk.kind.as_str()) {
        ("", "Namespace") => NameRule::Label,
        ("", "Service") => NameRule::Dns1035,
        ("apps", "Deployment") | ("apps", "StatefulSet") | ("batch", "CronJob") => {
            NameRule::Subdomain
        }
        ("", "Node") | ("", "Event") | ("events.k8s.io", "Event") => NameRule::PathSegment,
        _ => NameRule::Subdomain,
    }
}

fn check_name(rule: NameRule, name: &str) -> Vec<String> {
    match rule {
        NameRule::Subdomain => dns1123_subdomain(name),
        NameRule::Label => dns1123_label(name),
        NameRule::Dns1035 => dns1035_label(name),
        NameRule::PathSegment => {
            if name == "." || name == ".." {
                vec![format!("may not be '{name}'")]
            } else if name.contains('/') || name.contains('%') {
                vec!["may not contain '/' or '%'".to_string()]
            } else {
                vec![]
            }
        }
    }
}

/// Validates `metadata` (name, namespace, labels, annotations) of any object.
pub fn validate_object_meta(
    gvk: &GroupVersionKind,
    meta: &Map<String, Value>,
    namespaced: bool,
) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match meta.get("name").and_then(Value::as_str) {
        None | Some("") => {
            if meta
                .get("generateName")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
            {
                errs.push(FieldError::required_detail(
                    "metadata.name",
                    "name or generateName is required",
                ));
            }
        }
        Some(name) => {
            for m in check_name(name_rule(gvk), name) {
                errs.push(FieldError::invalid(
                    "metadata.name",
                    &Value::String(name.into()),
                    &m,
                ));
            }
        }
    }
    if namespaced {
        if let Some(ns) = meta.get("namespace").and_then(Value::as_str) {
            for m in dns1123_label(ns) {
                errs.push(FieldError::invalid(
                    "metadata.namespace",
                    &Value::String(ns.into()),
                    &m,
                ));
            }
        }
    }
    if let Some(labels) = meta.get("labels") {
        errs.extend(validate_labels(labels, "metadata.labels"));
    }
    if let Some(Value::Object(ann)) = meta.get("annotations") {
        let mut total = 0usize;
        for (k, v) in ann {
            for m in qualified_name(&k.to_ascii_lowercase()) {
                errs.push(FieldError::invalid(
                    "metadata.annotations",
                    &Value::String(k.clone()),
                    &m,
                ));
            }
            total += k.len() + v.as_str().map(str::len).unwrap_or(0);
        }
        if total > 256 * 1024 {
            errs.push(FieldError {
                reason: "FieldValueTooLong",
                field: "metadata.annotations".into(),
                message: "Too long: must have at most 262144 bytes".into(),
            });
        }
    }
    errs
}

/// Validates a label map (`metadata.labels`, a selector's `matchLabels`).
pub fn validate_labels(labels: &Value, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Value::Object(map) = labels {
        for (k, v) in map {
            for m in qualified_name(k) {
                errs.push(FieldError::invalid(path, &Value::String(k.clone()), &m));
            }
            match v {
                Value::String(s) => {
                    for m in label_value(s) {
                        errs.push(FieldError::invalid(format!("{path}[{k}]"), v, &m));
                    }
                }
                Value::Null => {}
                other => errs.push(FieldError::invalid(
                    format!("{path}[{k}]"),
                    other,
                    "must be a string",
                )),
            }
        }
    }
    errs
}

/// Kind-specific validation of a whole object (after defaulting).
pub fn validate(gvk: &GroupVersionKind, obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match (gvk.group.as_str(), gvk.kind.as_str()) {
        ("", "Pod") => {
            if let Some(spec) = obj.get("spec") {
                errs.extend(validate_pod_spec(spec, "spec"));
            } else {
                errs.push(FieldError::required("spec.containers"));
            }
        }
        ("apps", "Deployment")
        | ("apps", "ReplicaSet")
        | ("apps", "DaemonSet")
        | ("apps", "StatefulSet") => {
            errs.extend(validate_workload(gvk, obj));
        }
        ("batch", "Job") => {
            if let Some(tpl) = obj.pointer("/spec/template") {
                errs.extend(validate_template(tpl, "spec.template"));
            } else {
                errs.push(FieldError::required("spec.template"));
            }
        }
        ("batch", "CronJob") => {
            match obj.pointer("/spec/schedule").and_then(Value::as_str) {
                None | Some("") => errs.push(FieldError::required("spec.schedule")),
                Some(s) if s.split_whitespace().count() != 5 && !s.starts_with('@') => {
                    errs.push(FieldError::invalid(
                        "spec.schedule",
                        &Value::String(s.into()),
                        "must be a standard cron expression of 5 fields",
                    ))
                }
                _ => {}
            }
            if let Some(tpl) = obj.pointer("/spec/jobTemplate/spec/template") {
                errs.extend(validate_template(tpl, "spec.jobTemplate.spec.template"));
            } else {
                errs.push(FieldError::required("spec.jobTemplate.spec.template"));
            }
        }
        ("", "Service") => errs.extend(validate_service(obj)),
        ("", "ConfigMap") | ("", "Secret") => {
            for field in ["data", "binaryData", "stringData"] {
                if let Some(Value::Object(m)) = obj.get(field) {
                    for k in m.keys() {
                        if !config_key_ok(k) {
                            errs.push(FieldError::invalid(
                                format!("{field}[{k}]"),
                                &Value::String(k.clone()),
                                "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                            ));
                        }
                    }
                }
            }
        }
        ("coordination.k8s.io", "Lease") => {}
        ("node.k8s.io", "RuntimeClass") => match obj.get("handler").and_then(Value::as_str) {
            None | Some("") => errs.push(FieldError::required("handler")),
            Some(h) => {
                for m in dns1123_label(h) {
                    errs.push(FieldError::invalid("handler", &Value::String(h.into()), &m));
                }
            }
        },
        _ => {}
    }
    errs
}

fn config_key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
}

fn validate_template(tpl: &Value, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(labels) = tpl.pointer("/metadata/labels") {
        errs.extend(validate_labels(labels, &format!("{path}.metadata.labels")));
    }
    match tpl.get("spec") {
        Some(spec) => errs.extend(validate_pod_spec(spec, &format!("{path}.spec"))),
        None => errs.push(FieldError::required(format!("{path}.spec.containers"))),
    }
    errs
}

fn validate_workload(gvk: &GroupVersionKind, obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if let Some(r) = obj.pointer("/spec/replicas") {
        if r.as_i64().is_some_and(|n| n < 0) {
            errs.push(FieldError::invalid(
                "spec.replicas",
                r,
                "must be greater than or equal to 0",
            ));
        }
    }
    let selector = obj.pointer("/spec/selector");
    let empty_selector = match selector {
        None | Some(Value::Null) => true,
        Some(s) => {
            s.get("matchLabels")
                .and_then(Value::as_object)
                .is_none_or(|m| m.is_empty())
                && s.get("matchExpressions")
                    .and_then(Value::as_array)
                    .is_none_or(|a| a.is_empty())
        }
    };
    if empty_selector {
        errs.push(FieldError::required("spec.selector"));
        if selector.is_some() {
            errs.push(FieldError::invalid(
                "spec.selector",
                &Value::String("{}".into()),
                "empty selector is invalid for deployment",
            ));
        }
    } else if let Some(ml) = selector.and_then(|s| s.get("matchLabels")) {
        errs.extend(validate_labels(ml, "spec.selector.matchLabels"));
    }
    match obj.pointer("/spec/template") {
        None => errs.push(FieldError::required("spec.template")),
        Some(tpl) => {
            errs.extend(validate_template(tpl, "spec.template"));
            if !empty_selector {
                let labels = tpl.pointer("/metadata/labels").and_then(Value::as_object);
                if let (Some(sel), false) = (
                    selector,
                    errs.iter().any(|e| e.field.starts_with("spec.selector")),
                ) {
                    if !selector_matches(sel, labels) {
                        let shown = labels
                            .map(go_map)
                            .unwrap_or_else(|| "map[string]string(nil)".into());
                        errs.push(FieldError {
                            reason: "FieldValueInvalid",
                            field: "spec.template.metadata.labels".into(),
                            message: format!("Invalid value: {shown}: `selector` does not match template `labels`"),
                        });
                    }
                }
            }
            if gvk.kind == "Deployment" || gvk.kind == "ReplicaSet" || gvk.kind == "DaemonSet" {
                if let Some(rp) = tpl.pointer("/spec/restartPolicy").and_then(Value::as_str) {
                    if rp != "Always" {
                        errs.push(FieldError::not_supported(
                            "spec.template.spec.restartPolicy",
                            &Value::String(rp.into()),
                            &["Always"],
                        ));
                    }
                }
            }
        }
    }
    if gvk.kind == "Deployment" {
        if let Some(t) = obj.pointer("/spec/strategy/type").and_then(Value::as_str) {
            if t != "RollingUpdate" && t != "Recreate" {
                errs.push(FieldError::not_supported(
                    "spec.strategy.type",
                    &Value::String(t.into()),
                    &["Recreate", "RollingUpdate"],
                ));
            }
        }
    }
    errs
}

fn go_map(m: &Map<String, Value>) -> String {
    let inner: Vec<String> = m
        .iter()
        .map(|(k, v)| format!("{:?}:{}", k, go_value(v)))
        .collect();
    format!("map[string]string{{{}}}", inner.join(", "))
}

/// A `metav1.LabelSelector` JSON object against a label map.
pub fn selector_matches(sel: &Value, labels: Option<&Map<String, Value>>) -> bool {
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    if let Some(Value::Object(ml)) = sel.get("matchLabels") {
        for (k, v) in ml {
            if get(k) != v.as_str() {
                return false;
            }
        }
    }
    if let Some(Value::Array(exprs)) = sel.get("matchExpressions") {
        for e in exprs {
            let key = e.get("key").and_then(Value::as_str).unwrap_or("");
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let ok = match e.get("operator").and_then(Value::as_str).unwrap_or("") {
                "In" => get(key).is_some_and(|v| values.contains(&v)),
                "NotIn" => get(key).is_none_or(|v| !values.contains(&v)),
                "Exists" => get(key).is_some(),
                "DoesNotExist" => get(key).is_none(),
                _ => false,
            };
            if !ok {
                return false;
            }
        }
    }
    true
}

fn validate_service(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    let typ = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&typ) {
        errs.push(FieldError::not_supported(
            "spec.type",
            &Value::String(typ.into()),
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ));
    }
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    let ports = spec
        .get("ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if ports.is_empty() && !headless && typ != "ExternalName" {
        errs.push(FieldError::required("spec.ports"));
    }
    let mut names = std::collections::HashSet::new();
    let multi = ports.len() > 1;
    for (i, p) in ports.iter().enumerate() {
        let base = format!("spec.ports[{i}]");
        match p.get("port").and_then(Value::as_i64) {
            None => errs.push(FieldError::required(format!("{base}.port"))),
            Some(n) if !(1..=65535).contains(&n) => errs.push(FieldError::invalid(
                format!("{base}.port"),
                &Value::from(n),
                "must be between 1 and 65535, inclusive",
            )),
            _ => {}
        }
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        if multi && name.is_empty() {
            errs.push(FieldError::required(format!("{base}.name")));
        }
        if !name.is_empty() {
            for m in dns1123_label(name) {
                errs.push(FieldError::invalid(
                    format!("{base}.name"),
                    &Value::String(name.into()),
                    &m,
                ));
            }
            if !names.insert(name.to_string()) {
                errs.push(FieldError::duplicate(
                    format!("{base}.name"),
                    &Value::String(name.into()),
                ));
            }
        }
        if let Some(proto) = p.get("protocol").and_then(Value::as_str) {
            if !["TCP", "UDP", "SCTP"].contains(&proto) {
                errs.push(FieldError::not_supported(
                    format!("{base}.protocol"),
                    &Value::String(proto.into()),
                    &["SCTP", "TCP", "UDP"],
                ));
            }
        }
        if let Some(np) = p.get("nodePort").and_then(Value::as_i64) {
            if typ == "ClusterIP" && np != 0 {
                errs.push(FieldError::forbidden(
                    format!("{base}.nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            }
        }
    }
    errs
}

/// Validates a PodSpec at `path` (`spec`, `spec.template.spec`).
pub fn validate_pod_spec(spec: &Value, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let containers = spec.get("containers").and_then(Value::as_array);
    match containers {
        None => errs.push(FieldError::required(format!("{path}.containers"))),
        Some(c) if c.is_empty() => errs.push(FieldError::required(format!("{path}.containers"))),
        Some(_) => {}
    }
    let mut names = std::collections::HashSet::new();
    for field in ["initContainers", "containers"] {
        let Some(list) = spec.get(field).and_then(Value::as_array) else {
            continue;
        };
        for (i, c) in list.iter().enumerate() {
            let base = format!("{path}.{field}[{i}]");
            match c.get("name").and_then(Value::as_str) {
                None | Some("") => errs.push(FieldError::required(format!("{base}.name"))),
                Some(n) => {
                    for m in dns1123_label(n) {
                        errs.push(FieldError::invalid(
                            format!("{base}.name"),
                            &Value::String(n.into()),
                            &m,
                        ));
                    }
                    if !names.insert(n.to_string()) {
                        errs.push(FieldError::duplicate(
                            format!("{base}.name"),
                            &Value::String(n.into()),
                        ));
                    }
                }
            }
            if c.get("image")
                .and_then(Value::as_str)
                .is_none_or(|s| s.trim().is_empty())
            {
                errs.push(FieldError::required(format!("{base}.image")));
            }
            if let Some(ports) = c.get("ports").and_then(Value::as_array) {
                for (j, p) in ports.iter().enumerate() {
                    match p.get("containerPort").and_then(Value::as_i64) {
                        None => errs.push(FieldError::required(format!(
                            "{base}.ports[{j}].containerPort"
                        ))),
                        Some(n) if !(1..=65535).contains(&n) => errs.push(FieldError::invalid(
                            format!("{base}.ports[{j}].containerPort"),
                            &Value::from(n),
                            "must be between 1 and 65535, inclusive",
                        )),
                        _ => {}
                    }
                }
            }
            if let Some(env) = c.get("env").and_then(Value::as_array) {
                for (j, e) in env.iter().enumerate() {
                    if e.get("name")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        errs.push(FieldError::required(format!("{base}.env[{j}].name")));
                    }
                }
            }
            if let Some(pol) = c.get("imagePullPolicy").and_then(Value::as_str) {
                if !["Always", "IfNotPresent", "Never"].contains(&pol) {
                    errs.push(FieldError::not_supported(
                        format!("{base}.imagePullPolicy"),
                        &Value::String(pol.into()),
                        &["Always", "IfNotPresent", "Never"],
                    ));
                }
            }
        }
    }
    if let Some(rp) = spec.get("restartPolicy").and_then(Value::as_str) {
        if !["Always", "OnFailure", "Never"].contains(&rp) {
            errs.push(FieldError::not_supported(
                format!("{path}.restartPolicy"),
                &Value::String(rp.into()),
                &["Always", "OnFailure", "Never"],
            ));
        }
    }
    let mut vol_names = std::collections::HashSet::new();
    if let Some(vols) = spec.get("volumes").and_then(Value::as_array) {
        for (i, v) in vols.iter().enumerate() {
            match v.get("name").and_then(Value::as_str) {
                None | Some("") => {
                    errs.push(FieldError::required(format!("{path}.volumes[{i}].name")))
                }
                Some(n) => {
                    if !vol_names.insert(n.to_string()) {
                        errs.push(FieldError::duplicate(
                            format!("{path}.volumes[{i}].name"),
                            &Value::String(n.into()),
                        ));
                    }
                }
            }
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names() {
        assert!(dns1123_subdomain("web-1.example").is_empty());
        assert!(!dns1123_subdomain("Web").is_empty());
        assert!(!dns1123_subdomain("").is_empty());
        assert!(dns1123_label("a-b").is_empty());
        assert!(!dns1123_label("a.b").is_empty());
        assert!(!dns1035_label("1abc").is_empty());
        assert!(qualified_name("app.kubernetes.io/name").is_empty());
        assert!(!qualified_name("-bad").is_empty());
        assert!(label_value("").is_empty());
        assert!(!label_value("bad value").is_empty());
    }

    #[test]
    fn invalid_name_wording() {
        let gvk = GroupVersionKind::new("", "v1", "ConfigMap");
        let meta = json!({"name": "Bad_Name"});
        let errs = validate_object_meta(&gvk, meta.as_object().unwrap(), true);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "metadata.name");
        assert!(errs[0]
            .message
            .starts_with("Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"));
    }

    #[test]
    fn deployment_selector_must_match() {
        let gvk = GroupVersionKind::new("apps", "v1", "Deployment");
        let d = json!({"spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let errs = validate(&gvk, &d);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "spec.template.metadata.labels");
        let d = json!({"spec": {"template": {"spec": {"containers": []}}}});
        let fields: Vec<_> = validate(&gvk, &d).into_iter().map(|e| e.field).collect();
        assert!(fields.contains(&"spec.selector".to_string()));
        assert!(fields.contains(&"spec.template.spec.containers".to_string()));
    }

    #[test]
    fn pod_containers() {
        let gvk = GroupVersionKind::new("", "v1", "Pod");
        let p = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "a"}]}});
        let fields: Vec<_> = validate(&gvk, &p).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            vec!["spec.containers[1].name", "spec.containers[1].image"]
        );
    }
}
