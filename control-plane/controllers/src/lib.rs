//! Kelp's controller-manager: each controller is an API client (kube-rs watchers and
//! reflectors), level-triggered and idempotent, registered in [`CONTROLLERS`]. The
//! whole set runs while this process holds the `kube-controller-manager` Lease.

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod events;
pub mod expectations;
pub mod gc;
pub mod history;
pub mod informer;
pub mod job;
pub mod leader;
pub mod manager;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod ops;
pub mod pods;
pub mod replicaset;
pub mod runner;
pub mod scheduling;
pub mod serviceaccount;
pub mod settings;
pub mod shared;
pub mod statefulset;
pub mod ttlafterfinished;
pub mod util;

use std::future::Future;
use std::pin::Pin;

use kube::Client;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("api: {0}")]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Other(String),
}

impl ControllerError {
    /// A lost optimistic-concurrency race (409): retry, it is not a failure.
    pub fn is_conflict(&self) -> bool {
        matches!(self, ControllerError::Api(kube::Error::Api(e)) if e.code == 409)
    }
}

/// Whether a kube call failed with this HTTP status.
pub fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// What every controller gets: a client, and the name this manager runs as (for
/// events' `reportingInstance`, leases and field managers).
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub identity: String,
    /// Flags of the controllers that have any.
    pub settings: std::sync::Arc<settings::Settings>,
    /// The pod watch all controllers share ([`run_all`] starts a fresh one for each
    /// term of leadership).
    pub pods: shared::SharedInformer<k8s_openapi::api::core::v1::Pod>,
}

pub type ControllerFuture = Pin<Box<dyn Future<Output = Result<(), ControllerError>> + Send>>;

/// One registered controller: its name (as upstream's `--controllers` names it) and
/// how to run it until the future is dropped.
pub struct ControllerDef {
    pub name: &'static str,
    pub run: fn(Context) -> ControllerFuture,
}

/// Every controller the manager runs, in one list.
pub const CONTROLLERS: &[ControllerDef] = &[
    ControllerDef {
        name: "replicaset",
        run: replicaset::run,
    },
    ControllerDef {
        name: "deployment",
        run: deployment::run,
    },
    ControllerDef {
        name: "garbage-collector",
        run: gc::run,
    },
    ControllerDef {
        name: "namespace",
        run: namespace::run,
    },
    ControllerDef {
        name: "serviceaccount",
        run: serviceaccount::run,
    },
    ControllerDef {
        name: "job",
        run: job::run,
    },
    ControllerDef {
        name: "cronjob",
        run: cronjob::run,
    },
    ControllerDef {
        name: "daemonset",
        run: daemonset::run,
    },
    ControllerDef {
        name: "disruption",
        run: disruption::run,
    },
    ControllerDef {
        name: "endpointslice",
        run: endpoints::run_slices,
    },
    ControllerDef {
        name: "endpoint",
        run: endpoints::run_endpoints,
    },
    ControllerDef {
        name: "nodelifecycle",
        run: nodelifecycle::run,
    },
    ControllerDef {
        name: "nodeipam",
        run: nodeipam::run,
    },
    ControllerDef {
        name: "statefulset",
        run: statefulset::run,
    },
    ControllerDef {
        name: "ttl-after-finished",
        run: ttlafterfinished::run,
    },
];

/// Runs the controllers of [`CONTROLLERS`] named in `names` (see
/// [`manager::select_controllers`]) until `shutdown` resolves or one of them fails.
pub async fn run_all(
    ctx: Context,
    names: &[String],
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ControllerError> {
    let mut ctx = ctx;
    ctx.pods = shared::SharedInformer::new(kube::Api::all(ctx.client.clone()));
    let mut set = tokio::task::JoinSet::new();
    let pods = ctx.pods.run();
    set.spawn(async move {
        pods.await;
        ("shared pod informer", Ok(()))
    });
    for def in CONTROLLERS {
        if !names.iter().any(|n| n == def.name) {
            continue;
        }
        let name = def.name;
        let fut = (def.run)(ctx.clone());
        set.spawn(async move { (name, fut.await) });
        tracing::info!(controller = name, "started");
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            done = set.join_next() => match done {
                None => { shutdown.await; return Ok(()); }
                Some(Ok((name, Ok(())))) => tracing::info!(controller = name, "stopped"),
                Some(Ok((name, Err(e)))) => {
                    return Err(ControllerError::Other(format!("controller {name}: {e}")))
                }
                Some(Err(e)) => return Err(ControllerError::Other(format!("controller task: {e}"))),
            }
        }
    }
}
