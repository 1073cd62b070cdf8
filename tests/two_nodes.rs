//! Issue 6's cross-node done-when: two nodes in their own network namespaces, joined
//! by a veth pair (one layer-2 link, as host-gw routing needs), each running a real
//! `kelp agent`; the control plane (`kelp server`) runs in namespace A.
//!
//! * each agent installs a route to the other node's pod range via its InternalIP;
//! * a pod on node B is reached from namespace A by its pod IP, by a plain HTTP client
//!   and by a Wasm pod on node A (http-hello's `/fetch/` route);
//! * a Service whose only endpoint is on node B is reached through node A's proxy;
//! * kill -9 of node B's agent takes B's endpoint out of the EndpointSlice's ready set
//!   (node lifecycle: NotReady node → pods not Ready → endpoints not ready);
//! * deleting node B's Node removes node A's route to B's pods.
//!
//! Needs root (network namespaces); fails with a clear message otherwise. Namespaces,
//! veths and processes are removed in Drop, also when an assertion fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::wait_until;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(90);
const PORT: u16 = 6443;

fn http_hello() -> PathBuf {
    example("http_hello")
}

fn example(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "examples/wasm/target/wasm32-wasip2/release/{name}.wasm"
    ));
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-wasm-examples.sh",
        p.display()
    );
    p
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn ip(args: &[&str]) -> Output {
    run(Command::new("ip").args(args))
}

fn ip_ok(args: &[&str]) {
    let o = ip(args);
    assert!(
        o.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A process started in a namespace (`ip netns exec` execs it: the pid is kelp's).
struct Proc {
    child: Option<Child>,
    log: PathBuf,
    /// An agent's Wasm runtime process, stopped after the agent.
    runtime: Option<common::NodeRuntime>,
}

impl Proc {
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.runtime = None;
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(st))) => Some(format!("{st}:\n{}", tail(&self.log, 40))),
            _ => None,
        }
    }
}

/// Two namespaces joined by a veth pair, and what runs in them.
struct World {
    dir: tempfile::TempDir,
    ns: [String; 2],
    addr: [String; 2],
    /// Stopped (SIGKILL by pid) before the namespaces go.
    procs: Vec<Proc>,
}

impl Drop for World {
    fn drop(&mut self) {
        for p in &mut self.procs {
            p.kill();
        }
        // Deleting a namespace deletes its end of the veth, and with it the pair.
        for ns in &self.ns {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

impl World {
    fn new() -> World {
        // Worlds of one test process (its tests run in parallel) differ by a counter.
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10;
        let pid = std::process::id();
        let x = (pid % 250) as u8 + 1;
        let ns = [format!("kelp2n-{pid}-{n}a"), format!("kelp2n-{pid}-{n}b")];
        let veth = [format!("k2n{pid}{n}a"), format!("k2n{pid}{n}b")];
        let addr = [format!("10.77.{x}.1"), format!("10.77.{x}.2")];
        let dir = tempfile::Builder::new()
            .prefix("kelp-two-nodes-")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        let first = ip(&["netns", "add", &ns[0]]);
        assert!(
            first.status.success(),
            "cannot create network namespace {} (this test needs root, as in CI): {}",
            ns[0],
            String::from_utf8_lossy(&first.stderr)
        );
        // From here on Drop cleans up whatever was made.
        let w = World {
            dir,
            ns: ns.clone(),
            addr: addr.clone(),
            procs: vec![],
        };
        ip_ok(&["netns", "add", &ns[1]]);
        ip_ok(&[
            "link", "add", &veth[0], "netns", &ns[0], "type", "veth", "peer", "name", &veth[1],
            "netns", &ns[1],
        ]);
        for ((ns, veth), addr) in ns.iter().zip(&veth).zip(&addr) {
            ip_ok(&["-n", ns, "link", "set", "lo", "up"]);
            let cidr = format!("{addr}/24");
            ip_ok(&["-n", ns, "addr", "add", &cidr, "dev", veth]);
            ip_ok(&["-n", ns, "link", "set", veth, "up"]);
        }
        w
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn url(&self) -> String {
        format!("https://{}:{PORT}", self.addr[0])
    }

    fn kubeconfig(&self) -> PathBuf {
        self.path().join("server/kubeconfig")
    }

    /// `ip netns exec NS kelp ARGS`, logging to `log`.
    fn spawn(&mut self, ns: usize, args: &[&str], log: &str) -> usize {
        let log = self.path().join(log);
        let out = std::fs::File::create(&log).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns[ns]])
            .arg(env!("CARGO_BIN_EXE_kelp"))
            .args(args)
            .env("KELP_LOG", "info,kelp_node_agent=debug")
            .env_remove("KELP_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn kelp");
        self.procs.push(Proc {
            child: Some(child),
            log,
            runtime: None,
        });
        self.procs.len() - 1
    }

    /// A command run inside namespace A (where the API server is).
    fn in_a(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns[0], program])
            .env("HOME", self.path().join("home"))
            .env_remove("KUBECONFIG");
        c
    }

