//! Each plugin's verdicts as tables: (pod, node[s]) → pass, or the exact reason.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::node::v1::RuntimeClass;
use serde_json::{json, Value};

use super::*;
use crate::cache::{Cache, NodeInfo};
use crate::framework::{Code, FilterPlugin, PreFilter, PreScore, Rejection, ScorePlugin};
use crate::pod_info::PodInfo;

fn pod_with(spec: Value, labels: Value, rcs: Option<&BTreeMap<String, RuntimeClass>>) -> PodInfo {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut spec = spec;
    if spec.get("containers").is_none() {
        spec["containers"] = json!([{"name": "c", "image": "app"}]);
    }
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": format!("p{n}"), "namespace": "default", "uid": format!("uid-{n}"),
                     "labels": labels},
        "spec": spec
    }))
    .unwrap();
    PodInfo::new(Arc::new(p), rcs)
}

fn pod(spec: Value) -> PodInfo {
    pod_with(spec, json!({}), None)
}

fn node_obj(name: &str, extra: Value) -> Node {
    let mut n = json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {},
        "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110", "ephemeral-storage": "10Gi"},
                   "runtimeHandlers": [{"name": "wasm"}]}
    });
    merge(&mut n, extra);
    serde_json::from_value(n).unwrap()
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn node(extra: Value) -> NodeInfo {
    NodeInfo::new(node_obj("n1", extra))
}

/// Runs pre_filter then filter on one node, as the framework does.
fn verdict(
    p: &dyn FilterPlugin,
    pod: &PodInfo,
    cache: &Cache,
    node: &NodeInfo,
) -> Result<(), Rejection> {
    match p.pre_filter(pod, cache) {
        PreFilter::Skip => Ok(()),
        PreFilter::Reject(r) => Err(r),
        PreFilter::Run { state, nodes } => {
            if nodes.is_some_and(|n| !n.contains(&node.name)) {
                return Err(Rejection::unresolvable("not in the pre-filter node set"));
            }
            match p.filter(pod, &state, node) {
                None => Ok(()),
                Some(r) => Err(r),
            }
        }
    }
}

fn fails(code: Code, reason: &str) -> Result<(), Rejection> {
    Err(Rejection {
        code,
        reasons: vec![reason.to_string()],
    })
}

use Code::{Unschedulable as U, UnschedulableAndUnresolvable as UU};

#[test]
fn node_name() {
    let cache = Cache::new();
    let cases = [
        (json!({}), Ok(())),
        (json!({"nodeName": "n1"}), Ok(())),
        (
            json!({"nodeName": "n2"}),
            fails(UU, "node(s) didn't match the requested node name"),
        ),
    ];
    for (spec, want) in cases {
        assert_eq!(
            verdict(
                &node_basics::NodeName,
                &pod(spec.clone()),
                &cache,
                &node(json!({}))
            ),
            want,
            "{spec}"
        );
    }
}

#[test]
fn node_unschedulable() {
    let cache = Cache::new();
    let cordoned = json!({"spec": {"unschedulable": true}});
    let cases = [
        (json!({}), json!({}), Ok(())),
        (
            json!({}),
            cordoned.clone(),
            fails(UU, "node(s) were unschedulable"),
        ),
        (
            json!({"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]}),
            cordoned.clone(),
            Ok(()),
        ),
        (
            json!({"tolerations": [{"operator": "Exists"}]}),
            cordoned,
            Ok(()),
        ),
    ];
    for (spec, n, want) in cases {
        assert_eq!(
            verdict(
                &node_basics::NodeUnschedulable,
                &pod(spec.clone()),
                &cache,
                &node(n)
            ),
            want,
            "{spec}"
        );
    }
}

#[test]
fn node_ports() {
    let cache = Cache::new();
    let mut busy = node(json!({}));
    busy.add_pod(Arc::new(pod(
        json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}),
    )));
    let cases = [
        (json!({}), Ok(())),
        (
            json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8081}]}]}),
            Ok(()),
        ),
        (
            json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080, "protocol": "UDP"}]}]}),
            Ok(()),
        ),
        (
            json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080, "hostIP": "127.0.0.1"}]}]}),
            fails(
                U,
                "node(s) didn't have free ports for the requested pod ports",
            ),
        ),
    ];
    for (spec, want) in cases {
        assert_eq!(
            verdict(&node_basics::NodePorts, &pod(spec.clone()), &cache, &busy),
            want,
            "{spec}"
        );
    }
}

