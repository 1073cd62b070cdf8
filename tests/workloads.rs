//! The batch, daemon, endpoint, IPAM and disruption controllers end to end: a real
//! `kelp up` (control plane, scheduler, controllers and one node in one process), real
//! `kelp agent` processes for more nodes, a real OCI registry holding the example Wasm
//! modules, and real `kubectl`.

#[path = "support/agent.rs"]
mod agent;
mod common;
#[path = "../runtime-wasm/tests/support/registry.rs"]
mod registry;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{wait_until, Backend, Cluster, Options};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(90);

fn example(target: &str, name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/wasm/target")
        .join(target)
        .join("release")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-wasm-examples.sh",
        p.display()
    );
    p
}

/// Pushes an example module to the registry; returns its reference.
fn push(reg: &registry::Registry, name: &str) -> String {
    let reference = format!("{}/kelp/{name}:v1", reg.addr);
    let out = Command::new(env!("CARGO_BIN_EXE_kelp"))
        .arg("push")
        .arg(example("wasm32-wasip1", name))
        .arg(&reference)
        .output()
        .expect("running kelp push");
    assert!(
        out.status.success(),
        "kelp push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    reference
}

/// `kelp up` with its in-process node, on its own loopback address (its kubelet on
/// any free port, so clusters of concurrent tests do not compete for 10250).
fn up() -> Cluster {
    let c = Cluster::start_with(
        Backend::Sqlite,
        Options {
            up_node: Some("main"),
            extra_args: &["--kubelet-port", "0"],
            ..Default::default()
        },
    );
    let ok = wait_until(DEADLINE, || {
        c.kubectl_json(&["get", "nodes"])["items"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| condition(n, "Ready")["status"] == "True"))
    });
    assert!(ok, "kelp up's node never became Ready:\n{}", c.log_tail());
    c
}

fn condition<'a>(obj: &'a Value, kind: &str) -> &'a Value {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .unwrap_or(&Value::Null)
}

/// Polls `kubectl get ARGS -o json` until `cond` holds; panics with the last object.
fn wait_json(
    c: &Cluster,
    args: &[&str],
    what: &str,
    mut cond: impl FnMut(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(DEADLINE, || {
        let mut a = args.to_vec();
        a.extend_from_slice(&["-o", "json"]);
        let r = c.kubectl(&a);
        last = if r.ok() {
            serde_json::from_str(&r.stdout).unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        cond(&last)
    });
    assert!(
        ok,
        "{what}: not within {DEADLINE:?}; last seen:\n{}\n--- server log ---\n{}",
        serde_json::to_string_pretty(&last).unwrap_or_default(),
        c.log_tail()
    );
    last
}

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or("")
}

#[test]
fn jobs_complete_fail_at_the_backoff_limit_index_and_expire() {
    let c = up();
    let reg = registry::Registry::start();
    let hello = push(&reg, "hello");

    // completions 10 / parallelism 3: kubectl wait sees Complete.
    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            r#"
apiVersion: batch/v1
kind: Job
metadata: {{name: ten}}
spec:
  completions: 10
  parallelism: 3
  template:
    spec:
      restartPolicy: Never
      containers: [{{name: hello, image: "{hello}"}}]
"#
        ),
    );
    // Parallelism is never exceeded while it runs.
    let mut max_active = 0;
    wait_until(DEADLINE, || {
        let j = c.kubectl_json(&["get", "job", "ten"]);
        max_active = max_active.max(j["status"]["active"].as_i64().unwrap_or(0));
        condition(&j, "Complete")["status"] == "True"
    });
    c.kubectl_ok(&[
        "wait",
        "--for=condition=complete",
        "job/ten",
        "--timeout=60s",
    ]);
    let j = c.kubectl_json(&["get", "job", "ten"]);
    assert_eq!(j["status"]["succeeded"], 10, "{j}");
    assert!(
        max_active <= 3,
        "at most 3 active at once, saw {max_active}"
    );
    assert_eq!(condition(&j, "SuccessCriteriaMet")["status"], "True");
    assert!(j["status"]["completionTime"].is_string() && j["status"]["startTime"].is_string());
    let pods = items(&c.kubectl_json(&["get", "pods", "-l", "batch.kubernetes.io/job-name=ten"]));
    assert_eq!(
        pods.iter().filter(|p| phase(p) == "Succeeded").count(),
        10,
        "{}",
        serde_json::to_string_pretty(&pods).unwrap_or_default()
    );
    assert!(
        pods.iter().all(|p| p["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty())),
        "tracking finalizers removed once counted"
    );

    let reasons = wait_json(
        &c,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=ten",
        ],
        "job events",
        |v| {
            let r: Vec<&str> = items_ref(v)
                .iter()
                .filter_map(|e| e["reason"].as_str())
                .collect();
            r.contains(&"SuccessfulCreate") && r.contains(&"Completed")
        },
    );
    assert!(!items(&reasons).is_empty());

    // A failing Job (exit 3) stops at backoffLimit 1: two pods, Failed.
    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            r#"
apiVersion: batch/v1
kind: Job
metadata: {{name: failing}}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: hello
        image: "{hello}"
        env: [{{name: EXIT_CODE, value: "3"}}]
"#
        ),
    );
    let j = wait_json(&c, &["get", "job", "failing"], "job failing Failed", |j| {
        condition(j, "Failed")["status"] == "True"
    });
    assert_eq!(condition(&j, "Failed")["reason"], "BackoffLimitExceeded");
    assert_eq!(condition(&j, "FailureTarget")["status"], "True");
    assert_eq!(j["status"]["failed"], 2, "{j}");
    let failed = items(&c.kubectl_json(&["get", "pods", "-l", "job-name=failing"]));
    assert_eq!(
        failed.len(),
        2,
        "one pod plus one retry after the 10 s back-off"
    );
    c.kubectl_ok(&[
        "wait",
        "--for=condition=failed",
        "job/failing",
        "--timeout=10s",
    ]);

    // podFailurePolicy: exit code 42 fails the Job at once, whatever backoffLimit says.
    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            r#"
