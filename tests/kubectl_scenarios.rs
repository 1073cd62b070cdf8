//! The issue's "Done when" list, with the real kubectl (1.32, picked by the dispatcher on
//! PATH from the server's /version), against a real `kelp server` on each backend.
//!
//! One cluster per backend; the scenarios run in order on it (later ones reuse objects
//! made by earlier ones where that is the point, e.g. `describe` of the applied
//! Deployment). A failing scenario does not stop the others: every failure is reported
//! at the end, each with the command, what was expected, what came back and the tail
//! of the server log.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{wait_until, Backend, Checks, Cluster, Options};

#[test]
fn kubectl_sqlite() {
    scenarios(Backend::Sqlite);
}

#[test]
fn kubectl_etcd() {
    scenarios(Backend::Etcd);
}

/// The kubeconfig the server writes must work as written: with `--bind-address` on an
/// address other than 127.0.0.1 (and no `--tls-san`), kubectl must still verify the
/// serving certificate.
#[test]
fn kubeconfig_works_on_bind_address() {
    let c = Cluster::start_with(
        Backend::Sqlite,
        Options {
            tls_san_for_bind_address: false,
            ..Options::default()
        },
    );
    assert_eq!(c.kubectl_ok(&["get", "--raw", "/readyz"]).trim(), "ok");
}

type Scenario = (&'static str, fn(&mut Cluster));

const SCENARIOS: &[Scenario] = &[
    ("apply (client-side)", apply_client_side),
    ("apply --server-side", apply_server_side),
    ("create -f", create_from_file),
    ("create generators (protobuf bodies)", create_generators),
    (
        "get: table, yaml, json, wide, name, selectors, -A",
        get_variants,
    ),
    ("get -w", get_watch),
    ("describe", describe),
    ("label and annotate", label_and_annotate),
    ("patch: merge, json, strategic", patch_three_ways),
    ("edit", edit),
    ("get -w as a table", table_watch),
    ("get --show-labels, -L, --sort-by, jsonpath", get_formats),
    ("scale, replace, rollout restart", scale_replace_rollout),
    ("apply --dry-run=server and diff", dry_run_and_diff),
    ("delete", delete),
    ("wait --for=delete", wait_for_delete),
    ("api-resources, explain, auth can-i", discovery_explain_auth),
    ("get --raw with limit/continue", raw_paging),
    ("delete namespace", namespace_deletion),
    ("restart keeps state", survives_restart),
];

fn scenarios(backend: Backend) {
    let started = Instant::now();
    let mut c = Cluster::start(backend);
    eprintln!("[{backend:?}] cluster ready in {:?}", started.elapsed());
    let mut failed = Vec::new();
    for (name, f) in SCENARIOS {
        let t = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| f(&mut c)));
        eprintln!(
            "[{backend:?}] {name}: {} in {:?}",
            if r.is_ok() { "ok" } else { "FAILED" },
            t.elapsed()
        );
        if r.is_err() {
            failed.push(*name);
        }
    }
    assert!(
        failed.is_empty(),
        "[{backend:?}] failed scenarios (details above): {failed:?}"
    );
}

// ------------------------------------------------------------------------------------
// apply / create

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
      - name: sidecar
        image: busybox:1.36
        command: [sleep, infinity]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: web-config, labels: {app: web}}
data: {a: "1", b: "2"}
---
apiVersion: v1
kind: Service
metadata: {name: web, labels: {app: web}}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 80}]
"#;

fn apply(c: &Cluster, manifest: &str, extra: &[&str]) -> String {
    let mut args = vec!["apply", "-f", "-"];
    args.extend_from_slice(extra);
    c.kubectl_stdin_ok(&args, manifest)
}

