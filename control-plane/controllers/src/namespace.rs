//! The namespace controller (upstream pkg/controller/namespace): a namespace being
//! deleted has everything in it deleted, resource by resource; its status conditions
//! say what remains (`NamespaceDeletionContentFailure`, `NamespaceContentRemaining`,
//! `NamespaceFinalizersRemaining`, …); once nothing remains its `kubernetes` finalizer is
//! removed through `namespaces/NAME/finalize`, and the API server lets it go.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::core::discovery::Scope;
use kube::discovery::ApiResource;
use kube::Client;

use crate::runner::{self, Action, Informer, Key, WorkQueue};
use crate::{is_status, Context, ControllerError, ControllerFuture};

const WORKERS: usize = 2;
/// How often a namespace with content still going away is looked at again.
const RECHECK: Duration = Duration::from_millis(500);
/// How long discovered resources are reused.
const DISCOVERY_TTL: Duration = Duration::from_secs(30);

pub fn run(ctx: Context) -> ControllerFuture {
    Box::pin(run_controller(ctx))
}

struct State {
    client: Client,
    namespaces: kube::runtime::reflector::Store<Namespace>,
    resources: Mutex<Option<(Instant, Arc<Vec<ApiResource>>)>>,
}

impl State {
    /// Namespaced resources that can be listed and deleted (cached for a while).
    async fn resources(&self) -> Result<Arc<Vec<ApiResource>>, ControllerError> {
        if let Some((at, r)) = self
            .resources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            if at.elapsed() < DISCOVERY_TTL {
                return Ok(r.clone());
            }
        }
        let found = crate::gc::discover(&self.client).await?;
        let list: Arc<Vec<ApiResource>> = Arc::new(
            found
                .into_iter()
                .filter(|(_, caps)| {
                    caps.scope == Scope::Namespaced
                        && caps.supports_operation("list")
                        && caps.supports_operation("delete")
                })
                .map(|(ar, _)| ar)
                .collect(),
        );
        *self.resources.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), list.clone()));
        Ok(list)
    }
}

