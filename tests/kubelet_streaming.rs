//! The kubelet server and the API server's proxying to it, end to end: a real
//! `kelp server`, real `kelp agent` nodes (each kubelet server on a free port of the
//! node IP), a real registry and real kubectl for `logs`, `exec`, `attach` and
//! `port-forward`. Pods are pinned with `spec.nodeName`.

mod common;
#[path = "../runtime-wasm/tests/support/registry.rs"]
mod registry;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{kelp, push, wait_until, Backend, Cluster, Link, NodeRuntime};
use serde_json::Value;

/// Bound on every wait for a pod or node condition.
const DEADLINE: Duration = Duration::from_secs(60);

fn example_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/wasm/target")
        .join(target)
        .join("release")
}

fn example(target: &str, name: &str) -> PathBuf {
    let p = example_dir(target).join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-wasm-examples.sh",
        p.display()
    );
    p
}

/// A `kelp agent` joined with the node token, its kubelet server on a free port
/// (`--kubelet-port 0`); killed by pid on drop.
struct Agent {
    name: String,
    log: PathBuf,
    child: Child,
    /// Stopped, then deleted, after the agent is killed (fields drop after
    /// `Drop::drop`).
    _runtime: NodeRuntime,
    _iface: Link,
}

impl Agent {
    fn start(c: &Cluster) -> Agent {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "stream-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let log = c.path().join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("agent log");
        let iface = Link::unique();
        let child = kelp()
            .arg("agent")
            .args(["--server", &c.url()])
            .arg("--token-file")
            .arg(c.data_dir().join("node-token"))
            .arg("--ca-file")
            .arg(c.data_dir().join("tls/ca.crt"))
            .args(["--node-name", &name, "--kubelet-port", "0"])
            .arg("--data-dir")
            .arg(c.path().join(&name))
            .args(["--pod-interface", &iface.0])
            .env("KELP_LOG", "info,kelp_node_agent=debug")
            .env_remove("KELP_DATA_DIR")
            .env_remove("KELP_POD_INTERFACE")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("agent log"))
            .stderr(out)
            .spawn()
            .expect("spawn kelp agent");
        let agent = Agent {
            _runtime: NodeRuntime(c.path().join(&name)),
            name,
            log,
            child,
            _iface: iface,
        };
        let ok = wait_until(DEADLINE, || {
            let r = c.kubectl(&["get", "node", &agent.name, "-o", "json"]);
            r.ok()
                && serde_json::from_str::<Value>(&r.stdout)
                    .ok()
                    .and_then(|n| {
                        n["status"]["conditions"]
                            .as_array()?
                            .iter()
                            .find(|c| c["type"] == "Ready")
                            .map(|c| c["status"] == "True")
                    })
                    .unwrap_or(false)
        });
        assert!(
            ok,
            "node {} never became Ready:\n{}",
            agent.name,
            agent.log()
        );
        agent
    }

    fn log(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// The kubelet endpoint the Node advertises.
    fn kubelet_addr(&self, c: &Cluster) -> String {
        let node = c.kubectl_json(&["get", "node", &self.name]);
        let ip = node["status"]["addresses"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
            .and_then(|a| a["address"].as_str())
            .expect("InternalIP")
            .to_string();
        let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
            .as_u64()
            .expect("kubelet port");
        format!("{ip}:{port}")
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

/// Polls the pod until `cond` holds; panics with the last pod and the agent log.
fn wait_pod(
    c: &Cluster,
    agent: &Agent,
    name: &str,
    what: &str,
    mut cond: impl FnMut(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(DEADLINE, || {
        let r = c.kubectl(&["get", "pod", name, "-o", "json"]);
        last = serde_json::from_str(&r.stdout).unwrap_or(Value::Null);
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

fn running(p: &Value) -> bool {
    p["status"]["phase"] == "Running"
        && p["status"]["containerStatuses"][0]["state"]["running"].is_object()
}

#[test]
fn logs_of_finished_running_and_restarted_containers() {
    let reg = registry::Registry::start();
    let hello = format!("{}/kelp/hello:v1", reg.addr);
    let counter = format!("{}/kelp/counter:v1", reg.addr);
    push(&example("wasm32-wasip1", "hello"), &hello);
    push(&example("wasm32-wasip1", "counter"), &counter);
    let c = Cluster::start(Backend::Sqlite);
    let agent = Agent::start(&c);
    let node = &agent.name;
    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: hello}}
spec:
  nodeName: {node}
  restartPolicy: Never
  containers:
  - {{name: hello, image: {hello}, args: ["from-args", "--stderr"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: again}}
spec:
  nodeName: {node}
  restartPolicy: Always
  containers:
  - {{name: again, image: {hello}, args: ["run"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: counter}}
spec:
  nodeName: {node}
  containers:
  - {{name: counter, image: {counter}}}
"#
        ),
    );

    // A wasip1 pod that ran to completion: its output, both streams.
    wait_pod(&c, &agent, "hello", "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    let out = c.kubectl_ok(&["logs", "hello"]);
    assert!(
        out.contains("Hello from Kelp\nargs: hello from-args --stderr\n"),
        "{out}"
    );
    assert!(out.contains("hello on stderr\n"), "{out}");
    let tail = c.kubectl_ok(&["logs", "hello", "--tail=1"]);
    assert_eq!(tail.lines().count(), 1, "{tail}");
    let ts = c.kubectl_ok(&["logs", "hello", "--timestamps", "--limit-bytes=200"]);
    let first = ts.lines().next().unwrap_or_default();
    let (stamp, rest) = first.split_once(' ').unwrap_or_default();
    assert!(
        stamp.contains('T') && stamp.ends_with('Z') && rest == "Hello from Kelp",
        "{ts}"
    );
    assert!(ts.len() <= 200);
    let since = c.kubectl_ok(&["logs", "hello", "--since-time=2999-01-01T00:00:00Z"]);
    assert_eq!(since, "");
    // Errors in upstream's words.
    let err = c.kubectl_err(&["logs", "hello", "-c", "nope"]);
    assert!(
        err.contains("container nope is not valid for pod hello"),
        "{err}"
    );
    let err = c.kubectl_err(&["logs", "missing"]);
    assert!(err.contains("pods \"missing\" not found"), "{err}");

    // Following a running counter: lines keep arriving.
    wait_pod(&c, &agent, "counter", "Running", running);
    let mut follow = c.kubectl_spawn(&["logs", "-f", "counter"]);
    let ok = wait_until(Duration::from_secs(20), || {
        follow.stdout().lines().count() >= 4
    });
    let seen = follow.stdout();
    assert!(
        ok,
        "kubectl logs -f printed only {seen:?}; {}",
        follow.stderr()
    );
    let lines: Vec<&str> = seen.lines().collect();
    assert!(lines.windows(2).all(|w| w[0] != w[1]), "{seen}");
    let later = wait_until(Duration::from_secs(10), || {
        follow.stdout().lines().count() > lines.len()
    });
    assert!(later, "no new lines after {seen:?}");
    assert!(
        follow.exited().is_none(),
        "kubectl logs -f ended while the container runs"
    );
    drop(follow);

    // kubectl top: metrics.k8s.io figures from the kubelet's summary.
    let mut last = None;
    let ok = wait_until(DEADLINE, || {
        let r = c.kubectl(&["top", "pod", "counter", "--no-headers"]);
        let ok = r.ok() && top_row_has_figures(&r.stdout, "counter");
        last = Some(r);
        ok
    });
    assert!(ok, "kubectl top pod printed no figures: {last:?}");
    let containers = c.kubectl_ok(&["top", "pod", "counter", "--containers", "--no-headers"]);
    assert!(
        containers.split_whitespace().nth(1) == Some("counter"),
        "{containers}"
    );
    let nodes = c.kubectl_ok(&["top", "node", "--no-headers"]);
    assert!(top_row_has_figures(&nodes, node), "{nodes}");
    let err = c.kubectl_err(&["top", "pod", "missing"]);
    assert!(
        err.contains("podmetrics.metrics.k8s.io \"default/missing\" not found"),
        "{err}"
    );
    let raw = c.kubectl_ok(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/pods"]);
    let listed: Value = serde_json::from_str(&raw).expect("a PodMetricsList");
    assert_eq!(listed["kind"], "PodMetricsList", "{listed}");
    assert!(
        listed["items"]
            .as_array()
            .is_some_and(|i| i.iter().any(|p| p["metadata"]["name"] == "counter")),
        "{listed}"
    );

    let err = c.kubectl_err(&["logs", "counter", "--previous"]);
    assert!(
        err.contains("previous terminated container \"counter\" in pod \"counter\" not found"),
        "{err}"
    );

    // --previous: the output of the instance before the restart.
    wait_pod(&c, &agent, "again", "restarted", |p| {
        p["status"]["containerStatuses"][0]["restartCount"].as_i64() >= Some(1)
    });
    let prev = c.kubectl_ok(&["logs", "again", "--previous"]);
    assert!(prev.contains("args: again run"), "{prev}");
}

/// `curl` against the kubelet server: (HTTP status, body), or `None` when the
/// request did not complete (e.g. the TLS handshake was refused).
fn curl(url: &str, extra: &[&str]) -> Option<(u16, String)> {
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .expect("running curl");
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n')?;
    Some((code.trim().parse().ok()?, body.to_string()))
}

#[test]
fn the_kubelet_server_authenticates_clients_by_ca_signed_certificate() {
    let c = Cluster::start(Backend::Sqlite);
    let agent = Agent::start(&c);
    let base = format!("https://{}", agent.kubelet_addr(&c));
    let tls = c.data_dir().join("tls");
    let (admin_crt, admin_key) = (tls.join("admin.crt"), tls.join("admin.key"));
    let cert_args = [
        "--cert",
        admin_crt.to_str().unwrap(),
        "--key",
        admin_key.to_str().unwrap(),
    ];

    // /healthz is open; everything else needs a certificate of the cluster CA.
    assert_eq!(
        curl(&format!("{base}/healthz"), &[]),
        Some((200, "ok".into()))
    );
    let anon = curl(&format!("{base}/containerLogs/default/p/c"), &[]);
    assert_eq!(anon, Some((401, "Unauthorized".into())));
    assert_eq!(
        curl(&format!("{base}/stats/summary"), &[]).map(|r| r.0),
        Some(401)
    );
    let authed = curl(&format!("{base}/containerLogs/default/p/c"), &cert_args);
    assert_eq!(
        authed,
        Some((404, "pod \"default/p\" does not exist\n".into()))
    );

    // A certificate from another CA is refused in the handshake.
    let dir = c.path().join("rogue");
    std::fs::create_dir_all(&dir).unwrap();
    let (crt, key) = (dir.join("rogue.crt"), dir.join("rogue.key"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args([
            "-subj",
            "/CN=system:masters-impostor",
            "-days",
            "1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .stderr(Stdio::null())
        .status()
        .expect("openssl")
        .success();
    assert!(ok, "openssl could not make a certificate");
    let rogue = curl(
        &format!("{base}/containerLogs/default/p/c"),
        &[
            "--cert",
            crt.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert!(
        rogue.as_ref().is_none_or(|r| r.0 != 404 && r.0 != 200),
        "a certificate of another CA was accepted: {rogue:?}"
    );

    // The serving certificate is the node's own, self-signed, naming the node IP.
    let served = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo | openssl s_client -connect {} 2>/dev/null | openssl x509 -noout -text",
            agent.kubelet_addr(&c)
        ))
        .output()
        .expect("openssl s_client");
    let text = String::from_utf8_lossy(&served.stdout);
    let ip = agent
        .kubelet_addr(&c)
        .rsplit_once(':')
        .unwrap()
        .0
        .to_string();
    assert!(text.contains(&format!("IP Address:{ip}")), "{text}");
    assert!(text.contains("DNS:"), "{text}");
}

#[test]
fn exec_returns_exit_codes_and_takes_stdin_and_attach_streams_output() {
    let reg = registry::Registry::start();
    let counter = format!("{}/kelp/counter:v1", reg.addr);
    push(&example("wasm32-wasip1", "counter"), &counter);
    let c = Cluster::start(Backend::Sqlite);
    let agent = Agent::start(&c);
    let node = &agent.name;
    // hello.wasm reaches the pod through a hostPath volume: `kubectl exec` runs a
    // .wasm from the container's mounts, or the container's own module again.
    let examples = example_dir("wasm32-wasip1");
    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: counter}}
spec:
  nodeName: {node}
  containers:
  - name: counter
    image: {counter}
    env: [{{name: EXIT_CODE, value: "3"}}]
    volumeMounts: [{{name: ex, mountPath: /ex}}]
  volumes:
  - {{name: ex, hostPath: {{path: "{}"}}}}
"#,
            examples.display()
        ),
    );
    wait_pod(&c, &agent, "counter", "Running", running);

    let out = c.kubectl_ok(&["exec", "counter", "--", "counter", "--once"]);
    assert_eq!(out, "count 0\n");
    let r = c.kubectl(&["exec", "counter", "--", "/ex/hello.wasm", "a b"]);
    assert_eq!(r.status.code(), Some(3), "exit code; stderr: {}", r.stderr);
    assert!(
        r.stdout.contains("args: /ex/hello.wasm a b\n"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("command terminated with exit code 3"),
        "{}",
        r.stderr
    );
    let r = c.kubectl_stdin(
        &[
            "exec",
            "-i",
            "counter",
            "--",
            "/ex/hello.wasm",
            "--stdin",
            "--stderr",
        ],
        "piped input\n",
    );
    assert_eq!(r.status.code(), Some(3), "{}", r.stderr);
    assert!(
        r.stdout.contains("stdin: 12 bytes: piped input\n"),
        "{}",
        r.stdout
    );
    assert!(r.stderr.contains("hello on stderr"), "{}", r.stderr);
    let err = c.kubectl_err(&["exec", "counter", "--", "/nope/x.wasm"]);
    assert!(
        err.contains("not inside any of the container's mounts"),
        "{err}"
    );
    let err = c.kubectl_err(&["exec", "counter", "-c", "other", "--", "x"]);
    assert!(
        err.contains("container other is not valid for pod counter"),
        "{err}"
    );

    // The Summary API (what metrics-server reads), with the cluster's admin cert.
    let tls = c.data_dir().join("tls");
    let url = format!("https://{}/stats/summary", agent.kubelet_addr(&c));
    let cert = tls.join("admin.crt");
    let key = tls.join("admin.key");
    let args = [
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    let first = curl(&url, &args).expect("summary");
    assert_eq!(first.0, 200, "{}", first.1);
    let _ = curl(&url, &args);
    let (_, body) = curl(&url, &args).expect("summary");
    let v: Value = serde_json::from_str(&body).expect("summary JSON");
    assert_eq!(v["node"]["nodeName"], node.as_str());
    assert!(
        v["node"]["memory"]["workingSetBytes"].as_u64() > Some(0),
        "{v}"
    );
    assert!(v["node"]["cpu"]["usageNanoCores"].is_u64(), "{v}");
    let pod = v["pods"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["podRef"]["name"] == "counter"))
        .unwrap_or_else(|| panic!("no counter pod in {v}"));
    let ctr = &pod["containers"][0];
    assert_eq!(ctr["name"], "counter");
    assert!(ctr["memory"]["workingSetBytes"].as_u64() > Some(0), "{ctr}");
    assert!(
        ctr["cpu"]["usageCoreNanoSeconds"].as_u64() > Some(0),
        "{ctr}"
    );
    assert!(ctr["cpu"]["usageNanoCores"].is_u64(), "{ctr}");

    let (code, text) = curl(
        &format!("https://{}/metrics", agent.kubelet_addr(&c)),
        &args,
    )
    .expect("metrics");
    assert_eq!(code, 200);
    assert!(text.contains("kubelet_running_pods 1\n"), "{text}");
    assert!(
        text.contains("kubelet_running_containers{container_state=\"running\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "kubelet_http_requests_total{method=\"GET\",path=\"stats\",server_type=\"https\"} 3\n"
        ),
        "{text}"
    );

    // attach: the running container's output as it is written.
    let mut att = c.kubectl_spawn(&["attach", "counter"]);
    let ok = wait_until(Duration::from_secs(20), || {
        att.stdout().lines().count() >= 2
    });
    assert!(
        ok,
        "kubectl attach printed {:?}; {}",
        att.stdout(),
        att.stderr()
    );
    assert!(att.stdout().starts_with("count "), "{}", att.stdout());
    assert!(att.exited().is_none());
}

#[test]
fn port_forward_reaches_a_wasi_http_pod() {
    let reg = registry::Registry::start();
    let http = format!("{}/kelp/http-hello:v1", reg.addr);
    push(&example("wasm32-wasip2", "http_hello"), &http);
    let c = Cluster::start(Backend::Sqlite);
    let agent = Agent::start(&c);
    let node = &agent.name;
    let pod_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  nodeName: {node}
  containers:
  - name: web
    image: {http}
    ports: [{{containerPort: {pod_port}}}]
"#
        ),
    );
    wait_pod(&c, &agent, "web", "Running", running);
    let (a, b) = (
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
    );
    let (local, dead) = (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    );
    drop((a, b));
    let pf = c.kubectl_spawn(&[
        "port-forward",
        "pod/web",
        &format!("{local}:{pod_port}"),
        &format!("{dead}:1"),
    ]);
    let ok = wait_until(Duration::from_secs(20), || {
        pf.stdout().contains("Forwarding from")
    });
    assert!(
        ok,
        "port-forward never started: {} {}",
        pf.stdout(),
        pf.stderr()
    );
    for path in ["/one", "/two"] {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "10"])
            .arg(format!("http://127.0.0.1:{local}{path}"))
            .output()
            .expect("curl");
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            body.contains("Hello from Kelp over wasi:http") && body.contains(path),
            "GET {path} through port-forward: {body:?}; kubectl: {} {}",
            pf.stdout(),
            pf.stderr()
        );
    }
    // A port nothing listens on: the dial error reaches kubectl on the error stream
    // (kubectl 1.32 then prints it and ends the session, "lost connection to pod").
    let _ = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{dead}/"))
        .output();
    let reported = wait_until(Duration::from_secs(10), || {
        pf.stderr().contains("error forwarding port 1 to pod")
    });
    assert!(reported, "kubectl stderr: {}", pf.stderr());
    assert!(
        pf.stderr().contains("dial tcp ") && pf.stderr().contains(":1: connect"),
        "{}",
        pf.stderr()
    );
}

/// A `kubectl top` line for `name` with a CPU figure (`12m`) and a memory figure
/// (`3Mi`).
fn top_row_has_figures(out: &str, name: &str) -> bool {
    out.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.first() == Some(&name)
            && f.get(1)
                .is_some_and(|c| c.ends_with('m') && c[..c.len() - 1].parse::<u64>().is_ok())
            && f.iter()
                .skip(2)
                .any(|m| m.ends_with("Mi") || m.ends_with("Ki"))
    })
}
