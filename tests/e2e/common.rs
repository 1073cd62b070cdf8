//! The end-to-end harness: a real `kelp server` process (on the embedded store or on a
//! real etcd) on a loopback port, driven with the real `kubectl`. Everything started is
//! stopped by pid on drop; every wait polls a condition.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kelp_storage::testing::EtcdProcess;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Etcd,
}

pub struct Cluster {
    pub backend: Backend,
    server: Option<Child>,
    etcd: Option<EtcdProcess>,
    pub dir: tempfile::TempDir,
    pub port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub struct Run {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            status: o.status,
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Cluster {
    pub fn start(backend: Backend) -> Cluster {
        let etcd = (backend == Backend::Etcd).then(EtcdProcess::start);
        let mut c = Cluster {
            backend,
            server: None,
            etcd,
            dir: tempfile::tempdir().expect("tempdir"),
            port: free_port(),
        };
        c.spawn_server();
        c
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("data").join("kubeconfig")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn spawn_server(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kelp"));
        cmd.arg("server")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args([
                "--https-port",
                &self.port.to_string(),
                "--bind-address",
                "127.0.0.1",
            ])
            .env("KELP_LOG", "info")
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if let Some(e) = &self.etcd {
            cmd.arg("--datastore")
                .arg(format!("etcd://{}", e.endpoint()));
        }
        self.server = Some(cmd.spawn().expect("spawn kelp server"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.kubeconfig().exists() {
                let r = self.kubectl(&["get", "--raw", "/readyz"]);
                if r.status.success() && r.stdout.trim() == "ok" {
                    break;
                }
            }
            if let Some(Ok(Some(st))) = self.server.as_mut().map(Child::try_wait) {
                panic!("kelp server exited ({st}):\n{}", self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "kelp server did not become ready:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, wait, and start again on the same data dir (and datastore).
    pub fn restart(&mut self) {
        self.stop_server();
        self.spawn_server();
    }

    fn stop_server(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn base_cmd(&self) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.dir.path().join("kube-cache"))
            .env_remove("KUBECONFIG");
        cmd
    }

    pub fn kubectl(&self, args: &[&str]) -> Run {
        self.base_cmd()
            .args(args)
            .output()
            .expect("run kubectl")
            .into()
    }

    pub fn kubectl_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut c = self.base_cmd();
        for (k, v) in env {
            c.env(k, v);
        }
        c.args(args).output().expect("run kubectl").into()
    }

    /// Runs kubectl and panics (with its stderr and the server log) on failure.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let r = self.kubectl(args);
        assert!(
            r.status.success(),
            "[{:?}] kubectl {} failed:\n{}\n--- server log ---\n{}",
            self.backend,
            args.join(" "),
            r.stderr,
            self.log_tail()
        );
        r.stdout
    }

    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Run {
        let mut child = self
            .base_cmd()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("kubectl output").into()
    }

    pub fn kubectl_apply(&self, manifest: &str, extra: &[&str]) -> String {
        let mut args = vec!["apply", "-f", "-"];
        args.extend_from_slice(extra);
        let r = self.kubectl_stdin(&args, manifest);
        assert!(
            r.status.success(),
            "[{:?}] kubectl apply failed:\n{}\n{}",
            self.backend,
            r.stderr,
            self.log_tail()
        );
        r.stdout
    }

    /// A kubectl process left running (e.g. `get -w`), killed on drop.
    pub fn kubectl_spawn(&self, args: &[&str]) -> Background {
        let out = self.dir.path().join(format!("bg-{}.out", free_port()));
        let f = std::fs::File::create(&out).expect("bg out");
        let child = self
            .base_cmd()
            .args(args)
            .stdout(f)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn kubectl");
        Background { child, out }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_server();
    }
}

pub struct Background {
    child: Child,
    out: PathBuf,
}

impl Background {
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
