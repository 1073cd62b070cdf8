//! Linux containers through a real containerd, side by side with Wasm pods on one
//! `kelp up` node (issue 7): Deployments on runc, logs/exec/port-forward, OOMKilled,
//! securityContext, Wasm ⇄ Linux through Services and cluster DNS, and nothing left in
//! containerd once the pods are deleted. A node without containerd never gets a Linux
//! pod.
//!
//! The tests share host-wide resources (the CNI bridge's routes, cluster DNS on port
//! 53), so they run one at a time.

mod common;
#[path = "common/containerd.rs"]
mod containerd;
#[path = "../runtime-wasm/tests/support/registry.rs"]
mod registry;
#[path = "common/up.rs"]
mod up;

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::wait_until;
use containerd::{Containerd, BUSYBOX_IMAGE};
use serde_json::Value;
use up::{http_hello, push_as, Up, DEADLINE};

static SERIAL: Mutex<()> = Mutex::new(());

fn curl(url: &str) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "-m", "10", url])
        .output()
        .expect("curl");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Waits until `cond` holds for the JSON of `kubectl get ARGS -o json`; returns it.
fn wait_json(up: &Up, args: &[&str], what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(DEADLINE, || {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        last = up
            .kubectl(&a)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null);
        cond(&last)
    });
    assert!(ok, "{what}: last seen {last:#}\n{}", up.log());
    last
}

fn pods_running(list: &Value, n: usize) -> bool {
    let items = list["items"].as_array().cloned().unwrap_or_default();
    items.len() == n
        && items.iter().all(|p| {
            p["status"]["phase"] == "Running"
                && p["status"]["containerStatuses"][0]["ready"] == true
        })
}

fn in_cidr(ip: std::net::Ipv4Addr, cidr: &str) -> bool {
    let (net, len) = cidr.split_once('/').unwrap();
    let net: std::net::Ipv4Addr = net.parse().unwrap();
    let mask = u32::MAX
        .checked_shl(32 - len.parse::<u32>().unwrap())
        .unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

const APPS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: linux-web}
spec:
  replicas: 2
  selector: {matchLabels: {app: linux-web}}
  template:
    metadata: {labels: {app: linux-web}}
    spec:
      imagePullSecrets: [{name: regcred}]
      containers:
      - name: httpd
        image: LINUX_IMAGE
        imagePullPolicy: Always
        command: ["sh", "-c", "echo serving from $(hostname); httpd -p 127.0.0.1:8081 -h /www; exec httpd -f -p 8080 -h /www"]
        ports: [{containerPort: 8080}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: linux-web}
spec:
  selector: {app: linux-web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: wasm-web}
spec:
  replicas: 1
  selector: {matchLabels: {app: wasm-web}}
  template:
    metadata: {labels: {app: wasm-web}}
    spec:
      imagePullSecrets: [{name: regcred}]
      containers:
      - name: web
        image: WASM_IMAGE
        ports: [{containerPort: 8080}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: wasm-web}
spec:
  selector: {app: wasm-web}
  ports: [{port: 80, targetPort: 8080}]
"#;

