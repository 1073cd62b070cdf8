//! The kubelet's pod features end to end: probes (readiness flipping with a ConfigMap
//! update that propagates into a running pod's volume, liveness restarts), volumes
//! and env the module sees (configMap, secret, downwardAPI, projected,
//! resourceFieldRef), activeDeadlineSeconds, emptyDir sizeLimit eviction, a changed
//! image recreating the container, and imagePullSecrets against a registry behind
//! basic auth. Real `kelp server`, `kelp agent`, docker-registry and kubectl; pods
//! pinned with `spec.nodeName`.

#[path = "common/agent.rs"]
mod agent;
mod common;
#[path = "../runtime-wasm/tests/support/registry.rs"]
mod registry;

use std::net::TcpListener;
use std::time::Duration;

use agent::{
    condition, container_status, events, example, get_pod, push, push_as, wait_pod, Agent, DEADLINE,
};
use common::{wait_until, Backend, Checks, Cluster};
use serde_json::Value;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET http://IP:PORT/PATH` with a plain socket: (status, body).
fn http_get(ip: &str, port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect((ip, port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

fn ready_status(pod: &Value) -> String {
    condition(pod, "Ready")["status"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Waits for an event about `pod` with `reason` whose message contains `text`.
fn wait_event(c: &Cluster, agent: &Agent, pod: &str, reason: &str, text: &str) {
    let mut last = vec![];
    let ok = wait_until(DEADLINE, || {
        last = events(c, pod);
        last.iter().any(|(r, m, _)| r == reason && m.contains(text))
    });
    assert!(
        ok,
        "no {reason} event containing {text:?} for {pod}; events: {last:#?}\n--- agent log ---\n{}",
        agent.log()
    );
}

#[test]
fn probes_flip_readiness_with_a_configmap_update_and_restart_on_liveness_failure() {
    let reg = registry::Registry::start();
    let image = format!("{}/kelp/http-hello:v1", reg.addr);
    let counter = format!("{}/kelp/counter:v1", reg.addr);
    push(&example("wasm32-wasip2", "http_hello"), &image);
    push(&example("wasm32-wasip1", "counter"), &counter);
    let c = Cluster::start(Backend::Sqlite);
    let agent = Agent::start(&c);
    let node = &agent.name;
    let (web_port, sick_port) = (free_port(), free_port());

    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: readiness}}
data: {{state: ready}}
---
apiVersion: v1
kind: Secret
metadata: {{name: token}}
stringData: {{value: s3cr3t-token}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web, labels: {{app: web, tier: front}}}}
spec:
  nodeName: {node}
  containers:
  - name: web
    image: {image}
    ports: [{{name: http, containerPort: {web_port}}}]
    env:
    - {{name: READY_FILE, value: /config/state}}
    - name: TOKEN
      valueFrom: {{secretKeyRef: {{name: token, key: value}}}}
    - name: MEM_LIMIT_MI
      valueFrom: {{resourceFieldRef: {{resource: limits.memory, divisor: 1Mi}}}}
    - name: NODE
      valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}
    resources: {{limits: {{memory: 64Mi}}}}
    readinessProbe:
      httpGet: {{path: /healthz, port: http, httpHeaders: [{{name: X-Probe, value: kelp}}]}}
      periodSeconds: 1
      failureThreshold: 1
    volumeMounts:
    - {{name: config, mountPath: /config}}
    - {{name: podinfo, mountPath: /podinfo}}
  volumes:
  - name: config
    configMap: {{name: readiness}}
  - name: podinfo
    downwardAPI:
      items:
      - path: labels
        fieldRef: {{fieldPath: metadata.labels}}
      - path: tier
        fieldRef: {{fieldPath: "metadata.labels['tier']"}}
---
apiVersion: v1
kind: Pod
metadata: {{name: sick}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 5
  containers:
  - name: sick
    image: {image}
    ports: [{{containerPort: {sick_port}}}]
    livenessProbe:
      httpGet: {{path: /status/500, port: {sick_port}}}
      periodSeconds: 1
      failureThreshold: 2
      terminationGracePeriodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata: {{name: starts}}
spec:
  nodeName: {node}
  containers:
  - name: counter
    image: {counter}
    startupProbe:
      exec: {{command: [counter, --once]}}
      periodSeconds: 1
    livenessProbe:
      tcpSocket: {{port: 9}}
      initialDelaySeconds: 3600
---
apiVersion: v1
kind: Pod
metadata: {{name: never-starts}}
spec:
  nodeName: {node}
  containers:
  - name: counter
    image: {counter}
    startupProbe:
      exec: {{command: [/nowhere/check.wasm]}}
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: v1
kind: Pod
metadata: {{name: gated}}
spec:
  nodeName: {node}
  readinessGates: [{{conditionType: example.com/load-balancer}}]
  containers:
  - name: counter
    image: {counter}
"#
        ),
    );

    // Ready once the readiness probe passes.
    let pod = wait_pod(&c, &agent, "web", "Ready", |p| ready_status(p) == "True");
    let mut k = Checks::default();
    k.eq("ready", &container_status(&pod)["ready"], true);
    k.eq("started", &container_status(&pod)["started"], true);
    k.eq(
        "ContainersReady",
        &condition(&pod, "ContainersReady")["status"],
        "True",
    );
    // What the wasi:http module sees of its env and volumes.
    // The pod serves on its own address (from the node's pod range).
    let pod_ip = pod["status"]["podIP"]
        .as_str()
        .unwrap_or("127.0.0.1")
        .to_string();
    let get = |path: &str| http_get(&pod_ip, web_port, path).map(|(_, b)| b.trim().to_string());
    k.eq("secret env", get("/env/TOKEN"), Some("s3cr3t-token".into()));
    k.eq(
        "resourceFieldRef",
        get("/env/MEM_LIMIT_MI"),
        Some("64".into()),
    );
    k.eq("fieldRef nodeName", get("/env/NODE"), Some(node.clone()));
    k.eq(
        "configMap file",
        get("/file/config/state"),
        Some("ready".into()),
    );
    k.eq(
        "downwardAPI label",
        get("/file/podinfo/tier"),
        Some("front".into()),
    );
    k.eq(
        "downwardAPI labels",
        get("/file/podinfo/labels"),
        Some("app=\"web\"\ntier=\"front\"".into()),
    );
    k.finish(&agent.log());

    // The ConfigMap update reaches the running pod's volume: the probe fails, the pod
    // is no longer Ready; back again once it says ready.
    c.kubectl_ok(&[
        "patch",
        "configmap",
        "readiness",
        "-p",
        r#"{"data":{"state":"unready"}}"#,
    ]);
    let pod = wait_pod(&c, &agent, "web", "unready", |p| ready_status(p) == "False");
    let mut k = Checks::default();
    k.eq("container ready", &container_status(&pod)["ready"], false);
    k.eq(
        "Ready reason",
        &condition(&pod, "Ready")["reason"],
        "ContainersNotReady",
    );
    k.eq("still running", &pod["status"]["phase"], "Running");
    k.eq("not restarted", &container_status(&pod)["restartCount"], 0);
    k.finish(&agent.log());
    wait_event(
        &c,
        &agent,
        "web",
        "Unhealthy",
        "Readiness probe failed: HTTP probe failed with statuscode: 503",
    );
    c.kubectl_ok(&[
        "patch",
        "configmap",
        "readiness",
        "-p",
        r#"{"data":{"state":"ready"}}"#,
    ]);
    wait_pod(&c, &agent, "web", "Ready again", |p| {
        ready_status(p) == "True"
    });
    // kubectl's own view agrees.
    c.kubectl_ok(&["wait", "--for=condition=Ready", "pod/web", "--timeout=30s"]);

    // A label change reaches the downwardAPI volume.
    c.kubectl_ok(&["label", "pod", "web", "tier=back", "--overwrite"]);
    let ok = wait_until(DEADLINE, || {
        get("/file/podinfo/tier").as_deref() == Some("back")
    });
    assert!(
        ok,
        "the label update never reached the volume:\n{}",
        agent.log()
    );

    // Liveness failures restart the container.
    let pod = wait_pod(&c, &agent, "sick", "restarted", |p| {
        container_status(p)["restartCount"].as_i64().unwrap_or(0) >= 1
    });
    // (A stopped wasi:http server ends with exit code 0; it restarts all the same.)
    assert!(
        container_status(&pod)["lastState"]["terminated"].is_object(),
        "the killed attempt is the last state: {}",
        container_status(&pod)
    );
    wait_event(
        &c,
        &agent,
        "sick",
        "Unhealthy",
        "Liveness probe failed: HTTP probe failed with statuscode: 500",
    );
    wait_event(
        &c,
        &agent,
        "sick",
        "Killing",
        "Container sick failed liveness probe, will be restarted",
    );
    let describe = c.kubectl_ok(&["describe", "pod", "sick"]);
    assert!(
        describe.contains("Liveness probe failed"),
        "kubectl describe shows the probe failure:\n{describe}"
    );

    // A readiness gate: running and its containers ready, the pod is not Ready until
    // someone sets the gate's condition; the kubelet keeps that condition.
    let gated = wait_pod(&c, &agent, "gated", "running, held by its gate", |p| {
        condition(p, "ContainersReady")["status"] == "True"
            && condition(p, "Ready")["reason"] == "ReadinessGatesNotReady"
    });
    assert_eq!(ready_status(&gated), "False");
    assert_eq!(
        condition(&gated, "Ready")["message"],
        "corresponding condition of pod readiness gate \"example.com/load-balancer\" does not exist."
    );
    c.kubectl_ok(&[
        "patch",
        "pod",
        "gated",
        "--subresource=status",
        "--type=strategic",
        "-p",
        r#"{"status":{"conditions":[{"type":"example.com/load-balancer","status":"True"}]}}"#,
    ]);
    let gated = wait_pod(&c, &agent, "gated", "Ready through its gate", |p| {
        ready_status(p) == "True"
    });
    assert_eq!(
        condition(&gated, "example.com/load-balancer")["status"],
        "True"
    );
    assert_eq!(condition(&gated, "PodScheduled")["status"], "True");

    c.kubectl_ok(&[
        "delete",
        "pod",
        "web",
        "sick",
        "gated",
        "--wait=true",
        "--timeout=60s",
    ]);
}