    fn kubectl_full(&self, args: &[&str], input: Option<&str>) -> Output {
        let mut c = self.in_a("kubectl");
        c.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--request-timeout=20s")
            .args(args);
        match input {
            None => run(&mut c),
            Some(text) => {
                use std::io::Write;
                let mut child = c
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("kubectl");
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(text.as_bytes())
                    .unwrap();
                child.wait_with_output().expect("kubectl")
            }
        }
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        let o = self.kubectl_full(args, None);
        assert!(
            o.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Option<Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let o = self.kubectl_full(&a, None);
        o.status
            .success()
            .then(|| serde_json::from_slice(&o.stdout).ok())
            .flatten()
    }

    /// An HTTP GET from inside namespace A: (success, body).
    fn curl(&self, url: &str) -> (bool, String) {
        let o = run(self.in_a("curl").args(["-sS", "-m", "5", url]));
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    }

    /// A namespace's routes installed by Kelp (`proto 77`).
    fn kelp_routes(&self, ns: usize) -> String {
        let o = ip(&["-n", &self.ns[ns], "route", "show", "proto", "77"]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn logs(&self) -> String {
        self.procs
            .iter()
            .map(|p| format!("--- {} ---\n{}", p.log.display(), tail(&p.log, 30)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn node_ready(node: &Value) -> Option<String> {
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["status"].as_str())
        .map(str::to_string)
}

/// `kelp server` in namespace A with a short node-monitor grace (as tests/multinode)
/// and `extra` flags; waits until it serves.
fn start_server(w: &mut World, extra: &[&str]) {
    let server_dir = w.path().join("server");
    let (url, addr_a, port) = (w.url(), w.addr[0].clone(), PORT.to_string());
    let mut args = vec![
        "server",
        "--data-dir",
        server_dir.to_str().unwrap(),
        "--https-port",
        &port,
        "--bind-address",
        &addr_a,
        "--tls-san",
        &addr_a,
        "--node-monitor-grace-period",
        "15s",
        "--node-monitor-period",
        "1s",
    ];
    args.extend_from_slice(extra);
    let server = w.spawn(0, &args, "server.log");
    let up = wait_until(DEADLINE, || {
        if let Some(e) = w.procs[server].exited() {
            panic!("kelp server exited: {e}");
        }
        w.kubeconfig().exists()
            && w.kubectl_full(&["get", "--raw", "/readyz"], None)
                .status
                .success()
    });
    assert!(up, "kelp server not ready at {url}:\n{}", w.logs());
}

/// One agent per namespace (with `extra` flags), the image imported into each data
/// dir (the test registry listens on the root namespace's loopback, unreachable from
/// here). Returns their indexes in `w.procs`.
fn start_agents(w: &mut World, nodes: &[String; 2], extra: &[&str]) -> Vec<usize> {
    let server_dir = w.path().join("server");
    let url = w.url();
    let mut agents = vec![];
    for (i, node) in nodes.iter().enumerate() {
        let data = w.path().join(node);
        for (module, image) in [(http_hello(), IMAGE), (example("hello"), HELLO)] {
            let o = run(Command::new(env!("CARGO_BIN_EXE_kelp"))
                .args(["image", "import"])
                .arg(module)
                .args(["--name", image, "--data-dir"])
                .arg(&data));
            assert!(
                o.status.success(),
                "kelp image import: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let (node_ip, token, ca) = (
            w.addr[i].clone(),
            server_dir.join("node-token"),
            server_dir.join("tls/ca.crt"),
        );
        let mut args = vec![
            "agent",
            "--server",
            &url,
            "--token-file",
            token.to_str().unwrap(),
            "--ca-file",
            ca.to_str().unwrap(),
            "--node-name",
            node,
            "--node-ip",
            &node_ip,
            "--data-dir",
            data.to_str().unwrap(),
            "--pod-interface",
            "kelp0",
            "--kubelet-port",
            "0",
        ];
        args.extend_from_slice(extra);
        let p = w.spawn(i, &args, &format!("{node}.log"));
        w.procs[p].runtime = Some(common::NodeRuntime(data.clone()));
        agents.push(p);
    }
    agents
}

/// Waits until both nodes are Ready with a pod CIDR; returns the CIDRs.
fn wait_nodes(w: &World, nodes: &[String; 2]) -> Vec<String> {
    let mut cidr = vec![];
    for n in nodes {
        let mut c = None;
        let ready = wait_until(DEADLINE, || {
            let Some(node) = w.json(&["get", "node", n]) else {
                return false;
            };
            c = node["spec"]["podCIDR"].as_str().map(str::to_string);
            node_ready(&node).as_deref() == Some("True") && c.is_some()
        });
        assert!(ready, "node {n} not Ready with a podCIDR:\n{}", w.logs());
        cidr.push(c.unwrap());
    }
    cidr
}

/// host-gw: each node routes the other's pod range via the other's veth address.
fn wait_host_gw_routes(w: &World, nodes: &[String; 2], cidr: &[String]) {
    for (i, j) in [(0, 1), (1, 0)] {
        let want = format!("{} via {}", cidr[j], w.addr[j]);
        let routed = wait_until(DEADLINE, || w.kelp_routes(i).contains(&want));
        assert!(
            routed,
            "node {} has no route `{want}`: {:?}\n{}",
            nodes[i],
            w.kelp_routes(i),
            w.logs()
        );
    }
}

const IMAGE: &str = "kelp.test/http-hello:v1";
/// The `hello` command component (wasi-sockets `--serve` and `--connect`).
const HELLO: &str = "kelp.test/hello:v1";

/// A `hello` pod run once on `node` with `args`.
fn hello_pod(name: &str, node: &str, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  \
         restartPolicy: Never\n  containers:\n  - name: hello\n    image: {HELLO}\n    \
         args: [{}]\n",
        args.join(", ")
    )
}

const APPS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web-b, labels: {app: web-b}}
spec:
  nodeName: NODE_B
  tolerations:
  - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 5}
  - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 5}
  containers:
  - name: web
    image: IMAGE
    env: [{name: WHO, value: web-b}]
    ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client-a, labels: {app: client-a}}
spec:
  nodeName: NODE_A
  containers:
  - name: web
    image: IMAGE
    ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-b}
spec:
  selector: {app: web-b}
  ports: [{name: http, port: 80, targetPort: 8080}]
"#;

#[test]
fn pods_and_services_reach_across_nodes_in_network_namespaces() {
    let mut w = World::new();
    let pid = std::process::id();
    let nodes = [format!("two-{pid}-a"), format!("two-{pid}-b")];

    // The control plane in namespace A, short node-monitor grace (as tests/multinode).
    start_server(&mut w, &[]);
    let agents = start_agents(&mut w, &nodes, &[]);
    let cidr = wait_nodes(&w, &nodes);
    wait_host_gw_routes(&w, &nodes, &cidr);

    let applied = w.kubectl_full(
        &["apply", "-f", "-"],
        Some(
            &APPS
                .replace("NODE_A", &nodes[0])
                .replace("NODE_B", &nodes[1])
                .replace("IMAGE", IMAGE),
        ),
    );
    assert!(
        applied.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let pod_ip = |name: &str| -> String {
        let mut found = String::new();
        let ok = wait_until(DEADLINE, || {
            let Some(p) = w.json(&["get", "pod", name]) else {
                return false;
            };
            let ready = common::is_ready(&p);
            found = p["status"]["podIP"].as_str().unwrap_or("").to_string();
            ready && !found.is_empty()
        });
        assert!(ok, "pod {name} not Ready with an IP:\n{}", w.logs());
        found
    };
    let web_b = pod_ip("web-b");
    let client_a = pod_ip("client-a");
    let in_range = |ip: &str, c: &str| {
        let ip: std::net::Ipv4Addr = ip.parse().unwrap();
        let (net, len) = c.split_once('/').unwrap();
        let net: std::net::Ipv4Addr = net.parse().unwrap();
        let mask = u32::MAX
            .checked_shl(32 - len.parse::<u32>().unwrap())
            .unwrap_or(0);
        u32::from(ip) & mask == u32::from(net) & mask
    };
    assert!(in_range(&web_b, &cidr[1]), "{web_b} not in {}", cidr[1]);
    assert!(
        in_range(&client_a, &cidr[0]),
        "{client_a} not in {}",
        cidr[0]
    );

    // Pod-to-pod across nodes: namespace A's host, then node A's Wasm pod.
    let direct = format!("http://{web_b}:8080/env/WHO");
    let mut last = (false, String::new());
    let ok = wait_until(DEADLINE, || {
        last = w.curl(&direct);
        last.0 && last.1 == "web-b\n"
    });
    assert!(ok, "GET {direct} from namespace A: {last:?}\n{}", w.logs());
    let via_pod = format!("http://{client_a}:8080/fetch/{web_b}:8080/env/WHO");
    let ok = wait_until(DEADLINE, || {
        last = w.curl(&via_pod);
        last.0 && last.1 == "web-b\n"
    });
    assert!(ok, "GET {via_pod}: {last:?}\n{}", w.logs());

    // wasi-sockets across nodes: a server on 0.0.0.0 in a pod on node B listens on
    // its pod's address; a pod on node A connects to it from its own address.
    let applied = w.kubectl_full(
        &["apply", "-f", "-"],
        Some(&hello_pod(
            "serve-b",
            &nodes[1],
            &["--serve", "0.0.0.0:9090"],
        )),
    );
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let mut serve_b = String::new();
    let bound = wait_until(DEADLINE, || {
        let Some(p) = w.json(&["get", "pod", "serve-b"]) else {
            return false;
        };
        serve_b = p["status"]["podIP"].as_str().unwrap_or("").to_string();
        let logs = w.kubectl_full(&["logs", "serve-b"], None);
        !serve_b.is_empty()
            && String::from_utf8_lossy(&logs.stdout).contains(&format!("bound {serve_b}:9090"))
    });
    assert!(
        bound,
        "serve-b ({serve_b}) not bound on its address:\n{}",
        w.logs()
    );
    let target = format!("{serve_b}:9090");
    let applied = w.kubectl_full(
        &["apply", "-f", "-"],
        Some(&hello_pod("connect-a", &nodes[0], &["--connect", &target])),
    );
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let (mut connect_a, mut said) = (String::new(), String::new());
    let connected = wait_until(DEADLINE, || {
        let Some(p) = w.json(&["get", "pod", "connect-a"]) else {
            return false;
        };
        connect_a = p["status"]["podIP"].as_str().unwrap_or("").to_string();
        said = String::from_utf8_lossy(&w.kubectl_full(&["logs", "connect-a"], None).stdout)
            .into_owned();
        p["status"]["phase"] == "Succeeded" && said.contains(&format!("connect {target}"))
    });
    assert!(connected, "connect-a ({connect_a}): {said}\n{}", w.logs());
    assert!(
        said.contains(&format!("connect {target}: from {connect_a}:")),
        "connect-a ({connect_a}) did not connect from its pod address: {said}"
    );
    let answered = wait_until(DEADLINE, || {
        String::from_utf8_lossy(&w.kubectl_full(&["logs", "serve-b"], None).stdout)
            .contains(&format!("answered {connect_a}:"))
    });
    assert!(
        answered,
        "serve-b did not see connect-a's address:\n{}",
        w.logs()
    );

    // The Service: its only endpoint is on node B; node A's proxy forwards to it.
    let cluster_ip = w.kubectl_ok(&["get", "svc", "web-b", "-o", "jsonpath={.spec.clusterIP}"]);
    let svc = format!("http://{cluster_ip}:80/env/WHO");
    let ok = wait_until(DEADLINE, || {
        last = w.curl(&svc);
        last.0 && last.1 == "web-b\n"
    });
    assert!(
        ok,
        "GET {svc} (ClusterIP, from namespace A): {last:?}\n{}",
        w.logs()
    );

    // kill -9 node B's agent: its Lease stops, the node goes Unknown after the grace
    // period, its pods are marked not Ready, and the EndpointSlice stops offering
    // the endpoint (ready=false; after the toleration the pod is evicted and the
    // endpoint is terminating, which is not ready either).
    let ready_b = |w: &World| -> Vec<String> {
        let Some(slices) = w.json(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web-b",
        ]) else {
            return vec!["<no answer>".into()];
        };
        slices["items"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["nodeName"] == nodes[1].as_str() && e["conditions"]["ready"] != false)
            .map(|e| e.to_string())
            .collect()
    };
    // Not vacuous: the endpoint was listed ready on node B before the kill.
    let listed = wait_until(DEADLINE, || !ready_b(&w).is_empty());
    assert!(
        listed,
        "no ready endpoint on node B in the EndpointSlice:\n{}",
        w.logs()
    );
    w.procs[agents[1]].kill();
    let killed = std::time::Instant::now();
    let gone = wait_until(DEADLINE, || ready_b(&w).is_empty());
    assert!(
        gone,
        "node B's endpoint still ready after its agent was killed: {:?}\n{}",
        ready_b(&w),
        w.logs()
    );
    let node_b = w.json(&["get", "node", &nodes[1]]).expect("node B");
    let status = node_ready(&node_b);
    assert!(
        matches!(status.as_deref(), Some("Unknown" | "False")),
        "node B's Ready is {status:?} after its agent was killed"
    );
    eprintln!(
        "node B's endpoint left the ready set {:?} after the kill",
        killed.elapsed()
    );

    // The Node is deleted for good: node A drops its route to B's pods.
    w.kubectl_ok(&["delete", "node", &nodes[1], "--wait=false"]);
    let unrouted = wait_until(DEADLINE, || !w.kelp_routes(0).contains(&cidr[1]));
    assert!(
        unrouted,
        "node A still routes {} after node B was deleted: {}",
        cidr[1],
        w.kelp_routes(0)
    );
}

/// The cloud-controller-manager (fleet provider, in `kelp server`) over the two
/// namespaced nodes: agents started with `--cloud-provider external` are initialized
/// from the inventory (zone labels differ per node); the route controller records
/// both pod CIDR routes (`NetworkUnavailable=False`) while the agents keep the
/// kernel routes; a LoadBalancer Service whose only endpoint is on node B is reached
/// on its pool address from namespace A, through node A's proxy.
#[test]
fn fleet_nodes_routes_and_a_load_balancer_across_two_namespaced_nodes() {
    let mut w = World::new();
    let pid = std::process::id();
    let nodes = [format!("fleet-{pid}-a"), format!("fleet-{pid}-b")];
    // Inside the namespaces any address is private to the test.
    let pool_ip = "198.19.0.10";
    let cfg = w.path().join("cloud.yaml");
    std::fs::write(
        &cfg,
        format!("inventory: inventory.yaml\nloadBalancer:\n  addresses: [\"{pool_ip}\"]\n"),
    )
    .unwrap();
    let inventory: String = nodes
        .iter()
        .zip(&w.addr)
        .zip(["zone-a", "zone-b"])
        .map(|((n, a), z)| {
            format!("- name: {n}\n  addresses: [{a}]\n  zone: {z}\n  region: lab\n  type: netns\n")
        })
        .collect();
    std::fs::write(
        w.path().join("inventory.yaml"),
        format!("instances:\n{inventory}"),
    )
    .unwrap();
    let cfg_arg = cfg.to_str().unwrap().to_string();
    start_server(
        &mut w,
        &["--cloud-provider", "fleet", "--cloud-config", &cfg_arg],
    );
    start_agents(&mut w, &nodes, &["--cloud-provider", "external"]);
    let cidr = wait_nodes(&w, &nodes);

    for (n, zone) in nodes.iter().zip(["zone-a", "zone-b"]) {
        let mut last = Value::Null;
        let ok = wait_until(DEADLINE, || {
            last = w.json(&["get", "node", n]).unwrap_or(Value::Null);
            let untainted = !last["spec"]["taints"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| t["key"] == "node.cloudprovider.kubernetes.io/uninitialized");
            let routed = last["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "NetworkUnavailable" && c["status"] == "False");
            untainted
                && routed
                && last["metadata"]["labels"]["topology.kubernetes.io/zone"] == zone
                && last["spec"]["providerID"] == format!("fleet://{n}").as_str()
        });
        assert!(
            ok,
            "node {n} not initialized and routed: {}\n{}",
            serde_json::to_string_pretty(&last).unwrap(),
            w.logs()
        );
    }
    wait_host_gw_routes(&w, &nodes, &cidr);

    let applied = w.kubectl_full(
        &["apply", "-f", "-"],
        Some(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: web-b, labels: {{app: web-b}}}}
spec:
  nodeName: {}
  containers:
  - name: web
    image: {IMAGE}
    env: [{{name: WHO, value: web-b}}]
    ports: [{{containerPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-b-lb}}
spec:
  type: LoadBalancer
  selector: {{app: web-b}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
"#,
            nodes[1]
        )),
    );
    assert!(
        applied.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let ingress = || {
        w.kubectl_ok(&[
            "get",
            "svc",
            "web-b-lb",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[0].ip}",
        ])
    };
    let ok = wait_until(DEADLINE, || ingress() == pool_ip);
    assert!(
        ok,
        "web-b-lb has {:?}, not {pool_ip}:\n{}",
        ingress(),
        w.logs()
    );
    let url = format!("http://{pool_ip}:80/env/WHO");
    let mut last = (false, String::new());
    let ok = wait_until(DEADLINE, || {
        last = w.curl(&url);
        last.0 && last.1 == "web-b\n"
    });
    assert!(ok, "GET {url} from namespace A: {last:?}\n{}", w.logs());
}
