//! Pod status from what the runtime reports: phase, conditions, container statuses,
//! IPs, start time — computed without I/O, then written by the worker only when it
//! differs from what the API already holds.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::actions::{
    is_terminal, restart_policy, should_restart, ContainerPhase, ContainerRecord, RuntimeState,
    Waiting,
};
use super::probes::ProbeResults;

/// What status needs besides the pod and the runtime state.
#[derive(Debug, Clone)]
pub struct StatusContext<'a> {
    pub host_ip: &'a str,
    /// Container ids are shown as `<scheme>://<id>`.
    pub id_scheme: &'a str,
    /// Why each container that is not running waits (back-offs, start failures).
    pub waiting: &'a BTreeMap<String, Waiting>,
    /// A failure of the whole pod (unknown runtime handler, …): phase Failed with this
    /// reason and message.
    pub pod_failure: Option<&'a Waiting>,
    /// Readiness and startup probe results (a container without probes is ready and
    /// started once running).
    pub probes: &'a ProbeResults,
    pub now: Timestamp,
}

fn time_from_nanos(n: i64) -> Option<Time> {
    (n > 0)
        .then(|| Timestamp::from_nanosecond(n as i128).ok())
        .flatten()
        // The API's Time has second precision; trimming keeps status comparisons stable.
        .and_then(|t| Timestamp::from_second(t.as_second()).ok())
        .map(Time)
}

fn terminated(r: &ContainerRecord, scheme: &str) -> ContainerStateTerminated {
    let reason = if !r.reason.is_empty() {
        r.reason.clone()
    } else if r.exit_code == 0 {
        "Completed".into()
    } else {
        "Error".into()
    };
    ContainerStateTerminated {
        exit_code: r.exit_code,
        reason: Some(reason),
        message: Some(r.message.clone()).filter(|m| !m.is_empty()),
        started_at: time_from_nanos(r.started_at),
        finished_at: time_from_nanos(r.finished_at),
        container_id: Some(format!("{scheme}://{}", r.id)),
        signal: None,
    }
}

fn waiting_state(reason: &str, message: &str) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_string()),
            message: Some(message.to_string()).filter(|m| !m.is_empty()),
        }),
        ..Default::default()
    }
}

fn exited_state(r: Option<&ContainerRecord>, scheme: &str) -> Option<ContainerState> {
    r.filter(|r| r.phase == ContainerPhase::Exited)
        .map(|r| ContainerState {
            terminated: Some(terminated(r, scheme)),
            ..Default::default()
        })
}

/// The status of one container; `not_yet` is the waiting reason of one never started
/// (`ContainerCreating`, or `PodInitializing` while init containers run).
fn container_status(
    c: &Container,
    state: &RuntimeState,
    ctx: &StatusContext<'_>,
    not_yet: &str,
) -> ContainerStatus {
    let latest = state.latest(&c.name);
    let previous = state.previous(&c.name);
    let scheme = ctx.id_scheme;
    let (st, last) = match (latest, ctx.waiting.get(&c.name)) {
        (Some(r), _) if r.phase == ContainerPhase::Running => (
            ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: time_from_nanos(r.started_at),
                }),
                ..Default::default()
            },
            exited_state(previous, scheme),
        ),
        (_, Some(w)) => (
            waiting_state(&w.reason, &w.message),
            exited_state(latest, scheme).or_else(|| exited_state(previous, scheme)),
        ),
        (Some(r), None) if r.phase == ContainerPhase::Exited => (
            exited_state(Some(r), scheme).unwrap_or_default(),
            exited_state(previous, scheme),
        ),
        _ => (waiting_state(not_yet, ""), exited_state(previous, scheme)),
    };
    let running = st.running.is_some();
    let id = latest.map_or("", |r| r.id.as_str());
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        image_id: latest.map(|r| r.image_ref.clone()).unwrap_or_default(),
        container_id: latest.map(|r| format!("{scheme}://{}", r.id)),
        ready: running && ctx.probes.ready(c, id),
        started: Some(running && ctx.probes.started(c, id)),
        restart_count: latest.map_or(0, |r| r.attempt as i32),
        state: Some(st),
        last_state: Some(last.unwrap_or_default()),
        ..Default::default()
    }
}

