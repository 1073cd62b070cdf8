//! Scheduling predicates the controllers need on their own (the DaemonSet controller
//! decides which nodes should run a pod; the taint eviction decides which pods must
//! leave): taints and tolerations, nodeSelector and required node affinity.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, PodSpec, Taint, Toleration,
};

/// Upstream `Toleration.ToleratesTaint`.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty()) {
        if e != taint.effect {
            return false;
        }
    }
    let key = t.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match t.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        _ => false,
    }
}

/// The taints with `effects` that no toleration tolerates.
pub fn untolerated<'a>(
    taints: &'a [Taint],
    tols: &[Toleration],
    effects: &[&str],
) -> Vec<&'a Taint> {
    taints
        .iter()
        .filter(|t| effects.contains(&t.effect.as_str()))
        .filter(|t| !tols.iter().any(|tol| tolerates(tol, t)))
        .collect()
}

fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if req.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// A node selector term: all its expressions (labels) and fields (`metadata.name`).
pub fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        // An empty term matches nothing (upstream).
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            let v = match r.key.as_str() {
                "metadata.name" => node.metadata.name.as_deref(),
                _ => None,
            };
            requirement_matches(r, v)
        })
}

/// nodeSelector and required node affinity (upstream `NodeAffinity` filter).
pub fn node_matches_pod(spec: &PodSpec, node: &Node) -> bool {
    let labels: BTreeMap<String, String> = node.metadata.labels.clone().unwrap_or_default();
    if let Some(sel) = &spec.node_selector {
        if sel.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            return false;
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        None => true,
        Some(sel) => sel
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, node)),
    }
}

pub fn node_taints(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Affinity, NodeAffinity, NodeSelector, NodeSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect: effect.into(),
            time_added: None,
        }
    }

    fn tol(key: Option<&str>, op: &str, value: Option<&str>, effect: Option<&str>) -> Toleration {
        Toleration {
            key: key.map(Into::into),
            operator: Some(op.into()),
            value: value.map(Into::into),
            effect: effect.map(Into::into),
            toleration_seconds: None,
        }
    }

    #[test]
    fn tolerations_table() {
        let t = taint("k", Some("v"), "NoSchedule");
        let cases = [
            (tol(Some("k"), "Equal", Some("v"), None), true),
            (tol(Some("k"), "Equal", Some("w"), None), false),
            (tol(Some("k"), "Exists", None, Some("NoSchedule")), true),
            (tol(Some("k"), "Exists", None, Some("NoExecute")), false),
            (tol(None, "Exists", None, None), true),
            (tol(Some("other"), "Exists", None, None), false),
        ];
        for (i, (tl, want)) in cases.iter().enumerate() {
            assert_eq!(tolerates(tl, &t), *want, "case {i}");
        }
        let taints = vec![t.clone(), taint("x", None, "NoExecute")];
        assert_eq!(
            untolerated(
                &taints,
                &[tol(Some("k"), "Exists", None, None)],
                &["NoSchedule", "NoExecute"]
            )
            .len(),
            1
        );
    }

    fn node(name: &str, labels: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: None,
        }
    }

    #[test]
    fn node_selector_and_affinity() {
        let n = node("n1", &[("disk", "ssd"), ("gen", "5")]);
        let mut spec = PodSpec {
            node_selector: Some([("disk".to_string(), "ssd".to_string())].into()),
            ..Default::default()
        };
        assert!(node_matches_pod(&spec, &n));
        spec.node_selector = Some([("disk".to_string(), "hdd".to_string())].into());
        assert!(!node_matches_pod(&spec, &n));
        spec.node_selector = None;
        let term = |key: &str, op: &str, vals: &[&str], field: bool| {
            let req = NodeSelectorRequirement {
                key: key.into(),
                operator: op.into(),
                values: Some(vals.iter().map(|v| v.to_string()).collect()),
            };
            NodeSelectorTerm {
                match_expressions: (!field).then(|| vec![req.clone()]),
                match_fields: field.then(|| vec![req]),
            }
        };
        for (t, want) in [
            (term("metadata.name", "In", &["n1"], true), true),
            (term("metadata.name", "In", &["n2"], true), false),
            (term("gen", "Gt", &["4"], false), true),
            (term("gen", "Lt", &["4"], false), false),
            (term("disk", "NotIn", &["ssd"], false), false),
        ] {
            spec.affinity = Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: vec![t],
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
            assert_eq!(node_matches_pod(&spec, &n), want);
        }
    }
}
