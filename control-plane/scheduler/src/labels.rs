//! Matching of label selectors, node selector terms and tolerations, with upstream's
//! semantics (`labels.Selector`, `nodeaffinity.NodeSelector`, `Toleration.ToleratesTaint`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

pub type Labels = BTreeMap<String, String>;

static EMPTY: Labels = Labels::new();

pub fn labels_of(l: Option<&Labels>) -> &Labels {
    l.unwrap_or(&EMPTY)
}

/// `metav1.LabelSelector` → does `labels` match. An empty selector matches everything;
/// an unknown operator matches nothing (as `LabelSelectorAsSelector` fails).
pub fn selector_matches(sel: &LabelSelector, labels: &Labels) -> bool {
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let vals = e.values.as_deref().unwrap_or(&[]);
        let got = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" => got.is_some_and(|g| vals.contains(g)),
            "NotIn" => got.is_none_or(|g| !vals.contains(g)),
            "Exists" => got.is_some(),
            "DoesNotExist" => got.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// One node-selector requirement against a value (`None`: the label is absent).
fn requirement_matches(r: &NodeSelectorRequirement, got: Option<&str>) -> bool {
    let vals = r.values.as_deref().unwrap_or(&[]);
    match r.operator.as_str() {
        "In" => got.is_some_and(|g| vals.iter().any(|v| v == g)),
        "NotIn" => got.is_none_or(|g| !vals.iter().any(|v| v == g)),
        "Exists" => got.is_some(),
        "DoesNotExist" => got.is_none(),
        "Gt" | "Lt" => {
            let (Some(g), [v]) = (got, vals) else {
                return false;
            };
            let (Ok(g), Ok(v)) = (g.parse::<i64>(), v.parse::<i64>()) else {
                return false;
            };
            if r.operator == "Gt" {
                g > v
            } else {
                g < v
            }
        }
        _ => false,
    }
}

/// A term matches when all its expressions (on labels) and fields (only
/// `metadata.name`, which DaemonSet pods use) match; a term with neither matches nothing.
pub fn term_matches(t: &NodeSelectorTerm, node_name: &str, labels: &Labels) -> bool {
    let exprs = t.match_expressions.as_deref().unwrap_or(&[]);
    let fields = t.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields
            .iter()
            .all(|r| r.key == "metadata.name" && requirement_matches(r, Some(node_name)))
}

/// Terms are ORed.
pub fn node_selector_matches(s: &NodeSelector, node_name: &str, labels: &Labels) -> bool {
    s.node_selector_terms
        .iter()
        .any(|t| term_matches(t, node_name, labels))
}

/// `Toleration.ToleratesTaint`.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref() {
        if !e.is_empty() && e != taint.effect {
            return false;
        }
    }
    let key = t.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            // An empty key with Equal is invalid upstream; it tolerates nothing.
            !key.is_empty()
                && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selectors() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let cases = [
            (json!({}), true),
            (json!({"matchLabels": {"app": "web"}}), true),
            (json!({"matchLabels": {"app": "db"}}), false),
            (
                json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "db"]}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}),
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "x", "operator": "NotIn", "values": ["web"]}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}),
                true,
            ),
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}),
                false,
            ),
            (
                json!({"matchExpressions": [{"key": "tier", "operator": "Bogus"}]}),
                false,
            ),
        ];
        for (sel, want) in cases {
            let s: LabelSelector = serde_json::from_value(sel.clone()).unwrap();
            assert_eq!(selector_matches(&s, &l), want, "{sel}");
        }
    }

    #[test]
    fn node_selector_terms() {
        let l = labels(&[("zone", "a"), ("cores", "8")]);
        let cases = [
            (
                json!([{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]),
                true,
            ),
            (
                json!([{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
                    {"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4"]}]}]),
                true,
            ),
            (
                json!([{"matchExpressions": [{"key": "cores", "operator": "Lt", "values": ["4"]}]}]),
                false,
            ),
            (
                json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]),
                true,
            ),
            (
                json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}]),
                false,
            ),
            (
                json!([{"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n2"]}]}]),
                true,
            ),
            (json!([{}]), false),
            (json!([]), false),
        ];
        for (terms, want) in cases {
            let s: NodeSelector =
                serde_json::from_value(json!({"nodeSelectorTerms": terms.clone()})).unwrap();
            assert_eq!(node_selector_matches(&s, "n1", &l), want, "{terms}");
        }
    }

    #[test]
    fn tolerations() {
        let taint: Taint =
            serde_json::from_value(json!({"key": "k", "value": "v", "effect": "NoSchedule"}))
                .unwrap();
        let cases = [
            (
                json!({"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}),
                true,
            ),
            (json!({"key": "k", "value": "v"}), true),
            (json!({"key": "k", "value": "w"}), false),
            (json!({"key": "k", "operator": "Exists"}), true),
            (json!({"operator": "Exists"}), true),
            (json!({"operator": "Exists", "effect": "NoExecute"}), false),
            (json!({"key": "other", "operator": "Exists"}), false),
        ];
        for (t, want) in cases {
            let tol: Toleration = serde_json::from_value(t.clone()).unwrap();
            assert_eq!(tolerates(&tol, &taint), want, "{t}");
        }
    }
}
