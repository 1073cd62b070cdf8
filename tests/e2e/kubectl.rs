//! The issue's kubectl scenarios, each against a real cluster; `main.rs` runs them on
//! both backends.

use std::time::Duration;

use serde_json::Value;

use crate::common::{wait_until, Cluster};

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.25
        ports: [{containerPort: 80}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: web-config, labels: {app: web}}
data: {a: "1", b: "2"}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 80}]
"#;

fn json(c: &Cluster, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&c.kubectl_ok(&a)).expect("kubectl -o json output")
}

pub fn apply_client_side(c: &Cluster) {
    let out = c.kubectl_apply(WEB, &[]);
    assert!(out.contains("deployment.apps/web created"), "{out}");
    assert!(out.contains("configmap/web-config created"), "{out}");
    assert!(out.contains("service/web created"), "{out}");
    let out = c.kubectl_apply(WEB, &[]);
    assert_eq!(out.matches("unchanged").count(), 3, "second apply: {out}");
    let out = c.kubectl_apply(&WEB.replace("nginx:1.25", "nginx:1.26"), &[]);
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    let d = json(c, &["get", "deployment", "web"]);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.26"
    );
    assert_eq!(
        d["metadata"]["generation"], 2,
        "a spec change bumps the generation"
    );
}

pub fn apply_server_side(c: &Cluster) {
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa}\ndata: {x: \"1\", y: \"2\"}\n";
    let out = c.kubectl_apply(cm, &["--server-side"]);
    assert!(out.contains("configmap/ssa serverside-applied"), "{out}");
    let out = c.kubectl_apply(&cm.replace(", y: \"2\"", ""), &["--server-side"]);
    assert!(out.contains("serverside-applied"), "{out}");
    let v = json(c, &["get", "configmap", "ssa", "--show-managed-fields"]);
    assert_eq!(
        v["data"],
        serde_json::json!({"x": "1"}),
        "a field dropped from the applied config is removed"
    );
    assert_eq!(v["metadata"]["managedFields"][0]["manager"], "kubectl");
    // Another manager changing an owned field conflicts unless forced.
    let other = cm.replace("x: \"1\"", "x: \"9\"").replace(", y: \"2\"", "");
    let r = c.kubectl_stdin(
        &["apply", "--server-side", "--field-manager=other", "-f", "-"],
        &other,
    );
    assert!(
        !r.status.success() && r.stderr.contains("conflict"),
        "expected a conflict: {}",
        r.stderr
    );
    let r = c.kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager=other",
            "--force-conflicts",
            "-f",
            "-",
        ],
        &other,
    );
    assert!(r.status.success(), "{}", r.stderr);
}

pub fn create_from_file_and_generators(c: &Cluster) {
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: from-file}\ndata: {k: v}\n";
    let r = c.kubectl_stdin(&["create", "-f", "-"], cm);
    assert!(
        r.status.success() && r.stdout.contains("configmap/from-file created"),
        "{}",
        r.stderr
    );
    let r = c.kubectl_stdin(&["create", "-f", "-"], cm);
    assert!(
        !r.status.success() && r.stderr.contains("AlreadyExists"),
        "{}",
        r.stderr
    );
    // These send protobuf bodies.
    c.kubectl_ok(&["create", "namespace", "gen"]);
    c.kubectl_ok(&[
        "create",
        "configmap",
        "c1",
        "-n",
        "gen",
        "--from-literal=a=b",
    ]);
    c.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "s1",
        "-n",
        "gen",
        "--from-literal=k=v",
    ]);
    c.kubectl_ok(&[
        "create",
        "deployment",
        "d1",
        "-n",
        "gen",
        "--image=nginx:1.25",
        "--replicas=3",
    ]);
    assert_eq!(
        json(c, &["get", "namespace", "gen"])["status"]["phase"],
        "Active"
    );
    assert_eq!(
        json(c, &["get", "configmap", "c1", "-n", "gen"])["data"]["a"],
        "b"
    );
    assert_eq!(
        json(c, &["get", "secret", "s1", "-n", "gen"])["data"]["k"],
        "dg=="
    );
    let d = json(c, &["get", "deployment", "d1", "-n", "gen"]);
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.25"
    );
    assert_eq!(d["spec"]["selector"]["matchLabels"]["app"], "d1");
}

