//! The kubelet end to end: a real `kelp server`, a real `kelp agent` joining it with
//! the node token (kubelet over the in-process Wasm runtime), a real OCI registry
//! holding the example modules pushed with `kelp push`, and real `kubectl`.
//! Pods are pinned with `spec.nodeName` (no scheduler yet).

mod common;
#[path = "../runtime-wasm/tests/support/registry.rs"]
mod registry;

#[path = "common/agent.rs"]
mod agent;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agent::{
    condition, container_status, event_reasons, example, get_pod, ready_condition, wait_pod, Agent,
    DEADLINE,
};
use common::{kelp, push, wait_until, Backend, Checks, Cluster};
use serde_json::Value;

#[test]
fn node_registers_with_labels_capacity_conditions_and_a_renewed_lease() {
    let c = Cluster::start(Backend::Sqlite);
    let agent = Agent::start(&c);
    let node = c.kubectl_json(&["get", "node", &agent.name]);
    let mut k = Checks::default();
    let labels = &node["metadata"]["labels"];
    k.eq("os label", &labels["kubernetes.io/os"], "linux");
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    k.eq("arch label", &labels["kubernetes.io/arch"], arch);
    k.eq(
        "hostname label",
        labels["kubernetes.io/hostname"].as_str(),
        Some(agent.name.as_str()),
    );
    let cap = &node["status"]["capacity"];
    k.that(
        "capacity cpu is a whole number of cores",
        cap["cpu"]
            .as_str()
            .is_some_and(|s| s.parse::<u32>().is_ok_and(|n| n >= 1)),
    );
    k.that(
        "capacity memory in Ki",
        cap["memory"].as_str().is_some_and(|s| s.ends_with("Ki")),
    );
    // --max-pods (10000 by default), bounded by the pod range once the Node has one
    // (a /24 addresses 253 pods; re-posted with the status every minute).
    let range_bound = node["spec"]["podCIDR"]
        .as_str()
        .and_then(|c| c.split_once('/'))
        .and_then(|(_, p)| p.parse::<u32>().ok())
        .map(|p| ((1u64 << (32 - p)) - 3).min(10_000).to_string());
    k.that(
        "capacity pods is --max-pods or the pod range's size",
        cap["pods"] == "10000" || cap["pods"].as_str() == range_bound.as_deref(),
    );
    k.eq(
        "allocatable = capacity",
        &node["status"]["allocatable"],
        cap,
    );
    k.eq("Ready", &condition(&node, "Ready")["status"], "True");
    k.eq(
        "Ready reason",
        &condition(&node, "Ready")["reason"],
        "KubeletReady",
    );
    for p in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
        k.eq(p, &condition(&node, p)["status"], "False");
    }
    let info = &node["status"]["nodeInfo"];
    k.eq("kubeletVersion", &info["kubeletVersion"], "v1.32.0-kelp");
    k.eq(
        "containerRuntimeVersion",
        &info["containerRuntimeVersion"],
        "kelp-wasm://0.1.0",
    );
    k.eq("operatingSystem", &info["operatingSystem"], "linux");
    k.eq("architecture", &info["architecture"], arch);
    k.eq(
        "runtimeHandlers",
        &node["status"]["runtimeHandlers"][0]["name"],
        "wasm",
    );
    let addresses = node["status"]["addresses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    k.that(
        "an InternalIP address",
        addresses.iter().any(|a| a["type"] == "InternalIP"),
    );
    k.that(
        "a Hostname address",
        addresses.iter().any(|a| a["type"] == "Hostname"),
    );
    // kubectl's own view.
    let wide = c.kubectl_ok(&["get", "nodes", "-o", "wide"]);
    k.that(
        "kubectl get nodes shows the node Ready",
        wide.lines()
            .any(|l| l.starts_with(&agent.name) && l.contains(" Ready ")),
    );
    k.finish(&agent.log());

    // The lease is held by the node and renewed (every 10 s).
    let lease =
        |c: &Cluster| c.kubectl_json(&["get", "lease", "-n", "kube-node-lease", &agent.name]);
    let first = lease(&c);
    assert_eq!(first["spec"]["holderIdentity"], agent.name.as_str());
    assert_eq!(first["spec"]["leaseDurationSeconds"], 40);
    let t0 = first["spec"]["renewTime"].clone();
    assert!(t0.is_string(), "{first}");
    let renewed = wait_until(Duration::from_secs(30), || {
        lease(&c)["spec"]["renewTime"] != t0
    });
    assert!(renewed, "lease not renewed within 30s:\n{}", agent.log());
}

