//! Test support: a real `etcd` process on loopback ports, stopped (by pid) on drop,
//! and the path of this crate's helper examples. Used by this crate's tests, its
//! benchmark and the end-to-end tests.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running etcd with its own data directory.
pub struct EtcdProcess {
    child: Option<Child>,
    dir: PathBuf,
    /// The loopback address etcd listens on (127.0.0.x, one per process started).
    pub host: std::net::Ipv4Addr,
    pub client_port: u16,
    peer_port: u16,
    _tmp: Option<tempfile_dir::TempDir>,
}

mod tempfile_dir {
    /// A directory removed on drop (no extra dependency for one use).
    pub struct TempDir(pub std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A loopback address of its own for each etcd started by this process (spread by pid
/// too), so parallel tests cannot collide on a port.
fn next_host() -> std::net::Ipv4Addr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) + std::process::id() * 7;
    std::net::Ipv4Addr::new(127, 0, (n / 250 % 250) as u8 + 1, (n % 250) as u8 + 2)
}

fn free_port(host: std::net::Ipv4Addr) -> u16 {
    TcpListener::bind((host, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on {host}: {e}"))
}

impl EtcdProcess {
    /// Starts etcd on free ports and waits until it serves. Panics with a clear
    /// message when the `etcd` binary is missing (scripts/test.sh installs it).
    pub fn start() -> EtcdProcess {
        let host = next_host();
        let client_port = free_port(host);
        let dir = std::env::temp_dir().join(format!(
            "kelp-etcd-{}-{host}-{client_port}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("etcd temp dir");
        let mut e = EtcdProcess {
            child: None,
            dir: dir.clone(),
            host,
            client_port,
            peer_port: free_port(host),
            _tmp: Some(tempfile_dir::TempDir(dir)),
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let client = format!("http://{}:{}", self.host, self.client_port);
        let peer = format!("http://{}:{}", self.host, self.peer_port);
        let log = std::fs::File::create(self.dir.join("etcd.log")).expect("etcd log");
        let child = Command::new("etcd")
            .args(["--name", "kelp-test", "--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("kelp-test={peer}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `etcd` ({e}): install the Debian package etcd-server (scripts/test.sh does)"));
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect((self.host, self.client_port)) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(b"GET /health HTTP/1.0\r\n\r\n");
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                if buf.contains("\"health\":\"true\"") {
                    return;
                }
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("etcd exited early ({status}); log: {}", self.log_tail());
                }
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy; log: {}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
        s.lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `127.0.0.x:PORT`.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.client_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL (by pid), as a crash; waits for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same data directory and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Path of one of this crate's examples (e.g. `store-writer`) in the same target
/// directory and profile as the running test, building it first if it is missing
/// (`cargo test` builds examples; `cargo test --test NAME` does not).
pub fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    // target/<profile>/deps/<test> → target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable in target/<profile>/deps")
        .to_path_buf();
    let bin = profile_dir.join("examples").join(name);
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "kelp-storage", "--example", name]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo to build the example");
        assert!(status.success(), "building example {name} failed");
    }
    assert!(
        bin.exists(),
        "example {name} not found at {}",
        bin.display()
    );
    bin
}
