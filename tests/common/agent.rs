//! Shared helpers for the kubelet end-to-end tests: a `kelp agent` process joined to a
//! test cluster, `kelp push`, and pod/event polling through kubectl. Included with
//! `#[path]` by the test binaries that run nodes.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::common::{wait_until, Cluster, Link, NodeRuntime};

/// Bound on every wait for a pod or node condition.
pub const DEADLINE: Duration = Duration::from_secs(60);

#[allow(unused_imports)]
pub use crate::common::{kelp, push, push_as};

pub fn example(target: &str, name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/wasm/target")
        .join(target)
        .join("release")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-wasm-examples.sh",
        p.display()
    );
    p
}

/// A `kelp agent` process joined to `cluster` with the node token; killed by pid on drop.
pub struct Agent {
    pub name: String,
    pub data_dir: PathBuf,
    log: PathBuf,
    child: Child,
    cmd: Command,
    /// Stopped, then deleted, after the agent is killed (fields drop after
    /// `Drop::drop`).
    _runtime: NodeRuntime,
    _iface: Link,
}

impl Agent {
    pub fn start(c: &Cluster) -> Agent {
        Agent::start_with(c, &[])
    }

    /// An agent with extra command-line arguments.
    pub fn start_with(c: &Cluster, extra: &[&str]) -> Agent {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "node-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let data_dir = c.path().join(&name);
        let log = c.path().join(format!("{name}.log"));
        let iface = Link::unique();
        let mut cmd = kelp();
        cmd.arg("agent")
            .args(["--server", &c.url()])
            .arg("--token-file")
            .arg(c.data_dir().join("node-token"))
            .arg("--ca-file")
            .arg(c.data_dir().join("tls/ca.crt"))
            .args(["--node-name", &name, "--kubelet-port", "0"])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--pod-interface", &iface.0])
            .args(extra)
            .env("KELP_LOG", "info,kelp_node_agent=debug")
            .env_remove("KELP_DATA_DIR")
            .env_remove("KELP_POD_INTERFACE")
            .stdin(Stdio::null());
        let child = Agent::spawn(&mut cmd, &log);
        let agent = Agent {
            name,
            _runtime: NodeRuntime(data_dir.clone()),
            data_dir,
            log,
            child,
            cmd,
            _iface: iface,
        };
        agent.wait_ready(c);
        agent
    }

    pub fn spawn(cmd: &mut Command, log: &Path) -> Child {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("agent log");
        cmd.stdout(out.try_clone().expect("agent log"))
            .stderr(out)
            .spawn()
            .expect("spawn kelp agent")
    }

    /// SIGTERM (an orderly stop), and wait for the agent to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().expect("wait for kelp agent")
    }

    /// kill -9 the agent and start it again with the same arguments.
    pub fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Agent::spawn(&mut self.cmd, &self.log);
    }

    pub fn log(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    pub fn wait_ready(&self, c: &Cluster) {
        let ok = wait_until(DEADLINE, || {
            let r = c.kubectl(&["get", "node", &self.name, "-o", "json"]);
            r.ok()
                && serde_json::from_str::<Value>(&r.stdout)
                    .ok()
                    .and_then(|n| ready_condition(&n))
                    .is_some_and(|s| s == "True")
        });
        assert!(ok, "node {} never became Ready:\n{}", self.name, self.log());
    }

    /// The pod's directory on the node (`<data>/kubelet/pods/<ns>_<name>_<uid>`).
    pub fn pod_dir(&self, pod: &Value) -> PathBuf {
        self.data_dir.join("kubelet/pods").join(format!(
            "{}_{}_{}",
            pod["metadata"]["namespace"].as_str().unwrap(),
            pod["metadata"]["name"].as_str().unwrap(),
            pod["metadata"]["uid"].as_str().unwrap()
        ))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- kelp agent {} log ---\n{}", self.name, self.log());
        }
    }
}

pub fn ready_condition(node: &Value) -> Option<String> {
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["status"].as_str())
        .map(str::to_string)
}

pub fn condition<'a>(obj: &'a Value, kind: &str) -> &'a Value {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .unwrap_or(&Value::Null)
}

/// `kubectl get pod NAME -o json`, `None` when it does not exist.
pub fn get_pod(c: &Cluster, name: &str) -> Option<Value> {
    let r = c.kubectl(&["get", "pod", name, "-o", "json"]);
    if !r.ok() {
        assert!(
            r.stderr.contains("NotFound") || r.stderr.contains("not found"),
            "kubectl get pod {name}: {}",
            r.stderr
        );
        return None;
    }
    Some(serde_json::from_str(&r.stdout).expect("pod JSON"))
}

/// Polls the pod until `cond` holds; panics with the last pod and the agent log.
pub fn wait_pod(
    c: &Cluster,
    agent: &Agent,
    name: &str,
    what: &str,
    mut cond: impl FnMut(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(DEADLINE, || {
        last = get_pod(c, name).unwrap_or(Value::Null);
        cond(&last)
    });
    assert!(
        ok,
        "pod {name} never {what} within {DEADLINE:?}; last seen:\n{}\n--- agent log ---\n{}",
        serde_json::to_string_pretty(&last["status"]).unwrap(),
        agent.log()
    );
    last
}

pub fn container_status(pod: &Value) -> &Value {
    &pod["status"]["containerStatuses"][0]
}

/// The reasons of the events about `pod`.
pub fn event_reasons(c: &Cluster, pod: &str) -> Vec<String> {
    let v = c.kubectl_json(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={pod}"),
    ]);
    v["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|e| e["reason"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `(reason, message, count)` of the events about `pod`.
pub fn events(c: &Cluster, pod: &str) -> Vec<(String, String, i64)> {
    let v = c.kubectl_json(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={pod}"),
    ]);
    v["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|e| {
                    (
                        e["reason"].as_str().unwrap_or("").to_string(),
                        e["message"].as_str().unwrap_or("").to_string(),
                        e["count"].as_i64().unwrap_or(1),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