apiVersion: batch/v1
kind: Job
metadata: {{name: policy}}
spec:
  backoffLimit: 6
  podFailurePolicy:
    rules:
    - action: FailJob
      onExitCodes: {{operator: In, values: [42]}}
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: hello
        image: "{hello}"
        env: [{{name: EXIT_CODE, value: "42"}}]
"#
        ),
    );
    let j = wait_json(&c, &["get", "job", "policy"], "job policy Failed", |j| {
        condition(j, "Failed")["status"] == "True"
    });
    assert_eq!(condition(&j, "Failed")["reason"], "PodFailurePolicy");
    assert!(condition(&j, "Failed")["message"]
        .as_str()
        .is_some_and(|m| m.contains("exit code 42")));
    assert_eq!(j["status"]["failed"], 1);

    // Indexed: each index once, in the completion index annotation; TTL deletes it.
    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            r#"
apiVersion: batch/v1
kind: Job
metadata: {{name: indexed}}
spec:
  completions: 3
  parallelism: 3
  completionMode: Indexed
  ttlSecondsAfterFinished: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{{name: hello, image: "{hello}"}}]
"#
        ),
    );
    let j = wait_json(
        &c,
        &["get", "job", "indexed"],
        "indexed job Complete",
        |j| condition(j, "Complete")["status"] == "True",
    );
    assert_eq!(j["status"]["completedIndexes"], "0-2");
    let pods = items(&c.kubectl_json(&["get", "pods", "-l", "job-name=indexed"]));
    let mut idx: Vec<String> = pods
        .iter()
        .filter_map(|p| {
            p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    idx.sort();
    assert_eq!(idx, ["0", "1", "2"]);
    assert!(pods.iter().all(|p| p["spec"]["containers"][0]["env"]
        .as_array()
        .is_some_and(|e| e.iter().any(|e| e["name"] == "JOB_COMPLETION_INDEX"))));
    // ttlSecondsAfterFinished: the Job and (through the garbage collector) its pods go.
    let gone = wait_until(DEADLINE, || !c.kubectl(&["get", "job", "indexed"]).ok());
    assert!(
        gone,
        "job indexed not deleted after its TTL:\n{}",
        c.log_tail()
    );
}

#[test]
fn cronjob_fires_and_its_job_completes() {
    // `@every 5s` (robfig/cron's descriptor, which upstream accepts) fires within
    // seconds; a standard 5-field schedule would make the test wait for a minute.
    let c = up();
    let reg = registry::Registry::start();
    let hello = push(&reg, "hello");
    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            r#"
apiVersion: batch/v1
kind: CronJob
metadata: {{name: tick}}
spec:
  schedule: "@every 5s"
  concurrencyPolicy: Forbid
  successfulJobsHistoryLimit: 1
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{{name: hello, image: "{hello}"}}]
"#
        ),
    );
    let cj = wait_json(&c, &["get", "cronjob", "tick"], "a successful run", |cj| {
        cj["status"]["lastSuccessfulTime"].is_string()
    });
    assert!(cj["status"]["lastScheduleTime"].is_string(), "{cj}");
    let jobs = items(&c.kubectl_json(&["get", "jobs"]));
    let done: Vec<&Value> = jobs
        .iter()
        .filter(|j| condition(j, "Complete")["status"] == "True")
        .collect();
    assert!(!done.is_empty(), "a completed job: {jobs:?}");
    let j = done[0];
    assert!(j["metadata"]["name"].as_str().unwrap().starts_with("tick-"));
    assert_eq!(j["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    assert!(
        j["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"].is_string()
    );
    // History limit 1: older successful jobs are deleted as new ones finish.
    let trimmed = wait_until(DEADLINE, || {
        let jobs = items(&c.kubectl_json(&["get", "jobs"]));
        let ok = jobs
            .iter()
            .filter(|j| condition(j, "Complete")["status"] == "True")
            .count();
        ok == 1
            && c.kubectl_json(&["get", "cronjob", "tick"])["status"]["lastSuccessfulTime"]
                != cj["status"]["lastSuccessfulTime"]
    });
    assert!(
        trimmed,
        "successfulJobsHistoryLimit 1 not kept:\n{}",
        c.kubectl_ok(&["get", "jobs"])
    );
    // Suspended: no new jobs. A run scheduled before the patch may still be created
    // (the controller sees the suspension a moment later); none scheduled after it.
    let suspended_at = k8s_openapi::jiff::Timestamp::now();
    c.kubectl_ok(&[
        "patch",
        "cronjob",
        "tick",
        "-p",
        r#"{"spec":{"suspend":true}}"#,
    ]);
    // Scheduled timestamps have whole seconds.
    let latest_allowed = suspended_at + k8s_openapi::jiff::SignedDuration::from_secs(1);
    let scheduled_after = || -> Vec<String> {
        items(&c.kubectl_json(&["get", "jobs"]))
            .iter()
            .filter_map(|j| {
                j["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
                    .as_str()
                    .map(str::to_string)
            })
            .filter(|t| {
                t.parse::<k8s_openapi::jiff::Timestamp>()
                    .is_ok_and(|t| t > latest_allowed)
            })
            .collect()
    };
    // Two schedule periods pass without a run.
    let ran = wait_until(Duration::from_secs(11), || !scheduled_after().is_empty());
    assert!(
        !ran,
        "a suspended CronJob scheduled Jobs for {:?}",
        scheduled_after()
    );
}

#[test]
fn daemonset_one_pod_per_node_ipam_cidrs_and_endpoints_follow_ready_pods() {
    let c = up();
    let _second = agent::Agent::start(&c, "ds");
    let reg = registry::Registry::start();
    let counter = push(&reg, "counter");

    // Node IPAM: distinct /24s of the cluster CIDR (the harness gives each cluster one).
    let nodes = wait_json(&c, &["get", "nodes"], "every node has a podCIDR", |v| {
        let n = items(v);
        n.len() == 2 && n.iter().all(|n| n["spec"]["podCIDR"].is_string())
    });
    let cidrs: Vec<String> = items(&nodes)
        .iter()
        .map(|n| n["spec"]["podCIDR"].as_str().unwrap().to_string())
        .collect();
    assert_ne!(cidrs[0], cidrs[1]);
    for (n, cidr) in items(&nodes).iter().zip(&cidrs) {
        assert!(cidr.starts_with("10.") && cidr.ends_with("/24"), "{cidr}");
        assert_eq!(n["spec"]["podCIDRs"][0].as_str(), Some(cidr.as_str()));
    }

    // A DaemonSet: one pod per node, pinned by matchFields node affinity.
    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent}}
