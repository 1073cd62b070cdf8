//! Node IPAM (upstream `pkg/controller/nodeipam`, range allocator): every node gets
//! a pod CIDR from `--cluster-cidr` (a /`--node-cidr-mask-size` subnet), written to
//! `spec.podCIDR` and `spec.podCIDRs`. The set in use is recomputed from the nodes
//! that exist, so a deleted node's CIDR is free again; allocations not yet seen in
//! the cache are held in memory so two nodes never get the same one.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;

use crate::informer::reflect;
use crate::ops::error_policy;
use crate::{Context, ControllerError, ControllerFuture};

/// The lowest subnet of `cluster` with prefix `mask` that is not in `used`.
pub fn allocate(cluster: Ipv4Net, mask: u8, used: &BTreeSet<Ipv4Net>) -> Option<Ipv4Net> {
    if mask < cluster.prefix_len() || mask > 32 {
        return None;
    }
    cluster.subnets(mask).ok()?.find(|s| {
        !used
            .iter()
            .any(|u| u.contains(&s.network()) || s.contains(&u.network()))
    })
}

/// The pod CIDRs nodes hold (IPv4 ones; others are not ours to manage).
fn cidrs_of(node: &Node) -> Vec<Ipv4Net> {
    let spec = node.spec.as_ref();
    spec.and_then(|s| s.pod_cidrs.clone())
        .unwrap_or_default()
        .into_iter()
        .chain(spec.and_then(|s| s.pod_cidr.clone()))
        .filter_map(|c| c.parse::<Ipv4Net>().ok())
        .collect()
}

struct Ipam {
    client: kube::Client,
    nodes: Store<Node>,
    cluster: Ipv4Net,
    mask: u8,
    /// Allocated and written, maybe not yet in the cache: (node, cidr).
    in_flight: Mutex<Vec<(String, Ipv4Net)>>,
}

pub fn run(ctx: Context) -> ControllerFuture {
    Box::pin(async move {
        let Some(cluster) = ctx.settings.cluster_cidr else {
            tracing::info!("no --cluster-cidr: node IPAM is off");
            std::future::pending::<()>().await;
            return Ok(());
        };
        let (nodes, events) = reflect(
            Api::<Node>::all(ctx.client.clone()),
            watcher::Config::default(),
        );
        let state = Arc::new(Ipam {
            client: ctx.client.clone(),
            nodes: nodes.clone(),
            cluster,
            mask: ctx.settings.node_cidr_mask_size,
            in_flight: Mutex::new(Vec::new()),
        });
        Controller::for_stream(events, nodes)
            .run(reconcile, error_policy, state)
            .for_each(|_| async {})
            .await;
        Ok(())
    })
}

async fn reconcile(node: Arc<Node>, st: Arc<Ipam>) -> Result<Action, ControllerError> {
    st.nodes
        .wait_until_ready()
        .await
        .map_err(|e| ControllerError::Other(e.to_string()))?;
    let name = node.name_any();
    if !cidrs_of(&node).is_empty() || node.metadata.deletion_timestamp.is_some() {
        st.in_flight
            .lock()
            .expect("ipam lock")
            .retain(|(n, _)| n != &name);
        return Ok(Action::await_change());
    }
    let cidr = {
        let mut in_flight = st.in_flight.lock().expect("ipam lock");
        let nodes = st.nodes.state();
        // Forget in-flight allocations the cache now shows (or whose node is gone).
        in_flight.retain(|(n, _)| {
            nodes
                .iter()
                .any(|x| x.metadata.name.as_deref() == Some(n.as_str()) && cidrs_of(x).is_empty())
        });
        if let Some((_, c)) = in_flight.iter().find(|(n, _)| n == &name) {
            *c
        } else {
            let mut used: BTreeSet<Ipv4Net> = nodes.iter().flat_map(|n| cidrs_of(n)).collect();
            used.extend(in_flight.iter().map(|(_, c)| *c));
            let Some(c) = allocate(st.cluster, st.mask, &used) else {
                tracing::warn!(node = %name, cluster_cidr = %st.cluster, "no pod CIDR left for node");
                return Ok(Action::requeue(Duration::from_secs(30)));
            };
            in_flight.push((name.clone(), c));
            c
        }
    };
    let api: Api<Node> = Api::all(st.client.clone());
    let patch = json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            tracing::info!(node = %name, pod_cidr = %cidr, "allocated pod CIDR");
            Ok(Action::await_change())
        }
        Err(e) => {
            st.in_flight
                .lock()
                .expect("ipam lock")
                .retain(|(n, _)| n != &name);
            Err(e.into())
        }
    }
}

/// The first usable address of a CIDR (for tests and diagnostics).
pub fn first_host(c: &Ipv4Net) -> Ipv4Addr {
    c.hosts().next().unwrap_or(c.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_lowest_free_subnet_without_overlap() {
        let cluster = net("10.42.0.0/16");
        let mut used = BTreeSet::new();
        let a = allocate(cluster, 24, &used).unwrap();
        assert_eq!(a, net("10.42.0.0/24"));
        used.insert(a);
        used.insert(net("10.42.2.0/24"));
        assert_eq!(allocate(cluster, 24, &used).unwrap(), net("10.42.1.0/24"));
        used.insert(net("10.42.1.0/24"));
        assert_eq!(allocate(cluster, 24, &used).unwrap(), net("10.42.3.0/24"));
        // A released CIDR is handed out again.
        used.remove(&net("10.42.0.0/24"));
        assert_eq!(allocate(cluster, 24, &used).unwrap(), net("10.42.0.0/24"));
        // A wider CIDR in use blocks the subnets inside it.
        let used: BTreeSet<_> = [net("10.42.0.0/23")].into();
        assert_eq!(allocate(cluster, 24, &used).unwrap(), net("10.42.2.0/24"));
        assert_eq!(
            first_host(&net("10.42.2.0/24")),
            Ipv4Addr::new(10, 42, 2, 1)
        );
    }

    #[test]
    fn exhaustion_and_bad_masks() {
        let cluster = net("10.0.0.0/30");
        let used: BTreeSet<_> = [net("10.0.0.0/31"), net("10.0.0.2/31")].into();
        assert!(allocate(cluster, 31, &used).is_none());
        assert!(allocate(cluster, 29, &BTreeSet::new()).is_none());
        assert!(allocate(cluster, 33, &BTreeSet::new()).is_none());
    }
}