fn containers(d: &Value) -> Vec<Value> {
    d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn apply_client_side(c: &mut Cluster) {
    let out = apply(c, WEB, &[]);
    assert_eq!(
        out, "deployment.apps/web created\nconfigmap/web-config created\nservice/web created\n",
        "first apply"
    );
    let out = apply(c, WEB, &[]);
    assert_eq!(
        out,
        "deployment.apps/web unchanged\nconfigmap/web-config unchanged\nservice/web unchanged\n",
        "second apply of the same manifest"
    );
    let out = apply(c, &WEB.replace("nginx:1.25", "nginx:1.26"), &[]);
    assert_eq!(
        out,
        "deployment.apps/web configured\nconfigmap/web-config unchanged\nservice/web unchanged\n",
        "apply with a changed image"
    );
    let d = c.kubectl_json(&["get", "deployment", "web"]);
    let cs = containers(&d);
    assert_eq!(cs.len(), 2, "{d:#}");
    assert_eq!(cs[0]["name"], "web");
    assert_eq!(cs[0]["image"], "nginx:1.26", "{d:#}");
    assert_eq!(cs[1]["image"], "busybox:1.36", "{d:#}");
    assert_eq!(
        d["metadata"]["generation"], 2,
        "a spec change bumps generation"
    );
    let last = d["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
        .as_str()
        .unwrap_or_else(|| panic!("no last-applied-configuration annotation: {d:#}"));
    assert!(last.contains("nginx:1.26"), "{last}");
    let svc = c.kubectl_json(&["get", "service", "web"]);
    assert_eq!(svc["spec"]["ports"][0]["port"], 80, "{svc:#}");
    assert_eq!(svc["spec"]["type"], "ClusterIP", "defaulted: {svc:#}");
}

fn apply_server_side(c: &mut Cluster) {
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ssa}\ndata: {x: \"1\", z: \"2\"}\n";
    assert_eq!(
        apply(c, cm, &["--server-side"]),
        "configmap/ssa serverside-applied\n"
    );
    assert_eq!(
        c.kubectl_json(&["get", "configmap", "ssa"])["data"],
        json!({"x": "1", "z": "2"})
    );
    let dropped = cm.replace(", z: \"2\"", "");
    assert_eq!(
        apply(c, &dropped, &["--server-side"]),
        "configmap/ssa serverside-applied\n"
    );
    let v = c.kubectl_json(&["get", "configmap", "ssa", "--show-managed-fields"]);
    assert_eq!(
        v["data"],
        json!({"x": "1"}),
        "a key dropped from the applied config is removed"
    );
    let managers: Vec<&str> = v["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert_eq!(managers, ["kubectl"], "{v:#}");
    assert_eq!(v["metadata"]["managedFields"][0]["operation"], "Apply");
    // Another manager changing an owned field conflicts unless forced.
    let other = dropped.replace("x: \"1\"", "x: \"9\"");
    let r = c.kubectl_stdin(
        &["apply", "--server-side", "--field-manager=other", "-f", "-"],
        &other,
    );
    assert!(
        !r.ok() && r.stderr.contains("conflict") && r.stderr.contains(".data.x"),
        "expected an apply conflict on .data.x, got: {}{}",
        r.stdout,
        r.stderr
    );
    c.kubectl_stdin_ok(
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
    assert_eq!(
        c.kubectl_json(&["get", "configmap", "ssa"])["data"]["x"],
        "9"
    );
}

fn create_from_file(c: &mut Cluster) {
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: from-file, labels: {src: file}}\ndata: {k: v}\n";
    assert_eq!(
        c.kubectl_stdin_ok(&["create", "-f", "-"], cm),
        "configmap/from-file created\n"
    );
    let r = c.kubectl_stdin(&["create", "-f", "-"], cm);
    assert!(!r.ok());
    assert_eq!(
        r.stderr.trim(),
        "Error from server (AlreadyExists): error when creating \"STDIN\": configmaps \"from-file\" already exists"
    );
    let v = c.kubectl_json(&["get", "configmap", "from-file"]);
    assert_eq!(v["data"], json!({"k": "v"}));
    assert_eq!(v["metadata"]["labels"], json!({"src": "file"}));
    assert_eq!(v["metadata"]["namespace"], "default");
    assert!(
        v["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36),
        "{v:#}"
    );
    assert!(
        v["metadata"]["creationTimestamp"].as_str().is_some(),
        "{v:#}"
    );
}

fn create_generators(c: &mut Cluster) {
    // Each of these sends a protobuf request body.
    assert_eq!(
        c.kubectl_ok(&["create", "namespace", "gen"]),
        "namespace/gen created\n"
    );
    assert_eq!(
        c.kubectl_ok(&[
            "create",
            "configmap",
            "c1",
            "-n",
            "gen",
            "--from-literal=a=b",
            "--from-literal=c=d"
        ]),
        "configmap/c1 created\n"
    );
    assert_eq!(
        c.kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "s1",
            "-n",
            "gen",
            "--from-literal=k=v",
            "--from-literal=user=admin"
        ]),
        "secret/s1 created\n"
    );
    assert_eq!(
        c.kubectl_ok(&[
            "create",
            "deployment",
            "d1",
            "-n",
            "gen",
            "--image=nginx:1.25",
            "--replicas=3",
            "--port=8080"
        ]),
        "deployment.apps/d1 created\n"
    );

    let ns = c.kubectl_json(&["get", "namespace", "gen"]);
    let cm = c.kubectl_json(&["get", "configmap", "c1", "-n", "gen"]);
    let s = c.kubectl_json(&["get", "secret", "s1", "-n", "gen"]);
    let d = c.kubectl_json(&["get", "deployment", "d1", "-n", "gen"]);
    let cs = containers(&d);
    let mut k = Checks::default();
    k.eq("namespace status.phase", &ns["status"]["phase"], "Active");
    // kube-apiserver labels every namespace with its name (namespaceSelectors rely on it).
    k.eq(
        "namespace label kubernetes.io/metadata.name",
        &ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "gen",
    );
    k.eq("configmap data", &cm["data"], &json!({"a": "b", "c": "d"}));
    k.eq("configmap namespace", &cm["metadata"]["namespace"], "gen");
    // gogo-protobuf sends zero values for unset fields; they must not become fields.
    k.eq(
        "configmap metadata.generateName",
        cm["metadata"].get("generateName"),
        None::<&Value>,
    );
    k.eq("secret type", &s["type"], "Opaque");
    k.eq(
        "secret data (base64)",
        &s["data"],
        &json!({"k": "dg==", "user": "YWRtaW4="}),
    );
    k.eq("deployment spec.replicas", &d["spec"]["replicas"], 3);
    k.eq(
        "deployment spec.selector",
        &d["spec"]["selector"],
        &json!({"matchLabels": {"app": "d1"}}),
    );
    k.eq(
        "deployment template labels",
        &d["spec"]["template"]["metadata"]["labels"],
        &json!({"app": "d1"}),
    );
    k.eq("deployment container count", cs.len(), 1);
    if let Some(c0) = cs.first() {
        k.eq("container name", &c0["name"], "nginx");
        k.eq("container image", &c0["image"], "nginx:1.25");
        k.eq(
            "container ports (no zero-valued hostPort)",
            &c0["ports"],
            &json!([{"containerPort": 8080, "protocol": "TCP"}]),
        );
    }
    k.eq(
        "deployment metadata.generation",
        &d["metadata"]["generation"],
        1,
    );
    // The protobuf body must give the same object as the same Deployment sent as JSON
    // (`create -f`): no zero values Go's `omitempty` would have dropped (hostPort: 0,
    // minReadySeconds: 0, paused: false, template generation: 0, stdin: false, ...).
    let manifest = c.kubectl_ok(&[
        "create",
        "deployment",
        "d1",
        "--image=nginx:1.25",
        "--replicas=3",
        "--port=8080",
        "--dry-run=client",
        "-o",
        "json",
    ]);
    c.kubectl_stdin_ok(&["create", "-f", "-", "-n", "default"], &manifest);
    let from_json = c.kubectl_json(&["get", "deployment", "d1", "-n", "default"]);
    // (Go writes a zero template creationTimestamp as null; not the point here.)
    let spec = |v: &Value| {
        let mut s = v["spec"].clone();
        if let Some(m) = s["template"]["metadata"].as_object_mut() {
            m.remove("creationTimestamp");
        }
        s
    };
    k.eq(
        "spec of the protobuf-created Deployment == spec of the JSON-created one",
        spec(&d),
        spec(&from_json),
    );
    c.kubectl_ok(&["delete", "deployment", "d1", "-n", "default"]);
    k.finish(&format!(
        "namespace: {ns:#}\nconfigmap: {cm:#}\nsecret: {s:#}\ndeployment: {d:#}"
    ));
}

// ------------------------------------------------------------------------------------
// get

fn header(table: &str) -> Vec<&str> {
    table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect()
}

fn names(out: &str) -> Vec<&str> {
    let mut v: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    v.sort_unstable();
    v
}

fn get_variants(c: &mut Cluster) {
    c.kubectl_ok(&["run", "lonely", "--image=nginx:1.25", "--labels=app=lonely"]);

    let table = c.kubectl_ok(&["get", "configmaps"]);
    assert_eq!(header(&table), ["NAME", "DATA", "AGE"], "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("web-config "))
        .unwrap_or_else(|| panic!("no web-config row:\n{table}"));
    assert_eq!(
        row.split_whitespace().nth(1),
        Some("2"),
        "DATA column: {table}"
    );

    let table = c.kubectl_ok(&["get", "deployments"]);
    assert_eq!(
        header(&table),
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "{table}"
    );
    assert!(table.lines().any(|l| l.starts_with("web ")), "{table}");
    let table = c.kubectl_ok(&["get", "pods"]);
    assert_eq!(
        header(&table),
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.starts_with("lonely "))
        .unwrap_or_else(|| panic!("no row for pod lonely:\n{table}"));
    assert_eq!(
        row.split_whitespace().take(4).collect::<Vec<_>>(),
        ["lonely", "0/1", "Pending", "0"],
        "{table}"
    );
    let table = c.kubectl_ok(&["get", "services"]);
    assert_eq!(
        header(&table),
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ],
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("web ") && l.contains("80/TCP")),
        "{table}"
    );

    let yaml = c.kubectl_ok(&["get", "configmap", "web-config", "-o", "yaml"]);
    let y: Value = serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{e}: {yaml}"));
    assert_eq!(y["kind"], "ConfigMap");
    assert_eq!(y["apiVersion"], "v1");
    assert_eq!(y["data"], json!({"a": "1", "b": "2"}));
    assert!(y["metadata"]["resourceVersion"].is_string(), "{yaml}");

    let list = c.kubectl_json(&["get", "configmaps", "-l", "app=web"]);
    assert_eq!(list["kind"], "List", "{list:#}");
    let items = list["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 1, "{list:#}");
    assert_eq!(items[0]["kind"], "ConfigMap", "items carry kind: {list:#}");
    assert_eq!(items[0]["metadata"]["name"], "web-config");

    let wide = c.kubectl_ok(&["get", "deployments", "-o", "wide"]);
    assert_eq!(
        header(&wide),
        [
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ],
        "{wide}"
    );
    let row = wide
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_else(|| panic!("{wide}"));
    assert!(
        row.contains("web,sidecar")
            && row.contains("nginx:1.26,busybox:1.36")
            && row.contains("app=web"),
        "{wide}"
    );
    let wide = c.kubectl_ok(&["get", "pods", "-o", "wide"]);
    assert_eq!(
        header(&wide)[..7],
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"],
        "{wide}"
    );

    // (ReplicaSets and pods of the Deployment depend on the controllers: not counted.)
    let all_web = c.kubectl_ok(&["get", "all", "-l", "app=web", "-o", "name"]);
    let all_web: Vec<&str> = names(&all_web)
        .into_iter()
        .filter(|n| !n.starts_with("replicaset.apps/") && !n.starts_with("pod/"))
        .collect();
    assert_eq!(
        all_web,
        ["deployment.apps/web", "service/web"],
        "get all -l app=web"
    );
    assert_eq!(
        names(&c.kubectl_ok(&["get", "configmaps", "-l", "app=web", "-o", "name"])),
        ["configmap/web-config"]
    );
    assert_eq!(
        names(&c.kubectl_ok(&["get", "configmaps", "-l", "app!=web,src", "-o", "name"])),
        ["configmap/from-file"]
    );
    assert_eq!(
        names(&c.kubectl_ok(&[
            "get",
            "configmaps",
            "--field-selector",
            "metadata.name=ssa",
            "-o",
            "name"
        ])),
        ["configmap/ssa"]
    );
    assert_eq!(
        names(&c.kubectl_ok(&[
            "get",
            "pods",
            "--field-selector",
            "status.phase=Pending,metadata.name=lonely",
            "-o",
            "name"
        ])),
        ["pod/lonely"]
    );
    let r = c.kubectl(&["get", "configmaps", "--field-selector", "spec.nope=x"]);
    assert!(
        !r.ok() && r.stderr.contains("field label not supported"),
        "unsupported field selector: {}",
        r.stderr
    );

    let all = c.kubectl_ok(&["get", "configmaps", "-A"]);
    assert_eq!(header(&all), ["NAMESPACE", "NAME", "DATA", "AGE"], "{all}");
    let pairs: Vec<(&str, &str)> = all
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?, w.next()?))
        })
        .collect();
    for want in [("default", "web-config"), ("gen", "c1")] {
        assert!(pairs.contains(&want), "-A lacks {want:?}:\n{all}");
    }
    let none = c.kubectl(&["get", "configmaps", "-l", "app=nothing-has-this"]);
    assert!(none.ok(), "{}", none.stderr);
    assert_eq!(none.stdout, "");
    assert_eq!(
        none.stderr.trim(),
        "No resources found in default namespace."
    );
    let err = c.kubectl_err(&["get", "configmap", "missing"]);
    assert_eq!(
        err.trim(),
        "Error from server (NotFound): configmaps \"missing\" not found"
    );
}

