//! The cloud-controller-manager with the `fleet` provider, end to end: real `kelp
//! server`/`kelp up`/`kelp agent` processes, real kubectl, an inventory file and an
//! address pool on this machine.
//!
//! * Nodes: an agent started with `--cloud-provider external` registers with the
//!   uninitialized taint and is initialized from the inventory once listed there
//!   (the file is re-read on change); when it stops and its instance is marked shut
//!   down it gets the shutdown taint; a broken inventory is an Event, never a
//!   deletion; once its instance leaves the inventory the Node is deleted.
//! * Load balancers: a LoadBalancer Service gets the pool's address and the node's
//!   proxy serves it (checked by response content: the machine's egress proxy
//!   answers any TCP connect to a non-local address); with the pool exhausted a
//!   second Service gets `SyncLoadBalancerFailed` Events, retried with back-off;
//!   deleting the first frees the address for the second; after a restart the
//!   allocations are read back, so a new Service does not take a held address.
//! * Routes: the node's pod CIDR route is recorded and `NetworkUnavailable=False`.

#[path = "common/agent.rs"]
mod agent;
mod common;
#[path = "../runtime-wasm/tests/support/registry.rs"]
mod registry;
#[path = "common/up.rs"]
mod up;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{kelp, wait_until, Backend, Cluster, Options};
use serde_json::Value;
use up::http_get as get;

const DEADLINE: Duration = Duration::from_secs(60);

/// A cloud-config and inventory in `dir`; returns the cloud-config path.
fn write_cloud_config(dir: &Path, pool: &[&str]) -> PathBuf {
    let cfg = dir.join("cloud.yaml");
    std::fs::write(
        &cfg,
        format!(
            "inventory: inventory.yaml\nloadBalancer:\n  addresses: {}\n",
            serde_json::to_string(pool).unwrap()
        ),
    )
    .unwrap();
    cfg
}

fn write_inventory(dir: &Path, text: &str) {
    // Write-then-rename: the provider never reads a half-written file.
    let tmp = dir.join("inventory.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("inventory.yaml")).unwrap();
}

fn taint_keys(node: &Value) -> Vec<String> {
    node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["key"].as_str().map(str::to_string))
        .collect()
}

fn get_json(c: &Cluster, args: &[&str]) -> Option<Value> {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    let r = c.kubectl(&a);
    r.ok().then(|| serde_json::from_str(&r.stdout).unwrap())
}