spec:
  selector: {{matchLabels: {{app: agent}}}}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec:
      containers: [{{name: counter, image: "{counter}"}}]
"#
        ),
    );
    let ds = wait_json(
        &c,
        &["get", "ds", "agent"],
        "DaemonSet ready on both nodes",
        |d| d["status"]["numberReady"] == 2 && d["status"]["desiredNumberScheduled"] == 2,
    );
    assert_eq!(ds["status"]["updatedNumberScheduled"], 2);
    let pods = items(&c.kubectl_json(&["get", "pods", "-l", "app=agent"]));
    let mut on: Vec<String> = pods
        .iter()
        .map(|p| p["spec"]["nodeName"].as_str().unwrap_or("").to_string())
        .collect();
    on.sort();
    on.dedup();
    assert_eq!(on.len(), 2, "one pod per node: {pods:?}");
    for p in &pods {
        let f = &p["spec"]["affinity"]["nodeAffinity"]
            ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
            ["matchFields"][0];
        assert_eq!(f["key"], "metadata.name");
        assert_eq!(f["values"][0], p["spec"]["nodeName"]);
    }
    let revs = items(&c.kubectl_json(&["get", "controllerrevisions", "-l", "app=agent"]));
    assert_eq!(revs.len(), 1);
    // A template change rolls the pods onto a second revision.
    c.kubectl_ok(&["set", "env", "ds/agent", "ROLL=1"]);
    c.kubectl_ok(&["rollout", "status", "ds/agent", "--timeout=60s"]);
    let revs = items(&c.kubectl_json(&["get", "controllerrevisions", "-l", "app=agent"]));
    assert_eq!(revs.len(), 2);

    // A Service's Endpoints and EndpointSlice follow the ready pods.
    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        r#"