fn get_watch(c: &mut Cluster) {
    let mut w = c.kubectl_spawn(&[
        "get",
        "configmaps",
        "-w",
        "--output-watch-events",
        "-o",
        "custom-columns=EVENT:.type,NAME:.object.metadata.name,V:.object.data.v",
        "--no-headers",
    ]);
    let lines = |w: &common::Background| -> Vec<Vec<String>> {
        w.stdout()
            .lines()
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect()
    };
    // The watch lists first (existing objects as ADDED); wait for that before changing
    // anything, so the changes must come from the watch itself.
    let listed = wait_until(Duration::from_secs(30), || {
        lines(&w)
            .iter()
            .any(|l| l[..] == ["ADDED", "web-config", "<none>"])
    });
    assert!(
        listed,
        "the watch never listed web-config; stdout: {:?} stderr: {:?} exit: {:?}",
        w.stdout(),
        w.stderr(),
        w.exited()
    );
    c.kubectl_ok(&["create", "configmap", "watched", "--from-literal=v=1"]);
    c.kubectl_ok(&[
        "patch",
        "configmap",
        "watched",
        "-p",
        r#"{"data":{"v":"2"}}"#,
    ]);
    c.kubectl_ok(&["delete", "configmap", "watched"]);
    let want = [
        ["ADDED", "watched", "1"],
        ["MODIFIED", "watched", "2"],
        ["DELETED", "watched", "2"],
    ];
    let seen = wait_until(Duration::from_secs(30), || {
        let got: Vec<Vec<String>> = lines(&w)
            .into_iter()
            .filter(|l| l.get(1).map(String::as_str) == Some("watched"))
            .collect();
        got.len() >= 3
    });
    let got: Vec<Vec<String>> = lines(&w)
        .into_iter()
        .filter(|l| l.get(1).map(String::as_str) == Some("watched"))
        .collect();
    assert!(
        seen && got == want,
        "watch events for `watched`: want {want:?}, got {got:?}; stderr: {}",
        w.stderr()
    );
    assert!(
        w.exited().is_none(),
        "the watch ended early: {}",
        w.stderr()
    );
}

