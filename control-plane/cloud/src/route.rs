//! The route controller (upstream `cloud-provider/controllers/route`): one route per
//! node pod CIDR (`spec.podCIDRs`, set by node IPAM), created through the provider's
//! Routes; routes whose node or CIDR is gone are deleted. A node whose route exists
//! gets `NetworkUnavailable=False` (reason `RouteCreated`); one whose route cannot be
//! created gets `NetworkUnavailable=True` (`NoRouteCreated`) and a
//! `FailedToCreateRoute` Warning. It runs every `route_reconciliation_period` and
//! whenever a Node changes.
//!
//! With the fleet provider the kernel routes themselves are kept by the node agents
//! (host-gw, `node-agent/src/network/routes.rs`); see [`crate::fleet`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, NodeCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kelp_controllers::events::Recorder;
use kelp_controllers::runner::Informer;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::Store;
use kube::ResourceExt;
use tokio::sync::Notify;

use crate::provider::{Route, Routes};
use crate::retry::bounded;
use crate::CloudContext;

pub const NETWORK_UNAVAILABLE: &str = "NetworkUnavailable";

/// The pod CIDRs of a node.
pub fn pod_cidrs(node: &Node) -> Vec<String> {
    let spec = node.spec.as_ref();
    let mut out: Vec<String> = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    if out.is_empty() {
        out.extend(spec.and_then(|s| s.pod_cidr.clone()));
    }
    out
}

/// What the reconcile should do: routes to create (node, cidr), routes to delete.
pub fn plan(nodes: &[Arc<Node>], routes: &[Route]) -> (Vec<(Arc<Node>, String)>, Vec<Route>) {
    let existing: HashSet<(&str, &str)> = routes
        .iter()
        .map(|r| (r.target_node.as_str(), r.destination_cidr.as_str()))
        .collect();
    let mut wanted: HashSet<(String, String)> = HashSet::new();
    let mut create = Vec::new();
    for n in nodes {
        let name = n.name_any();
        for cidr in pod_cidrs(n) {
            if !existing.contains(&(name.as_str(), cidr.as_str())) {
                create.push((n.clone(), cidr.clone()));
            }
            wanted.insert((name.clone(), cidr));
        }
    }
    let delete = routes
        .iter()
        .filter(|r| !wanted.contains(&(r.target_node.clone(), r.destination_cidr.clone())))
        .cloned()
        .collect();
    (create, delete)
}

fn condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == NETWORK_UNAVAILABLE)
}

pub async fn run(ctx: CloudContext) {
    let Some(_) = ctx
        .provider
        .routes()
        .filter(|_| ctx.settings.configure_cloud_routes)
    else {
        tracing::info!("cloud routes are not configured: the route controller is off");
        return std::future::pending().await;
    };
    let changed = Arc::new(Notify::new());
    let inf = Informer::new(Api::<Node>::all(ctx.client.clone()));
    let nodes = inf.store();
    let events = {
        let c = changed.clone();
        inf.run(move |_, _| c.notify_one(), || {})
    };
    let recorder = Recorder::new(ctx.client.clone(), "route-controller");
    let looping = async {
        let _ = nodes.wait_until_ready().await;
        let mut reported: HashMap<String, String> = HashMap::new();
        loop {
            reconcile(&ctx, &nodes, &recorder, &mut reported).await;
            tokio::select! {
                _ = tokio::time::sleep(ctx.settings.route_reconciliation_period) => {}
                _ = changed.notified() => {}
            }
        }
    };
    tokio::select! {
        _ = events => {}
        _ = looping => {}
    }
}

