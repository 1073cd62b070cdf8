//! A real containerd for the tests (Debian's `containerd`, `runc` and
//! `containernetworking-plugins`, installed by scripts/test.sh): its own root, state,
//! socket and CNI config directory under a temporary directory, the pause and busybox
//! images built by scripts/linux-images.py imported into its `k8s.io` namespace.
//! Stopped by pid on drop, after what it still runs is killed and removed (a test that
//! failed half-way must not leave containers or shims behind).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;

use crate::common::wait_until;

pub const PAUSE_IMAGE: &str = "kelp.local/pause:3.10";
pub const BUSYBOX_IMAGE: &str = "kelp.local/busybox:1.35";

pub struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
    pub socket: PathBuf,
    pub cni_dir: PathBuf,
}

/// The OCI archives of the test images (built once per test process).
pub fn images() -> PathBuf {
    static BUILD: Once = Once::new();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("linux-images");
    BUILD.call_once(|| {
        let st = Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/linux-images.py"))
            .arg(&out)
            .stdout(Stdio::null())
            .status()
            .expect("python3 scripts/linux-images.py");
        assert!(st.success(), "scripts/linux-images.py failed");
    });
    out
}

impl Containerd {
    pub fn start() -> Containerd {
        for bin in ["containerd", "runc", "ctr"] {
            assert!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {bin}")])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success()),
                "{bin} is not installed (scripts/test.sh installs containerd and runc)"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock");
        let cni_dir = dir.path().join("net.d");
        std::fs::create_dir_all(&cni_dir).unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, config_toml(dir.path(), &socket, &cni_dir)).unwrap();
        let log = std::fs::File::create(dir.path().join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let c = Containerd {
            dir,
            child,
            socket,
            cni_dir,
        };
        let up = wait_until(std::time::Duration::from_secs(30), || {
            c.socket.exists() && c.ctr(&["version"]).status.success()
        });
        assert!(up, "containerd did not start:\n{}", c.log());
        let imgs = images();
        for tar in ["pause.tar", "busybox.tar"] {
            let out = c.ctr(&["images", "import", imgs.join(tar).to_str().unwrap()]);
            assert!(
                out.status.success(),
                "ctr images import {tar}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        c
    }

    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// `ctr` against this containerd, in the CRI plugin's `k8s.io` namespace.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
            .expect("ctr")
    }

    /// The ids `ctr … ls -q` lists (containers, tasks).
    pub fn ids(&self, what: &str) -> Vec<String> {
        let out = self.ctr(&[what, "ls", "-q"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    pub fn log(&self) -> String {
        let s = std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// The operator's config a Kelp node expects: the CRI plugin with a local pause image,
/// the CNI directory the agent writes to, and an OOM score it may set inside this
/// sandbox (lowering it below containerd's own needs CAP_SYS_RESOURCE, which test
/// machines in containers lack).
fn config_toml(dir: &Path, socket: &Path, cni_dir: &Path) -> String {
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
"#,
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        socket = socket.display(),
        cni = cni_dir.display(),
    )
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for task in self.ids("tasks") {
            let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", &task]);
            let _ = self.ctr(&["tasks", "delete", "-f", &task]);
        }
        for c in self.ids("containers") {
            let _ = self.ctr(&["containers", "delete", &c]);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- containerd log ---\n{}", self.log());
        }
        // The overlay snapshots' mounts are gone with the containers; what is left is
        // plain files.
    }
}