#[test]
fn taint_toleration_filter() {
    let cache = Cache::new();
    let tainted = |effect: &str| json!({"spec": {"taints": [{"key": "node.kubernetes.io/not-ready", "effect": effect}]}});
    let cases = [
        (json!({}), json!({}), Ok(())),
        (
            json!({}),
            tainted("NoSchedule"),
            fails(
                UU,
                "node(s) had untolerated taint {node.kubernetes.io/not-ready: }",
            ),
        ),
        (
            json!({}),
            tainted("NoExecute"),
            fails(
                UU,
                "node(s) had untolerated taint {node.kubernetes.io/not-ready: }",
            ),
        ),
        (json!({}), tainted("PreferNoSchedule"), Ok(())),
        (
            json!({"tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}]}),
            tainted("NoExecute"),
            Ok(()),
        ),
        (
            json!({}),
            json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
            fails(UU, "node(s) had untolerated taint {dedicated: gpu}"),
        ),
        (
            json!({"tolerations": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}),
            json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
            Ok(()),
        ),
    ];
    for (spec, n, want) in cases {
        assert_eq!(
            verdict(
                &taint_toleration::TaintToleration,
                &pod(spec.clone()),
                &cache,
                &node(n.clone())
            ),
            want,
            "{spec} {n}"
        );
    }
}

/// Raw scores of `p` for `nodes`, then normalized, as the framework computes them.
fn scores(
    p: &dyn ScorePlugin,
    pod: &PodInfo,
    cache: &Cache,
    nodes: &[NodeInfo],
) -> Option<Vec<i64>> {
    let refs: Vec<&NodeInfo> = nodes.iter().collect();
    let st = match p.pre_score(pod, cache, &refs) {
        PreScore::Skip => return None,
        PreScore::Run(st) => st,
    };
    let mut s: Vec<i64> = nodes.iter().map(|n| p.score(pod, &st, n)).collect();
    p.normalize(&st, &mut s);
    Some(s)
}

#[test]
fn taint_toleration_score() {
    let cache = Cache::new();
    let prefer = |n: usize| {
        let taints: Vec<Value> = (0..n)
            .map(|i| json!({"key": format!("k{i}"), "effect": "PreferNoSchedule"}))
            .collect();
        node(json!({"spec": {"taints": taints}}))
    };
    let nodes = [prefer(0), prefer(1), prefer(2)];
    let cases = [
        (json!({}), vec![100, 50, 0]),
        (
            json!({"tolerations": [{"key": "k0", "operator": "Exists", "effect": "PreferNoSchedule"}]}),
            vec![100, 100, 0],
        ),
        (
            json!({"tolerations": [{"operator": "Exists"}]}),
            vec![100, 100, 100],
        ),
        // A NoSchedule toleration does not count for PreferNoSchedule taints.
        (
            json!({"tolerations": [{"key": "k0", "operator": "Exists", "effect": "NoSchedule"}]}),
            vec![100, 50, 0],
        ),
    ];
    for (spec, want) in cases {
        assert_eq!(
            scores(
                &taint_toleration::TaintToleration,
                &pod(spec.clone()),
                &cache,
                &nodes
            ),
            Some(want),
            "{spec}"
        );
    }
}

#[test]
fn node_affinity_filter() {
    let cache = Cache::new();
    let zone_a = json!({"metadata": {"labels": {"zone": "a", "kubernetes.io/hostname": "n1"}}});
    let err = "node(s) didn't match Pod's node affinity/selector";
    let req = |terms: Value| json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}});
    let cases = [
        (json!({}), Ok(())),
        (json!({"nodeSelector": {"zone": "a"}}), Ok(())),
        (json!({"nodeSelector": {"zone": "b"}}), fails(UU, err)),
        (
            json!({"nodeSelector": {"zone": "a", "disk": "ssd"}}),
            fails(UU, err),
        ),
        (
            req(
                json!([{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}]),
            ),
            Ok(()),
        ),
        (
            req(
                json!([{"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}]),
            ),
            fails(UU, err),
        ),
        // DaemonSet pods: matchFields metadata.name.
        (
            req(
                json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]),
            ),
            Ok(()),
        ),
        (
            req(
                json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}]),
            ),
            fails(UU, "not in the pre-filter node set"),
        ),
    ];
    for (spec, want) in cases {
        assert_eq!(
            verdict(
                &node_affinity::NodeAffinity,
                &pod(spec.clone()),
                &cache,
                &node(zone_a.clone())
            ),
            want,
            "{spec}"
        );
    }
}