// ------------------------------------------------------------------------------------
// describe, label, annotate, patch, edit

/// The value after `Key:` on the first line that starts with it (indented or not).
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix(key).map(str::trim))
}

fn describe(c: &mut Cluster) {
    let d = c.kubectl_ok(&["describe", "deployment", "web"]);
    assert_eq!(field(&d, "Name:"), Some("web"), "{d}");
    assert_eq!(field(&d, "Namespace:"), Some("default"), "{d}");
    assert_eq!(field(&d, "Selector:"), Some("app=web"), "{d}");
    assert_eq!(field(&d, "StrategyType:"), Some("RollingUpdate"), "{d}");
    assert_eq!(field(&d, "Image:"), Some("nginx:1.26"), "{d}");
    assert!(
        field(&d, "Replicas:").is_some_and(|r| r.starts_with("2 desired")),
        "{d}"
    );
    assert!(d.contains("Pod Template:") && d.contains("sidecar:"), "{d}");

    let p = c.kubectl_ok(&["describe", "pod", "lonely"]);
    assert_eq!(field(&p, "Name:"), Some("lonely"), "{p}");
    assert_eq!(field(&p, "Status:"), Some("Pending"), "{p}");
    assert_eq!(field(&p, "Labels:"), Some("app=lonely"), "{p}");
    assert_eq!(field(&p, "Image:"), Some("nginx:1.25"), "{p}");
    assert!(p.contains("Containers:\n  lonely:"), "{p}");
}

fn label_and_annotate(c: &mut Cluster) {
    assert_eq!(
        c.kubectl_ok(&["label", "configmap", "web-config", "tier=front"]),
        "configmap/web-config labeled\n"
    );
    let err = c.kubectl_err(&["label", "configmap", "web-config", "tier=back"]);
    assert!(
        err.contains("'tier' already has a value (front), and --overwrite is false"),
        "{err}"
    );
    c.kubectl_ok(&[
        "label",
        "configmap",
        "web-config",
        "tier=back",
        "--overwrite",
    ]);
    assert_eq!(
        c.kubectl_ok(&["annotate", "configmap", "web-config", "note=hello"]),
        "configmap/web-config annotated\n"
    );
    let err = c.kubectl_err(&["annotate", "configmap", "web-config", "note=bye"]);
    assert!(err.contains("--overwrite is false"), "{err}");
    c.kubectl_ok(&[
        "annotate",
        "configmap",
        "web-config",
        "note=bye",
        "--overwrite",
    ]);
    let v = c.kubectl_json(&["get", "configmap", "web-config"]);
    assert_eq!(
        v["metadata"]["labels"],
        json!({"app": "web", "tier": "back"})
    );
    assert_eq!(v["metadata"]["annotations"]["note"], "bye");
    assert_eq!(
        names(&c.kubectl_ok(&["get", "configmaps", "-l", "tier=back", "-o", "name"])),
        ["configmap/web-config"]
    );
    assert_eq!(
        c.kubectl_ok(&["label", "configmap", "web-config", "tier-"]),
        "configmap/web-config unlabeled\n"
    );
    c.kubectl_ok(&["annotate", "configmap", "web-config", "note-"]);
    let v = c.kubectl_json(&["get", "configmap", "web-config"]);
    assert_eq!(v["metadata"]["labels"], json!({"app": "web"}));
    assert!(v["metadata"]["annotations"].get("note").is_none(), "{v:#}");
    // Labels on many objects at once, by selector.
    c.kubectl_ok(&["label", "configmaps", "-l", "app=web", "bulk=yes"]);
    assert_eq!(
        names(&c.kubectl_ok(&["get", "configmaps", "-l", "bulk=yes", "-o", "name"])),
        ["configmap/web-config"]
    );
}

