//! The DaemonSet controller (upstream `pkg/controller/daemon`): one pod per
//! eligible node, pinned with required node affinity on `metadata.name` and bound by
//! the scheduler; RollingUpdate (maxUnavailable/maxSurge) or OnDelete across
//! template revisions kept as ControllerRevisions.

pub mod decide;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;

use crate::expectations::{Expectations, Seen};
use crate::history::{self, HASH_LABEL};
use crate::informer::{drive, reflect};
use crate::ops::{self, error_policy};
use crate::util::{controller_ref, is_controlled_by, key_of, random_suffix};
use crate::{Context, ControllerError, ControllerFuture};

use decide::{add_default_tolerations, decide, pin_to_node};

struct DsController {
    client: kube::Client,
    events: crate::events::Recorder,
    pods: Store<Pod>,
    nodes: Store<Node>,
    revisions: Store<ControllerRevision>,
    expectations: Expectations,
}

pub fn run(ctx: Context) -> ControllerFuture {
    Box::pin(async move {
        let client = ctx.client.clone();
        let (sets, set_events) = reflect(
            Api::<DaemonSet>::all(client.clone()),
            watcher::Config::default(),
        );
        let (pods, pod_events) = ctx.pods.reflect();
        let (nodes, node_events) =
            reflect(Api::<Node>::all(client.clone()), watcher::Config::default());
        let (revisions, rev_events) = reflect(
            Api::<ControllerRevision>::all(client.clone()),
            watcher::Config::default(),
        );
        drive(rev_events);
        let state = Arc::new(DsController {
            events: crate::events::Recorder::new(client.clone(), "daemonset-controller"),
            client,
            pods,
            nodes,
            revisions,
            expectations: Expectations::default(),
        });
        let all_sets = sets.clone();
        Controller::for_stream(set_events, sets)
            .owns_stream(pod_events)
            // Any node change may change where daemons should run.
            .watches_stream(node_events, move |_node: Node| {
                all_sets
                    .state()
                    .iter()
                    .map(|s| ObjectRef::from_obj(s.as_ref()))
                    .collect::<Vec<_>>()
            })
            .run(reconcile, error_policy, state)
            .for_each(|_| async {})
            .await;
        Ok(())
    })
}

/// The node a daemon pod is for: where it is bound, else where its affinity pins it.
fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(n.clone());
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name" && f.operator == "In")
        .and_then(|f| f.values.as_ref()?.first().cloned())
}

fn daemon_pod(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let tpl = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut meta = tpl.metadata.unwrap_or_default();
    let mut spec = tpl.spec.unwrap_or_default();
    add_default_tolerations(&mut spec);
    pin_to_node(&mut spec, node);
    let mut labels = meta.labels.take().unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash.into());
    labels.insert(
        "pod-template-generation".into(),
        ds.metadata.generation.unwrap_or(1).to_string(),
    );
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("{}-{}", ds.name_any(), random_suffix(5))),
            namespace: ds.namespace(),
            labels: Some(labels),
            annotations: meta.annotations.take(),
            owner_references: Some(vec![controller_ref(ds)]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

async fn reconcile(ds: Arc<DaemonSet>, st: Arc<DsController>) -> Result<Action, ControllerError> {
    for ready in [
        st.pods.wait_until_ready().await,
        st.nodes.wait_until_ready().await,
        st.revisions.wait_until_ready().await,
    ] {
        ready.map_err(|e| ControllerError::Other(e.to_string()))?;
    }
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = ds.namespace().unwrap_or_default();
    let key = key_of(&ds.metadata);
    let uid = ds.uid().unwrap_or_default();
    let seen = |n: &str| match st.pods.get(&ObjectRef::new(n).within(&ns)) {
        None => Seen::Absent,
        Some(p) if p.metadata.deletion_timestamp.is_some() => Seen::Terminating,
        Some(_) => Seen::Present,
    };
    if !st.expectations.satisfied(&key, seen) {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let owned: Vec<Arc<Pod>> = st
        .pods
        .state()
        .into_iter()
        .filter(|p| {
            p.metadata.namespace.as_deref() == Some(ns.as_str())
                && is_controlled_by(&p.metadata, &uid)
        })
        .collect();
    let revs: Vec<ControllerRevision> = st
        .revisions
        .state()
        .into_iter()
        .filter(|r| {
            r.metadata.namespace.as_deref() == Some(ns.as_str())
                && is_controlled_by(&r.metadata, &uid)
        })
        .map(|r| (*r).clone())
        .collect();
    let rev_api: Api<ControllerRevision> = Api::namespaced(st.client.clone(), &ns);
    let spec = ds.spec.clone().unwrap_or_default();
    let selector_labels = spec.selector.match_labels.clone().unwrap_or_default();
    let collisions = ds.status.as_ref().and_then(|s| s.collision_count);
    let rev = history::ensure_revision(
        &rev_api,
        &ds.name_any(),
        controller_ref(ds.as_ref()),
        selector_labels,
        &spec.template,
        collisions,
        &revs,
    )
    .await?;
    let hash = rev
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(HASH_LABEL))
        .cloned()
        .unwrap_or_default();

    let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for p in &owned {
        if let Some(n) = target_node(p) {
            by_node.entry(n).or_default().push(p.as_ref());
        }
    }
    let nodes = st.nodes.state();
    let node_refs: Vec<&Node> = nodes.iter().map(|n| n.as_ref()).collect();
    let d = decide(&ds, &node_refs, &by_node, &hash, Timestamp::now());

    let pods_api: Api<Pod> = Api::namespaced(st.client.clone(), &ns);
    for name in &d.delete {
        st.expectations.expect_delete(&key, name);
        if let Err(e) = ops::delete_pod(&pods_api, name).await {
            st.expectations.forget(&key, name);
            return Err(e);
        }
    }
    let creates = d.create_on.iter().map(|node| {
        let pod = daemon_pod(&ds, node, &hash);
        let name = pod.name_any();
        st.expectations.expect_create(&key, &name);
        let (api, st, key) = (pods_api.clone(), st.clone(), key.clone());
        async move {
            let r = ops::create_pod(&api, &pod).await;
            if r.is_err() {
                st.expectations.forget(&key, &name);
            }
            r
        }
    });
    for r in futures::future::join_all(creates).await {
        let p = r?;
        st.events.record(
            ds.as_ref(),
            false,
            "SuccessfulCreate",
            format!("Created pod: {}", p.name_any()),
        );
    }
    for name in &d.delete {
        st.events.record(
            ds.as_ref(),
            false,
            "SuccessfulDelete",
            format!("Deleted pod: {name}"),
        );
    }
    let in_use: HashSet<String> = owned
        .iter()
        .filter_map(|p| p.metadata.labels.as_ref()?.get(HASH_LABEL).cloned())
        .chain(std::iter::once(hash.clone()))
        .collect();
    history::truncate(
        &rev_api,
        &revs,
        &in_use,
        spec.revision_history_limit.unwrap_or(10),
    )
    .await?;

    if ds.status.as_ref() != Some(&d.status) {
        let mut next = (*ds).clone();
        next.status = Some(d.status);
        Api::<DaemonSet>::namespaced(st.client.clone(), &ns)
            .replace_status(&ds.name_any(), &PostParams::default(), &next)
            .await?;
    }
    // Availability (minReadySeconds) changes with time alone.
    Ok(Action::requeue(Duration::from_secs(
        if spec.min_ready_seconds.unwrap_or(0) > 0 {
            1
        } else {
            300
        },
    )))
}
