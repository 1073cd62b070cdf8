//! The scheduler end to end: `kelp up` (control plane, in-process scheduler and a
//! node) plus a second node from `kelp agent`, a real registry and real kubectl. Pods
//! name no node; the scheduler places them. And two `kelp scheduler` processes with
//! leader election: only the Lease holder binds.

mod common;
#[path = "../runtime-wasm/tests/support/registry.rs"]
mod registry;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{kelp, wait_until, Backend, Checks, Cluster, Link, NodeRuntime, Options};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(60);
/// The node `kelp up` runs in-process.
const UP_NODE: &str = "up-node";

fn push_counter(reg: &registry::Registry) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/wasm/target/wasm32-wasip1/release/counter.wasm");
    assert!(
        file.exists(),
        "{} is missing: run scripts/build-wasm-examples.sh",
        file.display()
    );
    let reference = format!("{}/kelp/counter:v1", reg.addr);
    let out = kelp()
        .arg("push")
        .arg(&file)
        .arg(&reference)
        .output()
        .expect("running kelp push");
    assert!(
        out.status.success(),
        "kelp push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    reference
}

/// A background `kelp` process (agent or scheduler), killed by pid on drop.
struct Proc {
    what: String,
    child: Child,
    log: PathBuf,
    /// An agent's Wasm runtime process, stopped after the agent is killed.
    runtime: Option<NodeRuntime>,
    /// An agent's pod interface, deleted after it is killed.
    iface: Option<Link>,
}

