//! Cluster DNS end to end: `kelp up` (control plane + a node running the kubelet, the
//! userspace proxy and cluster DNS in one process) with its own pod interface, a real
//! registry holding `http-hello`, real `kubectl`. One Wasm pod calls a Service by
//! name through its `/fetch/` route (an outgoing wasi:http request resolved by the
//! pod's resolver, and sent from the pod's address), and the node's DNS server is
//! queried directly over UDP and TCP.
//!
//! The node's DNS listens on 169.254.20.10:53 on the test's interface, or a free port
//! there when another agent on this machine holds port 53.

mod common;
#[path = "../runtime-wasm/tests/support/registry.rs"]
mod registry;
#[path = "common/up.rs"]
mod up;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use common::wait_until;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use up::{http_hello, push, Up};

const DEADLINE: Duration = Duration::from_secs(90);

/// One HTTP/1.1 GET on a fresh connection: (status, body).
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    up::http_get(addr, path).map(|(status, _, body)| (status, body))
}

fn query(name: &str, rtype: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    m
}

fn ask_udp(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let q = query(name, rtype);
    sock.send_to(&q.to_vec().unwrap(), server).unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = sock
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("no UDP answer from {server} for {name}: {e}"));
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.id, q.metadata.id);
    m
}

fn ask_tcp(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let wire = query(name, rtype).to_vec().unwrap();
    let mut out = (wire.len() as u16).to_be_bytes().to_vec();
    out.extend(wire);
    s.write_all(&out).unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).unwrap();
    Message::from_vec(&buf).unwrap()
}

fn addresses(m: &Message) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

const APPS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: hello}
spec:
  replicas: 2
  selector: {matchLabels: {app: hello}}
  template:
    metadata: {labels: {app: hello}}
    spec:
      containers:
      - name: web
        image: IMAGE
        ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: hello}
spec:
  selector: {app: hello}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: hello-headless}
spec:
  clusterIP: None
  selector: {app: hello}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  containers:
  - name: web
    image: IMAGE
    ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: fenced
  annotations:
    kelp.dev/egress: deny
    kelp.dev/egress-allow: "hello.default.svc.cluster.local:80"
spec:
  containers:
  - name: web
    image: IMAGE
    ports: [{containerPort: 8080}]
"#;

