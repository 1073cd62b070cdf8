//! The garbage collector (upstream pkg/controller/garbagecollector): a graph of every
//! object's `ownerReferences`, kept from watches of every listable, deletable resource.
//!
//! * Background: a dependent whose owners are all gone (verified with a live GET, the
//!   cache may lag) is deleted; a dependent with some owners left loses the references
//!   to the missing ones.
//! * Foreground: an owner being deleted with the `foregroundDeletion` finalizer gets its
//!   dependents deleted (foreground again when they have dependents of their own) and
//!   loses the finalizer once no dependent with `blockOwnerDeletion` remains.
//! * Orphan: an owner being deleted with the `orphan` finalizer has its references
//!   removed from every dependent, then loses the finalizer.
//!
//! The API server sets those finalizers from the DELETE's `propagationPolicy`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::core::discovery::Scope;
use kube::discovery::{ApiCapabilities, ApiResource, Discovery};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use serde_json::json;

use crate::runner::{self, Action, Key, WorkQueue};
use crate::{is_status, Context, ControllerError, ControllerFuture};

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";
const WORKERS: usize = 4;

pub fn run(ctx: Context) -> ControllerFuture {
    Box::pin(run_controller(ctx))
}

/// One object as the collector sees it.
#[derive(Clone, Debug)]
struct Node {
    resource: Arc<ApiResource>,
    namespaced: bool,
    namespace: Option<String>,
    name: String,
    resource_version: Option<String>,
    owners: Vec<OwnerReference>,
    deleting: bool,
    finalizers: Vec<String>,
}

impl Node {
    fn api(&self, client: &Client) -> Api<DynamicObject> {
        match (&self.namespace, self.namespaced) {
            (Some(ns), true) => Api::namespaced_with(client.clone(), ns, self.resource.as_ref()),
            _ => Api::all_with(client.clone(), self.resource.as_ref()),
        }
    }

    fn deleting_dependents(&self) -> bool {
        self.deleting && self.finalizers.iter().any(|f| f == FOREGROUND)
    }
}

#[derive(Default)]
struct Graph {
    nodes: HashMap<String, Node>,
    /// owner uid → dependent uids (owners may not be in `nodes`: that is the point).
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    fn insert(&mut self, uid: &str, node: Node) -> Option<Node> {
        let old = self.nodes.insert(uid.to_string(), node.clone());
        if let Some(o) = &old {
            for r in &o.owners {
                if let Some(s) = self.dependents.get_mut(&r.uid) {
                    s.remove(uid);
                }
            }
        }
        for r in &node.owners {
            self.dependents
                .entry(r.uid.clone())
                .or_default()
                .insert(uid.to_string());
        }
        old
    }

    fn remove(&mut self, uid: &str) -> Option<Node> {
        let old = self.nodes.remove(uid)?;
        for r in &old.owners {
            if let Some(s) = self.dependents.get_mut(&r.uid) {
                s.remove(uid);
                if s.is_empty() {
                    self.dependents.remove(&r.uid);
                }
            }
        }
        Some(old)
    }

    fn dependents_of(&self, uid: &str) -> Vec<(String, Node)> {
        self.dependents
            .get(uid)
            .map(|s| {
                s.iter()
                    .filter_map(|d| self.nodes.get(d).map(|n| (d.clone(), n.clone())))
                    .collect()
            })
            .unwrap_or_default()
    }
}

struct State {
    client: Client,
    graph: Mutex<Graph>,
    /// (apiVersion, kind) → resource, for resolving owner references.
    kinds: HashMap<(String, String), (Arc<ApiResource>, bool)>,
    queue: WorkQueue,
}

