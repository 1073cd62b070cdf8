//! Service ClusterIP and NodePort allocation in the API server, with real kubectl and
//! kube-rs against a real `kelp server`: the `kubernetes` Service, unique addresses
//! under concurrent creates, node ports, the upstream 422s, release on delete and on
//! type changes, and allocations that survive a restart.

mod common;

use std::collections::HashSet;
use std::net::Ipv4Addr;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use serde_json::{json, Value};

use common::{Backend, Cluster};

fn service(name: &str, spec: Value) -> String {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})
        .to_string()
}

fn in_service_cidr(ip: &str) -> bool {
    let ip: Ipv4Addr = ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
    let o = ip.octets();
    o[0] == 10 && o[1] == 43 && ip != Ipv4Addr::new(10, 43, 0, 0)
}

#[test]
fn cluster_ips_and_node_ports_are_allocated_uniquely_and_released() {
    let mut c = Cluster::start(Backend::Sqlite);

    // The API server's own Service and endpoints.
    let k = c.kubectl_json(&["get", "service", "kubernetes", "-n", "default"]);
    assert_eq!(k["spec"]["clusterIP"], "10.43.0.1", "{k:#}");
    assert_eq!(k["spec"]["ports"][0]["port"], 443, "{k:#}");
    let ep = c.kubectl_json(&["get", "endpoints", "kubernetes", "-n", "default"]);
    assert_eq!(
        ep["subsets"][0]["addresses"][0]["ip"],
        c.ip.to_string(),
        "{ep:#}"
    );
    assert_eq!(ep["subsets"][0]["ports"][0]["port"], c.port, "{ep:#}");

    // 40 concurrent creates get 40 distinct addresses from the range.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ips: Vec<String> = rt.block_on(async {
        let client = c.kube_client().await;
        let api: Api<Service> = Api::namespaced(client, "default");
        let creates = (0..40).map(|i| {
            let api = api.clone();
            async move {
                let svc: Service = serde_json::from_str(&service(
                    &format!("many-{i}"),
                    json!({"ports": [{"port": 80}], "selector": {"app": "x"}}),
                ))
                .unwrap();
                api.create(&PostParams::default(), &svc)
                    .await
                    .unwrap_or_else(|e| panic!("create many-{i}: {e}"))
                    .spec
                    .and_then(|s| s.cluster_ip)
                    .unwrap_or_default()
            }
        });
        join_all(creates).await
    });
    let distinct: HashSet<&String> = ips.iter().collect();
    assert_eq!(distinct.len(), 40, "duplicate ClusterIPs: {ips:?}");
    assert!(ips.iter().all(|ip| in_service_cidr(ip)), "{ips:?}");
    assert!(!ips.contains(&"10.43.0.1".to_string()), "{ips:?}");

    // NodePort: one allocated in range, one given; clusterIPs mirrors clusterIP.
    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &service(
            "np",
            json!({"type": "NodePort", "selector": {"app": "x"},
                   "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81, "nodePort": 30081}]}),
        ),
    );
    let np = c.kubectl_json(&["get", "service", "np"]);
    let auto = np["spec"]["ports"][0]["nodePort"].as_i64().unwrap_or(0);
    assert!((30000..=32767).contains(&auto), "{np:#}");
    assert_eq!(np["spec"]["ports"][1]["nodePort"], 30081, "{np:#}");
    assert_eq!(
        np["spec"]["clusterIPs"][0], np["spec"]["clusterIP"],
        "{np:#}"
    );

    // Bad input: upstream's 422s.
    let err = c.kubectl_err(&[
        "create",
        "service",
        "nodeport",
        "dup",
        "--tcp=82:82",
        "--node-port=30081",
    ]);
    assert!(
        err.contains(
            "spec.ports[0].nodePort: Invalid value: 30081: provided port is already allocated"
        ),
        "{err}"
    );
    let err = c.kubectl_err(&[
        "create",
        "service",
        "nodeport",
        "far",
        "--tcp=82:82",
        "--node-port=40000",
    ]);
    assert!(
        err.contains(
            "provided port is not in the valid range. The range of valid ports is 30000-32767"
        ),
        "{err}"
    );
    let err = c.kubectl_err(&[
        "create",
        "service",
        "clusterip",
        "outside",
        "--tcp=80:80",
        "--clusterip=192.168.7.7",
    ]);
    assert!(
        err.contains("failed to allocate IP 192.168.7.7: the provided IP (192.168.7.7) is not in the valid range. The range of valid IPs is 10.43.0.0/16"),
        "{err}"
    );
    let taken = ips[0].clone();
    let err = c.kubectl_err(&[
        "create",
        "service",
        "clusterip",
        "taken",
        "--tcp=80:80",
        &format!("--clusterip={taken}"),
    ]);
    assert!(
        err.contains(&format!(
            "failed to allocate IP {taken}: provided IP is already allocated"
        )),
        "{err}"
    );
    assert!(err.contains("Service \"taken\" is invalid"), "{err}");

    // Re-applying without the allocated fields keeps them; NodePort → ClusterIP
    // releases the node ports.
    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &service(
            "np",
            json!({"type": "NodePort", "selector": {"app": "x"},
                   "ports": [{"name": "a", "port": 80}, {"name": "b", "port": 81, "nodePort": 30081}]}),
        ),
    );
    let again = c.kubectl_json(&["get", "service", "np"]);
    assert_eq!(again["spec"]["clusterIP"], np["spec"]["clusterIP"]);
    assert_eq!(again["spec"]["ports"][0]["nodePort"], auto, "{again:#}");
    c.kubectl_ok(&[
        "patch",
        "service",
        "np",
        "--type=merge",
        "-p",
        r#"{"spec":{"type":"ClusterIP"}}"#,
    ]);
    let plain = c.kubectl_json(&["get", "service", "np"]);
    assert!(
        plain["spec"]["ports"][1].get("nodePort").is_none(),
        "{plain:#}"
    );
    c.kubectl_ok(&[
        "create",
        "service",
        "nodeport",
        "reuse",
        "--tcp=82:82",
        "--node-port=30081",
    ]);

    // Delete releases the address.
    c.kubectl_ok(&["delete", "service", "many-0"]);
    c.kubectl_ok(&[
        "create",
        "service",
        "clusterip",
        "second-owner",
        "--tcp=80:80",
        &format!("--clusterip={taken}"),
    ]);

    // Allocations are durable: after a restart the taken address is still refused.
    c.restart();
    let err = c.kubectl_err(&[
        "create",
        "service",
        "clusterip",
        "after-restart",
        "--tcp=80:80",
        &format!("--clusterip={taken}"),
    ]);
    assert!(err.contains("provided IP is already allocated"), "{err}");
    // Headless and ExternalName services get no address.
    c.kubectl_ok(&[
        "create",
        "service",
        "clusterip",
        "headless",
        "--clusterip=None",
    ]);
    let h = c.kubectl_json(&["get", "service", "headless"]);
    assert_eq!(h["spec"]["clusterIP"], "None", "{h:#}");
    c.kubectl_ok(&[
        "create",
        "service",
        "externalname",
        "ext",
        "--external-name=example.com",
    ]);
    let e = c.kubectl_json(&["get", "service", "ext"]);
    assert!(e["spec"].get("clusterIP").is_none(), "{e:#}");
}
