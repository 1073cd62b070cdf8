//! The controller-manager end to end: `kelp up` (API server, controllers and a node in
//! one process), a real OCI registry holding the counter example pushed with
//! `kelp push`, and real `kubectl` driving Deployments, ReplicaSets, cascading
//! deletion, namespaces and ServiceAccounts.
//!
//! Pod templates are pinned to the node with `spec.nodeName` (this runs without a
//! scheduler).

mod common;
#[path = "../runtime-wasm/tests/support/registry.rs"]
mod registry;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{kelp, wait_until, Backend, Checks, Cluster, Options};
use serde_json::{json, Value};

/// Bound on every wait for a rollout, pod or deletion.
const DEADLINE: Duration = Duration::from_secs(90);
const NODE: &str = "ctrl-node";

fn counter_wasm() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/wasm/target/wasm32-wasip1/release/counter.wasm");
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-wasm-examples.sh",
        p.display()
    );
    p
}

/// A registry with the counter module as `kelp/counter:v1` and `:v2`.
struct Images {
    _registry: registry::Registry,
    v1: String,
    v2: String,
}

fn images() -> Images {
    let reg = registry::Registry::start();
    let v1 = format!("{}/kelp/counter:v1", reg.addr);
    let v2 = format!("{}/kelp/counter:v2", reg.addr);
    for r in [&v1, &v2] {
        let out = kelp()
            .arg("push")
            .arg(counter_wasm())
            .arg(r)
            .output()
            .expect("kelp push");
        assert!(
            out.status.success(),
            "kelp push {r}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Images {
        _registry: reg,
        v1,
        v2,
    }
}

/// `kelp up` with its node Ready.
fn up() -> Cluster {
    let c = Cluster::start_with(
        Backend::Sqlite,
        Options {
            up_node: Some(NODE),
            // Tests run in parallel: each node's kubelet on a port of its own.
            extra_args: &["--kubelet-port", "0"],
            ..Options::default()
        },
    );
    let ready = wait_until(DEADLINE, || {
        c.kubectl(&["get", "node", NODE, "-o", "json"]).ok()
            && c.kubectl_json(&["get", "node", NODE])["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|x| x["type"] == "Ready" && x["status"] == "True")
                })
    });
    assert!(ready, "node {NODE} never became Ready:\n{}", c.log_tail());
    c
}

/// A Deployment manifest (as `kubectl create deployment` makes it) pinned to the node.
fn deployment(
    name: &str,
    ns: &str,
    image: &str,
    replicas: u32,
    pod_finalizer: Option<&str>,
) -> String {
    let mut d = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeName": NODE,
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{"name": "counter", "image": image}]
                }
            }
        }
    });
    if let Some(f) = pod_finalizer {
        d["spec"]["template"]["metadata"]["finalizers"] = json!([f]);
    }
    d.to_string()
}