/// `(reason, message)` of the events about the object named `name`.
fn events_of(kubectl: impl Fn(&[&str]) -> Option<String>, name: &str) -> Vec<(String, String)> {
    let sel = format!("involvedObject.name={name}");
    let Some(out) = kubectl(&["get", "events", "--field-selector", &sel, "-o", "json"]) else {
        return vec![];
    };
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or("").to_string(),
                e["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

const UNINITIALIZED: &str = "node.cloudprovider.kubernetes.io/uninitialized";
const SHUTDOWN: &str = "node.cloudprovider.kubernetes.io/shutdown";

#[test]
fn fleet_nodes_are_initialized_from_the_inventory_and_deleted_when_gone() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_cloud_config(dir.path(), &["198.18.250.1"]);
    write_inventory(dir.path(), "instances: []\n");
    let args: &'static [&'static str] = Vec::leak(vec![
        "--cloud-provider",
        "fleet",
        "--cloud-config",
        String::leak(cfg.display().to_string()),
        "--node-monitor-grace-period",
        "4s",
        "--node-monitor-period",
        "1s",
    ]);
    let c = Cluster::start_with(
        Backend::Sqlite,
        Options {
            extra_args: args,
            ..Default::default()
        },
    );
    let node_agent = agent::Agent::start_with(&c, &["--cloud-provider", "external"]);
    let name = node_agent.name.clone();

    // Registered with the taint; not in the inventory yet, so it stays.
    let node = get_json(&c, &["get", "node", &name]).unwrap();
    assert!(
        taint_keys(&node).contains(&UNINITIALIZED.to_string()),
        "registered without the uninitialized taint: {}",
        node["spec"]
    );
    let internal_ip = node["status"]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["type"] == "InternalIP")
        .unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string();

    // Listed in the inventory: initialized (the file is re-read on change).
    let listed = format!(
        "instances:\n- name: {name}\n  addresses:\n  - {{type: InternalIP, address: {internal_ip}}}\n  - {{type: ExternalIP, address: 203.0.113.7}}\n  zone: rack-a\n  region: site-1\n  type: rpi4-8g\n"
    );
    write_inventory(dir.path(), &listed);
    let mut last = Value::Null;
    let ok = wait_until(DEADLINE, || {
        last = get_json(&c, &["get", "node", &name]).unwrap_or(Value::Null);
        !taint_keys(&last).contains(&UNINITIALIZED.to_string())
    });
    assert!(
        ok,
        "the node was never initialized: {last}\n--- server ---\n{}",
        c.log_tail()
    );
    let labels = &last["metadata"]["labels"];
    let mut checks = common::Checks::default();
    checks.eq(
        "providerID",
        last["spec"]["providerID"].as_str(),
        Some(format!("fleet://{name}").as_str()),
    );
    checks.eq(
        "zone",
        labels["topology.kubernetes.io/zone"].as_str(),
        Some("rack-a"),
    );
    checks.eq(
        "region",
        labels["topology.kubernetes.io/region"].as_str(),
        Some("site-1"),
    );
    checks.eq(
        "instance type",
        labels["node.kubernetes.io/instance-type"].as_str(),
        Some("rpi4-8g"),
    );
    checks.that(
        &format!(
            "the inventory's ExternalIP is on the node: {}",
            last["status"]["addresses"]
        ),
        last["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["type"] == "ExternalIP" && a["address"] == "203.0.113.7"),
    );
    checks.finish(&c.log_tail());

    // The instance is shut down and the agent stops: NotReady, then the shutdown taint.
    write_inventory(dir.path(), &format!("{listed}  shutdown: true\n"));
    drop(node_agent);
    let ok = wait_until(DEADLINE, || {
        last = get_json(&c, &["get", "node", &name]).unwrap_or(Value::Null);
        taint_keys(&last).contains(&SHUTDOWN.to_string())
    });
    assert!(ok, "no shutdown taint: {}\n{}", last["spec"], c.log_tail());

    // A broken inventory: an Event, and the NotReady node is not deleted for it.
    write_inventory(dir.path(), "instances: [\n");
    let kubectl = |a: &[&str]| {
        let r = c.kubectl(a);
        r.ok().then_some(r.stdout)
    };
    let ok = wait_until(DEADLINE, || {
        events_of(kubectl, &name)
            .iter()
            .any(|(r, m)| r == "CloudProviderLookupFailed" && m.contains("inventory.yaml"))
    });
    assert!(
        ok,
        "no event for the broken inventory: {:?}",
        events_of(kubectl, &name)
    );
    assert!(
        get_json(&c, &["get", "node", &name]).is_some(),
        "a broken inventory deleted the node"
    );

    // Gone from the inventory: the Node goes.
    write_inventory(dir.path(), "instances: []\n");
    let ok = wait_until(DEADLINE, || get_json(&c, &["get", "node", &name]).is_none());
    assert!(
        ok,
        "the node of a removed instance stayed\n{}",
        c.log_tail()
    );
    assert!(
        events_of(kubectl, &name)
            .iter()
            .any(|(r, _)| r == "DeletingNode"),
        "{:?}",
        events_of(kubectl, &name)
    );
}

/// `kelp up` as root with its own pod interface and the fleet provider; killed by pid
/// and the interface deleted on drop.
struct Up {
    dir: tempfile::TempDir,
    child: Option<Child>,
    node: String,
    iface: String,
    port: u16,
}

