use super::*;
use k8s_openapi::api::apps::v1::{DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet};
use k8s_openapi::api::core::v1::{NodeSpec, PodCondition, PodStatus, PodTemplateSpec, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

fn node(name: &str, labels: &[(&str, &str)], taints: Vec<Taint>) -> Node {
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
        spec: Some(NodeSpec {
            taints: Some(taints),
            ..Default::default()
        }),
        status: None,
    }
}

fn taint(key: &str, effect: &str) -> Taint {
    Taint {
        key: key.into(),
        value: None,
        effect: effect.into(),
        time_added: None,
    }
}

fn ds(node_selector: Option<(&str, &str)>, max_unavailable: i32, max_surge: i32) -> DaemonSet {
    DaemonSet {
        metadata: ObjectMeta {
            name: Some("d".into()),
            namespace: Some("ns".into()),
            generation: Some(2),
            ..Default::default()
        },
        spec: Some(DaemonSetSpec {
            template: PodTemplateSpec {
                metadata: None,
                spec: Some(PodSpec {
                    node_selector: node_selector
                        .map(|(k, v)| [(k.to_string(), v.to_string())].into()),
                    ..Default::default()
                }),
            },
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_unavailable: Some(IntOrString::Int(max_unavailable)),
                    max_surge: Some(IntOrString::Int(max_surge)),
                }),
            }),
            ..Default::default()
        }),
        status: None,
    }
}