fn pods(c: &Cluster, ns: &str, selector: &str) -> Vec<Value> {
    c.kubectl_json(&["get", "pods", "-n", ns, "-l", selector])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn running(pods: &[Value]) -> usize {
    pods.iter()
        .filter(|p| {
            p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
        })
        .count()
}

fn image_of(p: &Value) -> String {
    p["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn replicasets(c: &Cluster, ns: &str, selector: &str) -> Vec<Value> {
    c.kubectl_json(&["get", "rs", "-n", ns, "-l", selector])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn rollout_status(c: &Cluster, target: &str) {
    let out = c.kubectl_ok(&["rollout", "status", target, "--timeout=90s"]);
    assert!(
        out.contains("successfully rolled out"),
        "rollout status {target}: {out}"
    );
}

/// Waits until exactly `n` non-terminating pods run with `selector`, all on `image`.
fn wait_running(c: &Cluster, selector: &str, n: usize, image: &str) {
    let mut last = Vec::new();
    let ok = wait_until(DEADLINE, || {
        last = pods(c, "default", selector)
            .into_iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect();
        last.len() == n && running(&last) == n && last.iter().all(|p| image_of(p) == image)
    });
    let summary: Vec<String> = last
        .iter()
        .map(|p| {
            format!(
                "{} {} {}",
                p["metadata"]["name"],
                p["status"]["phase"],
                image_of(p)
            )
        })
        .collect();
    assert!(
        ok,
        "want {n} running pods of {image}, have {summary:?}\n{}",
        c.log_tail()
    );
}

#[test]
fn deployments_scale_roll_out_roll_back_and_restart() {
    let img = images();
    let c = up();
    let mut k = Checks::default();

    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &deployment("web", "default", &img.v1, 1, None),
    );
    rollout_status(&c, "deployment/web");
    assert_eq!(
        c.kubectl_ok(&[
            "wait",
            "--for=condition=Available",
            "deployment/web",
            "--timeout=60s"
        ]),
        "deployment.apps/web condition met\n"
    );
    wait_running(&c, "app=web", 1, &img.v1);

    // The ReplicaSet: owned by the Deployment, named and labelled by the template hash.
    let rss = replicasets(&c, "default", "app=web");
    k.eq("one ReplicaSet", rss.len(), 1);
    let rs = &rss[0];
    let hash = rs["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .unwrap_or("")
        .to_string();
    k.eq(
        "RS name",
        &rs["metadata"]["name"],
        format!("web-{hash}").as_str(),
    );
    k.eq(
        "RS selector has the hash",
        &rs["spec"]["selector"]["matchLabels"]["pod-template-hash"],
        hash.as_str(),
    );
    let owner = &rs["metadata"]["ownerReferences"][0];
    k.eq("RS owner kind", &owner["kind"], "Deployment");
    k.eq("RS owner controller", &owner["controller"], true);
    k.eq(
        "RS owner blockOwnerDeletion",
        &owner["blockOwnerDeletion"],
        true,
    );
    k.eq(
        "RS revision",
        &rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "1",
    );
    let pod = &pods(&c, "default", "app=web")[0];
    k.eq(
        "pod owner",
        &pod["metadata"]["ownerReferences"][0]["name"],
        &rs["metadata"]["name"],
    );
    k.eq(
        "pod hash label",
        &pod["metadata"]["labels"]["pod-template-hash"],
        hash.as_str(),
    );

    // Scale 1 → 20 → 3.
    c.kubectl_ok(&["scale", "deployment/web", "--replicas=20"]);
    rollout_status(&c, "deployment/web");
    wait_running(&c, "app=web", 20, &img.v1);
    c.kubectl_ok(&["scale", "deployment/web", "--replicas=3"]);
    rollout_status(&c, "deployment/web");
    wait_running(&c, "app=web", 3, &img.v1);
    let d = c.kubectl_json(&["get", "deployment", "web"]);
    k.eq(
        "observedGeneration",
        &d["status"]["observedGeneration"],
        &d["metadata"]["generation"],
    );
    for f in [
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
    ] {
        k.eq(f, &d["status"][f], 3);
    }
    k.that(
        "no unavailableReplicas",
        d["status"]["unavailableReplicas"].is_null(),
    );

    // A new image rolls out onto a second ReplicaSet.
    c.kubectl_ok(&[
        "set",
        "image",
        "deployment/web",
        &format!("counter={}", img.v2),
    ]);
    rollout_status(&c, "deployment/web");
    wait_running(&c, "app=web", 3, &img.v2);
    let rss = replicasets(&c, "default", "app=web");
    k.eq("two ReplicaSets", rss.len(), 2);
    let history = c.kubectl_ok(&["rollout", "history", "deployment/web"]);
    let revisions: Vec<&str> = history
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    k.eq("history after set image", &revisions, &["1", "2"]);
    let d = c.kubectl_json(&["get", "deployment", "web"]);
    k.eq(
        "deployment revision",
        &d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "2",
    );
    let progressing = d["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|x| x["type"] == "Progressing").cloned())
        .unwrap_or_default();
    k.eq(
        "Progressing reason",
        &progressing["reason"],
        "NewReplicaSetAvailable",
    );

    // Undo goes back to the first template (revision 1 becomes 3).
    assert_eq!(
        c.kubectl_ok(&["rollout", "undo", "deployment/web"]),
        "deployment.apps/web rolled back\n"
    );
    rollout_status(&c, "deployment/web");
    wait_running(&c, "app=web", 3, &img.v1);
    let history = c.kubectl_ok(&["rollout", "history", "deployment/web"]);
    let revisions: Vec<&str> = history
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    k.eq("history after undo", &revisions, &["2", "3"]);
    k.eq(
        "still two ReplicaSets",
        replicasets(&c, "default", "app=web").len(),
        2,
    );

    // Restart: a new template annotation, so a third ReplicaSet and new pods.
    let before: Vec<String> = pods(&c, "default", "app=web")
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    c.kubectl_ok(&["rollout", "restart", "deployment/web"]);
    rollout_status(&c, "deployment/web");
    wait_running(&c, "app=web", 3, &img.v1);
    let after: Vec<String> = pods(&c, "default", "app=web")
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| p["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    k.that(
        &format!("restart replaced every pod: {before:?} → {after:?}"),
        after.iter().all(|p| !before.contains(p)),
    );
    k.eq(
        "three ReplicaSets",
        replicasets(&c, "default", "app=web").len(),
        3,
    );
    c.kubectl_ok(&[
        "wait",
        "--for=condition=Available",
        "deployment/web",
        "--timeout=60s",
    ]);

    // Pause: template changes wait; resume rolls them out.
    c.kubectl_ok(&["rollout", "pause", "deployment/web"]);
    c.kubectl_ok(&[
        "set",
        "image",
        "deployment/web",
        &format!("counter={}", img.v2),
    ]);
    let paused = wait_until(DEADLINE, || {
        let d = c.kubectl_json(&["get", "deployment", "web"]);
        d["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|x| x["type"] == "Progressing" && x["reason"] == "DeploymentPaused")
        })
    });
    k.that("Progressing reason DeploymentPaused", paused);
    k.eq(
        "no rollout while paused",
        replicasets(&c, "default", "app=web").len(),
        3,
    );
    c.kubectl_ok(&["rollout", "resume", "deployment/web"]);
    rollout_status(&c, "deployment/web");
    wait_running(&c, "app=web", 3, &img.v2);
    k.finish(&c.log_tail());
}

#[test]
fn cascading_deletion_foreground_orphan_background_and_namespaces() {
    let img = images();
    let c = up();
    let mut k = Checks::default();

    // Foreground: the Deployment stays (deletionTimestamp + foregroundDeletion) while
    // its pods do; pods held by a finalizer keep everything up until released.
    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &deployment("fg", "default", &img.v1, 2, Some("example.com/hold")),
    );
    rollout_status(&c, "deployment/fg");
    c.kubectl_ok(&[
        "delete",
        "deployment",
        "fg",
        "--cascade=foreground",
        "--wait=false",
    ]);
    let held = wait_until(DEADLINE, || {
        let d = c.kubectl_json(&["get", "deployment", "fg"]);
        let pods = pods(&c, "default", "app=fg");
        d["metadata"]["deletionTimestamp"].is_string()
            && d["metadata"]["finalizers"] == json!(["foregroundDeletion"])
            && pods.len() == 2
            && pods
                .iter()
                .all(|p| p["metadata"]["deletionTimestamp"].is_string())
    });
    k.that(
        "foreground: owner waits with foregroundDeletion while pods terminate",
        held,
    );
    let rs = replicasets(&c, "default", "app=fg");
    k.that(
        "foreground: the ReplicaSet waits too",
        rs.len() == 1 && rs[0]["metadata"]["finalizers"] == json!(["foregroundDeletion"]),
    );
    for p in pods(&c, "default", "app=fg") {
        let name = p["metadata"]["name"].as_str().unwrap_or("").to_string();
        c.kubectl_ok(&[
            "patch",
            "pod",
            &name,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ]);
    }
    let gone = wait_until(DEADLINE, || {
        !c.kubectl(&["get", "deployment", "fg"]).ok()
            && replicasets(&c, "default", "app=fg").is_empty()
            && pods(&c, "default", "app=fg").is_empty()
    });
    k.that("foreground: everything gone once the pods are", gone);

    // Orphan: the ReplicaSet stays without owner; its pods stay with it.
    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &deployment("orph", "default", &img.v1, 2, None),
    );
    rollout_status(&c, "deployment/orph");
    c.kubectl_ok(&["delete", "deployment", "orph", "--cascade=orphan"]);
    k.that(
        "orphan: deployment gone",
        !c.kubectl(&["get", "deployment", "orph"]).ok(),
    );
    let rs = replicasets(&c, "default", "app=orph");
    k.that(
        "orphan: ReplicaSet kept with no ownerReferences",
        rs.len() == 1 && rs[0]["metadata"]["ownerReferences"].is_null(),
    );
    k.that(
        "orphan: ReplicaSet finalizers cleared",
        rs.first()
            .is_some_and(|r| r["metadata"]["finalizers"].is_null()),
    );
    let kept = pods(&c, "default", "app=orph");
    k.eq("orphan: pods kept", running(&kept), 2);

    // Background (default): deleting that ReplicaSet takes its pods with it.
    c.kubectl_ok(&["delete", "rs", "-l", "app=orph"]);
    let gone = wait_until(DEADLINE, || pods(&c, "default", "app=orph").is_empty());
    k.that(
        "background: pods of a deleted ReplicaSet are collected",
        gone,
    );

    // Any kind: a ConfigMap owned by a deleted ConfigMap is collected; one with a
    // second, live owner only loses the dangling reference.
    c.kubectl_ok(&["create", "configmap", "owner-a"]);
    c.kubectl_ok(&["create", "configmap", "owner-b"]);
    let uid = |n: &str| {
        c.kubectl_json(&["get", "configmap", n])["metadata"]["uid"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let (ua, ub) = (uid("owner-a"), uid("owner-b"));
    let owner = |name: &str, uid: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "name": name, "uid": uid});
    for (name, owners) in [
        ("only-a", json!([owner("owner-a", &ua)])),
        (
            "a-and-b",
            json!([owner("owner-a", &ua), owner("owner-b", &ub)]),
        ),
    ] {
        c.kubectl_stdin_ok(
            &["apply", "-f", "-"],
            &json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name, "ownerReferences": owners}})
            .to_string(),
        );
    }
    c.kubectl_ok(&["delete", "configmap", "owner-a"]);
    let collected = wait_until(DEADLINE, || {
        !c.kubectl(&["get", "configmap", "only-a"]).ok()
            && c.kubectl_json(&["get", "configmap", "a-and-b"])["metadata"]["ownerReferences"]
                == json!([owner("owner-b", &ub)])
    });
    k.that(
        "a dependent of a deleted owner is collected; a co-owned one keeps its live owner",
        collected,
    );

    // Namespaces: a default ServiceAccount appears; deletion empties then removes.
    c.kubectl_ok(&["create", "namespace", "team"]);
    let sa = wait_until(DEADLINE, || {
        c.kubectl(&["get", "serviceaccount", "default", "-n", "team"])
            .ok()
    });
    k.that("default ServiceAccount in a new namespace", sa);
    let mut d: Value = serde_json::from_str(&deployment("web", "team", &img.v1, 2, None)).unwrap();
    d["metadata"]["namespace"] = json!("team");
    c.kubectl_stdin_ok(&["apply", "-f", "-"], &d.to_string());
    c.kubectl_ok(&[
        "create",
        "configmap",
        "cfg",
        "-n",
        "team",
        "--from-literal=a=b",
    ]);
    c.kubectl_ok(&[
        "rollout",
        "status",
        "deployment/web",
        "-n",
        "team",
        "--timeout=90s",
    ]);
    assert_eq!(
        c.kubectl_ok(&["delete", "namespace", "team"]),
        "namespace \"team\" deleted\n"
    );
    k.that(
        "namespace gone",
        !c.kubectl(&["get", "namespace", "team"]).ok(),
    );
    for what in [
        "pods",
        "replicasets",
        "deployments",
        "configmaps",
        "serviceaccounts",
    ] {
        let left = c.kubectl_ok(&["get", what, "-n", "team", "-o", "name"]);
        k.eq(
            &format!("{what} left in the deleted namespace"),
            left.trim(),
            "",
        );
    }
    k.finish(&c.log_tail());
}