impl Up {
    fn start(dir: tempfile::TempDir) -> Up {
        let mut up = Up {
            iface: format!("kelpc{}", std::process::id() % 100_000),
            node: format!("cloud-node-{}", std::process::id()),
            port: std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port(),
            dir,
            child: None,
        };
        up.spawn();
        up
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("up.log"))
            .unwrap();
        let child = kelp()
            .arg("up")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--https-port", &self.port.to_string()])
            .args(["--node-name", &self.node, "--pod-interface", &self.iface])
            .args(["--kubelet-port", "0", "--cloud-provider", "fleet"])
            // A pod range of its own: other `kelp up`s on this machine (the services
            // tests) use 10.42.0.0/16, and two interfaces holding one pod address
            // lose its local route when either releases it.
            .args([
                "--cluster-cidr",
                &format!("10.{}.0.0/16", 250 + std::process::id() % 6),
            ])
            .arg("--cloud-config")
            .arg(self.dir.path().join("cloud.yaml"))
            .env("KELP_LOG", "info,kelp_node_agent::proxy=debug")
            .env_remove("KELP_DATA_DIR")
            .env_remove("KELP_POD_INTERFACE")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn kelp up");
        self.child = Some(child);
        let ok = wait_until(DEADLINE, || {
            self.kubeconfig().exists()
                && self
                    .json(&["get", "node", &self.node])
                    .is_some_and(|n| common::is_ready(&n))
        });
        assert!(ok, "kelp up's node never became Ready:\n{}", self.log());
    }

    /// SIGTERM, wait for the exit, start again on the same data dir.
    fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let exited = wait_until(Duration::from_secs(20), || {
                child.try_wait().ok().flatten().is_some()
            });
            if !exited {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        self.spawn();
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("data/kubeconfig")
    }

    fn log(&self) -> String {
        let s = std::fs::read_to_string(self.dir.path().join("up.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    }

    fn kubectl_in(&self, args: &[&str], input: Option<&str>) -> Result<String, String> {
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("KUBECONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        if let Some(i) = input {
            child.stdin.take().unwrap().write_all(i.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn kubectl(&self, args: &[&str]) -> Option<String> {
        self.kubectl_in(args, None).ok()
    }

    fn apply(&self, yaml: &str) {
        if let Err(e) = self.kubectl_in(&["apply", "-f", "-"], Some(yaml)) {
            panic!("kubectl apply failed: {e}\n{yaml}");
        }
    }

    fn json(&self, args: &[&str]) -> Option<Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&a)?).ok()
    }

    fn ingress_ip(&self, svc: &str) -> Option<String> {
        self.json(&["get", "service", svc])?["status"]["loadBalancer"]["ingress"][0]["ip"]
            .as_str()
            .map(str::to_string)
    }

    fn wait_ingress(&self, svc: &str, want: &str) {
        let ok = wait_until(DEADLINE, || self.ingress_ip(svc).as_deref() == Some(want));
        assert!(
            ok,
            "service {svc} never got {want} (has {:?}); events {:?}\n{}",
            self.ingress_ip(svc),
            events_of(|a| self.kubectl(a), svc),
            self.log()
        );
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.iface])
            .stderr(Stdio::null())
            .status();
        if std::thread::panicking() {
            eprintln!("--- kelp up log ---\n{}", self.log());
            if std::env::var_os("KELP_TEST_KEEP").is_some() {
                let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()).keep();
                eprintln!("kept {}", kept.display());
            }
        }
    }
}

/// Whether a GET through `ip:80` is answered by one of the `hello` pods (by content:
/// the pod's name header and the path echoed back).
fn served_by_hello(ip: &str, path: &str) -> bool {
    let addr = SocketAddr::new(ip.parse::<IpAddr>().unwrap(), 80);
    get(addr, path).is_ok_and(|(status, pod, body)| {
        status == 200 && pod.starts_with("hello-") && body.contains(path)
    })
}

fn lb_service(name: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  type: LoadBalancer
  selector: {{app: hello}}
  ports: [{{port: 80, targetPort: 8080}}]
"#
    )
}

#[test]
fn load_balancer_services_get_pool_addresses_that_the_proxy_serves() {
    let reg = registry::Registry::start();
    let image = format!("{}/kelp/http-hello:v1", reg.addr);
    let out = kelp()
        .arg("push")
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples/wasm/target/wasm32-wasip2/release/http_hello.wasm"),
        )
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kelp push: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A test-only range (198.18.0.0/15, benchmarking) of this process; one address.
    let third = std::process::id() % 250;
    let first = format!("198.18.{third}.10");
    let second = format!("198.18.{third}.11");
    let dir = tempfile::tempdir().unwrap();
    write_cloud_config(dir.path(), &[first.as_str()]);
    let node = format!("cloud-node-{}", std::process::id());
    // The node is in the inventory (its next hop for the route controller).
    write_inventory(
        dir.path(),
        &format!("instances:\n- name: {node}\n  addresses: [127.0.0.1]\n"),
    );
    let mut up = Up::start(dir);
    assert_eq!(up.node, node);

    up.apply(&format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: hello}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: hello}}}}
  template:
    metadata: {{labels: {{app: hello}}}}
    spec:
      containers:
      - name: web
        image: {image}
        ports: [{{containerPort: 8080}}]