#[test]
fn pods_run_to_completion_run_until_deleted_and_are_deleted_gracefully() {
    let reg = registry::Registry::start();
    let hello = format!("{}/kelp/hello:v1", reg.addr);
    let counter = format!("{}/kelp/counter:v1", reg.addr);
    push(&example("wasm32-wasip1", "hello"), &hello);
    push(&example("wasm32-wasip1", "counter"), &counter);
    let c = Cluster::start(Backend::Sqlite);
    let agent = Agent::start(&c);
    let node = &agent.name;

    // hello runs to completion; its exit code comes from a Secret (secretKeyRef).
    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            r#"
apiVersion: v1
kind: Secret
metadata: {{name: exit}}
stringData: {{code: "0"}}
---
apiVersion: v1
kind: Pod
metadata: {{name: hello}}
spec:
  nodeName: {node}
  restartPolicy: Never
  containers:
  - name: hello
    image: {hello}
    args: ["from-args"]
    env:
    - name: EXIT_CODE
      valueFrom: {{secretKeyRef: {{name: exit, key: code}}}}
    - name: POD_NAME
      valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
"#
        ),
    );
    let pod = wait_pod(&c, &agent, "hello", "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    let cs = container_status(&pod);
    let mut k = Checks::default();
    let term = &cs["state"]["terminated"];
    k.eq("exitCode", &term["exitCode"], 0);
    k.eq("reason", &term["reason"], "Completed");
    k.that("startedAt", term["startedAt"].is_string());
    k.that("finishedAt", term["finishedAt"].is_string());
    k.that(
        "containerID wasm://",
        cs["containerID"]
            .as_str()
            .is_some_and(|s| s.starts_with("wasm://")),
    );
    k.that(
        "imageID names the digest",
        cs["imageID"]
            .as_str()
            .is_some_and(|s| s.contains("sha256:")),
    );
    k.eq("image", &cs["image"], hello.as_str());
    k.eq("ready", &cs["ready"], false);
    k.eq("restartCount", &cs["restartCount"], 0);
    k.eq(
        "Initialized",
        &condition(&pod, "Initialized")["status"],
        "True",
    );
    k.eq(
        "PodScheduled",
        &condition(&pod, "PodScheduled")["status"],
        "True",
    );
    k.eq(
        "Ready reason",
        &condition(&pod, "Ready")["reason"],
        "PodCompleted",
    );
    k.that("hostIP", pod["status"]["hostIP"].is_string());
    k.that("startTime", pod["status"]["startTime"].is_string());
    let log = std::fs::read_to_string(agent.pod_dir(&pod).join("hello/0.log")).unwrap_or_default();
    k.that(
        &format!("the CRI log has the output and the pod hostname: {log:?}"),
        log.contains("Hello from Kelp")
            && log.contains("from-args")
            && log.contains("HOSTNAME=hello"),
    );
    let get = c.kubectl_ok(&["get", "pod", "hello"]);
    k.that(
        &format!("kubectl get shows Completed: {get}"),
        get.contains("Completed"),
    );
    k.finish(&agent.log());

    // counter runs, is Ready with an IP, and has an emptyDir mounted.
    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: counter}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 5
  containers:
  - name: counter
    image: {counter}
    imagePullPolicy: IfNotPresent
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
  volumes:
  - name: scratch
    emptyDir: {{}}