fn patch_three_ways(c: &mut Cluster) {
    assert_eq!(
        c.kubectl_ok(&[
            "patch",
            "configmap",
            "web-config",
            "--type=merge",
            "-p",
            r#"{"data":{"m":"merge","a":null}}"#
        ]),
        "configmap/web-config patched\n"
    );
    c.kubectl_ok(&[
        "patch",
        "configmap",
        "web-config",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/data/j","value":"json"},{"op":"replace","path":"/data/b","value":"3"}]"#,
    ]);
    let v = c.kubectl_json(&["get", "configmap", "web-config"]);
    assert_eq!(
        v["data"],
        json!({"b": "3", "j": "json", "m": "merge"}),
        "merge (with a null removing a key) then json patch"
    );
    // A patch that changes nothing.
    assert_eq!(
        c.kubectl_ok(&[
            "patch",
            "configmap",
            "web-config",
            "--type=merge",
            "-p",
            r#"{"data":{"m":"merge"}}"#
        ]),
        "configmap/web-config patched (no change)\n"
    );
    // Strategic merge (the default): containers merge by name.
    c.kubectl_ok(&[
        "patch",
        "deployment",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"nginx:1.27"}]}}}}"#,
    ]);
    let d = c.kubectl_json(&["get", "deployment", "web"]);
    let cs = containers(&d);
    assert_eq!(
        cs.len(),
        2,
        "strategic merge keeps the other container: {d:#}"
    );
    assert_eq!(cs[0]["name"], "web");
    assert_eq!(cs[0]["image"], "nginx:1.27");
    assert_eq!(
        cs[0]["ports"][0]["containerPort"], 80,
        "fields not in the patch are kept"
    );
    assert_eq!(cs[1]["image"], "busybox:1.36");
    // $patch: delete removes one list element by its merge key.
    c.kubectl_ok(&[
        "patch",
        "deployment",
        "web",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","$patch":"delete"}]}}}}"#,
    ]);
    let d = c.kubectl_json(&["get", "deployment", "web"]);
    let left: Vec<Value> = containers(&d).iter().map(|c| c["name"].clone()).collect();
    assert_eq!(left, [json!("web")], "{d:#}");
    // A failing json-patch `test` changes nothing.
    let err = c.kubectl_err(&[
        "patch",
        "configmap",
        "web-config",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/data/b","value":"x"},{"op":"test","path":"/data/b","value":"nope"}]"#,
    ]);
    assert!(!err.is_empty());
    assert_eq!(
        c.kubectl_json(&["get", "configmap", "web-config"])["data"]["b"],
        "3"
    );
}

fn edit(c: &mut Cluster) {
    let editor = c.path().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nset -e\nsed -i 's/^  j: json$/  j: edited/' \"$1\"\n",
    )
    .expect("editor script");
    let chmod = std::process::Command::new("chmod")
        .arg("+x")
        .arg(&editor)
        .status()
        .expect("chmod");
    assert!(chmod.success());
    let editor = editor.to_str().expect("utf-8 path");
    let r = c.kubectl_env(
        &["edit", "configmap", "web-config"],
        &[("KUBE_EDITOR", editor)],
    );
    assert_eq!(
        c.expect_ok("edit configmap web-config", r),
        "configmap/web-config edited\n"
    );
    assert_eq!(
        c.kubectl_json(&["get", "configmap", "web-config"])["data"]["j"],
        "edited"
    );
    // An edit that changes nothing.
    let r = c.kubectl_env(
        &["edit", "configmap", "web-config"],
        &[("KUBE_EDITOR", "true")],
    );
    let r_err = r.stderr.clone();
    c.expect_ok("edit without a change", r);
    assert!(
        r_err.contains("Edit cancelled, no changes made."),
        "{r_err}"
    );
}

// ------------------------------------------------------------------------------------
// more of kubectl's everyday use

fn table_watch(c: &mut Cluster) {
    // Human output with -w: the server sends Table rows in the watch events.
    let mut w = c.kubectl_spawn(&["get", "configmaps", "-w", "-l", "watch=table"]);
    c.kubectl_ok(&["create", "configmap", "tw", "--from-literal=a=1"]);
    c.kubectl_ok(&["label", "configmap", "tw", "watch=table"]);
    let ok = wait_until(Duration::from_secs(30), || {
        let out = w.stdout();
        let mut lines = out.lines();
        lines
            .next()
            .map(|h| h.split_whitespace().collect::<Vec<_>>())
            == Some(vec!["NAME", "DATA", "AGE"])
            && lines.any(|l| l.split_whitespace().take(2).eq(["tw", "1"]))
    });
    assert!(
        ok,
        "kubectl get -w (table): stdout {:?}, stderr {:?}, exited {:?}",
        w.stdout(),
        w.stderr(),
        w.exited()
    );
    c.kubectl_ok(&["delete", "configmap", "tw"]);
}

