//! The end-to-end harness: a real `kelp server` process (on the embedded SQLite store or
//! on a real `etcd` process) on its own loopback address, driven by the real `kubectl`
//! (and, in some tests, kube-rs or the Python client).
//!
//! * Every cluster gets a distinct `127.x.y.z` address (so concurrent tests and test
//!   binaries never race for a port), a temporary directory with the data dir, the server
//!   log, the etcd data and kubectl's cache, and `HOME` pointing inside it: nothing of the
//!   machine's `~/.kube` is used.
//! * Every wait polls a condition with a bounded total time and says what it waited for.
//! * Everything started is stopped by pid (SIGTERM/SIGKILL) and reaped on drop.

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How often conditions are re-checked while waiting.
const POLL: Duration = Duration::from_millis(20);
/// How long the server (or etcd) may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one kubectl invocation may take before it is killed and the test fails.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Etcd,
}

pub fn kelp() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kelp"))
}

/// `kelp push FILE REFERENCE`.
pub fn push(file: &Path, reference: &str) {
    push_as(file, reference, None)
}

/// `kelp push`, with `(user, password)` for a registry behind basic auth.
pub fn push_as(file: &Path, reference: &str, creds: Option<(&str, &str)>) {
    let mut cmd = kelp();
    cmd.arg("push").arg(file).arg(reference);
    if let Some((u, p)) = creds {
        cmd.args(["--username", u, "--password", p]);
    }
    let out = cmd.output().expect("running kelp push");
    assert!(
        out.status.success(),
        "kelp push {reference} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether a Node or Pod (as JSON) has the condition `Ready=True`.
pub fn is_ready(obj: &serde_json::Value) -> bool {
    obj["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// Polls `cond` until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// A distinct loopback address per cluster: 127.<pid-derived>.<pid-derived>.<counter>.
fn loopback_ip() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    Ipv4Addr::new(
        127,
        1 + ((pid >> 8) % 250) as u8,
        (pid % 256) as u8,
        2 + (n % 250) as u8,
    )
}

/// A port that is free on `ip` right now (bind port 0, read it, release it).
fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot bind a free port on {ip}: {e}"))
}

fn tail(path: &Path, lines: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Sends `sig` (e.g. "TERM", "KILL") to `pid` with the `kill` utility.
fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Waits up to `timeout` for `child` to exit.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    status
}

/// The outcome of one kubectl (or other) command.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.status.success()
    }
}

/// A real etcd with its own data directory on free ports of `ip`.
struct Etcd {
    child: Child,
    client_url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Etcd {
    fn start(ip: Ipv4Addr) -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("kelp-e2e-etcd-")
            .tempdir()
            .expect("etcd temp dir");
        let client_port = free_port(ip);
        let peer_port = free_port(ip);
        let client_url = format!("http://{ip}:{client_port}");
        let peer_url = format!("http://{ip}:{peer_port}");
        let log = dir.path().join("etcd.log");
        let etcd_log = std::fs::File::create(&log).expect("etcd log");
        let child = Command::new("etcd")
            .args(["--name", "kelp-e2e", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("kelp-e2e={peer_url}")])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(etcd_log.try_clone().expect("etcd log"))
            .stderr(etcd_log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `etcd` ({e}). The etcd end-to-end tests need a real etcd: \
                     install the Debian package `etcd-server` (scripts/test.sh does)"
                )
            });
        let mut etcd = Etcd {
            child,
            client_url,
            log,
            _dir: dir,
        };
        let addr = (ip, client_port);
        let healthy = wait_until(READY_TIMEOUT, || {
            if let Ok(Some(st)) = etcd.child.try_wait() {
                panic!("etcd exited early ({st}):\n{}", tail(&etcd.log, 30));
            }
            etcd_healthy(addr)
        });
        assert!(
            healthy,
            "etcd at {} did not report {{\"health\":\"true\"}} within {READY_TIMEOUT:?}:\n{}",
            etcd.client_url,
            tail(&etcd.log, 30)
        );
        etcd
    }

    /// `HOST:PORT`, as `--datastore etcd://` wants it.
    fn endpoint(&self) -> &str {
        self.client_url.trim_start_matches("http://")
    }
}