const ONE_SHOTS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: oom}
spec:
  runtimeClassName: runc
  restartPolicy: Never
  containers:
  - name: hog
    image: BUSYBOX
    command: ["sh", "-c", "exec dd if=/dev/zero of=/dev/null bs=100M count=1"]
    resources: {limits: {memory: 32Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: locked-down}
spec:
  runtimeClassName: runc
  restartPolicy: Never
  securityContext: {runAsUser: 65534, runAsGroup: 65534, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: main
    image: BUSYBOX
    command: ["sh", "-c", "echo uid=$(id -u) gid=$(id -g); touch /written 2>/dev/null && echo rootfs=writable || echo rootfs=readonly"]
    securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
"#;

/// Issue 7's done-when on one node: the busybox Deployment under runc (pulled through
/// CRI from a registry), logs, exec (exit codes, a TTY), port-forward, OOMKilled, the
/// security context, Wasm → Linux and Linux → Wasm through Services by DNS name, and
/// containerd empty after the deletes.
#[test]
fn linux_and_wasm_pods_share_a_node() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ctd = Containerd::start();
    // Both images come from a registry behind basic auth, pulled with the pods'
    // imagePullSecrets: the Wasm one by the Wasm runtime, the Linux one by containerd.
    let reg = registry::Registry::start_with_auth("kelp", "pa55");
    let wasm_image = format!("{}/kelp/http-hello:v1", reg.addr);
    push_as(&http_hello(), &wasm_image, Some(("kelp", "pa55")));
    // The Deployment's image comes from the registry through containerd's CRI pull.
    let linux_image = format!("{}/kelp/busybox:1.35", reg.addr);
    push_busybox(&ctd, &linux_image, Some("kelp:pa55"));

    let bridge = common::Link(format!("kelpb{}", std::process::id() % 100_000));
    let up = Up::start(
        "ctd",
        "info",
        &[
            "--container-runtime-endpoint".into(),
            ctd.endpoint(),
            "--cni-conf-dir".into(),
            ctd.cni_dir.display().to_string(),
            "--cni-bridge".into(),
            bridge.0.clone(),
        ],
    );
    let node = up.json(&["get", "node", &up.node]);
    let handlers: Vec<&str> = node["status"]["runtimeHandlers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["name"].as_str())
        .collect();
    assert_eq!(handlers, ["runc", "wasm"], "the node serves both runtimes");

    up.kubectl(&[
        "create",
        "secret",
        "docker-registry",
        "regcred",
        &format!("--docker-server={}", reg.addr),
        "--docker-username=kelp",
        "--docker-password=pa55",
    ])
    .unwrap();
    up.apply(
        &APPS
            .replace("LINUX_IMAGE", &linux_image)
            .replace("WASM_IMAGE", &wasm_image),
    );
    let linux = wait_json(
        &up,
        &["get", "pods", "-l", "app=linux-web"],
        "2 Linux pods ready",
        |l| pods_running(l, 2),
    );
    let wasm = wait_json(
        &up,
        &["get", "pods", "-l", "app=wasm-web"],
        "the Wasm pod ready",
        |l| pods_running(l, 1),
    );
    let pod_cidr = node["spec"]["podCIDR"].as_str().unwrap().to_string();
    for p in linux["items"].as_array().unwrap() {
        let cs = &p["status"]["containerStatuses"][0];
        assert!(
            cs["containerID"]
                .as_str()
                .unwrap()
                .starts_with("containerd://"),
            "{cs}"
        );
        let ip: std::net::Ipv4Addr = p["status"]["podIP"].as_str().unwrap().parse().unwrap();
        assert!(in_cidr(ip, &pod_cidr), "{ip} in the node's {pod_cidr}");
    }
    let wasm_pod = &wasm["items"][0];
    assert!(wasm_pod["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap()
        .starts_with("wasm://"));
    let bb = linux["items"][0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let bb_ip = linux["items"][0]["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_string();

    // Reachable from the node at its own address.
    assert_eq!(
        curl(&format!("http://{bb_ip}:8080/")).unwrap(),
        "hello from a Linux container\n"
    );
    // kubectl logs.
    let logs = up.kubectl(&["logs", &bb]).unwrap();
    assert!(logs.contains(&format!("serving from {bb}")), "{logs}");
    // kubectl exec: output, exit code, stdin.
    let out = up
        .kubectl(&["exec", &bb, "--", "sh", "-c", "echo hi; hostname"])
        .unwrap();
    assert_eq!(out, format!("hi\n{bb}\n"));
    let err = up
        .kubectl(&["exec", &bb, "--", "sh", "-c", "exit 3"])
        .unwrap_err();
    assert!(err.contains("exit code 3"), "{err}");
    // stdin, to its end: `cat` exits once the client closes its stdin.
    let echoed = up
        .kubectl_in(&["exec", "-i", &bb, "--", "cat"], Some("piped input\n"))
        .unwrap();
    assert_eq!(echoed, "piped input\n");
    // -it through a pseudo-terminal (script gives kubectl one).
    let tty = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "kubectl --kubeconfig {} exec -it {bb} -- sh -c 'echo hi; tty'",
            up.kubeconfig().display()
        ))
        .arg("/dev/null")
        .env("HOME", up.dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("script");
    let tty_out = String::from_utf8_lossy(&tty.stdout);
    assert!(
        tty.status.success(),
        "exec -it: {tty_out}{}",
        String::from_utf8_lossy(&tty.stderr)
    );
    assert!(tty_out.contains("hi\r\n"), "{tty_out:?}");
    assert!(
        tty_out.contains("/dev/pts/"),
        "the command has a terminal: {tty_out:?}"
    );

    // kubectl port-forward, to a port the container serves on its own 127.0.0.1 only:
    // reached through containerd's port-forward in the pod's network namespace.
    assert!(
        curl(&format!("http://{bb_ip}:8081/")).is_err(),
        "8081 is not served on the pod's address"
    );
    let port = up::free_port();
    let mut pf = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(up.kubeconfig())
        .args([
            "port-forward",
            &format!("pod/{bb}"),
            &format!("{port}:8081"),
        ])
        .env("HOME", up.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl port-forward");
    let mut body = Err(String::new());
    let forwarded = wait_until(Duration::from_secs(30), || {
        body = curl(&format!("http://127.0.0.1:{port}/"));
        body.is_ok()
    });
    let _ = pf.kill();
    let pf_out = pf.wait_with_output().expect("kubectl port-forward");
    assert!(
        forwarded,
        "port-forward: {body:?}\nkubectl: {}",
        String::from_utf8_lossy(&pf_out.stderr)
    );
    assert_eq!(body.unwrap(), "hello from a Linux container\n");

    // Wasm → Linux through the Service by name (cluster DNS, the proxy, the bridge).
    let wasm_ip = wasm_pod["status"]["podIP"].as_str().unwrap();
    let mut seen = Err(String::new());
    let ok = wait_until(Duration::from_secs(30), || {
        seen = curl(&format!(
            "http://{wasm_ip}:8080/fetch/linux-web.default.svc.cluster.local/"
        ));
        seen.as_deref()
            .is_ok_and(|b| b.contains("hello from a Linux container"))
    });
    assert!(ok, "Wasm pod → linux-web Service: {seen:?}\n{}", up.log());
    // Linux → Wasm through the Service by name, from inside the container: the name
    // through cluster DNS (busybox's own resolver: the static glibc build's
    // getaddrinfo needs NSS modules the image lacks), then HTTP to the address.
    let svc_ip = up.json(&["get", "service", "wasm-web"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    let lookup = up
        .kubectl(&[
            "exec",
            &bb,
            "--",
            "nslookup",
            "wasm-web.default.svc.cluster.local",
        ])
        .unwrap_or_else(|e| panic!("nslookup in the Linux pod: {e}"));
    assert!(
        lookup.contains(&svc_ip),
        "DNS answers the ClusterIP {svc_ip}: {lookup}"
    );
    let mut back = Err(String::new());
    let ok = wait_until(Duration::from_secs(30), || {
        // nc, not wget: busybox's wget looks up "http" in /etc/services through NSS.
        back = up.kubectl(&[
            "exec",
            &bb,
            "--",
            "sh",
            "-c",
            &format!("printf 'GET / HTTP/1.1\\r\\nhost: wasm-web\\r\\nconnection: close\\r\\n\\r\\n' | nc -w 5 {svc_ip} 80"),
        ]);
        back.as_deref()
            .is_ok_and(|b| b.to_lowercase().contains("hello"))
    });
    assert!(ok, "Linux pod → wasm-web Service: {back:?}\n{}", up.log());

    // OOMKilled and the security context.
    up.apply(&ONE_SHOTS.replace("BUSYBOX", BUSYBOX_IMAGE));
    // containerd's CRI sets `OOMKilled` when the shim's OOM event arrives, which can
    // be after the exit event (until then the container reads as `Error`); the
    // kubelet keeps syncing a finished pod's container statuses, so the reason
    // converges.
    let oom = wait_json(&up, &["get", "pod", "oom"], "the hog OOM-killed", |p| {
        p["status"]["phase"] == "Failed"
            && p["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "OOMKilled"
    });
    let term = &oom["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(term["exitCode"], 137, "{term}");
    wait_json(
        &up,
        &["get", "pod", "locked-down"],
        "locked-down done",
        |p| p["status"]["phase"] == "Succeeded",
    );
    let logs = up.kubectl(&["logs", "locked-down"]).unwrap();
    assert_eq!(logs, "uid=65534 gid=65534\nrootfs=readonly\n");

    // A pod mixing a Wasm and a Linux image: refused with a clear reason.
    up.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: mixed}}\nspec:\n  imagePullSecrets: [{{name: regcred}}]\n  containers:\n  - {{name: wasm, image: {wasm_image}}}\n  - {{name: linux, image: {BUSYBOX_IMAGE}}}\n"
    ));
    let mixed = wait_json(
        &up,
        &["get", "pod", "mixed"],
        "the mixed pod refused",
        |p| p["status"]["phase"] == "Failed",
    );
    assert_eq!(
        mixed["status"]["reason"], "MixedRuntimes",
        "{}",
        mixed["status"]
    );
    assert!(
        mixed["status"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot share a pod"),
        "{}",
        mixed["status"]
    );
    up.kubectl(&["delete", "pod", "mixed"]).unwrap();

    // Deleting everything leaves nothing in containerd.
    up.kubectl(&["delete", "deployment", "linux-web", "wasm-web"])
        .unwrap();
    up.kubectl(&["delete", "pod", "oom", "locked-down"])
        .unwrap();
    wait_json(&up, &["get", "pods"], "every pod gone", |l| {
        l["items"].as_array().is_some_and(|i| i.is_empty())
    });
    let mut left = (Vec::new(), Vec::new());
    let empty = wait_until(Duration::from_secs(30), || {
        left = (ctd.ids("containers"), ctd.ids("tasks"));
        left.0.is_empty() && left.1.is_empty()
    });
    assert!(
        empty,
        "containerd still holds containers {:?} and tasks {:?}",
        left.0, left.1
    );
    drop(up);
}

/// Pushes the busybox image to a registry as `image` through containerd (`auth`:
/// `user:password`).
fn push_busybox(ctd: &Containerd, image: &str, auth: Option<&str>) {
    let mut push = vec!["images", "push", "--plain-http"];
    if let Some(a) = auth {
        push.extend(["--user", a]);
    }
    push.push(image);
    for args in [
        vec!["images", "tag", BUSYBOX_IMAGE, image],
        push,
        vec!["images", "rm", image],
    ] {
        let out = ctd.ctr(&args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A node started without containerd serves only `wasm`: a pod of RuntimeClass `runc`
/// is never scheduled, nor is a pod naming no RuntimeClass whose image is a Linux image
/// (the scheduler reads its manifest in the registry), and the FailedScheduling events
/// say why; a pod naming none whose image is Wasm runs.
#[test]
fn a_node_without_containerd_gets_no_linux_pods() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // containerd only puts the busybox image into the registry; the node has none.
    let reg = registry::Registry::start();
    let linux_image = format!("{}/kelp/busybox:1.35", reg.addr);
    push_busybox(&Containerd::start(), &linux_image, None);
    let wasm_image = format!("{}/kelp/http-hello:v1", reg.addr);
    push_as(&http_hello(), &wasm_image, None);

    let up = Up::start("wasmonly", "info", &[]);
    up.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: linux}}\nspec:\n  runtimeClassName: runc\n  containers:\n  - name: main\n    image: {BUSYBOX_IMAGE}\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata: {{name: linux-by-image}}\nspec:\n  containers:\n  - name: main\n    image: {linux_image}\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata: {{name: wasm-by-image}}\nspec:\n  containers:\n  - name: main\n    image: {wasm_image}\n"
    ));
    // The scheduler retries; an early attempt may see another reason (a node that
    // looked unreachable for a moment on a loaded machine), so wait for the handler.
    for (pod, says) in [
        ("linux", "runtime handler \"runc\" of RuntimeClass \"runc\""),
        (
            "linux-by-image",
            "runtime handler \"runc\" its images need (the pod names no RuntimeClass)",
        ),
    ] {
        wait_json(
            &up,
            &[
                "get",
                "events",
                "--field-selector",
                &format!("involvedObject.name={pod},reason=FailedScheduling"),
            ],
            &format!("a FailedScheduling event for {pod} naming the missing runtime handler"),
            |l| {
                l["items"].as_array().is_some_and(|i| {
                    i.iter()
                        .any(|e| e["message"].as_str().is_some_and(|m| m.contains(says)))
                })
            },
        );
        let pod = up.json(&["get", "pod", pod]);
        assert_eq!(pod["spec"]["nodeName"], Value::Null);
    }
    wait_json(
        &up,
        &["get", "pod", "wasm-by-image"],
        "the Wasm pod naming no RuntimeClass Running",
        |p| p["status"]["phase"] == "Running",
    );
}
