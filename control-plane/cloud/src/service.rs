//! The service controller (upstream `cloud-provider/controllers/service`): every
//! `type: LoadBalancer` Service gets a load balancer from the provider and its
//! address in `status.loadBalancer.ingress`; the load balancer follows the set of
//! nodes that may receive traffic; the `service.kubernetes.io/load-balancer-cleanup`
//! finalizer holds a deleted Service (or one that stopped being a LoadBalancer) until
//! the provider released its load balancer. Failures are Warning Events
//! (`SyncLoadBalancerFailed`) and retried after 5 s doubling to 5 min, as upstream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{LoadBalancerStatus, Node, Service};
use kelp_controllers::events::Recorder;
use kelp_controllers::runner::{self, Action, Informer, Key, WorkQueue};
use kelp_controllers::ControllerError;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use serde_json::json;

use crate::retry::{bounded, Backoff};
use crate::CloudContext;

pub const FINALIZER: &str = "service.kubernetes.io/load-balancer-cleanup";
/// Nodes with this label never receive load-balancer traffic (upstream).
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

const WORKERS: usize = 2;

/// Whether the Service should have a load balancer from this manager (a Service
/// naming a `loadBalancerClass` belongs to another implementation).
pub fn wants_load_balancer(svc: &Service) -> bool {
    let Some(spec) = &svc.spec else { return false };
    svc.metadata.deletion_timestamp.is_none()
        && spec.type_.as_deref() == Some("LoadBalancer")
        && spec.load_balancer_class.is_none()
}

pub fn has_finalizer(svc: &Service) -> bool {
    svc.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == FINALIZER)
}

fn status_of(svc: &Service) -> LoadBalancerStatus {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.clone())
        .unwrap_or_default()
}

fn has_ingress(svc: &Service) -> bool {
    status_of(svc).ingress.is_some_and(|i| !i.is_empty())
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The nodes load balancers send traffic to: Ready, not being deleted, not
/// excluded by label. Sorted by name.
pub fn eligible_nodes(nodes: &[Arc<Node>]) -> Vec<Node> {
    let mut out: Vec<Node> = nodes
        .iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter(|n| {
            !n.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(EXCLUDE_LABEL))
        })
        .filter(|n| is_ready(n))
        .map(|n| (**n).clone())
        .collect();
    out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    out
}

fn names(nodes: &[Node]) -> Vec<String> {
    nodes
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect()
}

struct State {
    ctx: CloudContext,
    services: Store<Service>,
    nodes: Store<Node>,
    recorder: Recorder,
    backoff: Backoff<Key>,
    queue: WorkQueue,
    /// The node names each load balancer was last given.
    hosts: Mutex<HashMap<Key, Vec<String>>>,
    /// The eligible node set last seen by the node handler.
    node_set: Mutex<Vec<String>>,
}

impl State {
    /// Wakes the LoadBalancer Services that have no address yet (one was just freed).
    fn wake_waiting(&self) {
        for s in self.services.state() {
            if wants_load_balancer(&s) && !has_ingress(&s) {
                self.queue.add(Key::of(s.as_ref()));
            }
        }
    }
}