impl Proc {
    fn spawn(c: &Cluster, what: &str, args: &[&str]) -> Proc {
        let log = c.path().join(format!("{what}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let child = kelp()
            .args(args)
            .env("KELP_LOG", "info")
            .env_remove("KELP_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn kelp");
        Proc {
            what: what.to_string(),
            child,
            log,
            runtime: None,
            iface: None,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.runtime = None;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- {} log ---\n{}",
                self.what,
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}

/// `kelp agent` joining `c` as node `name` on its own data dir and address.
fn agent(c: &Cluster, name: &str) -> Proc {
    let data = c.path().join(name);
    let ca = c.data_dir().join("tls/ca.crt");
    let token = c.data_dir().join("node-token");
    let ip = c.ip.to_string();
    let iface = Link::unique();
    let mut p = Proc::spawn(
        c,
        name,
        &[
            "agent",
            "--server",
            &c.url(),
            "--token-file",
            token.to_str().unwrap(),
            "--ca-file",
            ca.to_str().unwrap(),
            "--node-name",
            name,
            "--node-ip",
            &ip,
            "--data-dir",
            data.to_str().unwrap(),
            // Tests run in parallel: each node's kubelet on a port of its own.
            "--kubelet-port",
            "0",
            "--pod-interface",
            &iface.0,
        ],
    );
    p.runtime = Some(NodeRuntime(data.clone()));
    p.iface = Some(iface);
    wait_ready(c, name, &p);
    p
}

fn wait_ready(c: &Cluster, name: &str, p: &Proc) {
    let ok = wait_until(DEADLINE, || {
        let r = c.kubectl(&["get", "node", name, "-o", "json"]);
        r.ok()
            && serde_json::from_str::<Value>(&r.stdout)
                .ok()
                .and_then(|n| {
                    n["status"]["conditions"]
                        .as_array()?
                        .iter()
                        .find(|c| c["type"] == "Ready")
                        .map(|c| c["status"] == "True")
                })
                .unwrap_or(false)
    });
    assert!(ok, "node {name} never became Ready:\n{}", p.log());
}

fn get_pod(c: &Cluster, name: &str) -> Value {
    c.kubectl_json(&["get", "pod", name])
}

fn node_of(pod: &Value) -> Option<String> {
    pod["spec"]["nodeName"].as_str().map(str::to_string)
}

fn wait_pod(c: &Cluster, name: &str, what: &str, mut cond: impl FnMut(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(DEADLINE, || {
        last = get_pod(c, name);
        cond(&last)
    });
    assert!(
        ok,
        "pod {name} never {what}; last seen:\n{}\n--- server log ---\n{}",
        serde_json::to_string_pretty(&last).unwrap(),
        c.log_tail()
    );
    last
}

fn condition<'a>(pod: &'a Value, kind: &str) -> &'a Value {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .unwrap_or(&Value::Null)
}

/// The events about `pod` (kubectl's own query).
fn events(c: &Cluster, pod: &str) -> Vec<Value> {
    c.kubectl_json(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={pod}"),
    ])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn pod_yaml(name: &str, image: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  {extra_spec}\n  containers:\n  - name: c\n    image: {image}\n"
    )
}

#[test]
fn pods_are_placed_by_resources_selectors_and_runtime_classes() {
    let reg = registry::Registry::start();
    let image = push_counter(&reg);
    let c = Cluster::start_with(
        Backend::Sqlite,
        Options {
            up_node: Some(UP_NODE),
            extra_args: &["--kubelet-port", "0"],
            ..Options::default()
        },
    );
    let second = format!("agent-{}", std::process::id());
    let _agent = agent(&c, &second);
    c.kubectl_ok(&["label", "node", &second, "disk=ssd"]);

    // Plain pods: scheduled (onto both nodes, since LeastAllocated spreads them) and Running.
    let names: Vec<String> = (0..4).map(|i| format!("plain-{i}")).collect();
    let mut manifests: Vec<String> = names
        .iter()
        .map(|n| pod_yaml(n, &image, "restartPolicy: Always"))
        .collect();
    manifests.push(pod_yaml("not-ours", &image, "schedulerName: my-scheduler"));
    c.kubectl_stdin_ok(&["apply", "-f", "-"], &manifests.join("---\n"));
    let mut used = std::collections::BTreeSet::new();
    for n in &names {
        let p = wait_pod(&c, n, "Running", |p| p["status"]["phase"] == "Running");
        used.insert(node_of(&p).expect("bound"));
        let mut k = Checks::default();
        k.eq(
            "PodScheduled",
            &condition(&p, "PodScheduled")["status"],
            "True",
        );
        let evs = events(&c, n);
        let scheduled = evs.iter().find(|e| e["reason"] == "Scheduled");
        k.that(
            &format!("a Scheduled event for {n}: {evs:?}"),
            scheduled.is_some(),
        );
        if let Some(e) = scheduled {
            k.eq(
                "Scheduled message",
                &e["message"],
                format!(
                    "Successfully assigned default/{n} to {}",
                    node_of(&p).unwrap()
                )
                .as_str(),
            );
            k.eq(
                "event source",
                &e["source"]["component"],
                "default-scheduler",
            );
        }
        k.finish(&c.log_tail());
    }
    assert_eq!(
        used.into_iter().collect::<Vec<_>>(),
        {
            let mut v = vec![UP_NODE.to_string(), second.clone()];
            v.sort();
            v
        },
        "four pods should spread over both nodes"
    );

    // nodeSelector picks the labelled node.
    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &pod_yaml("on-ssd", &image, "nodeSelector: {disk: ssd}"),
    );
    let p = wait_pod(&c, "on-ssd", "Running", |p| {
        p["status"]["phase"] == "Running"
    });
    assert_eq!(node_of(&p).as_deref(), Some(second.as_str()));

    // More cpu than any node has: Pending, FailedScheduling in upstream wording.
    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: huge}}\nspec:\n  containers:\n  - name: c\n    image: {image}\n    resources: {{requests: {{cpu: \"1000\"}}}}\n"
        ),
    );
    let want = "0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are available: \
                2 Preemption is not helpful for scheduling.";
    let p = wait_pod(&c, "huge", "marked Unschedulable", |p| {
        condition(p, "PodScheduled")["reason"] == "Unschedulable"
    });
    let mut k = Checks::default();
    k.eq("phase", &p["status"]["phase"], "Pending");
    k.eq("nodeName", &p["spec"]["nodeName"], &Value::Null);
    k.eq(
        "PodScheduled",
        &condition(&p, "PodScheduled")["status"],
        "False",
    );
    k.eq(
        "PodScheduled message",
        &condition(&p, "PodScheduled")["message"],
        want,
    );
    let mut describe = String::new();
    let shown = wait_until(DEADLINE, || {
        describe = c.kubectl_ok(&["describe", "pod", "huge"]);
        describe.contains("FailedScheduling")
    });
    k.that(
        &format!("describe shows FailedScheduling:\n{describe}"),
        shown,
    );
    k.that(
        &format!("describe shows the upstream message:\n{describe}"),
        describe.lines().any(|l| {
            l.contains("Warning")
                && l.contains("FailedScheduling")
                && l.contains("default-scheduler")
                && l.contains(want)
        }),
    );
    k.finish(&c.log_tail());

    // A RuntimeClass whose handler no node serves: never scheduled. One whose handler
    // the nodes serve (`wasm`): scheduled and Running.
    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {name: spin}\nhandler: spin\n---\n\
         apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {name: wasm}\nhandler: wasm\n",
    );
    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            "{}---\n{}",
            pod_yaml("needs-spin", &image, "runtimeClassName: spin"),
            pod_yaml("needs-wasm", &image, "runtimeClassName: wasm")
        ),
    );
    wait_pod(&c, "needs-wasm", "Running", |p| {
        p["status"]["phase"] == "Running"
    });
    let p = wait_pod(&c, "needs-spin", "marked Unschedulable", |p| {
        condition(p, "PodScheduled")["reason"] == "Unschedulable"
    });
    assert_eq!(p["spec"]["nodeName"], Value::Null);
    assert_eq!(
        condition(&p, "PodScheduled")["message"],
        "0/2 nodes are available: 2 node(s) didn't have the runtime handler \"spin\" of \
         RuntimeClass \"spin\". preemption: 0/2 nodes are available: 2 Preemption is not \
         helpful for scheduling."
    );

    // An unschedulable pod is retried when a node changes: label the up node.
    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &pod_yaml("on-hdd", &image, "nodeSelector: {disk: hdd}"),
    );
    wait_pod(&c, "on-hdd", "marked Unschedulable", |p| {
        condition(p, "PodScheduled")["reason"] == "Unschedulable"
    });
    c.kubectl_ok(&["label", "node", UP_NODE, "disk=hdd"]);
    let p = wait_pod(&c, "on-hdd", "scheduled after the node was labelled", |p| {
        node_of(p).is_some()
    });
    assert_eq!(node_of(&p).as_deref(), Some(UP_NODE));

    // Another scheduler's pod, created before everything above was placed, is still
    // untouched: no node, no event.
    let p = get_pod(&c, "not-ours");
    assert_eq!(p["spec"]["nodeName"], Value::Null, "{p}");
    assert!(
        events(&c, "not-ours").is_empty(),
        "{:?}",
        events(&c, "not-ours")
    );
}

