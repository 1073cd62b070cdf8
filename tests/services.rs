//! Services end to end: `kelp up` (control plane + a node running the kubelet and the
//! userspace proxy in one process), a real registry holding `http-hello`, real
//! `kubectl`. Pods get addresses from the node's pod range on a test-owned interface;
//! the proxy serves ClusterIPs and node ports on this machine.
//!
//! The tests of this file share host-wide resources (ClusterIPs, node ports), so they
//! run one at a time.

mod common;
#[path = "../runtime-wasm/tests/support/registry.rs"]
mod registry;
#[path = "common/up.rs"]
mod up;

use std::collections::BTreeMap;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Mutex;
use std::time::Duration;

use common::wait_until;
use serde_json::Value;
use up::{http_get as get, http_hello, push, Up};

const DEADLINE: Duration = Duration::from_secs(60);
static SERIAL: Mutex<()> = Mutex::new(());

/// `n` requests to `addr`: how many each pod answered (panics on a failed request).
fn spread(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let path = format!("/req-{i}");
        let (status, pod, body) =
            get(addr, &path).unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"));
        assert_eq!(status, 200, "GET {addr}{path}: {body}");
        assert!(body.contains(&path), "the response names the path: {body}");
        *counts.entry(pod).or_insert(0) += 1;
    }
    counts
}

fn hello_pod(name: &str, node: &str, image: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: hello}}}}
spec:
  nodeName: {node}
  containers:
  - name: web
    image: {image}
    ports: [{{containerPort: 8080}}]
"#
    )
}

fn endpoint(ip: IpAddr, node: &str, ready: bool) -> String {
    format!("  - addresses: [\"{ip}\"]\n    nodeName: {node}\n    conditions: {{ready: {ready}}}\n")
}

/// Pods get distinct addresses from the node's range, made local on the pod interface
/// and released on deletion; a Service without a selector and a hand-written
/// EndpointSlice (how any EndpointSlice producer feeds the proxy) are served on the
/// ClusterIP and the node port, round-robin over ready endpoints only, with ClientIP
/// affinity, and over UDP. The proxy runs two busy-polling threads here (the other
/// test keeps the defaults).
#[test]
fn the_proxy_serves_cluster_ips_and_node_ports_from_endpoint_slices() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let reg = registry::Registry::start();
    let image = format!("{}/kelp/http-hello:v1", reg.addr);
    push(&http_hello(), &image);
    let plane = ["--proxy-threads", "2", "--proxy-busy-poll", "200"].map(String::from);
    let up = Up::start("svc", "info,kelp_node_agent::proxy=debug", &plane);
    let node = up.node.clone();
    let proxy_threads = std::fs::read_dir(format!("/proc/{}/task", up.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with("kelp-proxy-"))
        .count();
    assert_eq!(
        proxy_threads, 2,
        "--proxy-threads 2 gives two forwarding threads"
    );

    let names = ["hello-0", "hello-1", "hello-2"];
    let all: String = names
        .iter()
        .map(|n| hello_pod(n, &node, &image))
        .collect::<Vec<_>>()
        .join("---\n");
    up.apply(&all);
    let ips: Vec<IpAddr> = names.iter().map(|n| up.running_pod_ip(n)).collect();
    let mut distinct = ips.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "pods share addresses: {ips:?}");
    let node_json = up.json(&["get", "node", &node]);
    let range = node_json["spec"]["podCIDR"].as_str().map(str::to_string);
    for ip in &ips {
        let s = ip.to_string();
        assert!(
            s.starts_with("10.42."),
            "pod address {s} is not from the pod network (node podCIDR {range:?})"
        );
        assert!(
            up.interface_addresses().contains(&format!("{s}/32")),
            "{s} is not on {}: {}",
            up.iface,
            up.interface_addresses()
        );
        // The pod serves on its own address.
        let (status, _, body) = get(SocketAddr::new(*ip, 8080), "/direct").unwrap();
        assert_eq!((status, body.contains("/direct")), (200, true), "{body}");
    }

    let cluster_ip: IpAddr = "10.43.201.10".parse().unwrap();
    let node_port = 31080;
    let slice = |ready: [bool; 3]| {
        let eps: String = ips
            .iter()
            .zip(ready)
            .map(|(ip, r)| endpoint(*ip, &node, r))
            .collect();
        format!(
            r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-manual
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
{eps}"#
        )
    };
    up.apply(&format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: NodePort
  clusterIP: {cluster_ip}
  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: {node_port}}}]