/// Runs the service controller until dropped. Without load-balancer support in the
/// provider it does nothing (as upstream does not start it).
pub async fn run(ctx: CloudContext) {
    if ctx.provider.load_balancer().is_none() {
        tracing::info!(
            provider = ctx.provider.provider_name(),
            "no load balancers from this provider: the service controller is off"
        );
        return std::future::pending().await;
    }
    let client = ctx.client.clone();
    let queue = WorkQueue::new();
    let svc_inf = Informer::new(Api::<Service>::all(client.clone()));
    let node_inf = Informer::new(Api::<Node>::all(client.clone()));
    let st = Arc::new(State {
        recorder: Recorder::new(client, "service-controller"),
        services: svc_inf.store(),
        nodes: node_inf.store(),
        backoff: Backoff::new(Duration::from_secs(5), Duration::from_secs(300)),
        queue: queue.clone(),
        hosts: Mutex::new(HashMap::new()),
        node_set: Mutex::new(Vec::new()),
        ctx,
    });
    let svc_events = {
        let q = queue.clone();
        svc_inf.run(move |s, _| q.add(Key::of(s)), || {})
    };
    let node_events = {
        let st = st.clone();
        let on_change = move || {
            let now = names(&eligible_nodes(&st.nodes.state()));
            let mut last = st.node_set.lock().unwrap_or_else(|e| e.into_inner());
            if *last != now {
                tracing::info!(nodes = ?now, "load-balancer nodes changed");
                *last = now;
                for s in st.services.state() {
                    if wants_load_balancer(&s) {
                        st.queue.add(Key::of(s.as_ref()));
                    }
                }
            }
        };
        let on_change = Arc::new(on_change);
        let c = on_change.clone();
        node_inf.run(move |_, _| (*c)(), move || (*on_change)())
    };
    let workers = {
        let st = st.clone();
        async move {
            runner::wait_synced(&[&st.services, &st.nodes]).await;
            runner::run_workers("service", queue, WORKERS, move |key| {
                let st = st.clone();
                async move { sync(&st, &key).await }
            })
            .await
        }
    };
    tokio::select! {
        _ = svc_events => {}
        _ = node_events => {}
        _ = workers => {}
    }
}

async fn sync(st: &State, key: &Key) -> Result<Action, ControllerError> {
    let Some(svc) = st.services.get(&key.object_ref()) else {
        st.hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        st.backoff.succeeded(key);
        return Ok(Action::Done);
    };
    let api: Api<Service> = Api::namespaced(
        st.ctx.client.clone(),
        key.namespace.as_deref().unwrap_or("default"),
    );
    if wants_load_balancer(&svc) {
        ensure(st, key, &svc, &api).await
    } else if has_finalizer(&svc) {
        cleanup(st, key, &svc, &api).await
    } else {
        Ok(Action::Done)
    }
}

async fn ensure(
    st: &State,
    key: &Key,
    svc: &Service,
    api: &Api<Service>,
) -> Result<Action, ControllerError> {
    let lb = st.ctx.provider.load_balancer().expect("checked at start");
    let cluster = st.ctx.cluster_name.as_str();
    if !has_finalizer(svc) {
        // The finalizer goes on before any cloud resource exists, so no deletion can
        // slip past the cleanup.
        let mut fins = svc.metadata.finalizers.clone().unwrap_or_default();
        fins.push(FINALIZER.into());
        let patch = json!({"metadata": {"finalizers": fins,
            "resourceVersion": svc.metadata.resource_version}});
        api.patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        // The update wakes this key again with the finalizer in the cache; going on
        // now would race that reconcile (two Ensuring/Ensured pairs).
        return Ok(Action::Done);
    }
    let nodes = eligible_nodes(&st.nodes.state());
    let hosts = names(&nodes);
    let previous = st
        .hosts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(key)
        .cloned();
    let only_hosts_changed = has_ingress(svc) && previous.as_ref().is_some_and(|p| *p != hosts);
    let result = if only_hosts_changed {
        bounded(lb.update_load_balancer(cluster, svc, &nodes))
            .await
            .map(|()| None)
    } else {
        if !has_ingress(svc) {
            st.recorder.record(
                svc,
                false,
                "EnsuringLoadBalancer",
                "Ensuring load balancer".into(),
            );
        }
        bounded(lb.ensure_load_balancer(cluster, svc, &nodes))
            .await
            .map(Some)
    };
    let status = match result {
        Ok(s) => s,
        Err(e) => {
            let delay = st.backoff.failed(key);
            tracing::warn!(service = %key, error = %e, retry_in = ?delay, "ensuring the load balancer failed");
            st.recorder.record(
                svc,
                true,
                "SyncLoadBalancerFailed",
                format!("Error syncing load balancer: failed to ensure load balancer: {e}"),
            );
            return Ok(Action::RequeueAfter(delay));
        }
    };
    match status {
        None => st.recorder.record(
            svc,
            false,
            "UpdatedLoadBalancer",
            "Updated load balancer with new hosts".into(),
        ),
        Some(status) if status != status_of(svc) => {
            let patch = json!({"status": {"loadBalancer": &status}});
            api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            let ips: Vec<String> = status
                .ingress
                .iter()
                .flatten()
                .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
                .collect();
            tracing::info!(service = %key, ingress = ?ips, "load balancer ensured");
            st.recorder.record(
                svc,
                false,
                "EnsuredLoadBalancer",
                "Ensured load balancer".into(),
            );
        }
        Some(_) => {}
    }
    st.hosts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key.clone(), hosts);
    st.backoff.succeeded(key);
    Ok(Action::Done)
}

