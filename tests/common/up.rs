//! `kelp up` (control plane and one node in one process) with its own pod interface,
//! for the end-to-end tests that need the node's networking (services, cluster DNS,
//! containerd). Included with `#[path]`; killed by pid and the interface deleted on
//! drop, the log printed when the test failed.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::{is_ready, wait_until};

/// Bound on every wait for a pod or node condition.
pub const DEADLINE: Duration = Duration::from_secs(90);

#[allow(unused_imports)]
pub use crate::common::{kelp, push, push_as};

pub fn http_hello() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/wasm/target/wasm32-wasip2/release/http_hello.wasm");
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-wasm-examples.sh",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub struct Up {
    pub dir: tempfile::TempDir,
    child: Child,
    pub node: String,
    pub iface: String,
}

impl Up {
    /// `tag` names the node and the interface (one letter of it); `log` is the
    /// `KELP_LOG` filter; `extra` more `kelp up` flags.
    pub fn start(tag: &str, log: &str, extra: &[String]) -> Up {
        let dir = tempfile::tempdir().unwrap();
        let pid = std::process::id();
        let iface = format!("kelp{}{}", &tag[..1], pid % 100_000);
        let node = format!("{tag}-node-{pid}");
        let out = std::fs::File::create(dir.path().join("up.log")).unwrap();
        let child = kelp()
            .arg("up")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--https-port", &free_port().to_string()])
            .args(["--node-name", &node, "--pod-interface", &iface])
            .args(["--kubelet-port", "0"])
            .args(extra)
            .env("KELP_LOG", log)
            .env_remove("KELP_DATA_DIR")
            .env_remove("KELP_POD_INTERFACE")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn kelp up");
        let up = Up {
            dir,
            child,
            node,
            iface,
        };
        let ok = wait_until(DEADLINE, || {
            up.kubeconfig().exists()
                && up
                    .kubectl(&["get", "node", &up.node, "-o", "json"])
                    .ok()
                    .and_then(|s| serde_json::from_str::<Value>(&s).ok())
                    .is_some_and(|n| is_ready(&n))
        });
        assert!(ok, "kelp up's node never became Ready:\n{}", up.log());
        up
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("data/kubeconfig")
    }

    pub fn full_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("up.log")).unwrap_or_default()
    }

    /// The last 80 lines of the log.
    pub fn log(&self) -> String {
        let s = self.full_log();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    }

    /// Where the node's cluster DNS listens (the agent prints it at start).
    pub fn dns_addr(&self) -> SocketAddr {
        let log = self.full_log();
        let addr = log
            .lines()
            .find_map(|l| {
                l.split_once("cluster DNS ")
                    .map(|(_, a)| a.trim().to_string())
            })
            .unwrap_or_else(|| panic!("kelp up did not say where cluster DNS listens:\n{log}"));
        addr.parse()
            .unwrap_or_else(|_| panic!("cluster DNS address {addr:?}"))
    }

    pub fn kubectl_in(&self, args: &[&str], input: Option<&str>) -> Result<String, String> {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("KUBECONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl");
        if let Some(i) = input {
            child.stdin.take().unwrap().write_all(i.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ))
        }
    }

    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        self.kubectl_in(args, None)
    }

    pub fn apply(&self, yaml: &str) {
        if let Err(e) = self.kubectl_in(&["apply", "-f", "-"], Some(yaml)) {
            panic!("kubectl apply failed: {e}\n{yaml}");
        }
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let s = self
            .kubectl(&a)
            .unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"));
        serde_json::from_str(&s).unwrap()
    }

    /// Waits until pod `name` runs with an address; returns its IP.
    pub fn running_pod_ip(&self, name: &str) -> IpAddr {
        let mut last = Value::Null;
        let ok = wait_until(DEADLINE, || {
            last = self
                .kubectl(&["get", "pod", name, "-o", "json"])
                .ok()
                .and_then(|s| serde_json::from_str(&s).ok())
                .unwrap_or(Value::Null);
            last["status"]["phase"] == "Running" && last["status"]["podIP"].is_string()
        });
        assert!(
            ok,
            "pod {name} never ran: {}\n{}",
            last["status"],
            self.log()
        );
        last["status"]["podIP"].as_str().unwrap().parse().unwrap()
    }

    pub fn interface_addresses(&self) -> String {
        let out = Command::new("ip")
            .args(["-br", "addr", "show", "dev", &self.iface])
            .output()
            .expect("ip addr");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("ip")
            .args(["link", "del", &self.iface])
            .stderr(Stdio::null())
            .status();
        if std::thread::panicking() {
            eprintln!("--- kelp up log ---\n{}", self.log());
        }
    }
}

/// One HTTP/1.1 GET on a fresh connection: (status, the `x-kelp-pod` header, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let pod = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-kelp-pod")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    // A failed exchange shows all it got, headers included.
    let body = if status == 200 { body } else { &raw };
    Ok((status, pod, body.to_string()))
}