/// GET /health over plain HTTP/1.0 (no client needed).
fn etcd_healthy(addr: (Ipv4Addr, u16)) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.replace(' ', "").contains("\"health\":\"true\"")
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a cluster is started.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Pass `--tls-san <bind address>`. The server should put its bind address in the
    /// serving certificate by itself; `false` tests exactly that.
    pub tls_san_for_bind_address: bool,
    /// Run `kelp up` with an in-process node of this name instead of `kelp server`.
    pub up_node: Option<&'static str>,
    /// Run `kelp apiserver` (no controllers) instead of `kelp server`.
    pub apiserver_only: bool,
    /// Extra arguments for the control-plane command (e.g. controller flags).
    pub extra_args: &'static [&'static str],
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tls_san_for_bind_address: true,
            up_node: None,
            apiserver_only: false,
            extra_args: &[],
        }
    }
}

/// A running `kelp server` (and its etcd), stopped on drop.
pub struct Cluster {
    pub backend: Backend,
    pub ip: Ipv4Addr,
    pub port: u16,
    opts: Options,
    server: Option<Child>,
    etcd: Option<Etcd>,
    starts: u32,
    dir: tempfile::TempDir,
    /// The `up_node`'s pod interface, deleted after the server is killed.
    iface: Option<Link>,
}

impl Cluster {
    pub fn start(backend: Backend) -> Cluster {
        Cluster::start_with(backend, Options::default())
    }

    pub fn start_with(backend: Backend, opts: Options) -> Cluster {
        let ip = loopback_ip();
        let etcd = (backend == Backend::Etcd).then(|| Etcd::start(ip));
        let dir = tempfile::Builder::new()
            .prefix("kelp-e2e-")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir_all(dir.path().join("home")).expect("home dir");
        let iface = opts.up_node.map(|_| Link::unique());
        let mut c = Cluster {
            backend,
            ip,
            port: free_port(ip),
            opts,
            server: None,
            etcd,
            starts: 0,
            dir,
            iface,
        };
        c.spawn_server();
        c
    }