"#
        ),
    );
    let pod = wait_pod(&c, &agent, "counter", "Running and Ready", |p| {
        p["status"]["phase"] == "Running" && condition(p, "Ready")["status"] == "True"
    });
    let mut k = Checks::default();
    let cs = container_status(&pod);
    k.that(
        "running.startedAt",
        cs["state"]["running"]["startedAt"].is_string(),
    );
    k.eq("ready", &cs["ready"], true);
    k.eq("started", &cs["started"], true);
    // An address from the node's pod range (the cluster CIDR; moved into 127/8 without
    // CAP_NET_ADMIN).
    let pod_ip = pod["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    k.that(
        "podIP from the pod network",
        pod_ip.starts_with("10.") || (pod_ip.starts_with("127.") && pod_ip != "127.0.0.1"),
    );
    k.eq("podIPs", &pod["status"]["podIPs"][0]["ip"], pod_ip.as_str());
    k.eq(
        "ContainersReady",
        &condition(&pod, "ContainersReady")["status"],
        "True",
    );
    let dir = agent.pod_dir(&pod);
    k.that(
        "the emptyDir exists under the pod directory",
        dir.join("volumes/kubernetes.io~empty-dir/scratch").is_dir(),
    );
    let counted = wait_until(DEADLINE, || {
        std::fs::read_to_string(dir.join("counter/0.log")).is_ok_and(|l| l.contains("count 1"))
    });
    k.that("counter keeps counting into its log", counted);
    k.finish(&agent.log());
    let reasons = event_reasons(&c, "counter");
    for r in ["Pulling", "Pulled", "Created", "Started"] {
        assert!(
            reasons.iter().any(|x| x == r),
            "no {r} event for counter: {reasons:?}"
        );
    }

    // kubectl delete: the kubelet stops it and confirms; the object goes away.
    c.kubectl_ok(&["delete", "pod", "counter", "--wait=true", "--timeout=60s"]);
    assert!(get_pod(&c, "counter").is_none());
    assert!(
        wait_until(DEADLINE, || !dir.exists()),
        "the pod directory {} was not cleaned up:\n{}",
        dir.display(),
        agent.log()
    );
    assert!(
        wait_until(DEADLINE, || event_reasons(&c, "counter")
            .iter()
            .any(|r| r == "Killing")),
        "no Killing event for counter"
    );
}

#[test]
fn crash_loops_back_off_and_pull_errors_and_unknown_handlers_are_reported() {
    let reg = registry::Registry::start();
    let hello = format!("{}/kelp/hello:v1", reg.addr);
    push(&example("wasm32-wasip1", "hello"), &hello);
    let c = Cluster::start(Backend::Sqlite);
    let agent = Agent::start(&c);
    let node = &agent.name;
    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: crash}}
data: {{code: "1"}}
---
apiVersion: v1
kind: Pod
metadata: {{name: crash}}
spec:
  nodeName: {node}
  containers:
  - name: app
    image: {hello}
    env:
    - name: EXIT_CODE
      valueFrom: {{configMapKeyRef: {{name: crash, key: code}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: missing}}
spec:
  nodeName: {node}
  containers:
  - name: app
    image: {}/kelp/does-not-exist:v1
---
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {{name: gvisor}}
handler: runsc
---
apiVersion: v1
kind: Pod
metadata: {{name: elsewhere}}
spec:
  nodeName: {node}
  runtimeClassName: gvisor
  containers:
  - name: app
    image: {hello}
"#,
            reg.addr
        ),
    );

    // restartPolicy Always, exit 1: restarted, with CrashLoopBackOff between restarts.
    let mut saw_back_off = false;
    let pod = wait_pod(&c, &agent, "crash", "restarted twice", |p| {
        let cs = container_status(p);
        saw_back_off |= cs["state"]["waiting"]["reason"] == "CrashLoopBackOff";
        // Seen between runs (a run of hello is short, but under load it may be
        // caught running, and a running container is Ready).
        saw_back_off
            && cs["restartCount"].as_i64().unwrap_or(0) >= 2
            && cs["state"]["running"].is_null()
    });
    let cs = container_status(&pod);
    let mut k = Checks::default();
    k.eq("phase", &pod["status"]["phase"], "Running");
    k.eq(
        "lastState exit code",
        &cs["lastState"]["terminated"]["exitCode"],
        1,
    );
    k.eq(
        "lastState reason",
        &cs["lastState"]["terminated"]["reason"],
        "Error",
    );
    k.eq("Ready", &condition(&pod, "Ready")["status"], "False");
    k.finish(&agent.log());
    assert!(
        event_reasons(&c, "crash").iter().any(|r| r == "BackOff"),
        "no BackOff event"
    );

    // A missing image: ErrImagePull, then ImagePullBackOff; the pod stays Pending.
    let pod = wait_pod(&c, &agent, "missing", "waiting on its image", |p| {
        let r = &container_status(p)["state"]["waiting"]["reason"];
        r == "ErrImagePull" || r == "ImagePullBackOff"
    });
    assert_eq!(pod["status"]["phase"], "Pending");
    assert!(
        event_reasons(&c, "missing").iter().any(|r| r == "Failed"),
        "no Failed event for the pull"
    );

    // A RuntimeClass whose handler this node does not serve: the pod fails, saying so.
    let pod = wait_pod(&c, &agent, "elsewhere", "Failed", |p| {
        p["status"]["phase"] == "Failed"
    });
    assert_eq!(pod["status"]["reason"], "UnknownRuntimeHandler");
    assert!(
        pod["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("runsc")),
        "{}",
        pod["status"]
    );
}