impl State {
    fn graph(&self) -> std::sync::MutexGuard<'_, Graph> {
        self.graph.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn uid_key(uid: &str) -> Key {
    Key::new(None, uid)
}

/// Every served resource (the preferred version of each), from API discovery.
pub async fn discover(
    client: &Client,
) -> Result<Vec<(ApiResource, ApiCapabilities)>, ControllerError> {
    let discovery = Discovery::new(client.clone()).run().await?;
    Ok(discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .collect())
}

/// Every resource the collector watches: listable, watchable, deletable, not events.
pub async fn collectable_resources(
    client: &Client,
) -> Result<Vec<(ApiResource, ApiCapabilities)>, ControllerError> {
    Ok(discover(client)
        .await?
        .into_iter()
        .filter(|(ar, caps)| {
            ar.plural != "events"
                && ["list", "watch", "delete"]
                    .iter()
                    .all(|v| caps.supports_operation(v))
        })
        .collect())
}

async fn run_controller(ctx: Context) -> Result<(), ControllerError> {
    let client = ctx.client.clone();
    let resources = collectable_resources(&client).await?;
    let mut kinds = HashMap::new();
    for (ar, caps) in &resources {
        kinds.insert(
            (ar.api_version.clone(), ar.kind.clone()),
            (Arc::new(ar.clone()), caps.scope == Scope::Namespaced),
        );
    }
    let queue = WorkQueue::new();
    let st = Arc::new(State {
        client: client.clone(),
        graph: Mutex::new(Graph::default()),
        kinds,
        queue: queue.clone(),
    });
    let mut watches = Vec::new();
    let mut synced = Vec::new();
    for (ar, caps) in resources {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        synced.push(rx);
        let namespaced = caps.scope == Scope::Namespaced;
        let watch: futures::future::BoxFuture<'static, ()> =
            if ar.group.is_empty() && ar.plural == "pods" {
                Box::pin(watch_shared_pods(
                    st.clone(),
                    Arc::new(ar),
                    ctx.pods.clone(),
                    tx,
                ))
            } else {
                Box::pin(watch_resource(st.clone(), Arc::new(ar), namespaced, tx))
            };
        watches.push(watch);
    }
    let workers = {
        let st = st.clone();
        async move {
            for rx in synced {
                let _ = rx.await;
            }
            // Everything with owners or pending GC finalizers gets one look.
            let keys: Vec<String> = st
                .graph()
                .nodes
                .iter()
                .filter(|(_, n)| !n.owners.is_empty() || n.deleting)
                .map(|(u, _)| u.clone())
                .collect();
            for k in keys {
                st.queue.add(uid_key(&k));
            }
            runner::run_workers("garbagecollector", queue, WORKERS, move |key| {
                let st = st.clone();
                async move { process(&st, &key.name).await }
            })
            .await
        }
    };
    tokio::select! {
        _ = futures::future::join_all(watches) => {}
        _ = workers => {}
    }
    Ok(())
}

fn node_of(
    m: &kube::api::ObjectMeta,
    resource: &Arc<ApiResource>,
    namespaced: bool,
) -> Option<(String, Node)> {
    Some((
        m.uid.clone()?,
        Node {
            resource: resource.clone(),
            namespaced,
            namespace: m.namespace.clone(),
            name: m.name.clone()?,
            resource_version: m.resource_version.clone(),
            owners: m.owner_references.clone().unwrap_or_default(),
            deleting: m.deletion_timestamp.is_some(),
            finalizers: m.finalizers.clone().unwrap_or_default(),
        },
    ))
}

/// Keeps the graph for one resource and queues what its changes affect.
async fn watch_resource(
    st: Arc<State>,
    resource: Arc<ApiResource>,
    namespaced: bool,
    synced: tokio::sync::oneshot::Sender<()>,
) {
    let api: Api<DynamicObject> = Api::all_with(st.client.clone(), resource.as_ref());
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut synced = Some(synced);
    let mut listed: HashSet<String> = HashSet::new();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Event::Init) => listed.clear(),
            Ok(Event::InitApply(o)) => {
                if let Some((uid, node)) = node_of(&o.metadata, &resource, namespaced) {
                    listed.insert(uid.clone());
                    applied(&st, &uid, node);
                }
            }
            Ok(Event::InitDone) => {
                forget_missing(&st, &resource, &listed);
                if let Some(tx) = synced.take() {
                    let _ = tx.send(());
                }
            }
            Ok(Event::Apply(o)) => {
                if let Some((uid, node)) = node_of(&o.metadata, &resource, namespaced) {
                    applied(&st, &uid, node);
                }
            }
            Ok(Event::Delete(o)) => {
                if let Some(uid) = o.metadata.uid.as_deref() {
                    deleted(&st, uid);
                }
            }
            Err(e) => {
                tracing::warn!(resource = %resource.plural, error = %e, "garbage collector watch failed; retrying")
            }
        }
    }
}