fn pod(name: &str, hash: &str, ready: bool) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([(HASH_LABEL.to_string(), hash.to_string())].into()),
            creation_timestamp: Some(Time(Timestamp::from_second(1).unwrap())),
            ..Default::default()
        },
        spec: None,
        status: Some(PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

fn now() -> Timestamp {
    Timestamp::from_second(1_000).unwrap()
}

#[test]
fn eligibility_respects_selectors_taints_and_default_tolerations() {
    let tpl = PodSpec {
        node_selector: Some([("role".to_string(), "edge".to_string())].into()),
        ..Default::default()
    };
    let edge = node("a", &[("role", "edge")], vec![]);
    assert_eq!(node_should_run(&tpl, &edge), (true, true));
    assert_eq!(
        node_should_run(&tpl, &node("b", &[], vec![])),
        (false, false)
    );
    // Cordoned and unreachable nodes are tolerated by daemon pods.
    let cordoned = node(
        "c",
        &[("role", "edge")],
        vec![
            taint("node.kubernetes.io/unschedulable", "NoSchedule"),
            taint("node.kubernetes.io/unreachable", "NoExecute"),
        ],
    );
    assert_eq!(node_should_run(&tpl, &cordoned), (true, true));
    // A custom NoSchedule taint: no new pod, the running one stays.
    let dedicated = node(
        "d",
        &[("role", "edge")],
        vec![taint("dedicated", "NoSchedule")],
    );
    assert_eq!(node_should_run(&tpl, &dedicated), (false, true));
    let evicting = node(
        "e",
        &[("role", "edge")],
        vec![taint("dedicated", "NoExecute")],
    );
    assert_eq!(node_should_run(&tpl, &evicting), (false, false));
}

#[test]
fn one_pod_per_eligible_node() {
    let d = ds(Some(("role", "edge")), 1, 0);
    let (a, b, c) = (
        node("a", &[("role", "edge")], vec![]),
        node("b", &[("role", "edge")], vec![]),
        node("c", &[], vec![]),
    );
    let pa = pod("pa", "h1", true);
    let pc = pod("pc", "h1", true);
    let dup = pod("pa2", "h1", true);
    let mut by_node = BTreeMap::new();
    by_node.insert("a".to_string(), vec![&pa, &dup]);
    by_node.insert("c".to_string(), vec![&pc]);
    let out = decide(&d, &[&a, &b, &c], &by_node, "h1", now());
    assert_eq!(out.create_on, vec!["b".to_string()]);
    assert_eq!(out.delete, vec!["pa2".to_string(), "pc".to_string()]);
    assert_eq!(out.status.desired_number_scheduled, 2);
    assert_eq!(out.status.current_number_scheduled, 1);
    assert_eq!(out.status.number_misscheduled, 1);
    assert_eq!(out.status.number_ready, 1);
    assert_eq!(out.status.updated_number_scheduled, Some(1));
    assert_eq!(out.status.observed_generation, Some(2));
}

#[test]
fn rolling_update_respects_max_unavailable() {
    let d = ds(None, 1, 0);
    let nodes: Vec<Node> = (0..3)
        .map(|i| node(&format!("n{i}"), &[], vec![]))
        .collect();
    let pods: Vec<Pod> = (0..3).map(|i| pod(&format!("p{i}"), "old", true)).collect();
    let by_node: BTreeMap<String, Vec<&Pod>> =
        (0..3).map(|i| (format!("n{i}"), vec![&pods[i]])).collect();
    let refs: Vec<&Node> = nodes.iter().collect();
    let out = decide(&d, &refs, &by_node, "new", now());
    assert_eq!(out.delete.len(), 1, "one old pod at a time");
    assert!(out.create_on.is_empty());
    // An unavailable old pod is replaced without waiting.
    let mut pods2 = pods.clone();
    pods2[2] = pod("p2", "old", false);
    let by_node: BTreeMap<String, Vec<&Pod>> =
        (0..3).map(|i| (format!("n{i}"), vec![&pods2[i]])).collect();
    let out = decide(&d, &refs, &by_node, "new", now());
    assert_eq!(out.delete, vec!["p2".to_string()]);
}

#[test]
fn rolling_update_with_surge_creates_before_deleting() {
    let d = ds(None, 0, 1);
    let nodes = [node("n0", &[], vec![]), node("n1", &[], vec![])];
    let old0 = pod("o0", "old", true);
    let old1 = pod("o1", "old", true);
    let by_node: BTreeMap<String, Vec<&Pod>> = [
        ("n0".to_string(), vec![&old0]),
        ("n1".to_string(), vec![&old1]),
    ]
    .into();
    let out = decide(&d, &[&nodes[0], &nodes[1]], &by_node, "new", now());
    assert_eq!(out.create_on, vec!["n0".to_string()]);
    assert!(out.delete.is_empty());
    // Once the new pod on n0 is available, the old one goes and n1 surges.
    let new0 = pod("x0", "new", true);
    let by_node: BTreeMap<String, Vec<&Pod>> = [
        ("n0".to_string(), vec![&old0, &new0]),
        ("n1".to_string(), vec![&old1]),
    ]
    .into();
    let out = decide(&d, &[&nodes[0], &nodes[1]], &by_node, "new", now());
    assert_eq!(out.delete, vec!["o0".to_string()]);
    assert!(
        out.create_on.is_empty(),
        "surge budget in use by n0 this pass"
    );
}

#[test]
fn on_delete_leaves_old_pods() {
    let mut d = ds(None, 1, 0);
    d.spec.as_mut().unwrap().update_strategy = Some(DaemonSetUpdateStrategy {
        type_: Some("OnDelete".into()),
        rolling_update: None,
    });
    let n = node("n0", &[], vec![]);
    let old = pod("o", "old", true);
    let by_node: BTreeMap<String, Vec<&Pod>> = [("n0".to_string(), vec![&old])].into();
    let out = decide(&d, &[&n], &by_node, "new", now());
    assert!(out.delete.is_empty() && out.create_on.is_empty());
    assert_eq!(out.status.updated_number_scheduled, Some(0));
}

#[test]
fn pinning_uses_match_fields() {
    let mut spec = PodSpec::default();
    pin_to_node(&mut spec, "n7");
    let terms = &spec
        .affinity
        .unwrap()
        .node_affinity
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .unwrap()
        .node_selector_terms;
    assert_eq!(terms.len(), 1);
    let f = &terms[0].match_fields.as_ref().unwrap()[0];
    assert_eq!(
        (f.key.as_str(), f.operator.as_str()),
        ("metadata.name", "In")
    );
    assert_eq!(f.values.as_deref(), Some(&["n7".to_string()][..]));
    assert_eq!(scaled(Some(&IntOrString::String("25%".into())), 10), 3);
}
