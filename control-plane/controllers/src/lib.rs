//! Kelp's controller-manager: each controller is an API client (kube-rs watchers and
//! reflectors), level-triggered and idempotent, registered in [`CONTROLLERS`]. The
//! whole set runs while this process holds the `kube-controller-manager` Lease.

pub mod leader;

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

/// What every controller gets: a client, and the name this manager runs as (for
/// events' `reportingInstance`, leases and field managers).
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub identity: String,
}

pub type ControllerFuture = Pin<Box<dyn Future<Output = Result<(), ControllerError>> + Send>>;

/// One registered controller: its name (as upstream's `--controllers` names it) and
/// how to run it until the future is dropped.
pub struct ControllerDef {
    pub name: &'static str,
    pub run: fn(Context) -> ControllerFuture,
}

/// Every controller the manager runs, in one list.
pub const CONTROLLERS: &[ControllerDef] = &[];

/// Runs every controller in [`CONTROLLERS`] (or only those named in `only`, when not
/// empty) until `shutdown` resolves or one of them fails.
pub async fn run_all(
    ctx: Context,
    only: &[String],
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ControllerError> {
    let mut set = tokio::task::JoinSet::new();
    for def in CONTROLLERS {
        if !only.is_empty() && !only.iter().any(|n| n == def.name) {
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