/// Pods from the controllers' shared pod watch: the busiest kind, which a watch of the
/// collector's own would send and parse again for every change.
async fn watch_shared_pods(
    st: Arc<State>,
    resource: Arc<ApiResource>,
    pods: crate::shared::SharedInformer<k8s_openapi::api::core::v1::Pod>,
    synced: tokio::sync::oneshot::Sender<()>,
) {
    let store = pods.store();
    let synced = Mutex::new(Some(synced));
    let (st2, res2) = (st.clone(), resource.clone());
    let on_change =
        move |pod: &k8s_openapi::api::core::v1::Pod, change: runner::Change| match change {
            runner::Change::Applied => {
                if let Some((uid, node)) = node_of(&pod.metadata, &resource, true) {
                    applied(&st, &uid, node);
                }
            }
            runner::Change::Deleted => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    deleted(&st, uid);
                }
            }
        };
    let on_resync = move || {
        let present: HashSet<String> = store
            .state()
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        forget_missing(&st2, &res2, &present);
        if let Some(tx) = synced.lock().ok().and_then(|mut s| s.take()) {
            let _ = tx.send(());
        }
    };
    pods.handle(on_change, on_resync).await
}

/// After a (re)list: objects of `resource` the graph holds that the list did not
/// have vanished during a watch gap.
fn forget_missing(st: &State, resource: &Arc<ApiResource>, listed: &HashSet<String>) {
    let gone: Vec<String> = st
        .graph()
        .nodes
        .iter()
        .filter(|(u, n)| Arc::ptr_eq(&n.resource, resource) && !listed.contains(*u))
        .map(|(u, _)| u.clone())
        .collect();
    for uid in gone {
        deleted(st, &uid);
    }
}

fn applied(st: &State, uid: &str, node: Node) {
    let mut g = st.graph();
    let old = g.insert(uid, node.clone());
    let changed = old.as_ref().is_none_or(|o| {
        o.owners != node.owners || o.deleting != node.deleting || o.finalizers != node.finalizers
    });
    if !changed {
        return;
    }
    if !node.owners.is_empty()
        || (node.deleting
            && node
                .finalizers
                .iter()
                .any(|f| f == ORPHAN || f == FOREGROUND))
    {
        st.queue.add(uid_key(uid));
    }
    // Starting a foreground deletion: every dependent takes a look at its owners.
    let was_deleting_dependents = old.as_ref().is_some_and(Node::deleting_dependents);
    if node.deleting_dependents() && !was_deleting_dependents {
        for (d, _) in g.dependents_of(uid) {
            st.queue.add(uid_key(&d));
        }
    }
    // A dependent changed: owners waiting on their dependents re-check.
    for r in node
        .owners
        .iter()
        .chain(old.iter().flat_map(|o| o.owners.iter()))
    {
        if g.nodes.get(&r.uid).is_some_and(|o| o.deleting) {
            st.queue.add(uid_key(&r.uid));
        }
    }
}

fn deleted(st: &State, uid: &str) {
    let mut g = st.graph();
    let Some(old) = g.remove(uid) else { return };
    // Its dependents lost an owner.
    for (d, _) in g.dependents_of(uid) {
        st.queue.add(uid_key(&d));
    }
    // Owners waiting for it may finish.
    for r in &old.owners {
        if g.nodes.get(&r.uid).is_some_and(|o| o.deleting) {
            st.queue.add(uid_key(&r.uid));
        }
    }
}

