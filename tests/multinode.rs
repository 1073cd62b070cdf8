//! Issue 5's multi-node scenario: `kelp up` plus two `kelp agent` processes on one
//! machine (own data dirs, node names and 127.x addresses). kill -9 of one agent gets
//! its node NotReady (its Lease stops being renewed: `--node-monitor-grace-period
//! 15s` here) and tainted unreachable; its pods, which tolerate that for 5 s, are
//! evicted and recreated on the other nodes; the restarted agent brings the node
//! back Ready, the taints go, and no pod is left duplicated.

#[path = "support/agent.rs"]
mod agent;
mod common;
#[path = "../runtime-wasm/tests/support/registry.rs"]
mod registry;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use agent::{node_ready, Agent};
use common::{wait_until, Backend, Cluster, Options};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(90);

fn push(reg: &registry::Registry, name: &str) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/wasm/target/wasm32-wasip1/release")
        .join(format!("{name}.wasm"));
    assert!(
        file.exists(),
        "{} is missing: run scripts/build-wasm-examples.sh",
        file.display()
    );
    let reference = format!("{}/kelp/{name}:v1", reg.addr);
    let out = Command::new(env!("CARGO_BIN_EXE_kelp"))
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

/// The deployment's pods not being deleted: (name, node, ready).
fn live_pods(c: &Cluster) -> Vec<(String, String, bool)> {
    c.kubectl_json(&["get", "pods", "-l", "app=web"])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            let ready = common::is_ready(p);
            (
                p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                ready,
            )
        })
        .collect()
}

fn taint_keys(c: &Cluster, node: &str) -> Vec<String> {
    let n: Value = c.kubectl_json(&["get", "node", node]);
    n["spec"]["taints"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    format!(
                        "{}:{}",
                        t["key"].as_str().unwrap_or(""),
                        t["effect"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_lost_node_goes_not_ready_its_pods_move_and_it_comes_back_clean() {
    let c = Cluster::start_with(
        Backend::Sqlite,
        Options {
            up_node: Some("main"),
            extra_args: &[
                "--kubelet-port",
                "0",
                "--node-monitor-grace-period",
                "15s",
                "--node-monitor-period",
                "1s",
            ],
            ..Default::default()
        },
    );
    let mut lost = Agent::start(&c, "lost");
    let kept = Agent::start(&c, "kept");
    assert!(wait_until(DEADLINE, || node_ready(&c, "main").as_deref()
        == Some("True")));
    let reg = registry::Registry::start();
    let counter = push(&reg, "counter");

    // All replicas start on the node that will be lost (the others are cordoned).
    c.kubectl_ok(&["cordon", "main", &kept.name]);
    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 4
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      tolerations:
      - {{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 5}}
      - {{key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 5}}
      containers: [{{name: counter, image: "{counter}"}}]
"#
        ),
    );
    c.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert!(live_pods(&c).iter().all(|(_, n, _)| *n == lost.name));
    c.kubectl_ok(&["uncordon", "main", &kept.name]);

    // kill -9: the Lease stops; after the grace period the node is Unknown and tainted.
    lost.kill();
    let unknown = wait_until(DEADLINE, || {
        node_ready(&c, &lost.name).as_deref() == Some("Unknown")
    });
    assert!(
        unknown,
        "node {} never became Ready=Unknown:\n{}",
        lost.name,
        c.log_tail()
    );
    let tainted = wait_until(DEADLINE, || {
        let t = taint_keys(&c, &lost.name);
        t.contains(&"node.kubernetes.io/unreachable:NoExecute".to_string())
            && t.contains(&"node.kubernetes.io/unreachable:NoSchedule".to_string())
    });
    assert!(
        tainted,
        "no unreachable taints: {:?}",
        taint_keys(&c, &lost.name)
    );
    let printed = c.kubectl_ok(&["get", "nodes"]);
    assert!(
        printed
            .lines()
            .any(|l| l.starts_with(&lost.name) && l.contains("NotReady")),
        "{printed}"
    );

    // Until they are evicted, the pods on the lost node are marked not Ready.
    let not_ready = wait_until(DEADLINE, || {
        live_pods(&c)
            .iter()
            .filter(|(_, n, _)| *n == lost.name)
            .all(|(_, _, ready)| !ready)
    });
    assert!(
        not_ready,
        "pods on a NotReady node still Ready: {:?}",
        live_pods(&c)
    );

    // After tolerationSeconds the pods are evicted and replaced on the other nodes.
    let moved = wait_until(DEADLINE, || {
        let pods = live_pods(&c);
        pods.len() == 4 && pods.iter().all(|(_, n, ready)| *n != lost.name && *ready)
    });
    assert!(
        moved,
        "pods not recreated elsewhere: {:?}\n{}",
        live_pods(&c),
        c.log_tail()
    );

    // The agent comes back: Ready, no taints, and no duplicates once the evicted pods
    // it still held are cleaned up.
    lost.restart();
    lost.wait_ready(&c);
    let clean = wait_until(DEADLINE, || {
        taint_keys(&c, &lost.name)
            .iter()
            .all(|t| !t.starts_with("node.kubernetes.io/"))
    });
    assert!(
        clean,
        "taints left on the returned node: {:?}",
        taint_keys(&c, &lost.name)
    );
    let settled = wait_until(DEADLINE, || {
        let all = c.kubectl_json(&["get", "pods", "-l", "app=web"])["items"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        all.len() == 4
            && live_pods(&c)
                .iter()
                .all(|(_, n, ready)| *n != lost.name && *ready)
    });
    assert!(
        settled,
        "expected exactly the 4 replacement pods: {}",
        c.kubectl_ok(&["get", "pods", "-o", "wide"])
    );
    let d = c.kubectl_json(&["get", "deployment", "web"]);
    assert_eq!(d["status"]["readyReplicas"], 4);
}