#[test]
fn node_affinity_score() {
    let cache = Cache::new();
    let labelled = |l: Value| node(json!({"metadata": {"labels": l}}));
    let nodes = [
        labelled(json!({"zone": "a"})),
        labelled(json!({"zone": "b", "disk": "ssd"})),
        labelled(json!({})),
    ];
    let pref = json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 10, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}},
        {"weight": 30, "preference": {"matchExpressions": [{"key": "disk", "operator": "Exists"}]}}
    ]}}});
    assert_eq!(
        scores(&node_affinity::NodeAffinity, &pod(pref), &cache, &nodes),
        Some(vec![33, 100, 0])
    );
    assert_eq!(
        scores(
            &node_affinity::NodeAffinity,
            &pod(json!({})),
            &cache,
            &nodes
        ),
        None
    );
}

#[test]
fn runtime_class() {
    let cache = Cache::new();
    let rcs: BTreeMap<String, RuntimeClass> = [
        (
            "wasm",
            json!({"metadata": {"name": "wasm"}, "handler": "wasm"}),
        ),
        (
            "spin",
            json!({"metadata": {"name": "spin"}, "handler": "spin"}),
        ),
        (
            "edge",
            json!({"metadata": {"name": "edge"}, "handler": "wasm",
                        "scheduling": {"nodeSelector": {"edge": "true"},
                                       "tolerations": [{"key": "edge", "operator": "Exists"}]}}),
        ),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), serde_json::from_value(v).unwrap()))
    .collect();
    let rc = |name: &str| pod_with(json!({"runtimeClassName": name}), json!({}), Some(&rcs));
    let edge_node = node(json!({"metadata": {"labels": {"edge": "true"}}}));
    // A pod naming no RuntimeClass, with the handlers its images need.
    let by_images = |handlers: &[&str]| {
        let mut p = pod(json!({}));
        p.image_handlers = handlers.iter().map(|h| h.to_string()).collect();
        p
    };
    let both =
        || node(json!({"status": {"runtimeHandlers": [{"name": "runc"}, {"name": "wasm"}]}}));
    let cases = [
        (pod(json!({})), node(json!({})), Ok(())),
        (by_images(&["wasm"]), node(json!({})), Ok(())),
        (
            by_images(&["runc"]),
            node(json!({})),
            fails(
                UU,
                "node(s) didn't have the runtime handler \"runc\" its images need (the pod names no RuntimeClass)",
            ),
        ),
        (by_images(&["runc"]), both(), Ok(())),
        (by_images(&["runc", "wasm"]), both(), Ok(())),
        (rc("wasm"), node(json!({})), Ok(())),
        (
            rc("spin"),
            node(json!({})),
            fails(
                UU,
                "node(s) didn't have the runtime handler \"spin\" of RuntimeClass \"spin\"",
            ),
        ),
        (
            rc("missing"),
            node(json!({})),
            fails(UU, "pod rejected: RuntimeClass \"missing\" not found"),
        ),
        (
            rc("edge"),
            node(json!({})),
            fails(UU, "node(s) didn't match Pod's node affinity/selector"),
        ),
        (rc("edge"), edge_node, Ok(())),
    ];
    for (i, (p, n, want)) in cases.into_iter().enumerate() {
        assert_eq!(
            verdict(&runtime_class::RuntimeClassFilter, &p, &cache, &n),
            want,
            "case {i}"
        );
    }
    // The class's tolerations are the pod's for TaintToleration.
    let tainted = node(json!({"spec": {"taints": [{"key": "edge", "effect": "NoSchedule"}]}}));
    assert_eq!(
        verdict(
            &taint_toleration::TaintToleration,
            &rc("edge"),
            &cache,
            &tainted
        ),
        Ok(())
    );
    assert!(verdict(
        &taint_toleration::TaintToleration,
        &rc("wasm"),
        &cache,
        &tainted
    )
    .is_err());
}