async fn reconcile(
    ctx: &CloudContext,
    nodes: &Store<Node>,
    recorder: &Recorder,
    reported: &mut HashMap<String, String>,
) {
    let routes: &dyn Routes = ctx.provider.routes().expect("checked at start");
    let cluster = ctx.cluster_name.as_str();
    let existing = match bounded(routes.list_routes(cluster)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "listing routes failed; retrying");
            return;
        }
    };
    let all = nodes.state();
    let (create, delete) = plan(&all, &existing);
    for r in delete {
        match bounded(routes.delete_route(cluster, &r)).await {
            Ok(()) => {
                tracing::info!(node = %r.target_node, cidr = %r.destination_cidr, "route deleted")
            }
            Err(e) => tracing::warn!(node = %r.target_node, error = %e, "deleting a route failed"),
        }
    }
    let mut failed: HashSet<String> = HashSet::new();
    for (node, cidr) in create {
        let name = node.name_any();
        let hint = node.metadata.uid.clone().unwrap_or_else(|| name.clone());
        let route = Route {
            name: String::new(),
            target_node: name.clone(),
            destination_cidr: cidr.clone(),
            blackhole: false,
        };
        match bounded(routes.create_route(cluster, &hint, &route)).await {
            Ok(()) => {
                tracing::info!(node = %name, %cidr, "route created");
                reported.remove(&name);
            }
            Err(e) => {
                failed.insert(name.clone());
                let msg = format!("Could not create route {hint} {cidr} for node {name}: {e}");
                if reported.get(&name) != Some(&msg) {
                    tracing::warn!(node = %name, %cidr, error = %e, "creating a route failed; retrying");
                    recorder.record(node.as_ref(), true, "FailedToCreateRoute", msg.clone());
                    reported.insert(name.clone(), msg);
                }
            }
        }
    }
    for node in all.iter().filter(|n| !pod_cidrs(n).is_empty()) {
        let unavailable = failed.contains(&node.name_any());
        if let Err(e) = set_condition(ctx, node, unavailable).await {
            tracing::debug!(node = %node.name_any(), error = %e, "NetworkUnavailable not updated; next pass");
        }
    }
}

/// Writes `NetworkUnavailable` when it differs (read-modify-write of the status, so
/// the kubelet's conditions are kept).
async fn set_condition(
    ctx: &CloudContext,
    cached: &Node,
    unavailable: bool,
) -> Result<(), kube::Error> {
    let (status, reason, message) = if unavailable {
        ("True", "NoRouteCreated", "Node created without a route")
    } else {
        ("False", "RouteCreated", "RouteController created a route")
    };
    if condition(cached).is_some_and(|c| c.status == status && c.reason.as_deref() == Some(reason))
    {
        return Ok(());
    }
    let api: Api<Node> = Api::all(ctx.client.clone());
    let name = cached.name_any();
    let mut node = api.get(&name).await?;
    let now = Time(Timestamp::now());
    let conds = node
        .status
        .get_or_insert_with(Default::default)
        .conditions
        .get_or_insert_with(Vec::new);
    conds.retain(|c| c.type_ != NETWORK_UNAVAILABLE);
    conds.push(NodeCondition {
        type_: NETWORK_UNAVAILABLE.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(now),
    });
    api.replace_status(&name, &PostParams::default(), &node)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cidr: Option<&str>) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name},
                "spec": {"podCIDR": cidr, "podCIDRs": cidr.map(|c| vec![c])}}))
            .unwrap(),
        )
    }
    fn route(node: &str, cidr: &str) -> Route {
        Route {
            name: format!("{node}-r"),
            target_node: node.into(),
            destination_cidr: cidr.into(),
            blackhole: false,
        }
    }

    #[test]
    fn one_route_per_pod_cidr_and_stale_ones_go() {
        let nodes = [
            node("a", Some("10.42.0.0/24")),
            node("b", Some("10.42.1.0/24")),
            node("c", None),
        ];
        let routes = [
            route("a", "10.42.0.0/24"),
            route("b", "10.42.9.0/24"),
            route("gone", "10.42.2.0/24"),
        ];
        let (create, delete) = plan(&nodes, &routes);
        let create: Vec<(String, String)> =
            create.into_iter().map(|(n, c)| (n.name_any(), c)).collect();
        assert_eq!(create, [("b".to_string(), "10.42.1.0/24".to_string())]);
        let delete: Vec<&str> = delete.iter().map(|r| r.target_node.as_str()).collect();
        assert_eq!(delete, ["b", "gone"]);
    }
}