async fn process(st: &State, uid: &str) -> Result<Action, ControllerError> {
    let Some(node) = st.graph().nodes.get(uid).cloned() else {
        return Ok(Action::Done);
    };
    if node.deleting {
        if node.finalizers.iter().any(|f| f == ORPHAN) {
            orphan_dependents(st, uid, &node).await?;
            return Ok(Action::Done);
        }
        if node.finalizers.iter().any(|f| f == FOREGROUND) {
            process_deleting_dependents(st, uid, &node).await?;
            return Ok(Action::Done);
        }
        return Ok(Action::Done);
    }
    if node.owners.is_empty() {
        return Ok(Action::Done);
    }
    attempt_to_delete(st, uid, &node).await
}

enum OwnerState {
    Solid,
    Dangling,
    /// Being deleted in the foreground, waiting for its dependents.
    Waiting,
}

/// Where an owner stands: from the graph, or (when the graph has no such uid) from
/// a live GET, since the graph may lag.
async fn owner_state(
    st: &State,
    node: &Node,
    r: &OwnerReference,
) -> Result<OwnerState, ControllerError> {
    let known = st.graph().nodes.get(&r.uid).map(Node::deleting_dependents);
    if let Some(deleting_dependents) = known {
        return Ok(if deleting_dependents {
            OwnerState::Waiting
        } else {
            OwnerState::Solid
        });
    }
    let Some((ar, namespaced)) = st.kinds.get(&(r.api_version.clone(), r.kind.clone())) else {
        // As upstream: a kind not (yet) served is retried with back-off, never taken
        // for absent (it may be a custom resource about to be served).
        return Err(ControllerError::Other(format!(
            "owner reference to {} {} {}: kind not served",
            r.api_version, r.kind, r.name
        )));
    };
    let api: Api<DynamicObject> = match (&node.namespace, namespaced) {
        (Some(ns), true) => Api::namespaced_with(st.client.clone(), ns, ar.as_ref()),
        // A cluster-scoped object cannot be owned by a namespaced one: upstream leaves
        // such a reference unresolvable (never collected).
        (None, true) => return Ok(OwnerState::Solid),
        _ => Api::all_with(st.client.clone(), ar.as_ref()),
    };
    match api.get_opt(&r.name).await? {
        None => Ok(OwnerState::Dangling),
        Some(o) if o.metadata.uid.as_deref() != Some(r.uid.as_str()) => Ok(OwnerState::Dangling),
        Some(o) => {
            let deleting_dependents = o.metadata.deletion_timestamp.is_some()
                && o.metadata
                    .finalizers
                    .iter()
                    .flatten()
                    .any(|f| f == FOREGROUND);
            Ok(if deleting_dependents {
                OwnerState::Waiting
            } else {
                OwnerState::Solid
            })
        }
    }
}