#[test]
fn node_resources_fit() {
    let cache = Cache::new();
    let req = |r: Value| json!({"containers": [{"name": "c", "resources": {"requests": r}}]});
    let mut half_full = node(json!({}));
    half_full.add_pod(Arc::new(pod(req(json!({"cpu": "1500m", "memory": "1Gi"})))));
    let full_pods = node(json!({"status": {"allocatable": {"pods": "1"}}}));
    let mut one_pod = full_pods.clone();
    one_pod.add_pod(Arc::new(pod(json!({}))));
    let cases = [
        (req(json!({"cpu": "500m"})), half_full.clone(), Ok(())),
        (
            req(json!({"cpu": "501m"})),
            half_full.clone(),
            fails(U, "Insufficient cpu"),
        ),
        // More than the whole node: preemption cannot help.
        (
            req(json!({"cpu": "3"})),
            half_full.clone(),
            fails(UU, "Insufficient cpu"),
        ),
        (
            req(json!({"cpu": "1", "memory": "3500Mi"})),
            half_full.clone(),
            Err(Rejection {
                code: U,
                reasons: vec!["Insufficient cpu".into(), "Insufficient memory".into()],
            }),
        ),
        (
            req(json!({"ephemeral-storage": "11Gi"})),
            half_full.clone(),
            fails(UU, "Insufficient ephemeral-storage"),
        ),
        (
            req(json!({"example.com/gpu": "1"})),
            half_full.clone(),
            fails(UU, "Insufficient example.com/gpu"),
        ),
        (json!({}), full_pods, Ok(())),
        (json!({}), one_pod, fails(U, "Too many pods")),
        // Init containers and overhead count.
        (
            json!({"initContainers": [{"name": "i", "resources": {"requests": {"cpu": "600m"}}}], "containers": [{"name": "c"}]}),
            half_full.clone(),
            fails(U, "Insufficient cpu"),
        ),
        (
            json!({"overhead": {"cpu": "501m"}, "containers": [{"name": "c"}]}),
            half_full,
            fails(U, "Insufficient cpu"),
        ),
    ];
    for (spec, n, want) in cases {
        assert_eq!(
            verdict(
                &node_resources::NodeResourcesFit,
                &pod(spec.clone()),
                &cache,
                &n
            ),
            want,
            "{spec}"
        );
    }
}

#[test]
fn least_and_balanced_allocation_scores() {
    let cache = Cache::new();
    let req = |cpu: &str, mem: &str| json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": mem}}}]});
    let mut busy = node(json!({}));
    busy.add_pod(Arc::new(pod(req("1", "1Gi"))));
    let nodes = [node(json!({})), busy];
    let p = pod(req("500m", "1Gi"));
    // Empty node: cpu (2000-500)/2000 = 75, memory (4-1)/4 = 75 → 75. Busy: cpu 25, memory 50 → 37.
    assert_eq!(
        scores(&node_resources::LeastAllocated, &p, &cache, &nodes),
        Some(vec![75, 37])
    );
    // Balanced: empty node fractions .25/.25 → 100; busy .75/.5 → 1 - .125 → 87.
    assert_eq!(
        scores(&node_resources::BalancedAllocation, &p, &cache, &nodes),
        Some(vec![100, 87])
    );
    // A pod without requests counts 100m/200Mi for LeastAllocated and skips Balanced.
    let be = pod(json!({}));
    assert_eq!(
        scores(&node_resources::BalancedAllocation, &be, &cache, &nodes),
        None
    );
    assert_eq!(
        scores(&node_resources::LeastAllocated, &be, &cache, &nodes).unwrap()[0],
        (95 + 95) / 2
    );
}

/// A cache with `nodes` (name, labels) and pods (node, labels, spec).
fn cluster(nodes: &[(&str, Value)], pods: &[(&str, Value, Value)]) -> Cache {
    let mut c = Cache::new();
    for (name, labels) in nodes {
        c.upsert_node(node_obj(name, json!({"metadata": {"labels": labels}})));
    }
    for (i, (n, labels, spec)) in pods.iter().enumerate() {
        let mut spec = spec.clone();
        spec["nodeName"] = json!(n);
        if spec.get("containers").is_none() {
            spec["containers"] = json!([{"name": "c"}]);
        }
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("e{i}"), "namespace": "default", "uid": format!("e{i}"), "labels": labels},
            "spec": spec
        }))
        .unwrap();
        c.upsert_assigned_pod(Arc::new(p));
    }
    c
}

fn filter_all(p: &dyn FilterPlugin, pod: &PodInfo, cache: &Cache) -> Vec<Result<(), Rejection>> {
    let mut names: Vec<&NodeInfo> = cache.nodes().iter().collect();
    names.sort_by(|a, b| a.name.cmp(&b.name));
    names
        .into_iter()
        .map(|n| verdict(p, pod, cache, n))
        .collect()
}

