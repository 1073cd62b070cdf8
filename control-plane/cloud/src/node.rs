//! The cloud node controller (upstream `cloud-provider/controllers/node`): a Node
//! that registered with the `node.cloudprovider.kubernetes.io/uninitialized` taint
//! (a kubelet started with `--cloud-provider external`) gets its providerID,
//! addresses and topology/instance-type labels from the provider, then loses the
//! taint. Initialized nodes of this provider have their addresses refreshed every
//! `node_status_update_frequency` (an inventory edit reaches the Node).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, NodeAddress, Taint};
use kelp_controllers::events::Recorder;
use kelp_controllers::runner::{self, Action, Change, Informer, Key, WorkQueue};
use kelp_controllers::ControllerError;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use serde_json::{json, Value};

use crate::provider::{CloudError, InstanceMetadata};
use crate::retry::{bounded, Backoff};
use crate::CloudContext;

pub const UNINITIALIZED_TAINT: &str = "node.cloudprovider.kubernetes.io/uninitialized";
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
pub const LABEL_REGION: &str = "topology.kubernetes.io/region";
pub const LABEL_INSTANCE_TYPE: &str = "node.kubernetes.io/instance-type";
// The deprecated names, still set by upstream for old selectors.
const LABEL_ZONE_BETA: &str = "failure-domain.beta.kubernetes.io/zone";
const LABEL_REGION_BETA: &str = "failure-domain.beta.kubernetes.io/region";
const LABEL_INSTANCE_TYPE_BETA: &str = "beta.kubernetes.io/instance-type";

const WORKERS: usize = 1;

pub fn taints(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
}

pub fn is_uninitialized(node: &Node) -> bool {
    taints(node).iter().any(|t| t.key == UNINITIALIZED_TAINT)
}

fn provider_id(node: &Node) -> Option<&str> {
    node.spec
        .as_ref()
        .and_then(|s| s.provider_id.as_deref())
        .filter(|p| !p.is_empty())
}

/// The addresses the Node should carry: the provider's, keeping the kubelet's
/// Hostname when the provider names none (upstream does the same). `None` when
/// there is nothing to change.
pub fn desired_addresses(node: &Node, meta: &InstanceMetadata) -> Option<Vec<NodeAddress>> {
    if meta.node_addresses.is_empty() {
        return None;
    }
    let current: Vec<NodeAddress> = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.clone())
        .unwrap_or_default();
    let mut want = meta.node_addresses.clone();
    if !want.iter().any(|a| a.type_ == "Hostname") {
        want.extend(current.iter().filter(|a| a.type_ == "Hostname").cloned());
    }
    (want != current).then_some(want)
}

/// The metadata/spec patch that initializes `node`: labels, providerID (set once,
/// never changed), and the taints without the uninitialized one. Guarded by the
/// resourceVersion, since it rewrites the taint list.
pub fn init_patch(node: &Node, meta: &InstanceMetadata) -> Value {
    let mut labels = BTreeMap::new();
    for (keys, value) in [
        ([LABEL_ZONE, LABEL_ZONE_BETA], &meta.zone),
        ([LABEL_REGION, LABEL_REGION_BETA], &meta.region),
        (
            [LABEL_INSTANCE_TYPE, LABEL_INSTANCE_TYPE_BETA],
            &meta.instance_type,
        ),
    ] {
        if !value.is_empty() {
            for k in keys {
                labels.insert(k, value.clone());
            }
        }
    }
    let rest: Vec<&Taint> = taints(node)
        .iter()
        .filter(|t| t.key != UNINITIALIZED_TAINT)
        .collect();
    let mut spec = json!({ "taints": rest });
    if provider_id(node).is_none() && !meta.provider_id.is_empty() {
        spec["providerID"] = json!(meta.provider_id);
    }
    json!({
        "metadata": {"labels": labels, "resourceVersion": node.metadata.resource_version},
        "spec": spec,
    })
}

struct State {
    ctx: CloudContext,
    nodes: Store<Node>,
    recorder: Recorder,
    backoff: Backoff<Key>,
}

pub async fn run(ctx: CloudContext) {
    if ctx.provider.instances_v2().is_none() {
        tracing::info!("no instances from this provider: the cloud node controller is off");
        return std::future::pending().await;
    }
    let queue = WorkQueue::new();
    let inf = Informer::new(Api::<Node>::all(ctx.client.clone()));
    let st = Arc::new(State {
        recorder: Recorder::new(ctx.client.clone(), "cloud-node-controller"),
        nodes: inf.store(),
        backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
        ctx,
    });
    let events = {
        let q = queue.clone();
        inf.run(
            move |n, change| {
                if change == Change::Applied {
                    q.add(Key::of(n))
                }
            },
            || {},
        )
    };
    let workers = {
        let st = st.clone();
        async move {
            runner::wait_synced(&[&st.nodes]).await;
            runner::run_workers("cloud-node", queue, WORKERS, move |key| {
                let st = st.clone();
                async move { sync(&st, &key).await }
            })
            .await
        }
    };
    tokio::select! {
        _ = events => {}
        _ = workers => {}
    }
}