/// Upstream `attemptToDeleteItem` for an object with owners.
async fn attempt_to_delete(st: &State, uid: &str, node: &Node) -> Result<Action, ControllerError> {
    let mut solid = 0;
    let mut dangling = Vec::new();
    let mut waiting = Vec::new();
    for r in &node.owners {
        match owner_state(st, node, r).await? {
            OwnerState::Solid => solid += 1,
            OwnerState::Dangling => dangling.push(r.uid.clone()),
            OwnerState::Waiting => waiting.push(r.uid.clone()),
        }
    }
    let api = node.api(&st.client);
    if solid > 0 {
        if dangling.is_empty() && waiting.is_empty() {
            return Ok(Action::Done);
        }
        // Keep the live owners; drop the dangling references and stop blocking the
        // owners being deleted in the foreground.
        let refs: Vec<OwnerReference> = node
            .owners
            .iter()
            .filter(|r| !dangling.contains(&r.uid))
            .map(|r| {
                let mut r = r.clone();
                if waiting.contains(&r.uid) {
                    r.block_owner_deletion = Some(false);
                }
                r
            })
            .collect();
        if refs == node.owners {
            return Ok(Action::Done);
        }
        let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": node.resource_version}});
        match api
            .patch(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(Action::Done);
    }
    // The graph may lag: the object may have lost these owners meanwhile (an owner's
    // orphaning removed its reference, then the owner went). As upstream's
    // attemptToDeleteItem, decide on the live object: gone or replaced, nothing to do;
    // other owners than the graph's, decide again once its event arrives.
    let live = match api.get_opt(&node.name).await? {
        Some(o) if o.metadata.uid.as_deref() == Some(uid) => o,
        _ => return Ok(Action::Done),
    };
    if live.metadata.owner_references.clone().unwrap_or_default() != node.owners {
        return Ok(Action::RequeueAfter(GRAPH_LAG_RETRY));
    }
    let has_dependents = !st.graph().dependents_of(uid).is_empty();
    let policy = if !waiting.is_empty() && has_dependents {
        PropagationPolicy::Foreground
    } else if node.finalizers.iter().any(|f| f == ORPHAN) {
        PropagationPolicy::Orphan
    } else if node.finalizers.iter().any(|f| f == FOREGROUND) {
        PropagationPolicy::Foreground
    } else {
        PropagationPolicy::Background
    };
    tracing::info!(kind = %node.resource.kind, namespace = ?node.namespace, name = %node.name, ?policy, "deleting an object whose owners are gone");
    // The object as read: a change since (its references edited) fails the delete.
    let dp = DeleteParams {
        propagation_policy: Some(policy),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: live.metadata.resource_version.clone(),
        }),
        ..Default::default()
    };
    match api.delete(&node.name, &dp).await {
        Ok(_) => Ok(Action::Done),
        Err(e) if is_status(&e, 404) => Ok(Action::Done),
        Err(e) if is_status(&e, 409) => Ok(Action::RequeueAfter(GRAPH_LAG_RETRY)),
        Err(e) => Err(e.into()),
    }
}

/// How soon an object whose graph entry lagged the live one is looked at again (its
/// watch event normally requeues it first).
const GRAPH_LAG_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Upstream `processDeletingDependentsItem`: done when no dependent blocks the owner.
async fn process_deleting_dependents(
    st: &State,
    uid: &str,
    node: &Node,
) -> Result<(), ControllerError> {
    let deps = st.graph().dependents_of(uid);
    let blocking: Vec<&(String, Node)> = deps
        .iter()
        .filter(|(_, d)| {
            d.owners
                .iter()
                .any(|r| r.uid == uid && r.block_owner_deletion == Some(true))
        })
        .collect();
    if blocking.is_empty() {
        return remove_finalizer(st, node, FOREGROUND).await;
    }
    for (d, dn) in blocking {
        if !dn.deleting_dependents() {
            st.queue.add(uid_key(d));
        }
    }
    Ok(())
}

/// Upstream `orphanDependents` then removal of the `orphan` finalizer.
async fn orphan_dependents(st: &State, uid: &str, node: &Node) -> Result<(), ControllerError> {
    let deps = st.graph().dependents_of(uid);
    for (_, d) in deps {
        let refs: Vec<&OwnerReference> = d.owners.iter().filter(|r| r.uid != uid).collect();
        let patch = json!({"metadata": {
            "ownerReferences": if refs.is_empty() { serde_json::Value::Null } else { json!(refs) },
            "resourceVersion": d.resource_version,
        }});
        match d
            .api(&st.client)
            .patch(&d.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(e.into()),
        }
    }
    remove_finalizer(st, node, ORPHAN).await
}

async fn remove_finalizer(st: &State, node: &Node, finalizer: &str) -> Result<(), ControllerError> {
    let rest: Vec<&String> = node.finalizers.iter().filter(|f| *f != finalizer).collect();
    let patch = json!({"metadata": {
        "finalizers": if rest.is_empty() { serde_json::Value::Null } else { json!(rest) },
        "resourceVersion": node.resource_version,
    }});
    match node
        .api(&st.client)
        .patch(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