#[test]
fn replicasets_adopt_release_and_keep_exact_counts() {
    let img = images();
    let c = up();
    let mut k = Checks::default();

    // An orphan pod matching the selector is adopted and counts toward the replicas.
    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "stray", "labels": {"app": "bare"}},
            "spec": {"nodeName": NODE, "terminationGracePeriodSeconds": 5,
                     "containers": [{"name": "counter", "image": img.v1}]}
        })
        .to_string(),
    );
    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "bare"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "bare"}},
                "template": {
                    "metadata": {"labels": {"app": "bare"}},
                    "spec": {"nodeName": NODE, "terminationGracePeriodSeconds": 5,
                             "containers": [{"name": "counter", "image": img.v1}]}
                }
            }
        })
        .to_string(),
    );
    wait_running(&c, "app=bare", 3, &img.v1);
    let stray = c.kubectl_json(&["get", "pod", "stray"]);
    k.eq(
        "stray adopted",
        &stray["metadata"]["ownerReferences"][0]["name"],
        "bare",
    );
    k.eq(
        "adopted as controller",
        &stray["metadata"]["ownerReferences"][0]["controller"],
        true,
    );

    // Relabelled out of the selector: released (no owner) and replaced.
    c.kubectl_ok(&["label", "pod", "stray", "app=elsewhere", "--overwrite"]);
    let released = wait_until(DEADLINE, || {
        c.kubectl_json(&["get", "pod", "stray"])["metadata"]["ownerReferences"].is_null()
    });
    k.that("stray released", released);
    wait_running(&c, "app=bare", 3, &img.v1);

    // Scaling never overshoots: a watch sees every pod the set ever has, and after
    // 3 → 12 there were exactly 12 (expectations hold creations until they are seen).
    let watch = c.kubectl_spawn(&["get", "pods", "-l", "app=bare", "-w", "-o", "name"]);
    let watching = wait_until(DEADLINE, || watch.stdout().lines().count() >= 3);
    assert!(
        watching,
        "kubectl get -w printed nothing: {}",
        watch.stderr()
    );
    c.kubectl_ok(&["scale", "rs", "bare", "--replicas=12"]);
    wait_running(&c, "app=bare", 12, &img.v1);
    let seen: std::collections::BTreeSet<String> =
        watch.stdout().lines().map(str::to_string).collect();
    k.eq("pods ever created for 12 replicas", seen.len(), 12);
    drop(watch);
    c.kubectl_ok(&["scale", "rs", "bare", "--replicas=2"]);
    wait_running(&c, "app=bare", 2, &img.v1);
    let settled = wait_until(DEADLINE, || pods(&c, "default", "app=bare").len() == 2);
    k.that("surplus pods deleted", settled);
    let rs = c.kubectl_json(&["get", "rs", "bare"]);
    k.eq("status.replicas", &rs["status"]["replicas"], 2);
    k.eq("readyReplicas", &rs["status"]["readyReplicas"], 2);
    k.eq("availableReplicas", &rs["status"]["availableReplicas"], 2);
    k.eq(
        "fullyLabeledReplicas",
        &rs["status"]["fullyLabeledReplicas"],
        2,
    );
    k.eq(
        "observedGeneration",
        &rs["status"]["observedGeneration"],
        &rs["metadata"]["generation"],
    );
    let events = c.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=bare",
        "-o",
        "name",
    ]);
    k.that(
        "SuccessfulCreate/Delete events recorded",
        !events.trim().is_empty(),
    );
    k.finish(&c.log_tail());
}