apiVersion: v1
kind: Service
metadata: {name: agents}
spec:
  selector: {app: agent}
  ports: [{name: http, port: 80, targetPort: 8080}]
"#,
    );
    let ep = wait_json(
        &c,
        &["get", "endpoints", "agents"],
        "two ready addresses",
        |e| {
            e["subsets"][0]["addresses"]
                .as_array()
                .is_some_and(|a| a.len() == 2)
        },
    );
    assert_eq!(ep["subsets"][0]["ports"][0]["port"], 8080);
    let targets: Vec<&str> = ep["subsets"][0]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["targetRef"]["name"].as_str())
        .collect();
    assert_eq!(targets.len(), 2);
    let slices = wait_json(
        &c,
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=agents",
        ],
        "a slice of 2",
        |s| {
            items(s)
                .first()
                .is_some_and(|s| s["endpoints"].as_array().is_some_and(|e| e.len() == 2))
        },
    );
    let slice = &items(&slices)[0];
    assert_eq!(
        slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(slice["ports"][0]["name"], "http");
    assert!(slice["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["conditions"]["ready"] == true && e["nodeName"].is_string()));
    // Pods leaving the selector leave the endpoints.
    c.kubectl_ok(&[
        "patch",
        "svc",
        "agents",
        "-p",
        r#"{"spec":{"selector":{"app":"none"}}}"#,
    ]);
    wait_json(&c, &["get", "endpoints", "agents"], "no addresses", |e| {
        e["subsets"].is_null()
    });
    c.kubectl_ok(&["delete", "svc", "agents"]);
    let gone = wait_until(DEADLINE, || {
        !c.kubectl(&["get", "endpoints", "agents"]).ok()
    });
    assert!(gone, "Endpoints not removed with the Service");
}

/// The node each pod of `selector` runs on (pods not being deleted).
fn pod_nodes(c: &Cluster, selector: &str) -> Vec<String> {
    items(&c.kubectl_json(&["get", "pods", "-l", selector]))
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| p["spec"]["nodeName"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn cordon_and_drain_move_pods_off_a_node_within_the_disruption_budget() {
    let c = up();
    let other = agent::Agent::start(&c, "drain");
    let reg = registry::Registry::start();
    let counter = push(&reg, "counter");
    // Everything starts on the agent's node: the in-process node is cordoned.
    c.kubectl_ok(&["cordon", "main"]);
    c.kubectl_ok(&[
        "create",
        "deployment",
        "web",
        &format!("--image={counter}"),
        "--replicas=4",
    ]);
    c.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert!(pod_nodes(&c, "app=web").iter().all(|n| *n == other.name));
    c.kubectl_ok(&["uncordon", "main"]);

    // A budget that allows no disruption: drain evicts nothing and times out.
    c.kubectl_ok(&[
        "create",
        "pdb",
        "web",
        "--selector=app=web",
        "--min-available=4",
    ]);
    wait_json(&c, &["get", "pdb", "web"], "budget computed", |b| {
        b["status"]["currentHealthy"] == 4 && b["status"]["observedGeneration"] == 1
    });
    let blocked = c.kubectl(&[
        "drain",
        &other.name,
        "--ignore-daemonsets",
        "--force",
        "--timeout=4s",
    ]);
    assert!(!blocked.ok());
    assert!(
        blocked
            .stderr
            .contains("Cannot evict pod as it would violate the pod's disruption budget"),
        "{}",
        blocked.stderr
    );
    assert_eq!(pod_nodes(&c, "app=web").len(), 4, "no pod evicted");
    let node = c.kubectl_json(&["get", "node", &other.name]);
    assert_eq!(node["spec"]["unschedulable"], true, "drain cordons first");

    // One disruption at a time: drain evicts, waits for replacements, finishes.
    c.kubectl_ok(&[
        "patch",
        "pdb",
        "web",
        "--type=merge",
        "-p",
        r#"{"spec":{"minAvailable":3}}"#,
    ]);
    c.kubectl_ok(&[
        "drain",
        &other.name,
        "--ignore-daemonsets",
        "--force",
        "--timeout=90s",
    ]);
    c.kubectl_ok(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let nodes = pod_nodes(&c, "app=web");
    assert_eq!(nodes.len(), 4);
    assert!(
        nodes.iter().all(|n| n == "main"),
        "all pods moved off the drained node: {nodes:?}"
    );
    let pdb = c.kubectl_json(&["get", "pdb", "web"]);
    assert_eq!(pdb["status"]["expectedPods"], 4);
    assert_eq!(pdb["status"]["desiredHealthy"], 3);
}

#[test]
fn statefulset_orders_names_scales_down_from_the_top_and_rolls_with_a_partition() {
    let c = up();
    let reg = registry::Registry::start();
    let counter = push(&reg, "counter");
    c.kubectl_stdin_ok(
        &["apply", "-f", "-"],
        &format!(
            r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db}}
spec:
  serviceName: db
  replicas: 3
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      containers: [{{name: counter, image: "{counter}"}}]
"#
        ),
    );
    // OrderedReady: db-1 is created only once db-0 is Ready, and so on.
    let sts = wait_json(&c, &["get", "sts", "db"], "3 ready replicas", |s| {
        s["status"]["readyReplicas"] == 3
    });
    let pods = items(&c.kubectl_json(&["get", "pods", "-l", "app=db"]));
    let mut names: Vec<&str> = pods
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["db-0", "db-1", "db-2"]);
    let created = |n: &str| {
        pods.iter()
            .find(|p| p["metadata"]["name"] == n)
            .and_then(|p| p["metadata"]["creationTimestamp"].as_str())
            .unwrap()
            .to_string()
    };
    assert!(created("db-0") <= created("db-1") && created("db-1") <= created("db-2"));
    for p in &pods {
        assert_eq!(p["spec"]["hostname"], p["metadata"]["name"]);
        assert_eq!(p["spec"]["subdomain"], "db");
        assert_eq!(
            p["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"],
            p["metadata"]["name"]
        );
    }
    let first_rev = sts["status"]["updateRevision"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(sts["status"]["currentRevision"], first_rev.as_str());

    // A partitioned rolling update only replaces ordinals at or above the partition.
    c.kubectl_ok(&[
        "patch",
        "sts",
        "db",
        "--type=merge",
        "-p",
        r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":2}}}}"#,
    ]);
    c.kubectl_ok(&["set", "env", "sts/db", "ROLL=1"]);
    let sts = wait_json(&c, &["get", "sts", "db"], "db-2 updated", |s| {
        s["status"]["updatedReplicas"] == 1 && s["status"]["readyReplicas"] == 3
    });
    let new_rev = sts["status"]["updateRevision"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new_rev, first_rev);
    let rev_of = |n: &str| {
        c.kubectl_json(&["get", "pod", n])["metadata"]["labels"]["controller-revision-hash"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(rev_of("db-2"), new_rev);
    assert_eq!(rev_of("db-0"), first_rev);
    assert_eq!(rev_of("db-1"), first_rev);

    // Scale down: the highest ordinals go.
    c.kubectl_ok(&["scale", "sts", "db", "--replicas=1"]);
    wait_json(
        &c,
        &["get", "pods", "-l", "app=db"],
        "only db-0 left",
        |v| {
            let names: Vec<&str> = items_ref(v)
                .iter()
                .filter_map(|p| p["metadata"]["name"].as_str())
                .collect();
            names == ["db-0"]
        },
    );
}

fn items_ref(v: &Value) -> &[Value] {
    v["items"].as_array().map(Vec::as_slice).unwrap_or_default()
}