---
{}"#,
        slice([true, true, true])
    ));
    let svc = up.json(&["get", "service", "web"]);
    let cluster_ip: IpAddr = svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
    let via_cluster_ip = SocketAddr::new(cluster_ip, 80);
    let via_node_port = SocketAddr::from(([127, 0, 0, 1], node_port));
    let ok = wait_until(DEADLINE, || {
        get(via_cluster_ip, "/").is_ok_and(|r| r.0 == 200)
    });
    assert!(
        ok,
        "the ClusterIP {via_cluster_ip} never answered:\n{}",
        up.log()
    );

    for addr in [via_cluster_ip, via_node_port] {
        let counts = spread(addr, 30);
        assert_eq!(
            counts.keys().map(String::as_str).collect::<Vec<_>>(),
            names,
            "via {addr}: {counts:?}"
        );
        assert!(
            counts.values().all(|&c| c == 10),
            "round-robin via {addr}: {counts:?}"
        );
    }

    // hello-1 goes unready: no new connections reach it.
    up.apply(&slice([true, false, true]));
    let ok = wait_until(DEADLINE, || {
        !spread(via_cluster_ip, 6).contains_key("hello-1")
    });
    assert!(ok, "an unready endpoint still gets connections");
    let counts = spread(via_node_port, 20);
    assert_eq!(counts.len(), 2, "{counts:?}");

    // ClientIP affinity: one client sticks to one pod.
    up.kubectl(&[
        "patch",
        "service",
        "web",
        "-p",
        r#"{"spec":{"sessionAffinity":"ClientIP","sessionAffinityConfig":{"clientIP":{"timeoutSeconds":60}}}}"#,
    ])
    .unwrap();
    let ok = wait_until(DEADLINE, || spread(via_cluster_ip, 10).len() == 1);
    assert!(ok, "ClientIP affinity never took effect");

    // UDP: an echo server of this test as the endpoint of a UDP service port.
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], peer);
        }
    });
    let udp_ip: IpAddr = "10.43.201.11".parse().unwrap();
    up.apply(&format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: echo}}
spec:
  clusterIP: {udp_ip}
  ports: [{{name: echo, port: 5353, protocol: UDP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-manual
  labels: {{kubernetes.io/service-name: echo}}
addressType: IPv4
ports: [{{name: echo, port: {echo_port}, protocol: UDP}}]
endpoints:
  - addresses: ["127.0.0.1"]
"#
    ));
    let client = UdpSocket::bind("0.0.0.0:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let ok = wait_until(DEADLINE, || {
        let _ = client.send_to(b"ping over udp", (udp_ip, 5353));
        let mut buf = [0u8; 64];
        matches!(client.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == b"ping over udp")
    });
    assert!(ok, "no UDP echo through the ClusterIP");

    // The service goes: its ClusterIP leaves the interface.
    up.kubectl(&["delete", "service", "echo"]).unwrap();
    let ok = wait_until(DEADLINE, || {
        !up.interface_addresses().contains(&format!("{udp_ip}/32"))
    });
    assert!(
        ok,
        "the deleted Service's ClusterIP stayed: {}",
        up.interface_addresses()
    );

    // A deleted pod's address is released.
    up.kubectl(&["delete", "pod", "hello-2", "--wait=true"])
        .unwrap();
    let gone = ips[2].to_string();
    let ok = wait_until(DEADLINE, || {
        !up.interface_addresses().contains(&format!("{gone}/32"))
    });
    assert!(
        ok,
        "the deleted pod's address stayed: {}",
        up.interface_addresses()
    );
    let record: Value = serde_json::from_slice(
        &std::fs::read(up.dir.path().join("data/network/pod-ips.json")).unwrap(),
    )
    .unwrap();
    let held: Vec<&str> = record["pods"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_str)
        .collect();
    assert!(!held.contains(&gone.as_str()), "{record}");
    assert!(held.contains(&ips[0].to_string().as_str()), "{record}");
}

/// A Deployment behind a selector Service, as users run one: the endpoints
/// controller feeds the proxy. Requests through the ClusterIP and the node port spread
/// over the replicas; scaling 3 → 5 → 3 under a client loop fails no request; a pod
/// whose readiness probe fails leaves the rotation within two probe periods.
#[test]
fn a_deployment_behind_a_service_rescales_without_failed_requests() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let reg = registry::Registry::start();
    let image = format!("{}/kelp/http-hello:v1", reg.addr);
    push(&http_hello(), &image);
    let up = Up::start("svc", "info,kelp_node_agent::proxy=debug", &[]);
    // Each pod reads its readiness from the ConfigMap key named after it.
    up.apply(&format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: readiness}}