pub fn get_variants(c: &Cluster) {
    let table = c.kubectl_ok(&["get", "configmaps"]);
    let header = table.lines().next().unwrap_or("");
    assert!(
        header.starts_with("NAME") && header.contains("DATA") && header.trim_end().ends_with("AGE"),
        "{table}"
    );
    assert!(table.contains("web-config"), "{table}");
    let yaml = c.kubectl_ok(&["get", "configmap", "web-config", "-o", "yaml"]);
    assert!(
        yaml.contains("kind: ConfigMap") && yaml.contains("resourceVersion:"),
        "{yaml}"
    );
    let wide = c.kubectl_ok(&["get", "deployments", "-o", "wide"]);
    assert!(
        wide.contains("CONTAINERS") && wide.contains("nginx:1.26") && wide.contains("app=web"),
        "{wide}"
    );
    let names = c.kubectl_ok(&["get", "configmaps", "-l", "app=web", "-o", "name"]);
    assert_eq!(names.trim(), "configmap/web-config");
    let by_field = c.kubectl_ok(&[
        "get",
        "configmaps",
        "--field-selector",
        "metadata.name=ssa",
        "-o",
        "name",
    ]);
    assert_eq!(by_field.trim(), "configmap/ssa");
    let all = c.kubectl_ok(&["get", "configmaps", "-A"]);
    assert!(
        all.lines().next().unwrap_or("").starts_with("NAMESPACE"),
        "{all}"
    );
    assert!(all.contains("gen ") && all.contains("default "), "{all}");
    let r = c.kubectl(&["get", "configmaps", "--field-selector", "spec.nope=x"]);
    assert!(
        !r.status.success() && r.stderr.contains("field label not supported"),
        "{}",
        r.stderr
    );
}

pub fn get_watch(c: &Cluster) {
    let w = c.kubectl_spawn(&[
        "get",
        "configmaps",
        "-w",
        "--output-watch-events",
        "-o",
        "custom-columns=EVENT:.type,NAME:.object.metadata.name",
        "--no-headers",
    ]);
    // The watch lists first; wait for that before changing anything.
    wait_until(
        Duration::from_secs(20),
        "the initial list of the watch",
        || w.output().contains("web-config"),
    );
    c.kubectl_ok(&["create", "configmap", "watched", "--from-literal=a=1"]);
    c.kubectl_ok(&["label", "configmap", "watched", "seen=yes"]);
    c.kubectl_ok(&["delete", "configmap", "watched"]);
    wait_until(
        Duration::from_secs(20),
        "ADDED, MODIFIED and DELETED events",
        || {
            let o = w.output();
            o.contains("ADDED")
                && o.lines()
                    .any(|l| l.starts_with("MODIFIED") && l.contains("watched"))
                && o.lines()
                    .any(|l| l.starts_with("DELETED") && l.contains("watched"))
        },
    );
}

pub fn describe(c: &Cluster) {
    let d = c.kubectl_ok(&["describe", "deployment", "web"]);
    assert!(
        d.contains("Name:")
            && d.contains("web")
            && d.contains("nginx:1.26")
            && d.contains("RollingUpdate"),
        "{d}"
    );
    c.kubectl_ok(&[
        "run",
        "described",
        "--image=nginx:1.25",
        "--labels=app=desc",
    ]);
    let p = c.kubectl_ok(&["describe", "pod", "described"]);
    assert!(
        p.contains("Status:") && p.contains("Pending") && p.contains("nginx:1.25"),
        "{p}"
    );
}