/// The Lease holder of `kube-system/kube-scheduler`, if any.
fn holder(c: &Cluster) -> Option<String> {
    let r = c.kubectl(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        "kube-scheduler",
        "-o",
        "json",
    ]);
    if !r.ok() {
        return None;
    }
    let v: Value = serde_json::from_str(&r.stdout).ok()?;
    v["spec"]["holderIdentity"].as_str().map(str::to_string)
}

/// The identity a `kelp scheduler` printed at start.
fn identity(p: &Proc) -> String {
    let mut id = None;
    wait_until(DEADLINE, || {
        id = p.log().lines().find_map(|l| {
            l.strip_prefix("kelp scheduler ")?
                .strip_suffix(" starting")
                .map(str::to_string)
        });
        id.is_some()
    });
    id.unwrap_or_else(|| panic!("{} never printed its identity:\n{}", p.what, p.log()))
}

#[test]
fn two_schedulers_with_leader_election_only_the_leader_binds() {
    let c = Cluster::start_with(
        Backend::Sqlite,
        Options {
            extra_args: &["--disable-scheduler"],
            ..Options::default()
        },
    );
    let _node = agent(&c, &format!("le-node-{}", std::process::id()));
    let kc = c.kubeconfig();
    let args = [
        "scheduler",
        "--kubeconfig",
        kc.to_str().unwrap(),
        "--leader-elect=true",
        "--leader-elect-lease-duration=3s",
        "--leader-elect-renew-deadline=2s",
        "--leader-elect-retry-period=250ms",
    ];
    let mut a = Proc::spawn(&c, "scheduler-a", &args);
    let mut b = Proc::spawn(&c, "scheduler-b", &args);
    let (id_a, id_b) = (identity(&a), identity(&b));
    let mut leader = None;
    assert!(
        wait_until(DEADLINE, || {
            leader = holder(&c);
            leader.is_some()
        }),
        "nobody took the kube-scheduler lease:\n{}\n{}",
        a.log(),
        b.log()
    );
    let leader = leader.unwrap();
    assert!(
        leader == id_a || leader == id_b,
        "holder {leader} is neither {id_a} nor {id_b}"
    );

    let bound_by = |c: &Cluster, pods: &[&str]| -> Vec<String> {
        let mut who = Vec::new();
        for p in pods {
            wait_pod(c, p, "bound", |v| node_of(v).is_some());
            let mut inst = None;
            wait_until(DEADLINE, || {
                inst = events(c, p)
                    .iter()
                    .find(|e| e["reason"] == "Scheduled")
                    .and_then(|e| e["reportingInstance"].as_str().map(str::to_string));
                inst.is_some()
            });
            who.push(inst.unwrap_or_else(|| panic!("no Scheduled event for {p}")));
        }
        who
    };
    let first = ["le-1", "le-2", "le-3", "le-4"];
    let manifests: Vec<String> = first
        .iter()
        .map(|n| pod_yaml(n, "localhost:1/none", "restartPolicy: Never"))
        .collect();
    c.kubectl_stdin_ok(&["apply", "-f", "-"], &manifests.join("---\n"));
    let who = bound_by(&c, &first);
    assert!(
        who.iter().all(|w| *w == leader),
        "bound by {who:?}, leader {leader}"
    );

    // The leader dies; the other takes the lease once it expires and binds from then on.
    let (survivor, dead) = if leader == id_a {
        (id_b, &mut a)
    } else {
        (id_a, &mut b)
    };
    dead.kill();
    assert!(
        wait_until(DEADLINE, || holder(&c).as_deref()
            == Some(survivor.as_str())),
        "the surviving scheduler never took over"
    );
    let second = ["le-5", "le-6"];
    let manifests: Vec<String> = second
        .iter()
        .map(|n| pod_yaml(n, "localhost:1/none", "restartPolicy: Never"))
        .collect();
    c.kubectl_stdin_ok(&["apply", "-f", "-"], &manifests.join("---\n"));
    let who = bound_by(&c, &second);
    assert!(
        who.iter().all(|w| *w == survivor),
        "bound by {who:?}, new leader {survivor}"
    );
}