#[test]
fn pod_topology_spread_filter() {
    // Zones a (n1, n2) and b (n3); two app=web pods in zone a, none in b; n4 unlabelled.
    let cache = cluster(
        &[
            ("n1", json!({"zone": "a"})),
            ("n2", json!({"zone": "a"})),
            ("n3", json!({"zone": "b"})),
            ("n4", json!({})),
        ],
        &[
            ("n1", json!({"app": "web"}), json!({})),
            ("n2", json!({"app": "web"}), json!({})),
        ],
    );
    let spread = |skew: i32, when: &str| {
        json!({"topologySpreadConstraints": [{"maxSkew": skew, "topologyKey": "zone", "whenUnsatisfiable": when,
                                              "labelSelector": {"matchLabels": {"app": "web"}}}]})
    };
    let web = |spec: Value| pod_with(spec, json!({"app": "web"}), None);
    let missing = fails(
        UU,
        "node(s) didn't match pod topology spread constraints (missing required label)",
    );
    let skewed = fails(U, "node(s) didn't match pod topology spread constraints");
    let cases = [
        // a has 2, b has 0: placing in a makes skew 3 > 1; b is fine.
        (
            web(spread(1, "DoNotSchedule")),
            vec![skewed.clone(), skewed.clone(), Ok(()), missing.clone()],
        ),
        (
            web(spread(3, "DoNotSchedule")),
            vec![Ok(()), Ok(()), Ok(()), missing.clone()],
        ),
        // A pod the selector does not match adds no skew of its own.
        (
            pod_with(spread(2, "DoNotSchedule"), json!({"app": "db"}), None),
            vec![Ok(()), Ok(()), Ok(()), missing],
        ),
        // Soft constraints never filter.
        (web(spread(1, "ScheduleAnyway")), vec![Ok(()); 4]),
    ];
    for (i, (p, want)) in cases.into_iter().enumerate() {
        assert_eq!(
            filter_all(&pod_topology_spread::PodTopologySpread, &p, &cache),
            want,
            "case {i}"
        );
    }
}

#[test]
fn pod_topology_spread_score() {
    let cache = cluster(
        &[
            ("n1", json!({"zone": "a"})),
            ("n2", json!({"zone": "b"})),
            ("n3", json!({"zone": "c"})),
            ("n4", json!({})),
        ],
        &[
            ("n1", json!({"app": "web"}), json!({})),
            ("n1", json!({"app": "web"}), json!({})),
            ("n2", json!({"app": "web"}), json!({})),
        ],
    );
    let p = pod_with(
        json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway",
                                              "labelSelector": {"matchLabels": {"app": "web"}}}]}),
        json!({"app": "web"}),
        None,
    );
    let mut nodes: Vec<NodeInfo> = cache.nodes().to_vec();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let s = scores(&pod_topology_spread::PodTopologySpread, &p, &cache, &nodes).unwrap();
    // Fewer matching pods in the zone → higher; the node without the key gets 0.
    assert!(s[2] > s[1] && s[1] > s[0], "{s:?}");
    assert_eq!(s[2], 100);
    assert_eq!(s[3], 0);
}

#[test]
fn inter_pod_affinity_filter() {
    let cache = cluster(
        &[
            ("n1", json!({"zone": "a"})),
            ("n2", json!({"zone": "a"})),
            ("n3", json!({"zone": "b"})),
            ("n4", json!({})),
        ],
        &[
            ("n1", json!({"app": "db"}), json!({})),
            (
                "n3",
                json!({"app": "lonely"}),
                json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "zone"}]}}}),
            ),
        ],
    );
    let term = |app: &str| json!([{"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": "zone"}]);
    let affinity = |app: &str| json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": term(app)}}});
    let anti = |app: &str| json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": term(app)}}});
    let aff_err = fails(UU, "node(s) didn't match pod affinity rules");
    let anti_err = fails(U, "node(s) didn't match pod anti-affinity rules");
    let existing_err = fails(
        U,
        "node(s) didn't satisfy existing pods anti-affinity rules",
    );
    let cases = [
        // Near the db pod: zone a only.
        (
            pod_with(affinity("db"), json!({"app": "cache"}), None),
            vec![Ok(()), Ok(()), aff_err.clone(), aff_err.clone()],
        ),
        // Away from the db pod.
        (
            pod_with(anti("db"), json!({"app": "cache"}), None),
            vec![anti_err.clone(), anti_err, Ok(()), Ok(())],
        ),
        // Nobody matches yet, but the pod matches its own term: the first of its group.
        (
            pod_with(affinity("new"), json!({"app": "new"}), None),
            vec![Ok(()), Ok(()), Ok(()), aff_err.clone()],
        ),
        (
            pod_with(affinity("new"), json!({"app": "other"}), None),
            vec![aff_err.clone(), aff_err.clone(), aff_err.clone(), aff_err],
        ),
        // The existing pod on n3 keeps web pods out of zone b.
        (
            pod_with(json!({}), json!({"app": "web"}), None),
            vec![Ok(()), Ok(()), existing_err, Ok(())],
        ),
        (
            pod_with(json!({}), json!({"app": "api"}), None),
            vec![Ok(()); 4],
        ),
    ];
    for (i, (p, want)) in cases.into_iter().enumerate() {
        assert_eq!(
            filter_all(&inter_pod_affinity::InterPodAffinity, &p, &cache),
            want,
            "case {i}"
        );
    }
}