pub fn label_and_annotate(c: &Cluster) {
    c.kubectl_ok(&["label", "configmap", "web-config", "tier=front"]);
    let r = c.kubectl(&["label", "configmap", "web-config", "tier=back"]);
    assert!(!r.status.success(), "relabel without --overwrite must fail");
    c.kubectl_ok(&[
        "label",
        "configmap",
        "web-config",
        "tier=back",
        "--overwrite",
    ]);
    c.kubectl_ok(&["annotate", "configmap", "web-config", "note=hello"]);
    let v = json(c, &["get", "configmap", "web-config"]);
    assert_eq!(v["metadata"]["labels"]["tier"], "back");
    assert_eq!(v["metadata"]["annotations"]["note"], "hello");
    c.kubectl_ok(&["label", "configmap", "web-config", "tier-"]);
    c.kubectl_ok(&["annotate", "configmap", "web-config", "note-"]);
    let v = json(c, &["get", "configmap", "web-config"]);
    assert!(v["metadata"]["labels"].get("tier").is_none());
    assert!(v["metadata"]["annotations"].get("note").is_none());
}

pub fn patch_three_ways(c: &Cluster) {
    c.kubectl_ok(&[
        "patch",
        "configmap",
        "web-config",
        "--type=merge",
        "-p",
        r#"{"data":{"m":"merge"}}"#,
    ]);
    c.kubectl_ok(&[
        "patch",
        "configmap",
        "web-config",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/data/j","value":"json"}]"#,
    ]);
    c.kubectl_ok(&[
        "patch",
        "deployment",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"nginx:1.27"}]}}}}"#,
    ]);
    let v = json(c, &["get", "configmap", "web-config"]);
    assert_eq!(
        (v["data"]["m"].as_str(), v["data"]["j"].as_str()),
        (Some("merge"), Some("json"))
    );
    let d = json(c, &["get", "deployment", "web"]);
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        containers.len(),
        1,
        "strategic merge merges containers by name"
    );
    assert_eq!(containers[0]["image"], "nginx:1.27");
    assert_eq!(
        containers[0]["ports"][0]["containerPort"], 80,
        "fields not in the patch are kept"
    );
    let r = c.kubectl(&[
        "patch",
        "configmap",
        "web-config",
        "--type=json",
        "-p",
        r#"[{"op":"test","path":"/data/a","value":"nope"}]"#,
    ]);
    assert!(
        !r.status.success(),
        "a failing json-patch test must be refused"
    );
}

pub fn edit(c: &Cluster) {
    let editor = c.path().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/^  b: \"2\"$/  b: \"edited\"/' \"$1\"\n",
    )
    .expect("editor script");
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&editor)
        .status()
        .expect("chmod");
    let r = c.kubectl_env(
        &["edit", "configmap", "web-config"],
        &[("KUBE_EDITOR", editor.to_str().unwrap_or_default())],
    );
    assert!(
        r.status.success() && r.stdout.contains("edited"),
        "{} {}",
        r.stdout,
        r.stderr
    );
    assert_eq!(
        json(c, &["get", "configmap", "web-config"])["data"]["b"],
        "edited"
    );
}

pub fn delete_and_wait(c: &Cluster) {
    c.kubectl_ok(&["delete", "configmap", "from-file"]);
    let r = c.kubectl(&["get", "configmap", "from-file"]);
    assert!(
        !r.status.success() && r.stderr.contains("NotFound"),
        "{}",
        r.stderr
    );
    c.kubectl_ok(&["run", "doomed", "--image=nginx:1.25"]);
    let watches = pod_watches(c);
    let w = c.kubectl_spawn(&["wait", "--for=delete", "pod/doomed", "--timeout=60s"]);
    // Delete only once `kubectl wait` is watching (the server's metrics count watches).
    wait_until(
        Duration::from_secs(30),
        "kubectl wait to start watching",
        || pod_watches(c) > watches,
    );
    c.kubectl_ok(&["delete", "pod", "doomed"]);
    wait_until(
        Duration::from_secs(60),
        "kubectl wait --for=delete to report",
        || w.output().contains("condition met"),
    );
    let r = c.kubectl(&["delete", "configmap", "never-there"]);
    assert!(!r.status.success() && r.stderr.contains("NotFound"));
    c.kubectl_ok(&["delete", "configmap", "never-there", "--ignore-not-found"]);
}