---
{}"#,
        lb_service("web-a")
    ));
    up.wait_ingress("web-a", &first);
    let svc = up.json(&["get", "service", "web-a"]).unwrap();
    assert!(
        svc["metadata"]["finalizers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|f| f == "service.kubernetes.io/load-balancer-cleanup"),
        "no cleanup finalizer: {}",
        svc["metadata"]
    );
    let ok = wait_until(DEADLINE, || served_by_hello(&first, "/via-lb-a"));
    assert!(ok, "{first}:80 never reached a hello pod\n{}", up.log());

    // The pool is exhausted: the second Service waits, with Events, retried.
    up.apply(&lb_service("web-b"));
    let failures = || {
        events_of(|a| up.kubectl(a), "web-b")
            .into_iter()
            .filter(|(r, m)| r == "SyncLoadBalancerFailed" && m.contains("no address left"))
            .count()
    };
    let ok = wait_until(DEADLINE, || failures() >= 2);
    assert!(
        ok,
        "no repeated SyncLoadBalancerFailed for web-b: {:?}",
        events_of(|a| up.kubectl(a), "web-b")
    );
    assert_eq!(up.ingress_ip("web-b"), None);

    // Deleting web-a (through its finalizer) frees the address; web-b gets it.
    up.kubectl_in(&["delete", "service", "web-a", "--timeout=60s"], None)
        .unwrap_or_else(|e| panic!("delete web-a: {e}\n{}", up.log()));
    up.wait_ingress("web-b", &first);
    let ok = wait_until(DEADLINE, || served_by_hello(&first, "/via-lb-b"));
    assert!(
        ok,
        "{first}:80 never reached a hello pod for web-b\n{}",
        up.log()
    );

    // The route controller recorded the node's pod CIDR route.
    let ok = wait_until(DEADLINE, || {
        up.json(&["get", "node", &node]).is_some_and(|n| {
            n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| {
                    c["type"] == "NetworkUnavailable"
                        && c["status"] == "False"
                        && c["reason"] == "RouteCreated"
                })
        })
    });
    assert!(ok, "no NetworkUnavailable=False/RouteCreated on {node}");

    // A restart with a bigger pool: the held address is read back from web-b's
    // status, so a new Service gets the other one.
    write_cloud_config(up.dir.path(), &[first.as_str(), second.as_str()]);
    up.restart();
    up.apply(&lb_service("web-c"));
    up.wait_ingress("web-c", &second);
    assert_eq!(up.ingress_ip("web-b").as_deref(), Some(first.as_str()));
    // Not checked here: traffic through web-c after the restart. It needs web-c's
    // EndpointSlice, which the endpointslice controller sometimes never creates for
    // a Service made while no controller-manager led (seen under load; the legacy
    // Endpoints object is created) — a controller issue outside this test's subject.
}

/// `kelp cloud-controller-manager` as its own process (the upstream shape) next to a
/// `kelp server` that runs no provider: it takes the `cloud-controller-manager`
/// Lease and serves LoadBalancer Services; an unknown provider or a missing
/// cloud-config fails the command at start.
#[test]
fn the_cloud_controller_manager_runs_alone_leader_elected() {
    let bad = kelp()
        .args(["cloud-controller-manager", "--kubeconfig", "/nonexistent"])
        .args(["--cloud-provider", "nimbus"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("unknown --cloud-provider \"nimbus\""), "{err}");
    let missing = kelp()
        .args(["cloud-controller-manager", "--kubeconfig", "/nonexistent"])
        .args([
            "--cloud-provider",
            "fleet",
            "--cloud-config",
            "/nonexistent/cloud.yaml",
        ])
        .output()
        .unwrap();
    assert!(!missing.status.success());

    let c = Cluster::start(Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_cloud_config(dir.path(), &["198.18.251.0/30"]);
    write_inventory(dir.path(), "instances: []\n");
    let log = std::fs::File::create(dir.path().join("ccm.log")).unwrap();
    let mut ccm = kelp()
        .arg("cloud-controller-manager")
        .arg("--kubeconfig")
        .arg(c.kubeconfig())
        .args(["--cloud-provider", "fleet", "--cloud-config"])
        .arg(&cfg)
        .env("KELP_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let ccm_log = || std::fs::read_to_string(dir.path().join("ccm.log")).unwrap_or_default();
    c.kubectl_stdin_ok(&["apply", "-f", "-"], &lb_service("alone"));
    let ok = wait_until(DEADLINE, || {
        get_json(&c, &["get", "service", "alone"]).is_some_and(|s| {
            // /30 without network and broadcast: .1 is the first address.
            s["status"]["loadBalancer"]["ingress"][0]["ip"] == "198.18.251.1"
        })
    });
    let lease = get_json(
        &c,
        &[
            "get",
            "lease",
            "-n",
            "kube-system",
            "cloud-controller-manager",
        ],
    );
    let _ = ccm.kill();
    let _ = ccm.wait();
    assert!(ok, "no address from the standalone manager:\n{}", ccm_log());
    let holder = lease.expect("the cloud-controller-manager Lease")["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!holder.is_empty(), "nobody holds the Lease");
}