    /// The temporary directory of this cluster (data dir, logs, scratch files).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.path().join("data")
    }

    /// The admin kubeconfig the server writes.
    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir().join("kubeconfig")
    }

    pub fn url(&self) -> String {
        format!("https://{}:{}", self.ip, self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.path().join("server.log")
    }

    /// The last lines of the server's stdout/stderr (for failure messages).
    pub fn log_tail(&self) -> String {
        tail(&self.log_path(), 40)
    }

    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    fn spawn_server(&mut self) {
        self.starts += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("server log");
        let _ = writeln!(log, "===== harness: start #{} =====", self.starts);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kelp"));
        cmd.arg(self.command());
        if let Some(node) = self.opts.up_node {
            cmd.args(["--node-name", node]);
        }
        if let Some(iface) = &self.iface {
            cmd.args(["--pod-interface", &iface.0]);
        }
        cmd.args(self.opts.extra_args);
        // Clusters of one test process run side by side, each node on a pod interface
        // of its own, but every address on them is local to the one host: each cluster
        // gets its own pod range, else two nodes both hold 10.42.0.2.
        if !self.opts.extra_args.contains(&"--cluster-cidr") {
            cmd.args(["--cluster-cidr", &self.cluster_cidr()]);
        }
        cmd.arg("--data-dir")
            .arg(self.data_dir())
            .args(["--https-port", &self.port.to_string()])
            .args(["--bind-address", &self.ip.to_string()])
            .env("KELP_LOG", "info")
            .env_remove("KELP_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("server log"))
            .stderr(log);
        if self.opts.tls_san_for_bind_address {
            cmd.args(["--tls-san", &self.ip.to_string()]);
        }
        if let Some(e) = &self.etcd {
            cmd.arg("--datastore")
                .arg(format!("etcd://{}", e.endpoint()));
        }
        self.server = Some(cmd.spawn().expect("spawn kelp server"));

        let mut last = String::new();
        let ready = wait_until(READY_TIMEOUT, || {
            if let Some(Ok(Some(st))) = self.server.as_mut().map(Child::try_wait) {
                panic!(
                    "[{:?}] kelp server exited before it was ready ({st}):\n{}",
                    self.backend,
                    self.log_tail()
                );
            }
            if !self.kubeconfig().exists() || !self.log_says_serving() {
                return false;
            }
            let r = self.kubectl(&["get", "--raw", "/readyz", "--request-timeout=5s"]);
            last = format!("{}{}", r.stdout, r.stderr);
            // A certificate the client cannot verify does not get better with time.
            assert!(
                !last.contains("x509:"),
                "[{:?}] kubectl cannot verify the server's certificate with the kubeconfig \
                 the server wrote ({}): {last}",
                self.backend,
                self.kubeconfig().display()
            );
            r.ok() && r.stdout.trim() == "ok"
        });
        assert!(
            ready,
            "[{:?}] kelp server at {} was not ready within {READY_TIMEOUT:?} \
             (last `kubectl get --raw /readyz`: {last:?}):\n--- server log ---\n{}",
            self.backend,
            self.url(),
            self.log_tail()
        );
    }

    /// `server`, `up` (with a node) or `apiserver` (alone).
    /// A /16 of 10.0.0.0/8 of this cluster's own (the last octet of its loopback
    /// address counts the clusters of the test process).
    fn cluster_cidr(&self) -> String {
        format!("10.{}.0.0/16", 100 + self.ip.octets()[3] as u32 % 150)
    }

    fn command(&self) -> &'static str {
        if self.opts.up_node.is_some() {
            "up"
        } else if self.opts.apiserver_only {
            "apiserver"
        } else {
            "server"
        }
    }

    /// The server prints its banner once it serves; after a restart the old banner is
    /// in the log too, so look only at the part after the last harness marker.
    fn log_says_serving(&self) -> bool {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let marker = format!("===== harness: start #{} =====", self.starts);
        log.rsplit_once(&marker)
            .map(|(_, after)| {
                after.contains(&format!(
                    "kelp {} is serving the Kubernetes API at {}",
                    self.command(),
                    self.url()
                ))
            })
            .unwrap_or(false)
    }

    /// SIGTERM the server, wait for it to exit cleanly, and start it again on the same
    /// data dir, address and datastore.
    pub fn restart(&mut self) {
        if let Some(mut child) = self.server.take() {
            signal(child.id(), "TERM");
            match wait_exit(&mut child, Duration::from_secs(20)) {
                Some(st) => assert!(
                    st.success(),
                    "[{:?}] kelp server exited with {st} on SIGTERM:\n{}",
                    self.backend,
                    self.log_tail()
                ),
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "[{:?}] kelp server did not exit within 20s of SIGTERM:\n{}",
                        self.backend,
                        self.log_tail()
                    );
                }
            }
        }
        self.spawn_server();
    }

    fn kubectl_cmd(&self) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.path().join("kube-cache"))
            .env_remove("KUBECONFIG")
            .env("HOME", self.path().join("home"));
        cmd
    }

    /// Runs kubectl with `input` on stdin (if any) and `env`, killing it (and failing the
    /// test) if it runs longer than [`KUBECTL_TIMEOUT`].
    pub fn kubectl_full(&self, args: &[&str], input: Option<&str>, env: &[(&str, &str)]) -> Run {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let out_path = self.path().join(format!("kubectl-{n}.out"));
        let err_path = self.path().join(format!("kubectl-{n}.err"));
        let mut cmd = self.kubectl_cmd();
        cmd.args(args)
            .envs(env.iter().copied())
            .stdout(std::fs::File::create(&out_path).expect("kubectl stdout file"))
            .stderr(std::fs::File::create(&err_path).expect("kubectl stderr file"))
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run kubectl ({e}); it must be on PATH"));
        if let Some(input) = input {
            let mut stdin = child.stdin.take().expect("kubectl stdin");
            stdin
                .write_all(input.as_bytes())
                .expect("write kubectl stdin");
        }
        let Some(status) = wait_exit(&mut child, KUBECTL_TIMEOUT) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "[{:?}] kubectl {} did not finish within {KUBECTL_TIMEOUT:?}; stdout so far:\n{}\nstderr:\n{}\n--- server log ---\n{}",
                self.backend,
                args.join(" "),
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                std::fs::read_to_string(&err_path).unwrap_or_default(),
                self.log_tail()
            );
        };
        let run = Run {
            status,
            stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        };
        let _ = std::fs::remove_file(&out_path);
        let _ = std::fs::remove_file(&err_path);
        run
    }

    pub fn kubectl(&self, args: &[&str]) -> Run {
        self.kubectl_full(args, None, &[])
    }

    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Run {
        self.kubectl_full(args, Some(input), &[])
    }

    pub fn kubectl_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        self.kubectl_full(args, None, env)
    }

    /// Panics with kubectl's stderr and the server log unless `r` succeeded.
    pub fn expect_ok(&self, what: &str, r: Run) -> String {
        assert!(
            r.ok(),
            "[{:?}] kubectl {what} failed ({}):\nstdout: {}\nstderr: {}\n--- server log ---\n{}",
            self.backend,
            r.status,
            r.stdout,
            r.stderr,
            self.log_tail()
        );
        r.stdout
    }

    /// Runs kubectl and returns its stdout; panics with its stderr on failure.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        self.expect_ok(&args.join(" "), self.kubectl(args))
    }

    /// Like [`Cluster::kubectl_ok`], with `input` on stdin.
    pub fn kubectl_stdin_ok(&self, args: &[&str], input: &str) -> String {
        self.expect_ok(&args.join(" "), self.kubectl_stdin(args, input))
    }

    /// Runs kubectl, which must fail; returns its stderr.
    pub fn kubectl_err(&self, args: &[&str]) -> String {
        let r = self.kubectl(args);
        assert!(
            !r.ok(),
            "[{:?}] kubectl {} should have failed but printed:\n{}",
            self.backend,
            args.join(" "),
            r.stdout
        );
        r.stderr
    }

    /// `kubectl ARGS -o json`, parsed.
    pub fn kubectl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend_from_slice(&["-o", "json"]);
        let out = self.kubectl_ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!("kubectl {} -o json: not JSON ({e}):\n{out}", args.join(" "))
        })
    }

    /// A long-running kubectl (e.g. `get -w`) whose stdout goes to a file; killed by pid
    /// on drop.
    pub fn kubectl_spawn(&self, args: &[&str]) -> Background {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let out = self.path().join(format!("background-{n}.out"));
        let err = self.path().join(format!("background-{n}.err"));
        let child = self
            .kubectl_cmd()
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("background stdout"))
            .stderr(std::fs::File::create(&err).expect("background stderr"))
            .spawn()
            .expect("spawn kubectl");
        Background { child, out, err }
    }

    /// A kube-rs client from the server's admin kubeconfig (the file only: no
    /// `~/.kube`, no environment).
    pub async fn kube_client(&self) -> kube::Client {
        let cfg = self.kube_config().await;
        kube::Client::try_from(cfg).expect("kube client")
    }

    pub async fn kube_config(&self) -> kube::Config {
        let kc = kube::config::Kubeconfig::read_from(self.kubeconfig()).expect("read kubeconfig");
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .expect("kube config from the admin kubeconfig")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- [{:?}] kelp server log ({}) ---\n{}",
                self.backend,
                self.url(),
                self.log_tail()
            );
        }
        // etcd (if any) is dropped after the server.
        self.etcd.take();
    }
}