fn get_formats(c: &mut Cluster) {
    c.kubectl_ok(&["create", "configmap", "fmt-b", "--from-literal=a=1"]);
    c.kubectl_ok(&[
        "create",
        "configmap",
        "fmt-a",
        "--from-literal=a=1",
        "--from-literal=b=2",
    ]);
    c.kubectl_ok(&["label", "configmap", "fmt-a", "fmt-b", "fmt=yes"]);
    c.kubectl_ok(&["label", "configmap", "fmt-a", "color=blue"]);

    let out = c.kubectl_ok(&["get", "configmaps", "-l", "fmt=yes", "--show-labels"]);
    assert_eq!(header(&out), ["NAME", "DATA", "AGE", "LABELS"], "{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with("fmt-a "))
        .unwrap_or_default();
    assert!(row.ends_with("color=blue,fmt=yes"), "{out}");

    let out = c.kubectl_ok(&["get", "configmaps", "-l", "fmt=yes", "-L", "color"]);
    assert_eq!(header(&out), ["NAME", "DATA", "AGE", "COLOR"], "{out}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(rows[0].last(), Some(&"blue"), "{out}");
    assert_eq!(rows[1].len(), 3, "no COLOR for fmt-b: {out}");

    let out = c.kubectl_ok(&[
        "get",
        "configmaps",
        "-l",
        "fmt=yes",
        "--sort-by=.metadata.name",
        "-o",
        "name",
    ]);
    assert_eq!(out, "configmap/fmt-a\nconfigmap/fmt-b\n");
    let out = c.kubectl_ok(&[
        "get",
        "configmaps",
        "-l",
        "fmt=yes",
        "--sort-by=.metadata.creationTimestamp",
        "--no-headers",
        "-o",
        "custom-columns=N:.metadata.name,A:.data.a",
    ]);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(rows.iter().all(|r| r.get(1) == Some(&"1")), "{out}");

    assert_eq!(
        c.kubectl_ok(&["get", "configmap", "fmt-a", "-o", "jsonpath={.data.b}"]),
        "2"
    );
    assert_eq!(
        c.kubectl_ok(&[
            "get",
            "configmaps",
            "-l",
            "fmt=yes",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}={.metadata.labels.fmt}{\"\\n\"}{end}"
        ]),
        "fmt-a=yes\nfmt-b=yes\n"
    );
    assert_eq!(
        c.kubectl_ok(&["delete", "configmaps", "-l", "fmt=yes", "-o", "name"]),
        "configmap/fmt-a\nconfigmap/fmt-b\n"
    );
}

fn scale_replace_rollout(c: &mut Cluster) {
    assert_eq!(
        c.kubectl_ok(&["scale", "deployment", "web", "--replicas=4"]),
        "deployment.apps/web scaled\n"
    );
    assert_eq!(
        c.kubectl_ok(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "4"
    );
    // `--current-replicas` sends a PUT to /scale (without a Content-Type).
    assert_eq!(
        c.kubectl_ok(&[
            "scale",
            "deployment",
            "web",
            "--current-replicas=4",
            "--replicas=2"
        ]),
        "deployment.apps/web scaled\n"
    );
    let err = c.kubectl_err(&[
        "scale",
        "deployment",
        "web",
        "--current-replicas=9",
        "--replicas=3",
    ]);
    assert!(err.contains("Expected replicas to be 9, was 2"), "{err}");
    assert_eq!(
        c.kubectl_ok(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "2"
    );

    let mut cm = c.kubectl_json(&["get", "configmap", "ssa"]);
    cm["data"] = json!({"replaced": "yes"});
    assert_eq!(
        c.kubectl_stdin_ok(&["replace", "-f", "-"], &cm.to_string()),
        "configmap/ssa replaced\n"
    );
    assert_eq!(
        c.kubectl_json(&["get", "configmap", "ssa"])["data"],
        json!({"replaced": "yes"})
    );
    // The same (now stale) resourceVersion again is a conflict.
    let r = c.kubectl_stdin(&["replace", "-f", "-"], &cm.to_string());
    assert!(
        !r.ok()
            && r.stderr.contains("Conflict")
            && r.stderr.contains("the object has been modified"),
        "stale replace: {}",
        r.stderr
    );

    let before = c.kubectl_json(&["get", "deployment", "web"]);
    assert_eq!(
        c.kubectl_ok(&["rollout", "restart", "deployment/web"]),
        "deployment.apps/web restarted\n"
    );
    let after = c.kubectl_json(&["get", "deployment", "web"]);
    assert!(
        after["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string(),
        "{after:#}"
    );
    assert_eq!(
        after["metadata"]["generation"].as_i64(),
        before["metadata"]["generation"].as_i64().map(|g| g + 1),
        "a template change bumps generation"
    );
}

fn dry_run_and_diff(c: &mut Cluster) {
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: dry}\ndata: {a: \"1\"}\n";
    assert_eq!(
        c.kubectl_stdin_ok(&["apply", "--dry-run=server", "-f", "-"], cm),
        "configmap/dry created (server dry run)\n"
    );
    assert_eq!(
        c.kubectl_stdin_ok(&["create", "--dry-run=server", "-f", "-", "-o", "name"], cm),
        "configmap/dry\n"
    );
    assert!(
        c.kubectl_err(&["get", "configmap", "dry"])
            .contains("NotFound"),
        "a server dry run must not persist"
    );
    apply(c, cm, &[]);
    // No difference: exit 0 and no output.
    let r = c.kubectl_stdin(&["diff", "-f", "-"], cm);
    assert!(r.ok() && r.stdout.is_empty(), "diff without changes: {r:?}");
    // A difference: exit 1 and a unified diff of the change.
    let changed = cm.replace("a: \"1\"", "a: \"2\"");
    let r = c.kubectl_stdin(&["diff", "-f", "-"], &changed);
    assert_eq!(r.status.code(), Some(1), "diff with changes: {r:?}");
    assert!(
        r.stdout.lines().any(|l| l == "-  a: \"1\"")
            && r.stdout.lines().any(|l| l == "+  a: \"2\""),
        "{}",
        r.stdout
    );
    assert_eq!(
        c.kubectl_json(&["get", "configmap", "dry"])["data"]["a"],
        "1",
        "diff must not change the object"
    );
    c.kubectl_ok(&["delete", "configmap", "dry"]);
}

// ------------------------------------------------------------------------------------
// delete, wait

fn delete(c: &mut Cluster) {
    assert_eq!(
        c.kubectl_ok(&["delete", "configmap", "from-file"]),
        "configmap \"from-file\" deleted\n"
    );
    assert_eq!(
        c.kubectl_err(&["get", "configmap", "from-file"]).trim(),
        "Error from server (NotFound): configmaps \"from-file\" not found"
    );
    // kubectl waits until the object is gone, so the next get already says NotFound.
    assert_eq!(
        c.kubectl_ok(&["delete", "deployment", "d1", "-n", "gen"]),
        "deployment.apps \"d1\" deleted\n"
    );
    assert_eq!(
        c.kubectl_err(&["get", "deployment", "d1", "-n", "gen"])
            .trim(),
        "Error from server (NotFound): deployments.apps \"d1\" not found"
    );
    assert_eq!(
        c.kubectl_err(&["delete", "configmap", "never-there"])
            .trim(),
        "Error from server (NotFound): configmaps \"never-there\" not found"
    );
    assert_eq!(
        c.kubectl_ok(&["delete", "configmap", "never-there", "--ignore-not-found"]),
        ""
    );
    // By label.
    c.kubectl_ok(&["create", "configmap", "tmp1", "--from-literal=a=1"]);
    c.kubectl_ok(&["create", "configmap", "tmp2", "--from-literal=a=1"]);
    c.kubectl_ok(&["label", "configmap", "tmp1", "tmp2", "tmp=yes"]);
    assert_eq!(
        names(&c.kubectl_ok(&["delete", "configmaps", "-l", "tmp=yes"])),
        ["configmap \"tmp1\" deleted", "configmap \"tmp2\" deleted"]
    );
    assert_eq!(
        c.kubectl_ok(&["get", "configmaps", "-l", "tmp=yes", "-o", "name"]),
        ""
    );
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

fn wait_for_delete(c: &mut Cluster) {
    c.kubectl_ok(&["run", "doomed", "--image=nginx:1.25"]);
    let watches = pod_watches(c);
    let mut w = c.kubectl_spawn(&["wait", "--for=delete", "pod/doomed", "--timeout=30s"]);
    // Delete only once `kubectl wait` is watching (the server counts watch requests).
    assert!(
        wait_until(Duration::from_secs(30), || pod_watches(c) > watches),
        "kubectl wait never started watching pods; stderr: {}",
        w.stderr()
    );
    assert!(
        w.exited().is_none(),
        "kubectl wait ended early: {}",
        w.stderr()
    );
    c.kubectl_ok(&["delete", "pod", "doomed", "--wait=false"]);
    let done = wait_until(Duration::from_secs(30), || w.exited().is_some());
    assert!(
        done,
        "kubectl wait --for=delete did not return after the delete"
    );
    let st = w.exited().expect("exited");
    assert!(
        st.success() && w.stdout().trim() == "pod/doomed condition met",
        "kubectl wait: {st}; stdout {:?}; stderr {:?}",
        w.stdout(),
        w.stderr()
    );
}

// ------------------------------------------------------------------------------------
// discovery, paging, namespaces, restart

fn discovery_explain_auth(c: &mut Cluster) {
    let res = c.kubectl_ok(&["api-resources"]);
    assert_eq!(
        header(&res),
        ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"],
        "{res}"
    );
    let rows: Vec<Vec<&str>> = res
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    for want in [
        vec!["pods", "po", "v1", "true", "Pod"],
        vec!["namespaces", "ns", "v1", "false", "Namespace"],
        vec!["configmaps", "cm", "v1", "true", "ConfigMap"],
        vec!["deployments", "deploy", "apps/v1", "true", "Deployment"],
        vec!["replicasets", "rs", "apps/v1", "true", "ReplicaSet"],
        vec!["leases", "coordination.k8s.io/v1", "true", "Lease"],
        vec![
            "selfsubjectaccessreviews",
            "authorization.k8s.io/v1",
            "false",
            "SelfSubjectAccessReview",
        ],
    ] {
        assert!(rows.contains(&want), "api-resources lacks {want:?}:\n{res}");
    }
    let apps = c.kubectl_ok(&["api-resources", "--api-group=apps", "-o", "name"]);
    for want in [
        "deployments.apps",
        "replicasets.apps",
        "statefulsets.apps",
        "daemonsets.apps",
    ] {
        assert!(apps.lines().any(|l| l == want), "{want} not in:\n{apps}");
    }
    let versions = c.kubectl_ok(&["api-versions"]);
    for want in ["v1", "apps/v1", "coordination.k8s.io/v1"] {
        assert!(
            versions.lines().any(|l| l == want),
            "{want} not in:\n{versions}"
        );
    }

    let ex = c.kubectl_ok(&["explain", "pod.spec"]);
    assert!(ex.starts_with("KIND:       Pod\nVERSION:    v1\n"), "{ex}");
    assert!(ex.contains("FIELD: spec <PodSpec>"), "{ex}");
    assert!(
        ex.contains("  containers\t<[]Container> -required-"),
        "{ex}"
    );
    let ex = c.kubectl_ok(&["explain", "deployments.spec.replicas"]);
    assert!(
        ex.contains("GROUP:      apps") && ex.contains("FIELD: replicas <integer>"),
        "{ex}"
    );

    assert_eq!(
        c.kubectl_ok(&["auth", "can-i", "create", "deployments"]),
        "yes\n"
    );
    assert_eq!(
        c.kubectl_ok(&["auth", "can-i", "delete", "pods", "-n", "gen"]),
        "yes\n"
    );
    // `auth whoami` and `auth can-i --list` send protobuf bodies too.
    let who = c.kubectl_ok(&["auth", "whoami"]);
    assert_eq!(header(&who), ["ATTRIBUTE", "VALUE"], "{who}");
    assert!(
        who.lines().any(|l| l.starts_with("Username ")),
        "auth whoami: {who}"
    );
    let rules = c.kubectl_ok(&["auth", "can-i", "--list"]);
    assert_eq!(
        header(&rules),
        [
            "Resources",
            "Non-Resource",
            "URLs",
            "Resource",
            "Names",
            "Verbs"
        ],
        "{rules}"
    );
    assert!(
        rules.lines().nth(1).is_some(),
        "auth can-i --list shows rules: {rules}"
    );
    let v = c.kubectl_ok(&["version", "-o", "json"]);
    let v: Value = serde_json::from_str(&v).expect("version json");
    assert_eq!(v["serverVersion"]["major"], "1");
    assert_eq!(v["serverVersion"]["minor"], "32");
}

fn raw_paging(c: &mut Cluster) {
    c.kubectl_ok(&["create", "namespace", "paging"]);
    let mut created: Vec<String> = Vec::new();
    for i in 0..5 {
        let name = format!("p{i}");
        c.kubectl_ok(&[
            "create",
            "configmap",
            &name,
            "-n",
            "paging",
            "--from-literal=i=x",
        ]);
        created.push(name);
    }
    let get = |path: &str| -> Value {
        let out = c.kubectl_ok(&["get", "--raw", path]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{path}: {e}: {out}"))
    };
    let item_names = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    };
    let all = get("/api/v1/namespaces/paging/configmaps");
    let mut expected = item_names(&all);
    assert!(
        created.iter().all(|n| expected.contains(n)),
        "full list: {all:#}"
    );
    let first = get("/api/v1/namespaces/paging/configmaps?limit=2");
    assert_eq!(first["kind"], "ConfigMapList");
    assert_eq!(
        first["items"].as_array().map(Vec::len),
        Some(2),
        "{first:#}"
    );
    let token = first["metadata"]["continue"]
        .as_str()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| panic!("no continue token with limit=2: {first:#}"))
        .to_string();
    assert_eq!(
        first["metadata"]["remainingItemCount"],
        expected.len() - 2,
        "{first:#}"
    );
    let list_rv = first["metadata"]["resourceVersion"].clone();
    let mut got = item_names(&first);
    let mut token = Some(token);
    let mut pages = 1;
    while let Some(t) = token {
        let next = get(&format!(
            "/api/v1/namespaces/paging/configmaps?limit=2&continue={t}"
        ));
        pages += 1;
        assert_eq!(
            next["metadata"]["resourceVersion"], list_rv,
            "every page is served at the first page's resourceVersion"
        );
        got.extend(item_names(&next));
        token = next["metadata"]["continue"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        assert!(pages <= 10, "paging does not end");
    }
    expected.sort();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, expected, "pages together give the whole list once");
    assert_eq!(pages, expected.len().div_ceil(2));
    // kubectl itself pages with --chunk-size.
    let chunked = c.kubectl_ok(&[
        "get",
        "configmaps",
        "-n",
        "paging",
        "--chunk-size=2",
        "-o",
        "name",
    ]);
    assert_eq!(chunked.lines().count(), expected.len(), "{chunked}");
}

fn namespace_deletion(c: &mut Cluster) {
    c.kubectl_ok(&[
        "create",
        "deployment",
        "in-ns",
        "-n",
        "paging",
        "--image=nginx:1.25",
    ]);
    c.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "in-ns",
        "-n",
        "paging",
        "--from-literal=a=b",
    ]);
    c.kubectl_ok(&["run", "in-ns", "-n", "paging", "--image=nginx:1.25"]);
    assert_eq!(
        c.kubectl_ok(&["delete", "namespace", "paging"]),
        "namespace \"paging\" deleted\n"
    );
    assert_eq!(
        c.kubectl_err(&["get", "namespace", "paging"]).trim(),
        "Error from server (NotFound): namespaces \"paging\" not found"
    );
    for what in ["configmaps", "secrets", "pods", "deployments.apps"] {
        assert_eq!(
            c.kubectl_ok(&["get", what, "-n", "paging", "-o", "name"]),
            "",
            "{what} left in a deleted namespace"
        );
    }
    let err = c.kubectl_err(&["create", "configmap", "late", "-n", "paging"]);
    assert!(
        err.contains("namespaces \"paging\" not found"),
        "create in a deleted namespace: {err}"
    );
    // A namespace of the same name starts empty.
    c.kubectl_ok(&["create", "namespace", "paging"]);
    let left = c.kubectl_ok(&[
        "get",
        "configmaps,secrets,pods,deployments",
        "-n",
        "paging",
        "-o",
        "name",
    ]);
    let left: Vec<&str> = left
        .lines()
        .filter(|l| *l != "configmap/kube-root-ca.crt")
        .collect();
    assert!(
        left.is_empty(),
        "recreated namespace is not empty: {left:?}"
    );
    c.kubectl_ok(&["delete", "namespace", "paging"]);
    // Deleting a namespace that is already going away or gone.
    assert_eq!(
        c.kubectl_err(&["delete", "namespace", "paging"]).trim(),
        "Error from server (NotFound): namespaces \"paging\" not found"
    );
}

fn survives_restart(c: &mut Cluster) {
    let before = c.kubectl_json(&["get", "configmap", "web-config"]);
    c.restart();
    let after = c.kubectl_json(&["get", "configmap", "web-config"]);
    assert_eq!(after, before, "an object is unchanged by a restart");
    let s = c.kubectl_json(&["get", "secret", "s1", "-n", "gen"]);
    assert_eq!(s["data"]["k"], "dg==");
    // Writes continue with newer resourceVersions.
    c.kubectl_ok(&["label", "configmap", "web-config", "after=restart"]);
    let again = c.kubectl_json(&["get", "configmap", "web-config"]);
    let rv = |v: &Value| -> u64 {
        v["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    assert!(
        rv(&again) > rv(&before),
        "{} then {}",
        rv(&before),
        rv(&again)
    );
}
