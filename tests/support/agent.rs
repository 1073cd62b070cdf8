// Each test binary uses a different part of these helpers.
#![allow(dead_code)]

//! `kelp agent` processes for multi-node tests: each with its own data dir, node name
//! and 127.0.0.x address, joined with the node token; killed by pid on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::common::{wait_until, Cluster, Link, NodeRuntime};

pub struct Agent {
    pub name: String,
    log: PathBuf,
    child: Child,
    cmd: Command,
    /// Stopped, then deleted, after the agent is killed (fields drop after
    /// `Drop::drop`).
    _runtime: NodeRuntime,
    _iface: Link,
}

fn ready_status(node: &Value) -> Option<String> {
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["status"].as_str())
        .map(str::to_string)
}

/// The node's Ready condition status ("True", "False", "Unknown"), if the node exists.
pub fn node_ready(c: &Cluster, node: &str) -> Option<String> {
    let r = c.kubectl(&["get", "node", node, "-o", "json"]);
    if !r.ok() {
        return None;
    }
    serde_json::from_str::<Value>(&r.stdout)
        .ok()
        .and_then(|n| ready_status(&n))
}

impl Agent {
    /// Starts an agent named `LABEL-PID-N` on its own loopback address.
    pub fn start(c: &Cluster, label: &str) -> Agent {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("{label}-{}-{n}", std::process::id());
        let node_ip = format!("127.251.{}.{}", std::process::id() % 256, 2 + n % 250);
        let data_dir = c.path().join(&name);
        let log = c.path().join(format!("{name}.log"));
        let iface = Link::unique();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kelp"));
        cmd.arg("agent")
            .args(["--server", &c.url()])
            .arg("--token-file")
            .arg(c.data_dir().join("node-token"))
            .arg("--ca-file")
            .arg(c.data_dir().join("tls/ca.crt"))
            .args([
                "--node-name",
                &name,
                "--node-ip",
                &node_ip,
                "--kubelet-port",
                "0",
            ])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--pod-interface", &iface.0])
            .env("KELP_LOG", "info")
            .env_remove("KELP_DATA_DIR")
            .env_remove("KELP_POD_INTERFACE")
            .stdin(Stdio::null());
        let child = spawn(&mut cmd, &log);
        let agent = Agent {
            name,
            log,
            child,
            cmd,
            _runtime: NodeRuntime(data_dir),
            _iface: iface,
        };
        agent.wait_ready(c);
        agent
    }

    pub fn wait_ready(&self, c: &Cluster) {
        let ok = wait_until(Duration::from_secs(60), || {
            node_ready(c, &self.name).as_deref() == Some("True")
        });
        assert!(ok, "node {} never became Ready:\n{}", self.name, self.log());
    }

    /// kill -9 of the agent, as a crash would: its Wasm runtime, a process of its
    /// own, keeps the pods running until the agent is back and adopts it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again with the same arguments (same data dir and node name).
    pub fn restart(&mut self) {
        self.child = spawn(&mut self.cmd, &self.log);
    }

    pub fn log(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Child {
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

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- kelp agent {} log ---\n{}", self.name, self.log());
        }
    }
}