async fn cleanup(
    st: &State,
    key: &Key,
    svc: &Service,
    api: &Api<Service>,
) -> Result<Action, ControllerError> {
    let lb = st.ctx.provider.load_balancer().expect("checked at start");
    st.recorder.record(
        svc,
        false,
        "DeletingLoadBalancer",
        "Deleting load balancer".into(),
    );
    if let Err(e) = bounded(lb.ensure_load_balancer_deleted(&st.ctx.cluster_name, svc)).await {
        let delay = st.backoff.failed(key);
        tracing::warn!(service = %key, error = %e, retry_in = ?delay, "deleting the load balancer failed");
        st.recorder.record(
            svc,
            true,
            "SyncLoadBalancerFailed",
            format!("Error syncing load balancer: failed to delete load balancer: {e}"),
        );
        return Ok(Action::RequeueAfter(delay));
    }
    st.recorder.record(
        svc,
        false,
        "DeletedLoadBalancer",
        "Deleted load balancer".into(),
    );
    if has_ingress(svc) {
        // The Service stays (it changed type): its status must stop naming the address.
        let patch = json!({"status": {"loadBalancer": {"ingress": null}}});
        match api
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(e) if kelp_controllers::is_status(&e, 404) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let rest: Vec<&String> = svc
        .metadata
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != FINALIZER)
        .collect();
    let patch = json!({"metadata": {"finalizers": rest,
        "resourceVersion": svc.metadata.resource_version}});
    match api
        .patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        Err(e) if kelp_controllers::is_status(&e, 404) => {}
        Err(e) => return Err(e.into()),
    }
    st.hosts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(key);
    st.backoff.succeeded(key);
    // Its address may be what a waiting Service needs.
    st.wake_waiting();
    Ok(Action::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }
    fn node(name: &str, ready: &str, labels: serde_json::Value) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels},
                "status": {"conditions": [{"type": "Ready", "status": ready}]}}))
            .unwrap(),
        )
    }

    #[test]
    fn which_services_get_a_load_balancer() {
        assert!(wants_load_balancer(&svc(
            json!({"metadata": {"name": "a"}, "spec": {"type": "LoadBalancer"}})
        )));
        assert!(!wants_load_balancer(&svc(
            json!({"metadata": {"name": "a"}, "spec": {"type": "NodePort"}})
        )));
        assert!(!wants_load_balancer(&svc(
            json!({"metadata": {"name": "a"},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": "example.com/other"}})
        )));
        let deleting = svc(json!({"metadata": {"name": "a",
            "deletionTimestamp": "2024-01-01T00:00:00Z", "finalizers": [FINALIZER]},
            "spec": {"type": "LoadBalancer"}}));
        assert!(!wants_load_balancer(&deleting) && has_finalizer(&deleting));
    }

    #[test]
    fn only_ready_included_nodes_take_traffic() {
        let nodes = [
            node("c", "True", json!({})),
            node("a", "True", json!({})),
            node("b", "False", json!({})),
            node("d", "True", json!({EXCLUDE_LABEL: ""})),
        ];
        assert_eq!(names(&eligible_nodes(&nodes)), ["a", "c"]);
    }
}