/// Counts as upstream's `getPhase`.
fn phase(pod: &Pod, init: &[ContainerStatus], containers: &[ContainerStatus]) -> &'static str {
    let policy = restart_policy(pod);
    let mut pending_init = 0;
    let mut failed_init = 0;
    for s in init {
        let st = s.state.clone().unwrap_or_default();
        match (&st.terminated, &st.waiting) {
            (Some(t), _) if t.exit_code == 0 => {}
            (Some(_), _) => failed_init += 1,
            (None, Some(_))
                if s.last_state
                    .as_ref()
                    .and_then(|l| l.terminated.as_ref())
                    .is_some_and(|t| t.exit_code != 0) =>
            {
                failed_init += 1
            }
            _ => pending_init += 1,
        }
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in containers {
        let st = s.state.clone().unwrap_or_default();
        if st.running.is_some() {
            running += 1;
        } else if let Some(t) = &st.terminated {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if s
            .last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .is_some()
        {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    if failed_init > 0 && policy == "Never" {
        return "Failed";
    }
    if pending_init > 0 || failed_init > 0 || waiting > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    if stopped > 0 {
        if policy == "Always" {
            return "Running";
        }
        if stopped == succeeded {
            return "Succeeded";
        }
        if policy == "Never" {
            return "Failed";
        }
        return "Running";
    }
    "Pending"
}

fn condition(
    old: Option<&PodStatus>,
    now: Timestamp,
    kind: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let since = old
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == kind))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(Timestamp::from_second(now.as_second()).unwrap_or(now)));
    PodCondition {
        type_: kind.to_string(),
        status: status.to_string(),
        last_transition_time: Some(since),
        reason: reason.map(str::to_string),
        message,
        last_probe_time: None,
        observed_generation: None,
    }
}

/// The pod condition types the kubelet computes; any other in the pod's status
/// belongs to someone else (upstream `PodConditionByKubelet`, plus PodScheduled,
/// which it also reports).
const KUBELET_CONDITIONS: [&str; 5] = [
    "PodReadyToStartContainers",
    "Initialized",
    "Ready",
    "ContainersReady",
    "PodScheduled",
];

/// `ours` (a status this kubelet wrote) with the conditions others own taken from
/// `api` (the pod's status as the API has it now) instead.
pub fn with_their_conditions(mut ours: PodStatus, api: Option<&PodStatus>) -> PodStatus {
    let kubelet_owned = |c: &PodCondition| KUBELET_CONDITIONS.contains(&c.type_.as_str());
    let mut conditions: Vec<PodCondition> = api
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| !kubelet_owned(c))
        .cloned()
        .collect();
    conditions.extend(
        ours.conditions
            .take()
            .into_iter()
            .flatten()
            .filter(kubelet_owned),
    );
    ours.conditions = Some(conditions);
    ours
}

/// Why each of the pod's readiness gates holds Ready back, in upstream's wording
/// (`GeneratePodReadyCondition`); empty: every gate's condition is True.
fn unready_gates(spec: &PodSpec, conditions: &[PodCondition]) -> Vec<String> {
    spec.readiness_gates
        .iter()
        .flatten()
        .filter_map(|g| {
            let ty = &g.condition_type;
            match conditions.iter().find(|c| &c.type_ == ty) {
                None => Some(format!(
                    "corresponding condition of pod readiness gate {ty:?} does not exist."
                )),
                Some(c) if c.status != "True" => Some(format!(
                    "the status of pod readiness gate {ty:?} is not \"True\", but {}",
                    c.status
                )),
                Some(_) => None,
            }
        })
        .collect()
}

fn names_not(statuses: &[ContainerStatus], ok: impl Fn(&ContainerStatus) -> bool) -> Vec<String> {
    statuses
        .iter()
        .filter(|s| !ok(s))
        .map(|s| s.name.clone())
        .collect()
}