#[test]
fn inter_pod_affinity_score() {
    let cache = cluster(
        &[
            ("n1", json!({"zone": "a"})),
            ("n2", json!({"zone": "b"})),
            ("n3", json!({"zone": "c"})),
        ],
        &[
            ("n1", json!({"app": "db"}), json!({})),
            ("n2", json!({"app": "noisy"}), json!({})),
        ],
    );
    let p = pod(json!({"affinity": {
        "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}}]},
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "noisy"}}, "topologyKey": "zone"}}]}
    }}));
    let mut nodes: Vec<NodeInfo> = cache.nodes().to_vec();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(
        scores(&inter_pod_affinity::InterPodAffinity, &p, &cache, &nodes),
        Some(vec![100, 0, 50])
    );
    assert_eq!(
        scores(
            &inter_pod_affinity::InterPodAffinity,
            &pod(json!({})),
            &cache,
            &nodes
        ),
        None
    );
}

#[test]
fn image_locality_score() {
    let mb = 1024 * 1024;
    let mut c = Cache::new();
    let with_image = |name: &str, size: i64| {
        node_obj(
            name,
            json!({"status": {"images": [{"names": ["reg/app:v1"], "sizeBytes": size}]}}),
        )
    };
    c.upsert_node(with_image("n1", 500 * mb));
    c.upsert_node(with_image("n2", 500 * mb));
    c.upsert_node(node_obj("n3", json!({})));
    c.upsert_node(node_obj("n4", json!({})));
    let p = pod(json!({"containers": [{"name": "c", "image": "reg/app:v1"}]}));
    let nodes: Vec<NodeInfo> = ["n1", "n3"]
        .iter()
        .map(|n| c.node(n).unwrap().clone())
        .collect();
    // 500 MB × spread 2/4 = 250 MB → 100 × (250 − 23) / (1000 − 23) = 23.
    assert_eq!(
        scores(&image_locality::ImageLocality, &p, &c, &nodes),
        Some(vec![23, 0])
    );
    let other = pod(json!({"containers": [{"name": "c", "image": "reg/other"}]}));
    assert_eq!(
        scores(&image_locality::ImageLocality, &other, &c, &nodes),
        None
    );
}

#[test]
fn the_default_framework_picks_a_fitting_node_or_explains() {
    let mut c = Cache::new();
    c.upsert_node(node_obj("ready", json!({})));
    c.upsert_node(node_obj(
        "small",
        json!({"status": {"allocatable": {"cpu": "500m"}}}),
    ));
    c.upsert_node(node_obj(
        "not-ready",
        json!({"spec": {"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}]}}),
    ));
    let mut fw = default_framework();
    let mut rng = rand::rng();
    let p = pod(json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]}));
    assert_eq!(fw.schedule(&p, &c, &mut rng).unwrap().node, "ready");
    let big =
        pod(json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "100"}}}]}));
    let err = fw.schedule(&big, &c, &mut rng).unwrap_err();
    assert_eq!(
        err.message(),
        "0/3 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, \
         2 Insufficient cpu. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
    );
    assert_eq!(
        err.plugins,
        ["TaintToleration", "NodeResourcesFit"]
            .into_iter()
            .collect()
    );
    // A DaemonSet-style pod pinned to one node by matchFields.
    let ds = pod(
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["small"]}]}]}}}}),
    );
    assert_eq!(fw.schedule(&ds, &c, &mut rng).unwrap().node, "small");
    let ds_big = pod(json!({
        "containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["small"]}]}]}}}}));
    assert_eq!(
        fw.schedule(&ds_big, &c, &mut rng).unwrap_err().message(),
        "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't satisfy plugin(s) [NodeAffinity]. \
         preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
    );
}