/// A `kelp controller-manager` process, killed by pid on drop.
struct Manager {
    child: std::process::Child,
    log: PathBuf,
}

impl Manager {
    fn start(c: &Cluster, name: &str) -> Manager {
        let log = c.path().join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("manager log");
        let child = kelp()
            .arg("controller-manager")
            .arg("--kubeconfig")
            .arg(c.kubeconfig())
            .env("KELP_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().expect("manager log"))
            .stderr(out)
            .spawn()
            .expect("spawn kelp controller-manager");
        Manager { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn leads(&self) -> bool {
        self.log().contains("became leader")
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let exited = wait_until(DEADLINE, || self.child.try_wait().ok().flatten().is_some());
        assert!(
            exited,
            "controller-manager ignored SIGTERM:\n{}",
            self.log()
        );
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn controller_managers_elect_one_leader_and_hand_over() {
    let c = Cluster::start_with(
        Backend::Sqlite,
        Options {
            apiserver_only: true,
            ..Options::default()
        },
    );
    let mut k = Checks::default();

    // `kelp apiserver` alone runs no controllers: a deleted namespace stays Terminating.
    c.kubectl_ok(&["create", "namespace", "doomed"]);
    c.kubectl_ok(&["delete", "namespace", "doomed", "--wait=false"]);
    k.eq(
        "namespace Terminating without a controller-manager",
        &c.kubectl_json(&["get", "namespace", "doomed"])["status"]["phase"],
        "Terminating",
    );
    let bad = kelp()
        .args([
            "controller-manager",
            "--controllers",
            "nope",
            "--kubeconfig",
        ])
        .arg(c.kubeconfig())
        .output()
        .expect("kelp controller-manager");
    k.that(
        "an unknown controller is refused",
        !bad.status.success()
            && String::from_utf8_lossy(&bad.stderr).contains("unknown controller \"nope\""),
    );

    let mut a = Manager::start(&c, "manager-a");
    let mut b = Manager::start(&c, "manager-b");
    let elected = wait_until(DEADLINE, || a.leads() || b.leads());
    assert!(elected, "nobody became leader:\n{}\n{}", a.log(), b.log());
    let (leader, standby) = if a.leads() {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let holder = c.kubectl_json(&[
        "get",
        "lease",
        "-n",
        "kube-system",
        "kube-controller-manager",
    ]);
    k.that(
        "the Lease names a holder",
        holder["spec"]["holderIdentity"].is_string(),
    );

    // The leader's controllers act: the namespace goes, a ReplicaSet gets its pods.
    let gone = wait_until(DEADLINE, || {
        !c.kubectl(&["get", "namespace", "doomed"]).ok()
    });
    k.that("namespace finalized once a controller-manager leads", gone);
    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "ha"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "ha"}},
                     "template": {"metadata": {"labels": {"app": "ha"}},
                                  "spec": {"containers": [{"name": "c", "image": "example.com/none:v1"}]}}}
        })
        .to_string(),
    );
    k.that(
        "3 pods from the leader",
        wait_until(DEADLINE, || pods(&c, "default", "app=ha").len() == 3),
    );
    k.that("the standby does not lead", !standby.leads());

    // SIGTERM releases the Lease: the standby takes over at once and acts.
    leader.terminate();
    let took_over = wait_until(DEADLINE, || standby.leads());
    assert!(took_over, "the standby never took over:\n{}", standby.log());
    c.kubectl_ok(&["scale", "rs", "ha", "--replicas=5"]);
    k.that(
        "5 pods from the new leader",
        wait_until(DEADLINE, || pods(&c, "default", "app=ha").len() == 5),
    );
    k.finish(&format!(
        "{}\n--- standby ---\n{}",
        c.log_tail(),
        standby.log()
    ));
}