/// The QoS class (Guaranteed: every container limits = requests for cpu and memory;
/// BestEffort: none set anything; Burstable otherwise).
pub fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = pod.spec.as_ref() else {
        return "BestEffort";
    };
    let all: Vec<&Container> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .collect();
    let empty = all.iter().all(|c| {
        c.resources.as_ref().is_none_or(|r| {
            r.limits.as_ref().is_none_or(|l| l.is_empty())
                && r.requests.as_ref().is_none_or(|l| l.is_empty())
        })
    });
    if empty {
        return "BestEffort";
    }
    let guaranteed = all.iter().all(|c| {
        let Some(r) = c.resources.as_ref() else {
            return false;
        };
        ["cpu", "memory"].iter().all(|k| {
            let limit = r.limits.as_ref().and_then(|l| l.get(*k));
            let request = r.requests.as_ref().and_then(|l| l.get(*k)).or(limit);
            limit.is_some() && limit == request
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// The pod's status from `state`, keeping transition times and start time from the
/// status the API holds.
pub fn compute_pod_status(pod: &Pod, state: &RuntimeState, ctx: &StatusContext<'_>) -> PodStatus {
    let old = pod.status.as_ref();
    let spec = pod.spec.clone().unwrap_or_default();
    let init: Vec<ContainerStatus> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| container_status(c, state, ctx, "PodInitializing"))
        .collect();
    let initialized = init.iter().all(|s| {
        s.state
            .as_ref()
            .and_then(|st| st.terminated.as_ref())
            .is_some_and(|t| t.exit_code == 0)
    });
    let not_yet = if initialized {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let containers: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| container_status(c, state, ctx, not_yet))
        .collect();

    let mut phase = phase(pod, &init, &containers).to_string();
    let (mut reason, mut message) = (None, None);
    if let Some(f) = ctx.pod_failure {
        phase = "Failed".into();
        reason = Some(f.reason.clone());
        message = Some(f.message.clone());
    }
    // A terminal phase is final.
    if is_terminal(pod) {
        phase = old.and_then(|s| s.phase.clone()).unwrap_or(phase);
        reason = old.and_then(|s| s.reason.clone()).or(reason);
        message = old.and_then(|s| s.message.clone()).or(message);
    }
    let done = phase == "Succeeded" || phase == "Failed";

    let now = ctx.now;
    let sandbox_ready = state.sandbox().is_some_and(|s| s.ready);
    let unready = names_not(&containers, |s| s.ready);
    let incomplete = names_not(&init, |s| {
        s.state
            .as_ref()
            .and_then(|st| st.terminated.as_ref())
            .is_some_and(|t| t.exit_code == 0)
    });
    let (ready_reason, ready_message) = if done && unready.len() == containers.len() {
        (Some("PodCompleted"), None)
    } else if unready.is_empty() {
        (None, None)
    } else {
        (
            Some("ContainersNotReady"),
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    };
    let containers_ready = unready.is_empty() && !containers.is_empty();
    // Conditions others own (readiness gates' conditions, a DisruptionTarget from an
    // eviction) are kept as the API has them; ours are computed below.
    let evicted = ctx.pod_failure.is_some_and(|f| f.reason == "Evicted");
    let foreign: Vec<PodCondition> = old
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| !KUBELET_CONDITIONS.contains(&c.type_.as_str()))
        .filter(|c| !(evicted && c.type_ == "DisruptionTarget"))
        .cloned()
        .collect();
    let gates_unready = unready_gates(&spec, &foreign);
    let (pod_ready, pod_ready_reason, pod_ready_message) =
        if !containers_ready || gates_unready.is_empty() {
            (containers_ready, ready_reason, ready_message.clone())
        } else {
            (
                false,
                Some("ReadinessGatesNotReady"),
                Some(gates_unready.join(", ")),
            )
        };
    let mut conditions = foreign;
    conditions.extend([
        condition(
            old,
            now,
            "PodReadyToStartContainers",
            sandbox_ready && !done,
            None,
            None,
        ),
        condition(
            old,
            now,
            "Initialized",
            initialized,
            (!initialized).then_some("ContainersNotInitialized"),
            (!initialized).then(|| {
                format!(
                    "containers with incomplete status: [{}]",
                    incomplete.join(" ")
                )
            }),
        ),
        condition(
            old,
            now,
            "Ready",
            pod_ready,
            pod_ready_reason,
            pod_ready_message,
        ),
        condition(
            old,
            now,
            "ContainersReady",
            containers_ready,
            ready_reason,
            ready_message,
        ),
        condition(old, now, "PodScheduled", true, None, None),
    ]);
    // A pod the kubelet evicted says so, as upstream's (reason TerminationByKubelet).
    if let Some(f) = ctx.pod_failure.filter(|f| f.reason == "Evicted") {
        conditions.push(condition(
            old,
            now,
            "DisruptionTarget",
            true,
            Some("TerminationByKubelet"),
            Some(f.message.clone()),
        ));
    }

    let pod_ip = state
        .sandbox()
        .map(|s| s.ip.clone())
        .filter(|ip| !ip.is_empty())
        .or_else(|| old.and_then(|s| s.pod_ip.clone()));
    let host_ip = Some(ctx.host_ip.to_string()).filter(|h| !h.is_empty());
    PodStatus {
        phase: Some(phase),
        reason,
        message,
        conditions: Some(conditions),
        host_ip: host_ip.clone(),
        host_ips: host_ip.map(|ip| vec![HostIP { ip }]),
        pod_ips: pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        pod_ip,
        start_time: old
            .and_then(|s| s.start_time.clone())
            .or_else(|| Some(Time(Timestamp::from_second(now.as_second()).unwrap_or(now)))),
        init_container_statuses: (!init.is_empty()).then_some(init),
        container_statuses: Some(containers),
        qos_class: Some(
            old.and_then(|s| s.qos_class.clone())
                .unwrap_or_else(|| qos_class(pod).to_string()),
        ),
        ..Default::default()
    }
}

/// A strategic merge patch turning `old` into `new` (upstream's two-way merge patch,
/// as its kubelet sends): changed and added fields, `null` for removed ones; the lists
/// PodStatus merges by key (`conditions` by type, `podIPs`/`hostIPs` by ip) carry only
/// the entries that changed, so a condition another writer set since our read — a
/// readiness gate's — is left as they wrote it; other lists go whole.
pub fn status_patch(old: Option<&PodStatus>, new: &PodStatus) -> serde_json::Value {
    let old = old
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    let new = serde_json::to_value(new).unwrap_or_else(|_| serde_json::json!({}));
    serde_json::json!({ "status": diff_object(&old, &new) })
}

/// PodStatus lists merged by key in a strategic merge patch (`patchMergeKey`).
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "conditions" => Some("type"),
        "podIPs" | "hostIPs" => Some("ip"),
        _ => None,
    }
}

fn diff_object(old: &serde_json::Value, new: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    let empty = serde_json::Map::new();
    let o = old.as_object().unwrap_or(&empty);
    let n = new.as_object().unwrap_or(&empty);
    let mut out = serde_json::Map::new();
    for (k, nv) in n {
        let d = match (o.get(k), nv) {
            (Some(ov), _) if ov == nv => continue,
            (Some(Value::Array(oa)), Value::Array(na)) => match merge_key(k) {
                Some(key) => match diff_keyed(oa, na, key) {
                    Some(items) => items,
                    None => continue,
                },
                None => nv.clone(),
            },
            (Some(ov @ Value::Object(_)), Value::Object(_)) => diff_object(ov, nv),
            _ => nv.clone(),
        };
        out.insert(k.clone(), d);
    }
    for k in o.keys() {
        if !n.contains_key(k) {
            out.insert(k.clone(), Value::Null);
        }
    }
    Value::Object(out)
}

/// The entries of a keyed list that changed: new ones whole, changed ones as a diff
/// with their key, gone ones as `$patch: delete` (None: no change).
fn diff_keyed(
    old: &[serde_json::Value],
    new: &[serde_json::Value],
    key: &str,
) -> Option<serde_json::Value> {
    let mut items = Vec::new();
    for ni in new {
        match old.iter().find(|oi| oi.get(key) == ni.get(key)) {
            Some(oi) if oi == ni => {}
            Some(oi) => {
                let mut d = diff_object(oi, ni);
                if let (Some(m), Some(k)) = (d.as_object_mut(), ni.get(key)) {
                    m.insert(key.to_string(), k.clone());
                }
                items.push(d);
            }
            None => items.push(ni.clone()),
        }
    }
    for oi in old {
        if !new.iter().any(|ni| ni.get(key) == oi.get(key)) {
            items.push(serde_json::json!({ key: oi.get(key), "$patch": "delete" }));
        }
    }
    (!items.is_empty()).then_some(serde_json::Value::Array(items))
}

/// Whether writing `new` would change what the API holds.
pub fn differs(old: Option<&PodStatus>, new: &PodStatus) -> bool {
    old.map(serde_json::to_value).and_then(Result::ok) != serde_json::to_value(new).ok()
}

/// `restartPolicy` says this exited container will not run again.
pub fn finished_for_good(pod: &Pod, r: &ContainerRecord) -> bool {
    r.phase == ContainerPhase::Exited && !should_restart(restart_policy(pod), r.exit_code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubelet::actions::SandboxRecord;
    use k8s_openapi::api::core::v1::PodReadinessGate;

    fn pod(policy: &str, init: &[&str], names: &[&str]) -> Pod {
        let mk = |n: &&str| Container {
            name: n.to_string(),
            image: Some(format!("reg/{n}:v1")),
            ..Default::default()
        };
        let mut p = Pod::default();
        p.metadata.name = Some("p".into());
        p.spec = Some(PodSpec {
            restart_policy: Some(policy.into()),
            init_containers: (!init.is_empty()).then(|| init.iter().map(mk).collect()),
            containers: names.iter().map(mk).collect(),
            ..Default::default()
        });
        p
    }

    fn rec(name: &str, attempt: u32, phase: ContainerPhase, code: i32) -> ContainerRecord {
        ContainerRecord {
            id: format!("{name}{attempt}"),
            name: name.into(),
            attempt,
            phase,
            exit_code: code,
            reason: String::new(),
            message: String::new(),
            created_at: 1 + attempt as i64,
            started_at: 1_700_000_000_000_000_000,
            finished_at: if phase == ContainerPhase::Exited {
                1_700_000_001_000_000_000
            } else {
                0
            },
            image: format!("reg/{name}:v1"),
            image_ref: "sha256:abc".into(),
            spec_hash: String::new(),
        }
    }

    fn state(cs: Vec<ContainerRecord>) -> RuntimeState {
        RuntimeState {
            sandboxes: vec![SandboxRecord {
                id: "sb".into(),
                ready: true,
                attempt: 0,
                ip: "127.0.0.1".into(),
                created_at: 1,
            }],
            containers: cs,
        }
    }

    fn status(p: &Pod, st: &RuntimeState, waiting: &BTreeMap<String, Waiting>) -> PodStatus {
        compute_pod_status(
            p,
            st,
            &StatusContext {
                host_ip: "10.1.1.1",
                id_scheme: "wasm",
                waiting,
                pod_failure: None,
                probes: &ProbeResults::default(),
                now: Timestamp::from_second(1_700_000_100).unwrap(),
            },
        )
    }

    fn cond<'a>(s: &'a PodStatus, t: &str) -> &'a PodCondition {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == t)
            .unwrap()
    }

    use ContainerPhase::*;

    #[test]
    fn phases() {
        let none = BTreeMap::new();
        let cases: Vec<(&str, Vec<ContainerRecord>, &str)> = vec![
            ("Always", vec![], "Pending"),
            ("Always", vec![rec("a", 0, Running, 0)], "Running"),
            ("Never", vec![rec("a", 0, Exited, 0)], "Succeeded"),
            ("Never", vec![rec("a", 0, Exited, 3)], "Failed"),
            ("OnFailure", vec![rec("a", 0, Exited, 0)], "Succeeded"),
            ("Always", vec![rec("a", 0, Exited, 0)], "Running"),
        ];
        for (policy, cs, want) in cases {
            let s = status(&pod(policy, &[], &["a"]), &state(cs.clone()), &none);
            assert_eq!(s.phase.as_deref(), Some(want), "{policy} {cs:?}");
        }
    }

    #[test]
    fn readiness_gates_hold_ready_back_and_others_conditions_are_kept() {
        let running = state(vec![rec("a", 0, ContainerPhase::Running, 0)]);
        let none = BTreeMap::new();
        let foreign = |ty: &str, status: &str| PodCondition {
            type_: ty.into(),
            status: status.into(),
            ..Default::default()
        };
        let mut p = pod("Always", &[], &["a"]);
        p.spec.as_mut().unwrap().readiness_gates = Some(vec![
            PodReadinessGate {
                condition_type: "example.com/lb".into(),
            },
            PodReadinessGate {
                condition_type: "example.com/warm".into(),
            },
        ]);
        // Neither condition exists yet.
        let s = status(&p, &running, &none);
        let ready = cond(&s, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("False", Some("ReadinessGatesNotReady"))
        );
        assert_eq!(
            ready.message.as_deref(),
            Some(
                "corresponding condition of pod readiness gate \"example.com/lb\" does not exist., \
                 corresponding condition of pod readiness gate \"example.com/warm\" does not exist."
            )
        );
        assert_eq!(cond(&s, "ContainersReady").status, "True");
        // One False, one True.
        p.status = Some(PodStatus {
            conditions: Some(vec![
                foreign("example.com/lb", "False"),
                foreign("example.com/warm", "True"),
                foreign("DisruptionTarget", "True"),
            ]),
            ..Default::default()
        });
        let s = status(&p, &running, &none);
        assert_eq!(
            cond(&s, "Ready").message.as_deref(),
            Some("the status of pod readiness gate \"example.com/lb\" is not \"True\", but False")
        );
        // Others' conditions are kept as they are.
        assert_eq!(cond(&s, "example.com/warm").status, "True");
        assert_eq!(cond(&s, "DisruptionTarget").status, "True");
        // Both True: Ready.
        p.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "True".into();
        let s = status(&p, &running, &none);
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "Ready").reason, None);
        // A status the kubelet wrote earlier takes the others' conditions from the API.
        let mine = with_their_conditions(s.clone(), None);
        assert!(mine
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .all(|c| KUBELET_CONDITIONS.contains(&c.type_.as_str())));
        let back = with_their_conditions(mine, p.status.as_ref());
        assert_eq!(cond(&back, "example.com/lb").status, "True");
        assert_eq!(cond(&back, "Ready").status, "True");
    }

    #[test]
    fn a_completed_container_is_terminated_with_reason_completed() {
        let p = pod("Never", &[], &["a"]);
        let s = status(&p, &state(vec![rec("a", 0, Exited, 0)]), &BTreeMap::new());
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        let t = cs.state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(t.exit_code, 0);
        assert_eq!(t.reason.as_deref(), Some("Completed"));
        assert_eq!(cs.container_id.as_deref(), Some("wasm://a0"));
        assert_eq!(cs.image_id, "sha256:abc");
        assert!(!cs.ready);
        assert_eq!(cond(&s, "Ready").reason.as_deref(), Some("PodCompleted"));
        assert_eq!(s.pod_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(s.host_ip.as_deref(), Some("10.1.1.1"));
    }

    #[test]
    fn a_running_container_makes_the_pod_ready() {
        let p = pod("Always", &[], &["a"]);
        let s = status(&p, &state(vec![rec("a", 0, Running, 0)]), &BTreeMap::new());
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "ContainersReady").status, "True");
        assert_eq!(cond(&s, "Initialized").status, "True");
        assert_eq!(cond(&s, "PodScheduled").status, "True");
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert!(cs.ready && cs.started == Some(true));
        assert!(cs.state.as_ref().unwrap().running.is_some());
    }

    #[test]
    fn crash_loop_shows_waiting_with_the_last_termination() {
        let p = pod("Always", &[], &["a"]);
        let waiting: BTreeMap<String, Waiting> = [(
            "a".to_string(),
            Waiting::new("CrashLoopBackOff", "back-off 10s"),
        )]
        .into();
        let s = status(
            &p,
            &state(vec![rec("a", 0, Exited, 1), rec("a", 1, Exited, 1)]),
            &waiting,
        );
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(
            cs.state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("CrashLoopBackOff")
        );
        let last = cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
        assert_eq!(cs.restart_count, 1);
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Ready").status, "False");
    }

    #[test]
    fn image_pull_errors_keep_the_pod_pending() {
        let p = pod("Always", &[], &["a"]);
        let waiting: BTreeMap<String, Waiting> =
            [("a".to_string(), Waiting::new("ErrImagePull", "not found"))].into();
        let s = status(&p, &state(vec![]), &waiting);
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(
            cs.state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("ErrImagePull")
        );
    }

    #[test]
    fn init_containers_gate_initialized() {
        let p = pod("Always", &["i"], &["a"]);
        let s = status(&p, &state(vec![rec("i", 0, Running, 0)]), &BTreeMap::new());
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(cond(&s, "Initialized").status, "False");
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(
            cs.state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("PodInitializing")
        );
        let p = pod("Never", &["i"], &["a"]);
        let s = status(&p, &state(vec![rec("i", 0, Exited, 1)]), &BTreeMap::new());
        assert_eq!(s.phase.as_deref(), Some("Failed"));
    }

    #[test]
    fn transition_times_survive_unchanged_conditions_and_patches_null_removed_fields() {
        let p = pod("Always", &[], &["a"]);
        let st = state(vec![rec("a", 0, Running, 0)]);
        let first = status(&p, &st, &BTreeMap::new());
        let mut p2 = p.clone();
        let mut old = first.clone();
        old.reason = Some("Stale".into());
        p2.status = Some(old.clone());
        let later = compute_pod_status(
            &p2,
            &st,
            &StatusContext {
                host_ip: "10.1.1.1",
                id_scheme: "wasm",
                waiting: &BTreeMap::new(),
                pod_failure: None,
                probes: &ProbeResults::default(),
                now: Timestamp::from_second(1_800_000_000).unwrap(),
            },
        );
        assert_eq!(
            cond(&later, "Ready").last_transition_time,
            cond(&first, "Ready").last_transition_time
        );
        assert_eq!(later.start_time, first.start_time);
        assert!(!differs(Some(&first), &later));
        let patch = status_patch(Some(&old), &later);
        assert_eq!(
            patch,
            serde_json::json!({"status": {"reason": null}}),
            "only the removed field, as null"
        );
    }

    #[test]
    fn the_status_patch_sends_what_changed_and_leaves_other_writers_conditions_alone() {
        use serde_json::json;
        let old: PodStatus = serde_json::from_value(json!({
            "phase": "Pending",
            "reason": "Waiting",
            "podIPs": [{"ip": "10.0.0.5"}],
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
                {"type": "PodScheduled", "status": "True"},
                {"type": "example.com/gate", "status": "False"},
                {"type": "Gone", "status": "True"}
            ],
            "containerStatuses": [{"name": "a", "image": "i", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}]
        }))
        .unwrap();
        // Built from our (by now stale) view: the gate still False here.
        let new: PodStatus = serde_json::from_value(json!({
            "phase": "Running",
            "podIPs": [{"ip": "10.0.0.5"}],
            "conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "PodScheduled", "status": "True"},
                {"type": "example.com/gate", "status": "False"}
            ],
            "containerStatuses": [{"name": "a", "image": "i", "imageID": "", "ready": true,
                "restartCount": 0, "state": {"running": {}}}]
        }))
        .unwrap();
        let patch = status_patch(Some(&old), &new);
        assert_eq!(
            patch,
            json!({"status": {
                "phase": "Running",
                "reason": null,
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": null},
                    {"type": "Gone", "$patch": "delete"}
                ],
                "containerStatuses": [{"name": "a", "image": "i", "imageID": "", "ready": true,
                    "restartCount": 0, "state": {"running": {}}}]
            }}),
            "unchanged conditions (the gate among them) and podIPs are not sent; the \
             container statuses, not merged by key upstream, go whole"
        );
        assert_eq!(
            status_patch(None, &new)["status"]["conditions"]
                .as_array()
                .map(Vec::len),
            Some(3),
            "a first write sends everything"
        );
    }

    #[test]
    fn qos() {
        let p = pod("Always", &[], &["a"]);
        assert_eq!(qos_class(&p), "BestEffort");
    }

    #[test]
    fn readiness_and_startup_probes_drive_ready_and_started() {
        use crate::kubelet::probes::{ProbeKind, ProbeResult};
        use k8s_openapi::api::core::v1::Probe;
        let mut p = pod("Always", &[], &["a", "b"]);
        p.spec.as_mut().unwrap().containers[0].readiness_probe = Some(Probe::default());
        p.spec.as_mut().unwrap().containers[1].startup_probe = Some(Probe::default());
        let st = state(vec![rec("a", 0, Running, 0), rec("b", 0, Running, 0)]);
        let at = |probes: &ProbeResults| {
            compute_pod_status(
                &p,
                &st,
                &StatusContext {
                    host_ip: "10.1.1.1",
                    id_scheme: "wasm",
                    waiting: &BTreeMap::new(),
                    pod_failure: None,
                    probes,
                    now: Timestamp::from_second(1_700_000_100).unwrap(),
                },
            )
        };
        let flags = |s: &PodStatus| -> Vec<(bool, Option<bool>)> {
            s.container_statuses
                .as_ref()
                .unwrap()
                .iter()
                .map(|c| (c.ready, c.started))
                .collect()
        };
        // (readiness of a, startup of b) → (ready, started) of a and b, pod Ready.
        let cases = [
            (
                None,
                None,
                vec![(false, Some(true)), (false, Some(false))],
                "False",
            ),
            (
                Some(ProbeResult::Success),
                Some(ProbeResult::Unknown),
                vec![(true, Some(true)), (false, Some(false))],
                "False",
            ),
            (
                Some(ProbeResult::Success),
                Some(ProbeResult::Success),
                vec![(true, Some(true)), (true, Some(true))],
                "True",
            ),
            (
                Some(ProbeResult::Failure),
                Some(ProbeResult::Success),
                vec![(false, Some(true)), (true, Some(true))],
                "False",
            ),
        ];
        for (ready_a, started_b, want, pod_ready) in cases {
            let mut r = ProbeResults::default();
            if let Some(x) = ready_a {
                r.set("a0", ProbeKind::Readiness, x);
            }
            if let Some(x) = started_b {
                r.set("b0", ProbeKind::Startup, x);
            }
            let s = at(&r);
            assert_eq!(flags(&s), want, "{ready_a:?} {started_b:?}");
            assert_eq!(cond(&s, "Ready").status, pod_ready);
            assert_eq!(cond(&s, "ContainersReady").status, pod_ready);
            if pod_ready == "False" {
                assert_eq!(
                    cond(&s, "Ready").reason.as_deref(),
                    Some("ContainersNotReady")
                );
            }
        }
    }

    #[test]
    fn a_pod_failure_fails_the_pod_with_its_reason() {
        let p = pod("Always", &[], &["a"]);
        let failure = Waiting::new(
            "DeadlineExceeded",
            "Pod was active on the node longer than the specified deadline",
        );
        let s = compute_pod_status(
            &p,
            &state(vec![rec("a", 0, Exited, 143)]),
            &StatusContext {
                host_ip: "10.1.1.1",
                id_scheme: "wasm",
                waiting: &BTreeMap::new(),
                pod_failure: Some(&failure),
                probes: &ProbeResults::default(),
                now: Timestamp::from_second(1_700_000_100).unwrap(),
            },
        );
        assert_eq!(s.phase.as_deref(), Some("Failed"));
        assert_eq!(s.reason.as_deref(), Some("DeadlineExceeded"));
        assert_eq!(s.message.as_deref(), Some(failure.message.as_str()));
        let has_disruption = |s: &PodStatus| {
            s.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "DisruptionTarget" && c.status == "True")
        };
        assert!(!has_disruption(&s));
        let evicted = Waiting::new(
            "Evicted",
            "Usage of EmptyDir volume \"v\" exceeds the limit \"1Mi\". ",
        );
        let s = compute_pod_status(
            &p,
            &state(vec![rec("a", 0, Exited, 137)]),
            &StatusContext {
                host_ip: "10.1.1.1",
                id_scheme: "wasm",
                waiting: &BTreeMap::new(),
                pod_failure: Some(&evicted),
                probes: &ProbeResults::default(),
                now: Timestamp::from_second(1_700_000_100).unwrap(),
            },
        );
        assert_eq!(s.reason.as_deref(), Some("Evicted"));
        assert!(has_disruption(&s));
        assert_eq!(
            cond(&s, "DisruptionTarget").reason.as_deref(),
            Some("TerminationByKubelet")
        );
    }
}