/// A child process killed by pid on drop, with its log shown on failure.
struct Process {
    what: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(what: &'static str, cmd: &mut Command, log: PathBuf) -> Process {
        let out = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .env("KELP_LOG", "info")
            .env_remove("KELP_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        Process { what, child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.what, self.log());
        }
    }
}

#[test]
fn an_agent_runs_pods_on_its_runtime_process_and_adopts_them_after_kill_9() {
    let reg = registry::Registry::start();
    let hello = format!("{}/kelp/hello:v1", reg.addr);
    push(&example("wasm32-wasip1", "hello"), &hello);
    let c = Cluster::start(Backend::Sqlite);
    // The default: the agent starts `kelp runtime` on DATA_DIR/runtime/cri.sock.
    let mut agent = Agent::start(&c);
    let endpoint = format!(
        "unix://{}",
        agent.data_dir.join("runtime/cri.sock").display()
    );
    let runtime_pid =
        common::node_runtime_pid(&agent.data_dir).expect("the agent records its runtime's pid");
    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: hello}}
spec:
  nodeName: {}
  restartPolicy: Never
  containers:
  - {{name: hello, image: "{hello}"}}
"#,
            agent.name
        ),
    );
    let pod = wait_pod(&c, &agent, "hello", "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    let cs = container_status(&pod);
    assert_eq!(cs["state"]["terminated"]["exitCode"], 0);
    assert!(cs["containerID"]
        .as_str()
        .is_some_and(|s| s.starts_with("wasm://")));

    // The runtime outlives the agent: a kill -9'd agent adopts the running pod (same
    // container, no restart) and tears down the sandbox of a pod deleted meanwhile.
    let counter = format!("{}/kelp/counter:v1", reg.addr);
    push(&example("wasm32-wasip1", "counter"), &counter);
    for name in ["counter", "doomed"] {
        c.kubectl_stdin_ok(
            &["apply", "-f", "-"],
            &format!(
                r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {}
  containers:
  - {{name: counter, image: "{counter}"}}
"#,
                agent.name
            ),
        );
    }
    let before = wait_pod(&c, &agent, "counter", "Running", |p| {
        p["status"]["phase"] == "Running"
    });
    let doomed = wait_pod(&c, &agent, "doomed", "Running", |p| {
        p["status"]["phase"] == "Running"
    });
    agent.kill_and_restart();
    // Deleted while no kubelet runs: forced, so the API forgets it at once.
    c.kubectl_ok(&["delete", "pod", "doomed", "--grace-period=0", "--force"]);
    agent.wait_ready(&c);
    let id = container_status(&before)["containerID"].clone();
    let after = wait_pod(&c, &agent, "counter", "adopted", |p| {
        p["status"]["phase"] == "Running" && container_status(p)["containerID"] == id
    });
    assert_eq!(container_status(&after)["restartCount"], 0);
    assert!(
        common::process_alive(runtime_pid)
            && common::node_runtime_pid(&agent.data_dir) == Some(runtime_pid),
        "the restarted agent did not adopt runtime {runtime_pid}:\n{}",
        agent.log()
    );
    // The adopted container still serves its streams (through the runtime's
    // streaming server): its log goes on, exec runs in it.
    let logs = c.kubectl(&["logs", "counter"]);
    assert!(logs.ok() && !logs.stdout.is_empty(), "{}", logs.stderr);
    let exec = c.kubectl(&["exec", "counter", "--", "counter", "--once"]);
    assert!(
        exec.ok(),
        "kubectl exec into the adopted pod: {}",
        exec.stderr
    );
    // The orphan's sandbox is removed from the runtime (found by its pod UID label).
    let uid = doomed["metadata"]["uid"].as_str().unwrap().to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stopped = wait_until(DEADLINE, || {
        rt.block_on(async {
            let (mut client, _) = kelp_cri_api::connect(&endpoint).await.expect("connect");
            let items = client
                .list_pod_sandbox(kelp_cri_api::v1::ListPodSandboxRequest { filter: None })
                .await
                .expect("ListPodSandbox")
                .into_inner()
                .items;
            !items
                .iter()
                .any(|sb| sb.labels.get("io.kubernetes.pod.uid") == Some(&uid))
        })
    });
    assert!(
        stopped,
        "the deleted pod's sandbox is still in the runtime:\n{}",
        agent.log()
    );
    // The runtime dies: the agent starts another, and the kubelet recreates the pod
    // that ended with it.
    let _ = Command::new("kill")
        .args(["-9", &runtime_pid.to_string()])
        .status();
    let restarted = wait_until(DEADLINE, || {
        common::node_runtime_pid(&agent.data_dir)
            .is_some_and(|p| p != runtime_pid && common::process_alive(p))
    });
    assert!(
        restarted,
        "no new runtime after the old one was killed:\n{}",
        agent.log()
    );
    let again = wait_pod(&c, &agent, "counter", "running on the new runtime", |p| {
        p["status"]["phase"] == "Running"
            && container_status(p)["containerID"] != id
            && container_status(p)["state"]["running"].is_object()
    });
    assert!(container_status(&again)["containerID"]
        .as_str()
        .is_some_and(|s| s.starts_with("wasm://")));

    // An orderly stop of the agent stops its runtime too.
    let new_pid = common::node_runtime_pid(&agent.data_dir).unwrap();
    let status = agent.terminate();
    assert!(status.success(), "kelp agent exited with {status}");
    assert!(
        !common::process_alive(new_pid),
        "runtime {new_pid} still runs after the agent stopped"
    );
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[test]
fn kelp_up_runs_a_node_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port().to_string();
    // Dropped after `up` (declared before it).
    let iface = common::Link::unique();
    let up = Process::spawn(
        "kelp up",
        kelp().arg("up").arg("--data-dir").arg(&data).args([
            "--https-port",
            &port,
            "--node-name",
            "solo",
            "--kubelet-port",
            "0",
            "--pod-interface",
            &iface.0,
        ]),
        dir.path().join("up.log"),
    );
    let kubeconfig = data.join("kubeconfig");
    let mut last = String::new();
    let ready = wait_until(DEADLINE, || {
        if !kubeconfig.exists() {
            return false;
        }
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["get", "node", "solo", "-o", "json"])
            .env("HOME", dir.path())
            .env_remove("KUBECONFIG")
            .output()
            .expect("kubectl");
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        serde_json::from_str::<Value>(&last)
            .ok()
            .and_then(|n| ready_condition(&n))
            .is_some_and(|s| s == "True")
    });
    assert!(
        ready,
        "kelp up's node never became Ready (last: {last}):\n{}",
        up.log()
    );
    assert!(up.log().contains("kelp up is serving the Kubernetes API"));
}
