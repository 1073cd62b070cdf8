use super::*;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, PodCondition, PodSpec, PodStatus, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

fn svc(target: IntOrString) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("ns".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some([("app".to_string(), "web".to_string())].into()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(target),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

fn pod(name: &str, ip: Option<&str>, ready: bool, port_name: Option<(&str, i32)>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(format!("u-{name}")),
            labels: Some([("app".to_string(), "web".to_string())].into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some("n1".into()),
            containers: vec![Container {
                name: "c".into(),
                ports: port_name.map(|(n, p)| {
                    vec![ContainerPort {
                        name: Some(n.into()),
                        container_port: p,
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: ip.map(Into::into),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

#[test]
fn ready_not_ready_and_terminating_pods() {
    let s = svc(IntOrString::Int(8080));
    let a = pod("a", Some("10.0.0.1"), true, None);
    let b = pod("b", Some("10.0.0.2"), false, None);
    let mut c = pod("c", Some("10.0.0.3"), true, None);
    c.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    let no_ip = pod("d", None, true, None);
    let mut other = pod("e", Some("10.0.0.5"), true, None);
    other.metadata.labels = Some([("app".to_string(), "db".to_string())].into());
    let groups = desired(&s, &[&a, &b, &c, &no_ip, &other]).unwrap();
    let sl = slices(&groups);
    assert_eq!(sl.len(), 1);
    let (ports, eps) = &sl[0];
    assert_eq!(ports[0].port, Some(8080));
    assert_eq!(ports[0].name.as_deref(), Some("http"));
    assert_eq!(eps.len(), 3);
    let cond = |i: usize| eps[i].conditions.clone().unwrap();
    assert_eq!(
        (cond(0).ready, cond(0).serving, cond(0).terminating),
        (Some(true), Some(true), Some(false))
    );
    assert_eq!(cond(1).ready, Some(false));
    assert_eq!(
        (cond(2).ready, cond(2).serving, cond(2).terminating),
        (Some(false), Some(true), Some(true))
    );
    assert_eq!(
        eps[0].target_ref.as_ref().unwrap().name.as_deref(),
        Some("a")
    );
    assert_eq!(eps[0].node_name.as_deref(), Some("n1"));

    let subs = subsets(&s, &groups);
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].addresses.as_ref().unwrap().len(), 1);
    let nr = subs[0].not_ready_addresses.as_ref().unwrap();
    assert_eq!(nr.len(), 1, "terminating pods are left out of Endpoints");
    assert_eq!(nr[0].ip, "10.0.0.2");
}

#[test]
fn named_ports_resolve_per_pod_and_split_slices() {
    let s = svc(IntOrString::String("web".into()));
    let a = pod("a", Some("10.0.0.1"), true, Some(("web", 8080)));
    let b = pod("b", Some("10.0.0.2"), true, Some(("web", 9090)));
    let c = pod("c", Some("10.0.0.3"), true, None);
    let groups = desired(&s, &[&a, &b, &c]).unwrap();
    let sl = slices(&groups);
    // Three port sets: none (c), 8080 (a), 9090 (b).
    assert_eq!(sl.len(), 3);
    let mut ports: Vec<Option<i32>> = sl
        .iter()
        .map(|(p, _)| p.first().and_then(|p| p.port))
        .collect();
    ports.sort();
    assert_eq!(ports, vec![None, Some(8080), Some(9090)]);
}

#[test]
fn at_most_100_endpoints_per_slice_and_selectorless_services_are_skipped() {
    let s = svc(IntOrString::Int(80));
    let pods: Vec<Pod> = (0..250)
        .map(|i| {
            pod(
                &format!("p{i:03}"),
                Some(&format!("10.0.{}.{}", i / 200, i % 200)),
                true,
                None,
            )
        })
        .collect();
    let refs: Vec<&Pod> = pods.iter().collect();
    let sl = slices(&desired(&s, &refs).unwrap());
    assert_eq!(
        sl.iter().map(|(_, e)| e.len()).collect::<Vec<_>>(),
        vec![100, 100, 50]
    );
    let mut none = svc(IntOrString::Int(80));
    none.spec.as_mut().unwrap().selector = None;
    assert!(desired(&none, &refs).is_none());
    // No pods: one empty placeholder slice.
    assert_eq!(slices(&Groups::new()).len(), 1);
}