/// A network interface of a test node, deleted on drop (after the node is stopped).
pub struct Link(pub String);

impl Link {
    /// A pod interface (`--pod-interface`) no other node of this machine's test runs
    /// uses: nodes left on the default `kelp0` would share it and leave it behind,
    /// with the pod and ClusterIP addresses they put on it.
    pub fn unique() -> Link {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // IFNAMSIZ: at most 15 characters.
        Link(format!("kt{}x{n}", std::process::id() % 1_000_000))
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// The Wasm runtime process a `kelp agent` started for data directory `.0` (its pid
/// in `DATA_DIR/runtime/runtime.pid`): it outlives the agent by design, so a test
/// kills it by that pid on drop, after the agent.
pub struct NodeRuntime(pub std::path::PathBuf);

/// The pid of the Wasm runtime process recorded in a node's data directory.
pub fn node_runtime_pid(data_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(data_dir.join("runtime/runtime.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether process `pid` still runs (exists and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `PID (COMM) STATE …`; COMM may hold spaces and parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

impl Drop for NodeRuntime {
    fn drop(&mut self) {
        let Some(pid) = node_runtime_pid(&self.0) else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
        wait_until(Duration::from_secs(10), || !process_alive(pid));
    }
}

/// A background kubectl.
pub struct Background {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Background {
    /// Everything it printed to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Collects independent checks so one failure does not hide the others; `finish`
/// panics with all of them.
#[derive(Default)]
pub struct Checks(Vec<String>);

impl Checks {
    pub fn eq<T: PartialEq<U> + std::fmt::Debug, U: std::fmt::Debug>(
        &mut self,
        what: &str,
        got: T,
        want: U,
    ) {
        if got != want {
            self.0.push(format!("{what}: got {got:?}, want {want:?}"));
        }
    }

    pub fn that(&mut self, what: &str, ok: bool) {
        if !ok {
            self.0.push(what.to_string());
        }
    }

    pub fn finish(self, context: &str) {
        assert!(
            self.0.is_empty(),
            "{} check(s) failed:\n  {}\n{context}",
            self.0.len(),
            self.0.join("\n  ")
        );
    }
}