/// The done-when of issue 6's DNS item: a Wasm pod reaches another Service by its
/// DNS name (full and through the search path), an unknown name is a clear error;
/// the node's DNS answers ClusterIP and headless Services over UDP and TCP.
#[test]
fn a_wasm_pod_reaches_a_service_by_name() {
    let reg = registry::Registry::start();
    let image = format!("{}/kelp/http-hello:v1", reg.addr);
    push(&http_hello(), &image);
    let up = Up::start(
        "dns",
        "info,kelp_node_agent::dns=debug,kelp_runtime_wasm::http=debug",
        &[],
    );
    up.apply(&APPS.replace("IMAGE", &image));
    let client = SocketAddr::new(up.running_pod_ip("client"), 8080);

    // Full name, through the ClusterIP and the proxy, to a hello replica.
    let mut last = (0, String::new());
    let ok = wait_until(DEADLINE, || {
        last =
            get(client, "/fetch/hello.default.svc.cluster.local/hi").unwrap_or((0, String::new()));
        last.0 == 200
    });
    assert!(
        ok,
        "the client never reached hello by its full name: {last:?}\n{}",
        up.log()
    );
    assert!(
        last.1.contains("Hello from Kelp over wasi:http") && last.1.contains("/hi"),
        "{last:?}"
    );

    // A pod denying egress but to hello's name on port 80: that name works; the
    // headless name, hello's ClusterIP and the short name (not listed) are refused
    // by the runtime before any connection.
    let fenced = SocketAddr::new(up.running_pod_ip("fenced"), 8080);
    let ok = wait_until(DEADLINE, || {
        get(fenced, "/fetch/hello.default.svc.cluster.local/in").is_ok_and(|(s, _)| s == 200)
    });
    assert!(
        ok,
        "the fenced pod cannot reach its allowed name\n{}",
        up.log()
    );
    let cluster_ip = up.json(&["get", "service", "hello"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    for target in [
        "hello-headless.default.svc.cluster.local:8080/out".to_string(),
        format!("{cluster_ip}/out"),
        "hello/out".to_string(),
    ] {
        let (status, body) = get(fenced, &format!("/fetch/{target}")).unwrap();
        assert_eq!(status, 502, "{target}: {body}");
        assert!(body.to_lowercase().contains("denied"), "{target}: {body}");
    }

    // The short name through the pod's search path (default.svc.cluster.local).
    let (status, body) = get(client, "/fetch/hello/short").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("/short"), "{body}");
    // With the port, and through svc.cluster.local.
    let (status, body) = get(client, "/fetch/hello.default:80/ns").unwrap();
    assert_eq!((status, body.contains("/ns")), (200, true), "{body}");

    // A destination on the node itself sees the pod's address as the peer: the
    // runtime connects from it (a listener of this test on the host's loopback).
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = host.local_addr().unwrap().port();
    let peer = std::thread::spawn(move || {
        let (mut s, peer) = host.accept().unwrap();
        let mut buf = [0u8; 2048];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        peer.ip()
    });
    let (status, body) = get(client, &format!("/fetch/127.0.0.1:{host_port}/who")).unwrap();
    assert!(status == 200 && body.contains("ok"), "{status} {body}");
    assert_eq!(
        peer.join().unwrap(),
        client.ip(),
        "the peer of a pod's request"
    );

    // A name the cluster does not have: a DNS error, not a hang or a system lookup.
    let (status, body) = get(client, "/fetch/nope.default.svc.cluster.local/").unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("DnsError") && body.contains("nope.default.svc.cluster.local: no such host"),
        "{body}"
    );

    // The DNS server itself.
    let dns = up.dns_addr();
    eprintln!("cluster DNS of the node: {dns}");
    let svc = up.json(&["get", "service", "hello"]);
    let cluster_ip: IpAddr = svc["spec"]["clusterIP"].as_str().unwrap().parse().unwrap();
    for m in [
        ask_udp(dns, "hello.default.svc.cluster.local.", RecordType::A),
        ask_tcp(dns, "hello.default.svc.cluster.local.", RecordType::A),
    ] {
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addresses(&m), vec![cluster_ip]);
    }
    let m = ask_udp(dns, "nope.default.svc.cluster.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = ask_udp(
        dns,
        "_http._tcp.hello.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert!(
        m.answers
            .iter()
            .any(|r| matches!(&r.data, RData::SRV(s) if s.port == 80)),
        "{m:?}"
    );

    // Headless: the ready replicas' addresses.
    let pods = up.json(&["get", "pods", "-l", "app=hello"]);
    let mut pod_ips: Vec<IpAddr> = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["status"]["podIP"].as_str()?.parse().ok())
        .collect();
    pod_ips.sort();
    let mut got = vec![];
    let ok = wait_until(DEADLINE, || {
        got = addresses(&ask_udp(
            dns,
            "hello-headless.default.svc.cluster.local.",
            RecordType::A,
        ));
        got == pod_ips
    });
    assert!(ok, "headless answer {got:?}, pods {pod_ips:?}");

    // Reverse lookups: a ClusterIP names its Service, a ready endpoint's address the
    // endpoint under each Service selecting it (the dashed address, no hostname).
    let ptrs = |ip: IpAddr| -> Vec<String> {
        let mut v: Vec<String> = ask_udp(dns, &reverse_name(ip), RecordType::PTR)
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::PTR(p) => Some(p.0.to_string()),
                _ => None,
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(ptrs(cluster_ip), vec!["hello.default.svc.cluster.local."]);
    let pod = pod_ips[0];
    let dashed = pod.to_string().replace('.', "-");
    assert_eq!(
        ptrs(pod),
        vec![
            format!("{dashed}.hello-headless.default.svc.cluster.local."),
            format!("{dashed}.hello.default.svc.cluster.local."),
        ]
    );
}

/// `D.C.B.A.in-addr.arpa.` for an IPv4 address.
fn reverse_name(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        panic!("IPv4 pods only here: {ip}")
    };
    let [a, b, c, d] = v4.octets();
    format!("{d}.{c}.{b}.{a}.in-addr.arpa.")
}