data: {{}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: hello}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: hello}}}}
  template:
    metadata: {{labels: {{app: hello}}}}
    spec:
      containers:
      - name: web
        image: {image}
        ports: [{{containerPort: 8080}}]
        env:
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        - {{name: READY_FILE, value: "/config/$(POD_NAME)"}}
        readinessProbe:
          httpGet: {{path: /healthz, port: 8080}}
          periodSeconds: {PROBE_PERIOD_S}
          failureThreshold: 1
        volumeMounts: [{{name: config, mountPath: /config}}]
      volumes:
      - name: config
        configMap: {{name: readiness}}
---
apiVersion: v1
kind: Service
metadata: {{name: hello}}
spec:
  type: NodePort
  selector: {{app: hello}}
  ports: [{{port: 80, targetPort: 8080}}]
"#
    ));
    up.kubectl(&["rollout", "status", "deployment/hello", "--timeout=60s"])
        .unwrap_or_else(|e| panic!("rollout: {e}\n{}", up.log()));
    let svc = up.json(&["get", "service", "hello"]);
    let cluster_ip: IpAddr = svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap() as u16;
    let via_cluster_ip = SocketAddr::new(cluster_ip, 80);
    let via_node_port = SocketAddr::from(([127, 0, 0, 1], node_port));
    let pods = |up: &Up| -> Vec<String> {
        let list = up.json(&["get", "pods", "-l", "app=hello"]);
        let mut names: Vec<String> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .collect();
        names.sort();
        names
    };
    let spread_over = |addr: SocketAddr, want: usize| {
        let mut last = BTreeMap::new();
        let ok = wait_until(DEADLINE, || {
            last = spread(addr, 10 * want);
            last.len() == want
        });
        assert!(ok, "via {addr}: {last:?}, want {want} pods\n{}", up.log());
        last
    };
    for addr in [via_cluster_ip, via_node_port] {
        let counts = spread_over(addr, 3);
        assert_eq!(
            counts.keys().cloned().collect::<Vec<_>>(),
            pods(&up),
            "via {addr}"
        );
    }

    // Scale 3 → 5 → 3 while a client loop counts failed requests.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                match get(via_cluster_ip, &format!("/loop-{i}")) {
                    Ok((200, _, _)) => ok += 1,
                    Ok((status, pod, body)) => failed.push(format!("{status} from {pod}: {body}")),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
    };
    up.kubectl(&["scale", "deployment/hello", "--replicas=5"])
        .unwrap();
    up.kubectl(&["rollout", "status", "deployment/hello", "--timeout=60s"])
        .unwrap_or_else(|e| panic!("scale to 5: {e}\n{}", up.log()));
    let five = spread_over(via_cluster_ip, 5);
    up.kubectl(&["scale", "deployment/hello", "--replicas=3"])
        .unwrap();
    let ok = wait_until(DEADLINE, || pods(&up).len() == 3);
    assert!(ok, "never back to 3 pods: {:?}", pods(&up));
    let three = spread_over(via_cluster_ip, 3);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = client.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the rescale ({five:?} then {three:?}): {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(10)]
    );
    eprintln!("rescale 3 → 5 → 3: {ok} requests, none failed");

    // One pod's readiness fails: it leaves the rotation within two probe periods of
    // its first failing answer.
    let victim = pods(&up)[0].clone();
    let victim_ip = up.running_pod_ip(&victim);
    up.kubectl(&[
        "patch",
        "configmap",
        "readiness",
        "-p",
        &format!(r#"{{"data":{{"{victim}":"unready"}}}}"#),
    ])
    .unwrap();
    let ok = wait_until(DEADLINE, || {
        get(SocketAddr::new(victim_ip, 8080), "/healthz").is_ok_and(|r| r.0 == 503)
    });
    assert!(ok, "the ConfigMap update never reached {victim}");
    let failing_since = std::time::Instant::now();
    let mut last_seen = failing_since;
    let gone = wait_until(DEADLINE, || {
        let counts = spread(via_cluster_ip, 6);
        if counts.contains_key(&victim) {
            last_seen = std::time::Instant::now();
            false
        } else {
            // Gone for a full round over the other two.
            counts.len() == 2
        }
    });
    assert!(gone, "{victim} never left the rotation\n{}", up.log());
    let took = last_seen - failing_since;
    eprintln!("{victim} left the rotation {took:?} after its probe first failed");
    assert!(
        took <= Duration::from_secs(2 * PROBE_PERIOD_S),
        "{victim} stayed in rotation for {took:?} (probe period {PROBE_PERIOD_S} s)"
    );
}

/// The readiness probe period of the Deployment test.
const PROBE_PERIOD_S: u64 = 2;