async fn sync(st: &State, key: &Key) -> Result<Action, ControllerError> {
    let Some(node) = st.nodes.get(&key.object_ref()) else {
        st.backoff.succeeded(key);
        return Ok(Action::Done);
    };
    let uninitialized = is_uninitialized(&node);
    // Only nodes waiting for us, or already ours, are looked up.
    if !uninitialized && provider_id(&node).is_none() {
        return Ok(Action::Done);
    }
    let instances = st.ctx.provider.instances_v2().expect("checked at start");
    let meta = match bounded(instances.instance_metadata(&node)).await {
        Ok(m) => m,
        Err(CloudError::InstanceNotFound) if !uninitialized => return Ok(Action::Done),
        Err(e) => {
            let delay = st.backoff.failed(key);
            tracing::warn!(node = %key, error = %e, retry_in = ?delay, "node metadata from the cloud provider failed");
            if uninitialized {
                st.recorder.record(
                    node.as_ref(),
                    true,
                    "FailedToInitializeNode",
                    format!("Failed to initialize node from the cloud provider: {e}"),
                );
            }
            return Ok(Action::RequeueAfter(delay));
        }
    };
    let api: Api<Node> = Api::all(st.ctx.client.clone());
    // Addresses first: once the taint is gone, consumers may trust the Node as is.
    if let Some(addresses) = desired_addresses(&node, &meta) {
        let patch = json!({"status": {"addresses": addresses}});
        api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        tracing::info!(node = %key, ?addresses, "node addresses set from the cloud provider");
    }
    st.backoff.succeeded(key);
    if !uninitialized {
        return Ok(Action::RequeueAfter(
            st.ctx.settings.node_status_update_frequency,
        ));
    }
    api.patch(
        &key.name,
        &PatchParams::default(),
        &Patch::Merge(&init_patch(&node, &meta)),
    )
    .await?;
    tracing::info!(node = %key, provider_id = %meta.provider_id, zone = %meta.zone, region = %meta.region, instance_type = %meta.instance_type, "node initialized");
    st.recorder.record(
        node.as_ref(),
        false,
        "Synced",
        "Node synced successfully".into(),
    );
    Ok(Action::RequeueAfter(
        st.ctx.settings.node_status_update_frequency,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(v: Value) -> Node {
        serde_json::from_value(v).unwrap()
    }
    fn meta() -> InstanceMetadata {
        InstanceMetadata {
            provider_id: "fleet://a".into(),
            instance_type: "rpi4".into(),
            node_addresses: vec![NodeAddress {
                type_: "InternalIP".into(),
                address: "10.0.0.5".into(),
            }],
            zone: "rack-a".into(),
            region: "".into(),
        }
    }

    #[test]
    fn initialization_sets_labels_provider_id_and_drops_only_our_taint() {
        let n = node(json!({"metadata": {"name": "a", "resourceVersion": "7"},
            "spec": {"taints": [
                {"key": UNINITIALIZED_TAINT, "value": "true", "effect": "NoSchedule"},
                {"key": "dedicated", "value": "edge", "effect": "NoSchedule"}]}}));
        assert!(is_uninitialized(&n));
        let p = init_patch(&n, &meta());
        assert_eq!(p["spec"]["providerID"], "fleet://a");
        assert_eq!(p["spec"]["taints"].as_array().unwrap().len(), 1);
        assert_eq!(p["spec"]["taints"][0]["key"], "dedicated");
        assert_eq!(p["metadata"]["labels"][LABEL_ZONE], "rack-a");
        assert_eq!(p["metadata"]["labels"][LABEL_INSTANCE_TYPE], "rpi4");
        assert!(
            p["metadata"]["labels"].get(LABEL_REGION).is_none(),
            "empty: not set"
        );
        assert_eq!(p["metadata"]["resourceVersion"], "7");
        // An existing providerID is never rewritten.
        let n = node(json!({"metadata": {"name": "a"}, "spec": {"providerID": "fleet://x"}}));
        assert!(init_patch(&n, &meta())["spec"].get("providerID").is_none());
    }

    #[test]
    fn addresses_come_from_the_provider_keeping_the_hostname() {
        let n = node(json!({"metadata": {"name": "a"}, "status": {"addresses": [
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": "a-host"}]}}));
        let want = desired_addresses(&n, &meta()).unwrap();
        let got: Vec<(&str, &str)> = want
            .iter()
            .map(|a| (a.type_.as_str(), a.address.as_str()))
            .collect();
        assert_eq!(got, [("InternalIP", "10.0.0.5"), ("Hostname", "a-host")]);
        let done = node(json!({"metadata": {"name": "a"}, "status": {"addresses": want}}));
        assert!(
            desired_addresses(&done, &meta()).is_none(),
            "nothing to change"
        );
        let none = InstanceMetadata {
            node_addresses: vec![],
            ..meta()
        };
        assert!(desired_addresses(&n, &none).is_none(), "the kubelet's stay");
    }
}
