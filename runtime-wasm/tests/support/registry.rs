//! A real OCI registry for tests: Debian's `docker-registry` (distribution 2.x) on
//! 127.0.0.1 with a temporary storage directory, optionally behind htpasswd basic auth.
//! Started with `Registry::start()`, killed by pid on drop.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[path = "wait.rs"]
pub mod wait;

pub struct Registry {
    /// `127.0.0.1:PORT`, as written in image references.
    pub addr: String,
    /// The registry's storage root.
    pub storage: PathBuf,
    /// `(user, password)` when started with basic auth.
    pub credentials: Option<(String, String)>,
    child: Child,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Status code of `GET /v2/`, if the registry answers.
fn probe(addr: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Registry {
    /// A registry without authentication.
    pub fn start() -> Registry {
        Self::spawn(None)
    }

    /// A registry that requires HTTP basic auth as `user`/`password`.
    pub fn start_with_auth(user: &str, password: &str) -> Registry {
        Self::spawn(Some((user.to_string(), password.to_string())))
    }

    fn spawn(credentials: Option<(String, String)>) -> Registry {
        let mut last_log = String::new();
        for _attempt in 0..3 {
            match Self::try_spawn(credentials.clone()) {
                Ok(r) => return r,
                Err(log) => last_log = log,
            }
        }
        panic!("docker-registry did not start:\n{last_log}");
    }

    fn try_spawn(credentials: Option<(String, String)>) -> Result<Registry, String> {
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n  secret: kelp-test-secret\n",
            storage.display()
        );
        if let Some((user, password)) = &credentials {
            let hash = bcrypt::hash(password, 4).unwrap();
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kelp-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("registry.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry must be installed (apt install docker-registry)");
        let mut exited = None;
        let answering = wait::until_blocking(Duration::from_secs(30), || {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(status);
                return true;
            }
            probe(&addr).is_some_and(|code| code == 200 || code == 401)
        });
        if let Some(status) = exited {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("exited with {status}:\n{log}"));
        }
        if !answering {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!(
                "not answering GET /v2/ on {addr} after 30s:\n{log}"
            ));
        }
        Ok(Registry {
            addr,
            storage,
            credentials,
            child,
            dir,
        })
    }

    /// Where the registry keeps blob `digest`'s bytes (to corrupt them in tests).
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
