//! Test support: a real `etcd` process on loopback ports, stopped (by pid) on drop.
//! Used by this crate's etcd tests and by the end-to-end tests.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running etcd with its own data directory.
pub struct EtcdProcess {
    child: Option<Child>,
    dir: PathBuf,
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

impl EtcdProcess {
    /// Starts etcd on free ports and waits until it serves. Panics with a clear
    /// message when the `etcd` binary is missing (scripts/test.sh installs it).
    pub fn start() -> EtcdProcess {
        let dir =
            std::env::temp_dir().join(format!("kelp-etcd-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("etcd temp dir");
        let mut e = EtcdProcess {
            child: None,
            dir: dir.clone(),
            client_port: free_port(),
            peer_port: free_port(),
            _tmp: Some(tempfile_dir::TempDir(dir)),
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
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
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.client_port)) {
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

    /// `127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, as a crash.
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
