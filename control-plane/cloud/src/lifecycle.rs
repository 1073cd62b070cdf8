//! The cloud node lifecycle controller (upstream
//! `cloud-provider/controllers/nodelifecycle`): every `node_monitor_period` it looks
//! at the Nodes that are not Ready. One whose instance no longer exists is deleted
//! (with a `DeletingNode` Event); one whose instance is shut down gets the
//! `node.cloudprovider.kubernetes.io/shutdown` taint, which goes again once the Node
//! is Ready. Ready Nodes are left alone, as upstream: a machine taken out of the
//! inventory while its kubelet still reports keeps its Node until it stops.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Taint};
use kelp_controllers::events::Recorder;
use kelp_controllers::runner::Informer;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;

use crate::node::taints;
use crate::provider::{CloudError, InstancesV2};
use crate::retry::bounded;
use crate::CloudContext;

pub const SHUTDOWN_TAINT: &str = "node.cloudprovider.kubernetes.io/shutdown";

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn has_shutdown_taint(node: &Node) -> bool {
    taints(node).iter().any(|t| t.key == SHUTDOWN_TAINT)
}

/// What to do about one Node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Nothing,
    Delete,
    AddShutdownTaint,
    RemoveShutdownTaint,
}

/// Upstream's order: Ready nodes only lose a stale shutdown taint; a NotReady node
/// whose instance is gone is deleted; one whose instance is shut down is tainted.
pub async fn decide(node: &Node, instances: &dyn InstancesV2) -> Result<Verdict, CloudError> {
    if is_ready(node) {
        return Ok(if has_shutdown_taint(node) {
            Verdict::RemoveShutdownTaint
        } else {
            Verdict::Nothing
        });
    }
    if !bounded(instances.instance_exists(node)).await? {
        return Ok(Verdict::Delete);
    }
    let shutdown = bounded(instances.instance_shutdown(node)).await?;
    Ok(match (shutdown, has_shutdown_taint(node)) {
        (true, false) => Verdict::AddShutdownTaint,
        _ => Verdict::Nothing,
    })
}

pub async fn run(ctx: CloudContext) {
    if ctx.provider.instances_v2().is_none() {
        tracing::info!(
            "no instances from this provider: the cloud node lifecycle controller is off"
        );
        return std::future::pending().await;
    }
    let api: Api<Node> = Api::all(ctx.client.clone());
    // The watch runs in this future (not a detached task), so losing leadership,
    // which drops the loops, ends it too.
    let inf = Informer::new(api.clone());
    let nodes = inf.store();
    let watching = inf.run(|_, _| {}, || {});
    tokio::select! {
        _ = watching => {}
        _ = monitor(ctx, api, nodes) => {}
    }
}

async fn monitor(ctx: CloudContext, api: Api<Node>, nodes: kube::runtime::reflector::Store<Node>) {
    let _ = nodes.wait_until_ready().await;
    let recorder = Recorder::new(ctx.client.clone(), "cloud-node-lifecycle-controller");
    // The last error reported per node: a persisting error is one Event, not one
    // per pass (the pass itself is the retry).
    let mut reported: HashMap<String, String> = HashMap::new();
    let mut tick = tokio::time::interval(ctx.settings.node_monitor_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let instances = ctx.provider.instances_v2().expect("checked at start");
        let all = nodes.state();
        reported.retain(|n, _| all.iter().any(|x| x.name_any() == *n));
        for node in all {
            let name = node.name_any();
            let verdict = match decide(&node, instances).await {
                Ok(v) => {
                    reported.remove(&name);
                    v
                }
                Err(e) => {
                    let msg = e.to_string();
                    if reported.get(&name) != Some(&msg) {
                        tracing::warn!(node = %name, error = %msg, "cloud provider lookup failed; retrying next pass");
                        recorder.record(
                            node.as_ref(),
                            true,
                            "CloudProviderLookupFailed",
                            format!("Checking the node's instance failed: {msg}"),
                        );
                        reported.insert(name.clone(), msg);
                    }
                    continue;
                }
            };
            if let Err(e) = act(&api, &recorder, &node, verdict).await {
                tracing::debug!(node = %name, error = %e, "node lifecycle action failed; retrying next pass");
            }
        }
    }
}

async fn act(
    api: &Api<Node>,
    recorder: &Recorder,
    node: &Arc<Node>,
    verdict: Verdict,
) -> Result<(), kube::Error> {
    let name = node.name_any();
    let set_taints = |list: Vec<Taint>| {
        json!({"metadata": {"resourceVersion": node.metadata.resource_version},
               "spec": {"taints": list}})
    };
    match verdict {
        Verdict::Nothing => Ok(()),
        Verdict::Delete => {
            tracing::info!(node = %name, "deleting the node: its instance no longer exists");
            recorder.record(
                node.as_ref(),
                false,
                "DeletingNode",
                format!("Deleting node {name} because it does not exist in the cloud provider"),
            );
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(e) if kelp_controllers::is_status(&e, 404) => Ok(()),
                Err(e) => Err(e),
            }
        }
        Verdict::AddShutdownTaint => {
            let mut list = taints(node).to_vec();
            list.push(Taint {
                key: SHUTDOWN_TAINT.into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            });
            tracing::info!(node = %name, "instance shut down: tainting the node");
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&set_taints(list)),
            )
            .await
            .map(|_| ())
        }
        Verdict::RemoveShutdownTaint => {
            let list: Vec<Taint> = taints(node)
                .iter()
                .filter(|t| t.key != SHUTDOWN_TAINT)
                .cloned()
                .collect();
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&set_taints(list)),
            )
            .await
            .map(|_| ())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeCloud;

    fn node(ready: &str, taint: bool) -> Node {
        let taints: Vec<_> = taint
            .then(|| json!({"key": SHUTDOWN_TAINT, "effect": "NoSchedule"}))
            .into_iter()
            .collect();
        serde_json::from_value(json!({"metadata": {"name": "a"},
            "spec": {"taints": taints},
            "status": {"conditions": [{"type": "Ready", "status": ready}]}}))
        .unwrap()
    }

    #[tokio::test]
    async fn verdicts_follow_upstream() {
        let cloud = FakeCloud::default();
        let i = cloud.instances_v2_ref();
        // Ready: left alone even when gone from the cloud.
        assert_eq!(
            decide(&node("True", false), i).await.unwrap(),
            Verdict::Nothing
        );
        assert_eq!(
            decide(&node("True", true), i).await.unwrap(),
            Verdict::RemoveShutdownTaint
        );
        assert_eq!(
            decide(&node("Unknown", false), i).await.unwrap(),
            Verdict::Delete
        );
        cloud.add_instance("a", false);
        assert_eq!(
            decide(&node("False", false), i).await.unwrap(),
            Verdict::Nothing
        );
        cloud.add_instance("a", true);
        assert_eq!(
            decide(&node("Unknown", false), i).await.unwrap(),
            Verdict::AddShutdownTaint
        );
        assert_eq!(
            decide(&node("Unknown", true), i).await.unwrap(),
            Verdict::Nothing
        );
        cloud.fail_with("inventory unreadable");
        assert!(
            decide(&node("Unknown", false), i).await.is_err(),
            "an error never deletes"
        );
    }
}