#[test]
fn volumes_and_env_reach_the_module_deadlines_and_size_limits_fail_pods() {
    let reg = registry::Registry::start();
    let hello = format!("{}/kelp/hello:v1", reg.addr);
    let counter = format!("{}/kelp/counter:v1", reg.addr);
    let counter2 = format!("{}/kelp/counter:v2", reg.addr);
    push(&example("wasm32-wasip1", "hello"), &hello);
    push(&example("wasm32-wasip1", "counter"), &counter);
    push(&example("wasm32-wasip2", "counter"), &counter2);
    let c = Cluster::start(Backend::Sqlite);
    let agent = Agent::start(&c);
    let node = &agent.name;

    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: app-config}}
data: {{greeting: hi-there, other: x}}
---
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
stringData: {{password: hunter2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: show, annotations: {{team: kelp}}}}
spec:
  nodeName: {node}
  restartPolicy: Never
  serviceAccountName: builder
  containers:
  - name: show
    image: {hello}
    args: [--env, PASSWORD, --env, SA, --env, CPU_M, --env, MISSING,
           --cat, /config/greeting.txt, --ls, /config,
           --cat, /secret/password, --cat, /info/cpu, --cat, /info/team,
           --cat, /all/greeting, --cat, /all/pw, --cat, /all/name, --ls, /all]
    env:
    - name: PASSWORD
      valueFrom: {{secretKeyRef: {{name: creds, key: password}}}}
    - name: SA
      valueFrom: {{fieldRef: {{fieldPath: spec.serviceAccountName}}}}
    - name: CPU_M
      valueFrom: {{resourceFieldRef: {{resource: limits.cpu, divisor: 1m}}}}
    - name: MISSING
      valueFrom: {{configMapKeyRef: {{name: nope, key: k, optional: true}}}}
    resources: {{limits: {{cpu: 250m}}}}
    volumeMounts:
    - {{name: config, mountPath: /config}}
    - {{name: secret, mountPath: /secret}}
    - {{name: info, mountPath: /info}}
    - {{name: all, mountPath: /all}}
    - {{name: opt, mountPath: /opt}}
  volumes:
  - name: config
    configMap:
      name: app-config
      items: [{{key: greeting, path: greeting.txt}}]
  - name: secret
    secret: {{secretName: creds, defaultMode: 0400}}
  - name: opt
    configMap: {{name: does-not-exist, optional: true}}
  - name: info
    downwardAPI:
      items:
      - path: cpu
        resourceFieldRef: {{containerName: show, resource: limits.cpu, divisor: 1m}}
      - path: team
        fieldRef: {{fieldPath: "metadata.annotations['team']"}}
  - name: all
    projected:
      sources:
      - configMap: {{name: app-config, items: [{{key: greeting, path: greeting}}]}}
      - secret: {{name: creds, items: [{{key: password, path: pw}}]}}
      - downwardAPI: {{items: [{{path: name, fieldRef: {{fieldPath: metadata.name}}}}]}}
      - serviceAccountToken: {{path: token}}
