//! The node lifecycle controller (upstream `pkg/controller/nodelifecycle` with the
//! taint-eviction manager): a node whose heartbeats stop for longer than the grace
//! period gets `Ready=Unknown` and the `unreachable` taints (`not-ready` when the
//! kubelet reports Ready=False), its pods are marked not Ready, and pods that do not
//! tolerate the NoExecute taint (or whose `tolerationSeconds` ran out) are deleted.
//! When heartbeats resume and the kubelet reports Ready, the taints go.
//!
//! Heartbeat silence is measured on this process's clock from the moment a Lease
//! renewal (or a status heartbeat) was last seen to *change*, as upstream does, so
//! clock skew between nodes and the control plane does not matter.

pub mod decide;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;

use crate::informer::{drive, reflect};
use crate::ops;
use crate::scheduling::node_taints;
use crate::util::{is_pod_ready, node_name, now};
use crate::{Context, ControllerError, ControllerFuture};

use decide::{desired_taints, eviction_delay, health, unknown_conditions, Health};

pub fn run(ctx: Context) -> ControllerFuture {
    Box::pin(async move {
        let client = ctx.client.clone();
        let (nodes, s) = reflect(Api::<Node>::all(client.clone()), watcher::Config::default());
        drive(s);
        let (leases, s) = reflect(
            Api::<Lease>::namespaced(client.clone(), "kube-node-lease"),
            watcher::Config::default(),
        );
        drive(s);
        let (pods, s) = ctx.pods.reflect();
        drive(s);
        for ready in [
            nodes.wait_until_ready().await,
            leases.wait_until_ready().await,
            pods.wait_until_ready().await,
        ] {
            ready.map_err(|e| ControllerError::Other(e.to_string()))?;
        }
        let grace = ctx.settings.node_monitor_grace_period;
        // Evictions are due at tolerationSeconds granularity: never check less often
        // than every second.
        let period = ctx.settings.node_monitor_period.min(Duration::from_secs(1));
        let mut monitor = Monitor {
            events: crate::events::Recorder::new(client.clone(), "node-controller"),
            client,
            nodes,
            leases,
            pods,
            grace,
            heard: HashMap::new(),
        };
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            monitor.pass().await;
        }
    })
}

struct Monitor {
    client: kube::Client,
    events: crate::events::Recorder,
    nodes: Store<Node>,
    leases: Store<Lease>,
    pods: Store<Pod>,
    grace: Duration,
    /// Per node: the last heartbeat signature seen and when it changed.
    heard: HashMap<String, (String, Instant)>,
}

impl Monitor {
    async fn pass(&mut self) {
        let nodes = self.nodes.state();
        self.heard.retain(|n, _| {
            nodes
                .iter()
                .any(|x| x.metadata.name.as_deref() == Some(n.as_str()))
        });
        let mut by_node: HashMap<String, Vec<std::sync::Arc<Pod>>> = HashMap::new();
        for p in self.pods.state() {
            if let Some(n) = node_name(&p) {
                by_node.entry(n.to_string()).or_default().push(p.clone());
            }
        }
        for node in nodes {
            let name = node.name_any();
            let pods = by_node.remove(&name).unwrap_or_default();
            if let Err(e) = self.check(&node, &pods).await {
                tracing::debug!(node = %name, error = %e, "node health pass");
            }
        }
    }

    fn heartbeat_signature(&self, node: &Node) -> String {
        let lease = self
            .leases
            .get(&ObjectRef::new(&node.name_any()).within("kube-node-lease"))
            .and_then(|l| {
                l.spec
                    .as_ref()?
                    .renew_time
                    .as_ref()
                    .map(|t| t.0.to_string())
            })
            .unwrap_or_default();
        let hb = ready_condition(node)
            .and_then(|c| c.last_heartbeat_time.as_ref().map(|t| t.0.to_string()))
            .unwrap_or_default();
        format!("{lease}|{hb}")
    }