fn pod_watches(c: &Cluster) -> u64 {
    let metrics = c.kubectl_ok(&["get", "--raw", "/metrics"]);
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{")
                && l.contains("resource=\"pods\"")
                && l.contains("verb=\"WATCH\"")
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()))
        .sum()
}

pub fn discovery_explain_auth(c: &Cluster) {
    let res = c.kubectl_ok(&["api-resources"]);
    for needle in [
        "pods",
        "deployments",
        "leases",
        "runtimeclasses",
        "endpointslices",
        "cronjobs",
        "apps/v1",
        "coordination.k8s.io/v1",
    ] {
        assert!(res.contains(needle), "api-resources lacks {needle}:\n{res}");
    }
    let ex = c.kubectl_ok(&["explain", "pod.spec"]);
    assert!(
        ex.contains("FIELD: spec <PodSpec>") && ex.contains("containers"),
        "{ex}"
    );
    assert_eq!(
        c.kubectl_ok(&["auth", "can-i", "create", "deployments"])
            .trim(),
        "yes"
    );
}

pub fn raw_paging(c: &Cluster) {
    c.kubectl_ok(&["create", "namespace", "paging"]);
    for i in 0..5 {
        c.kubectl_ok(&[
            "create",
            "configmap",
            &format!("p{i}"),
            "-n",
            "paging",
            "--from-literal=i=x",
        ]);
    }
    let page: Value = serde_json::from_str(&c.kubectl_ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/paging/configmaps?limit=2",
    ]))
    .expect("json");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    let token = page["metadata"]["continue"]
        .as_str()
        .expect("a continue token")
        .to_string();
    assert_eq!(page["metadata"]["remainingItemCount"], 3);
    let mut names: Vec<String> = page["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    let mut token = Some(token);
    while let Some(t) = token {
        let next: Value = serde_json::from_str(&c.kubectl_ok(&[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/paging/configmaps?limit=2&continue={t}"),
        ]))
        .expect("json");
        names.extend(
            next["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_string)),
        );
        token = next["metadata"]["continue"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string);
    }
    assert_eq!(names, vec!["p0", "p1", "p2", "p3", "p4"]);
}

pub fn namespace_deletion(c: &Cluster) {
    c.kubectl_ok(&["delete", "namespace", "paging"]);
    let r = c.kubectl(&["get", "namespace", "paging"]);
    assert!(
        !r.status.success() && r.stderr.contains("NotFound"),
        "{}",
        r.stderr
    );
    assert!(c
        .kubectl_ok(&["get", "configmaps", "-n", "paging", "-o", "name"])
        .trim()
        .is_empty());
    let r = c.kubectl(&["create", "configmap", "late", "-n", "paging"]);
    assert!(
        !r.status.success() && r.stderr.contains("namespaces \"paging\" not found"),
        "{}",
        r.stderr
    );
}

pub fn survives_restart(c: &mut Cluster) {
    c.restart();
    assert_eq!(
        json(c, &["get", "configmap", "web-config"])["data"]["b"],
        "edited"
    );
    assert_eq!(
        json(c, &["get", "deployment", "d1", "-n", "gen"])["spec"]["replicas"],
        3
    );
}

pub fn all(c: &mut Cluster) {
    apply_client_side(c);
    apply_server_side(c);
    create_from_file_and_generators(c);
    get_variants(c);
    get_watch(c);
    describe(c);
    label_and_annotate(c);
    patch_three_ways(c);
    edit(c);
    delete_and_wait(c);
    discovery_explain_auth(c);
    raw_paging(c);
    namespace_deletion(c);
    survives_restart(c);
}