async fn run_controller(ctx: Context) -> Result<(), ControllerError> {
    let queue = WorkQueue::new();
    let inf = Informer::new(Api::<Namespace>::all(ctx.client.clone()));
    let st = Arc::new(State {
        client: ctx.client.clone(),
        namespaces: inf.store(),
        resources: Mutex::new(None),
    });
    let events = {
        let q = queue.clone();
        inf.run(
            move |ns, _| {
                if ns.metadata.deletion_timestamp.is_some() {
                    q.add(Key::of(ns));
                }
            },
            || {},
        )
    };
    let workers = {
        let st = st.clone();
        async move {
            runner::wait_synced(&[&st.namespaces]).await;
            runner::run_workers("namespace", queue, WORKERS, move |key| {
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
    Ok(())
}

/// What deleting a namespace's content found, for its conditions.
#[derive(Debug, Default, PartialEq)]
pub struct ContentReport {
    /// resource (`pods`, `replicasets.apps`) → instances remaining.
    pub remaining: BTreeMap<String, usize>,
    /// finalizer → instances carrying it.
    pub finalizers: BTreeMap<String, usize>,
    /// Resources whose deletion failed, with the error.
    pub failures: Vec<String>,
}

fn resource_name(ar: &ApiResource) -> String {
    if ar.group.is_empty() {
        ar.plural.clone()
    } else {
        format!("{}.{}", ar.plural, ar.group)
    }
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    now: Timestamp,
) -> NamespaceCondition {
    NamespaceCondition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: Some(Time(now)),
    }
}

/// The deletion conditions upstream sets, from a report.
pub fn conditions(report: &ContentReport, now: Timestamp) -> Vec<NamespaceCondition> {
    let mut out = vec![
        condition(
            "NamespaceDeletionDiscoveryFailure",
            false,
            "ResourcesDiscovered",
            "All resources successfully discovered".into(),
            now,
        ),
        condition(
            "NamespaceDeletionGroupVersionParsingFailure",
            false,
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed".into(),
            now,
        ),
    ];
    out.push(if report.failures.is_empty() {
        condition(
            "NamespaceDeletionContentFailure",
            false,
            "ContentDeleted",
            "All content successfully deleted, may be waiting on finalization".into(),
            now,
        )
    } else {
        condition(
            "NamespaceDeletionContentFailure",
            true,
            "ContentDeletionFailed",
            format!(
                "Failed to delete all resource types, {} remaining: {}",
                report.failures.len(),
                report.failures.join(", ")
            ),
            now,
        )
    });
    out.push(if report.remaining.is_empty() {
        condition(
            "NamespaceContentRemaining",
            false,
            "ContentRemoved",
            "All content successfully removed".into(),
            now,
        )
    } else {
        let parts: Vec<String> = report
            .remaining
            .iter()
            .map(|(r, n)| format!("{r} has {n} resource instances"))
            .collect();
        condition(
            "NamespaceContentRemaining",
            true,
            "SomeResourcesRemain",
            format!("Some resources are remaining: {}", parts.join(", ")),
            now,
        )
    });
    out.push(if report.finalizers.is_empty() {
        condition(
            "NamespaceFinalizersRemaining",
            false,
            "ContentHasNoFinalizers",
            "All content-preserving finalizers finished".into(),
            now,
        )
    } else {
        let parts: Vec<String> = report
            .finalizers
            .iter()
            .map(|(f, n)| format!("{f} in {n} resource instances"))
            .collect();
        condition(
            "NamespaceFinalizersRemaining",
            true,
            "SomeFinalizersRemain",
            format!(
                "Some content in the namespace has finalizers remaining: {}",
                parts.join(", ")
            ),
            now,
        )
    });
    out
}

/// Keeps the transition times of conditions whose status did not change.
fn merge_conditions(
    old: &[NamespaceCondition],
    mut new: Vec<NamespaceCondition>,
) -> Vec<NamespaceCondition> {
    for c in &mut new {
        if let Some(o) = old.iter().find(|o| o.type_ == c.type_) {
            if o.status == c.status {
                c.last_transition_time = o.last_transition_time.clone();
            }
        }
    }
    new
}

async fn delete_content(st: &State, ns: &str) -> Result<ContentReport, ControllerError> {
    let mut report = ContentReport::default();
    for ar in st.resources().await?.iter() {
        let api: Api<DynamicObject> = Api::namespaced_with(st.client.clone(), ns, ar);
        let items = match api.list(&ListParams::default()).await {
            Ok(l) => l.items,
            Err(e) if is_status(&e, 404) || is_status(&e, 405) => continue,
            Err(e) => {
                report.failures.push(format!("{}: {e}", resource_name(ar)));
                continue;
            }
        };
        let mut left = 0;
        for item in items {
            let name = item.metadata.name.clone().unwrap_or_default();
            let mut live = Some(item.clone());
            if item.metadata.deletion_timestamp.is_none() {
                match api.delete(&name, &DeleteParams::background()).await {
                    Ok(either) => live = either.left(),
                    Err(e) if is_status(&e, 404) => live = None,
                    Err(e) => {
                        report.failures.push(format!("{}: {e}", resource_name(ar)));
                    }
                }
            }
            if let Some(obj) = live {
                left += 1;
                for f in obj.metadata.finalizers.iter().flatten() {
                    *report.finalizers.entry(f.clone()).or_default() += 1;
                }
            }
        }
        if left > 0 {
            report.remaining.insert(resource_name(ar), left);
        }
    }
    Ok(report)
}

async fn sync(st: &State, key: &Key) -> Result<Action, ControllerError> {
    let Some(ns) = st.namespaces.get(&key.object_ref()) else {
        return Ok(Action::Done);
    };
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(Action::Done);
    }
    let has_finalizer = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.as_ref())
        .is_some_and(|f| f.iter().any(|x| x == "kubernetes"));
    if !has_finalizer {
        return Ok(Action::Done);
    }
    let name = key.name.clone();
    let report = delete_content(st, &name).await?;
    let api: Api<Namespace> = Api::all(st.client.clone());
    let now = Timestamp::now();
    let old = ns
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let conds = merge_conditions(&old, conditions(&report, now));
    if conds != old {
        let mut next = (*ns).clone();
        let status = next.status.get_or_insert_with(Default::default);
        status.conditions = Some(conds);
        status.phase = Some("Terminating".into());
        match api
            .replace_status(&name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !report.remaining.is_empty() || !report.failures.is_empty() {
        return Ok(Action::RequeueAfter(RECHECK));
    }
    // Empty: drop our finalizer; the API server deletes the namespace.
    let live = match api.get_opt(&name).await? {
        Some(n) if n.metadata.uid == ns.metadata.uid => n,
        _ => return Ok(Action::Done),
    };
    let mut fin = live.clone();
    if let Some(spec) = fin.spec.as_mut() {
        spec.finalizers = Some(
            spec.finalizers
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|f| f != "kubernetes")
                .collect(),
        );
    }
    match api
        .replace_subresource("finalize", &name, &PostParams::default(), &fin)
        .await
    {
        Ok(_) => tracing::info!(namespace = %name, "namespace emptied and finalized"),
        Err(e) if is_status(&e, 404) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_say_what_remains() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let mut r = ContentReport::default();
        r.remaining.insert("pods".into(), 2);
        r.remaining.insert("replicasets.apps".into(), 1);
        r.finalizers.insert("foregroundDeletion".into(), 1);
        let c = conditions(&r, now);
        let get = |t: &str| c.iter().find(|x| x.type_ == t).unwrap();
        let remaining = get("NamespaceContentRemaining");
        assert_eq!(remaining.status, "True");
        assert_eq!(remaining.reason.as_deref(), Some("SomeResourcesRemain"));
        assert_eq!(
            remaining.message.as_deref(),
            Some("Some resources are remaining: pods has 2 resource instances, replicasets.apps has 1 resource instances")
        );
        assert_eq!(get("NamespaceFinalizersRemaining").status, "True");
        assert_eq!(get("NamespaceDeletionContentFailure").status, "False");

        let done = conditions(&ContentReport::default(), now);
        assert!(done.iter().all(|c| c.status == "False"), "{done:?}");
    }
}