    async fn check(
        &mut self,
        node: &Node,
        pods: &[std::sync::Arc<Pod>],
    ) -> Result<(), ControllerError> {
        let name = node.name_any();
        let sig = self.heartbeat_signature(node);
        let entry = self
            .heard
            .entry(name.clone())
            .or_insert_with(|| (sig.clone(), Instant::now()));
        if entry.0 != sig {
            *entry = (sig, Instant::now());
        }
        let silent = entry.1.elapsed();
        let h = health(ready_condition(node), silent, self.grace);
        let api: Api<Node> = Api::all(self.client.clone());
        let ts = Timestamp::now();

        // The node as last written, so the taint patch below is not refused as stale.
        let mut node = std::borrow::Cow::Borrowed(node);
        if silent > self.grace {
            let conds = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default();
            if let Some(conds) = unknown_conditions(&conds, &now()) {
                tracing::info!(node = %name, silent_secs = silent.as_secs(), "node stopped posting status: Ready=Unknown");
                self.events.record(
                    node.as_ref(),
                    false,
                    "NodeNotReady",
                    format!("Node {name} status is now: NodeNotReady"),
                );
                let mut n = node.clone().into_owned();
                n.status.get_or_insert_with(Default::default).conditions = Some(conds);
                node = std::borrow::Cow::Owned(
                    api.replace_status(&name, &PostParams::default(), &n)
                        .await?,
                );
            }
        }
        let current = node_taints(&node).to_vec();
        let taints = match desired_taints(&current, h, ts) {
            Some(next) => {
                tracing::info!(node = %name, health = ?h, "updating node taints");
                let patch = json!({
                    "metadata": {"resourceVersion": node.metadata.resource_version},
                    "spec": {"taints": next},
                });
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                next
            }
            None => current,
        };
        if matches!(h, Health::Ready | Health::Registering) {
            return Ok(());
        }
        for pod in pods {
            let pods_api: Api<Pod> =
                Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let tols = pod
                .spec
                .as_ref()
                .and_then(|s| s.tolerations.clone())
                .unwrap_or_default();
            if eviction_delay(&taints, &tols, ts) == Some(Duration::ZERO) {
                tracing::info!(pod = %pod.name_any(), node = %name, "evicting pod from a NoExecute-tainted node");
                add_disruption_target(&pods_api, pod).await?;
                ops::delete_pod(&pods_api, &pod.name_any()).await?;
                self.events.record(
                    pod.as_ref(),
                    false,
                    "TaintManagerEviction",
                    format!(
                        "Marking for deletion Pod {}/{}",
                        pod.namespace().unwrap_or_default(),
                        pod.name_any()
                    ),
                );
                continue;
            }
            if is_pod_ready(pod) {
                mark_not_ready(&pods_api, pod).await?;
            }
        }
        Ok(())
    }
}

fn ready_condition(node: &Node) -> Option<&k8s_openapi::api::core::v1::NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// Upstream's taint manager tells the pod why it goes (DisruptionTarget) first.
async fn add_disruption_target(api: &Api<Pod>, pod: &Pod) -> Result<(), ControllerError> {
    let mut conds = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    conds.retain(|c| c.type_ != "DisruptionTarget");
    conds.push(k8s_openapi::api::core::v1::PodCondition {
        type_: "DisruptionTarget".into(),
        status: "True".into(),
        reason: Some("DeletionByTaintManager".into()),
        message: Some("Taint manager: deleting due to NoExecute taint".into()),
        last_transition_time: Some(now()),
        ..Default::default()
    });
    let patch = json!({"status": {"conditions": conds}});
    match api
        .patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if ops::is_status(&e, 404) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Upstream `MarkPodsNotReady`: the pod's Ready condition becomes False.
async fn mark_not_ready(api: &Api<Pod>, pod: &Pod) -> Result<(), ControllerError> {
    let mut conds = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    for c in conds.iter_mut().filter(|c| c.type_ == "Ready") {
        c.status = "False".into();
        c.last_transition_time = Some(now());
    }
    let patch = json!({
        "metadata": {"resourceVersion": pod.metadata.resource_version},
        "status": {"conditions": conds},
    });
    match api
        .patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if ops::is_status(&e, 404) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