---
apiVersion: v1
kind: Pod
metadata: {{name: deadline}}
spec:
  nodeName: {node}
  activeDeadlineSeconds: 3
  containers:
  - name: counter
    image: {counter}
---
apiVersion: v1
kind: Pod
metadata: {{name: hog}}
spec:
  nodeName: {node}
  restartPolicy: Never
  containers:
  - name: hog
    image: {hello}
    args: [--write, /scratch/big, "2097152", --sleep, "60"]
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
  volumes:
  - name: scratch
    emptyDir: {{sizeLimit: 1Mi}}
---
apiVersion: v1
kind: Pod
metadata: {{name: mem}}
spec:
  nodeName: {node}
  restartPolicy: Never
  containers:
  - name: mem
    image: {hello}
    args: [--write, /mem/f, "1000", --cat, /mem/f]
    volumeMounts: [{{name: mem, mountPath: /mem}}]
  volumes:
  - name: mem
    emptyDir: {{medium: Memory, sizeLimit: 4Mi}}
---
apiVersion: v1
kind: Pod
metadata: {{name: swap}}
spec:
  nodeName: {node}
  containers:
  - name: c
    image: {counter}
"#
        ),
    );

    // The module prints what it sees.
    let pod = wait_pod(&c, &agent, "show", "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    let log = std::fs::read_to_string(agent.pod_dir(&pod).join("show/0.log")).unwrap_or_default();
    let mut k = Checks::default();
    for want in [
        "PASSWORD=hunter2",
        "SA=builder",
        "CPU_M=250",
        "MISSING=",
        "/config/greeting.txt: hi-there",
        "/config: greeting.txt",
        "/secret/password: hunter2",
        "/info/cpu: 250",
        "/info/team: kelp",
        "/all/greeting: hi-there",
        "/all/pw: hunter2",
        "/all/name: show",
        "/all: greeting name pw",
    ] {
        k.that(
            &format!("the module's output has {want:?}"),
            log.contains(want),
        );
    }
    // Upstream's layout on the node: ..data symlink, per-key symlinks, modes.
    let secret_dir = agent
        .pod_dir(&pod)
        .join("volumes/kubernetes.io~secret/secret");
    k.that(
        "..data is a symlink to a timestamped directory",
        std::fs::read_link(secret_dir.join("..data"))
            .is_ok_and(|t| t.to_string_lossy().starts_with("..")),
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(secret_dir.join("password"))
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        k.eq("defaultMode 0400", mode, 0o400);
    }
    k.that(
        "the serviceAccountToken source is reported",
        events(&c, "show")
            .iter()
            .any(|(r, m, _)| r == "FailedMount" && m.contains("serviceAccountToken")),
    );
    k.finish(&format!("log:\n{log}\n--- agent ---\n{}", agent.log()));

    // activeDeadlineSeconds.
    let pod = wait_pod(&c, &agent, "deadline", "Failed", |p| {
        p["status"]["phase"] == "Failed"
    });
    let mut k = Checks::default();
    k.eq("reason", &pod["status"]["reason"], "DeadlineExceeded");
    k.eq(
        "message",
        &pod["status"]["message"],
        "Pod was active on the node longer than the specified deadline",
    );
    k.that(
        "the container was stopped",
        container_status(&pod)["state"]["terminated"].is_object(),
    );
    k.finish(&agent.log());
    wait_event(
        &c,
        &agent,
        "deadline",
        "DeadlineExceeded",
        "longer than the specified deadline",
    );

    // emptyDir sizeLimit.
    let pod = wait_pod(&c, &agent, "hog", "evicted", |p| {
        p["status"]["phase"] == "Failed"
    });
    let mut k = Checks::default();
    k.eq("reason", &pod["status"]["reason"], "Evicted");
    k.eq(
        "message",
        &pod["status"]["message"],
        "Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". ",
    );
    k.eq(
        "DisruptionTarget",
        &condition(&pod, "DisruptionTarget")["reason"],
        "TerminationByKubelet",
    );
    k.finish(&agent.log());
    wait_event(&c, &agent, "hog", "Evicted", "scratch");

    // emptyDir medium Memory: a tmpfs when the agent may mount (root), unmounted with
    // the pod; a plain directory otherwise.
    let pod = wait_pod(&c, &agent, "mem", "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    let dir = agent
        .pod_dir(&pod)
        .join("volumes/kubernetes.io~empty-dir/mem");
    let log = std::fs::read_to_string(agent.pod_dir(&pod).join("mem/0.log")).unwrap_or_default();
    assert!(log.contains("wrote 1000 bytes to /mem/f"), "{log}");
    let mounted = |d: &std::path::Path| {
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .any(|l| {
                l.split_whitespace().nth(1) == Some(&d.display().to_string())
                    && l.starts_with("tmpfs ")
            })
    };
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    assert_eq!(
        mounted(&dir),
        root,
        "tmpfs at {} (root: {root})",
        dir.display()
    );
    c.kubectl_ok(&["delete", "pod", "mem", "--wait=true", "--timeout=60s"]);
    // A terminal pod's object goes at once; the node cleans up after it.
    assert!(
        wait_until(DEADLINE, || !mounted(&dir)),
        "the tmpfs is unmounted with the pod"
    );

    // A changed image recreates the running container.
    let before = wait_pod(&c, &agent, "swap", "Running", |p| {
        container_status(p)["state"]["running"].is_object()
    });
    let first_id = container_status(&before)["containerID"].clone();
    c.kubectl_ok(&["set", "image", "pod/swap", &format!("c={counter2}")]);
    let pod = wait_pod(&c, &agent, "swap", "recreated with the new image", |p| {
        let cs = container_status(p);
        cs["containerID"] != first_id
            && cs["state"]["running"].is_object()
            && cs["image"] == counter2.as_str()
    });
    assert_eq!(container_status(&pod)["restartCount"], 1);
    wait_event(
        &c,
        &agent,
        "swap",
        "Killing",
        "Container c definition changed, will be restarted",
    );

    c.kubectl_ok(&["delete", "pod", "--all", "--wait=true", "--timeout=60s"]);
}

#[test]
fn image_pull_secrets_authenticate_pulls() {
    let reg = registry::Registry::start_with_auth("kelp", "pa55");
    let image = format!("{}/private/hello:v1", reg.addr);
    push_as(
        &example("wasm32-wasip1", "hello"),
        &image,
        Some(("kelp", "pa55")),
    );
    let c = Cluster::start(Backend::Sqlite);
    let agent = Agent::start(&c);
    let node = &agent.name;

    c.kubectl_ok(&[
        "create",
        "secret",
        "docker-registry",
        "regcred",
        &format!("--docker-server={}", reg.addr),
        "--docker-username=kelp",
        "--docker-password=pa55",
    ]);
    let pod = |name: &str, secrets: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  restartPolicy: Never
  {secrets}
  containers:
  - name: hello
    image: {image}
"#
        )
    };
    c.kubectl_stdin_ok(&["apply", "-f", "-"], &pod("anonymous", ""));
    let p = wait_pod(&c, &agent, "anonymous", "ErrImagePull", |p| {
        let r = &container_status(p)["state"]["waiting"]["reason"];
        r == "ErrImagePull" || r == "ImagePullBackOff"
    });
    assert_eq!(p["status"]["phase"], "Pending");

    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &pod("authed", "imagePullSecrets: [{name: regcred}]"),
    );
    let p = wait_pod(&c, &agent, "authed", "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    let log = std::fs::read_to_string(agent.pod_dir(&p).join("hello/0.log")).unwrap_or_default();
    assert!(log.contains("Hello from Kelp"), "{log}");
    assert!(get_pod(&c, "authed").is_some());
    c.kubectl_ok(&["delete", "pod", "--all", "--wait=true", "--timeout=60s"]);
}
