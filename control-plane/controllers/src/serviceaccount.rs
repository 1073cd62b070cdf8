//! The ServiceAccount controller (upstream pkg/controller/serviceaccount): every
//! active namespace has a `default` ServiceAccount, recreated if deleted.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use kube::Client;

use crate::runner::{self, Action, Change, Informer, Key, WorkQueue};
use crate::{is_status, Context, ControllerError, ControllerFuture};

pub const DEFAULT: &str = "default";

pub fn run(ctx: Context) -> ControllerFuture {
    Box::pin(run_controller(ctx))
}

struct State {
    client: Client,
    namespaces: kube::runtime::reflector::Store<Namespace>,
    accounts: kube::runtime::reflector::Store<ServiceAccount>,
}

async fn run_controller(ctx: Context) -> Result<(), ControllerError> {
    let queue = WorkQueue::new();
    let ns_inf = Informer::new(Api::<Namespace>::all(ctx.client.clone()));
    // Only the accounts this controller keeps.
    let sa_inf = Informer::with_config(
        Api::<ServiceAccount>::all(ctx.client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={DEFAULT}")),
    );
    let st = Arc::new(State {
        client: ctx.client.clone(),
        namespaces: ns_inf.store(),
        accounts: sa_inf.store(),
    });
    let ns_events = {
        let q = queue.clone();
        ns_inf.run(move |ns, _| q.add(Key::new(None, &ns_name(ns))), || {})
    };
    let sa_events = {
        let q = queue.clone();
        sa_inf.run(
            move |sa, change| {
                if change == Change::Deleted {
                    if let Some(ns) = &sa.metadata.namespace {
                        q.add(Key::new(None, ns));
                    }
                }
            },
            || {},
        )
    };
    let workers = {
        let st = st.clone();
        async move {
            runner::wait_synced(&[&st.namespaces, &st.accounts]).await;
            runner::run_workers("serviceaccount", queue, 2, move |key| {
                let st = st.clone();
                async move { sync(&st, &key).await }
            })
            .await
        }
    };
    tokio::select! {
        _ = ns_events => {}
        _ = sa_events => {}
        _ = workers => {}
    }
    Ok(())
}

fn ns_name(ns: &Namespace) -> String {
    ns.metadata.name.clone().unwrap_or_default()
}

async fn sync(st: &State, key: &Key) -> Result<Action, ControllerError> {
    let Some(ns) = st.namespaces.get(&key.object_ref()) else {
        return Ok(Action::Done);
    };
    let terminating = ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    if terminating {
        return Ok(Action::Done);
    }
    let name = key.name.clone();
    if st
        .accounts
        .get(&Key::new(Some(&name), DEFAULT).object_ref())
        .is_some()
    {
        return Ok(Action::Done);
    }
    let api: Api<ServiceAccount> = Api::namespaced(st.client.clone(), &name);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(DEFAULT.into()),
            namespace: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &sa).await {
        Ok(_) => Ok(Action::Done),
        // Exists already, or the namespace is going away / gone.
        Err(e) if is_status(&e, 409) || is_status(&e, 403) || is_status(&e, 404) => {
            Ok(Action::Done)
        }
        Err(e) => Err(e.into()),
    }
}
