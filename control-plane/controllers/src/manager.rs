//! The controller-manager process shape: pick the controllers (`--controllers`), hold
//! the `kube-system/kube-controller-manager` Lease (or not, `--leader-elect=false`),
//! run them while leading and stop them the moment leadership is lost.

use std::future::Future;
use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use tokio::sync::watch;

use crate::leader::{self, LeaderConfig};
use crate::{run_all, Context, ControllerError, CONTROLLERS};

/// The Lease upstream's kube-controller-manager holds.
pub const LEASE_NAME: &str = "kube-controller-manager";

#[derive(Debug, Clone)]
pub struct ManagerOptions {
    pub leader_elect: bool,
    /// Upstream `--controllers` syntax: `*` (every controller), `NAME`, `-NAME`.
    pub controllers: Vec<String>,
    /// The controllers' flags (node monitor grace period, cluster CIDR, …).
    pub settings: crate::settings::Settings,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions {
            leader_elect: true,
            controllers: vec!["*".into()],
            settings: Default::default(),
        }
    }
}

/// Resolves `--controllers` to the names to run; an unknown name is an error.
pub fn select_controllers(spec: &[String]) -> Result<Vec<String>, ControllerError> {
    let known = |n: &str| CONTROLLERS.iter().any(|c| c.name == n);
    let mut all = false;
    let mut on = Vec::new();
    let mut off = Vec::new();
    for item in spec.iter().flat_map(|s| s.split(',')).map(str::trim) {
        match item {
            "" => {}
            "*" => all = true,
            n => {
                let (list, name) = match n.strip_prefix('-') {
                    Some(name) => (&mut off, name),
                    None => (&mut on, n),
                };
                if !known(name) {
                    let names: Vec<&str> = CONTROLLERS.iter().map(|c| c.name).collect();
                    return Err(ControllerError::Other(format!(
                        "unknown controller {name:?} in --controllers; known: {}",
                        names.join(", ")
                    )));
                }
                list.push(name.to_string());
            }
        }
    }
    if spec.is_empty() {
        all = true;
    }
    Ok(CONTROLLERS
        .iter()
        .map(|c| c.name)
        .filter(|n| (all || on.iter().any(|o| o == n)) && !off.iter().any(|o| o == n))
        .map(str::to_string)
        .collect())
}

/// A client from a kubeconfig file (its current context).
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client, ControllerError> {
    let kc = Kubeconfig::read_from(path)
        .map_err(|e| ControllerError::Other(format!("kubeconfig {}: {e}", path.display())))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| ControllerError::Other(format!("kubeconfig {}: {e}", path.display())))?;
    Ok(Client::try_from(cfg)?)
}

/// Who this manager is in the Lease: `HOSTNAME_UUID`, as upstream.
pub fn identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "kelp".into());
    format!("{host}_{}", uuid::Uuid::new_v4())
}

/// Runs the controller-manager until `shutdown` resolves.
pub async fn run_manager(
    client: Client,
    opts: ManagerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ControllerError> {
    let names = select_controllers(&opts.controllers)?;
    let ctx = Context {
        client: client.clone(),
        identity: identity(),
        settings: std::sync::Arc::new(opts.settings.clone()),
        pods: crate::shared::SharedInformer::new(kube::Api::all(client.clone())),
    };
    tracing::info!(controllers = ?names, leader_elect = opts.leader_elect, "controller-manager starting");
    tokio::pin!(shutdown);
    if !opts.leader_elect {
        return run_all(ctx, &names, shutdown).await;
    }
    let cfg = LeaderConfig::new(LEASE_NAME, &ctx.identity);
    let (mut leading, campaign): (watch::Receiver<bool>, _) =
        leader::campaign_with_handle(client.clone(), cfg.clone());
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            r = leading.wait_for(|l| *l) => if r.is_err() { break },
        }
        let mut lost = leading.clone();
        let stop = async move {
            let _ = lost.wait_for(|l| !*l).await;
        };
        tokio::select! {
            _ = &mut shutdown => break,
            r = run_all(ctx.clone(), &names, stop) => {
                r?;
                tracing::warn!("leadership lost: controllers stopped; campaigning again");
            }
        }
    }
    campaign.abort();
    let _ = campaign.await;
    leader::release(&client, &cfg).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controllers_flag_follows_upstream_syntax() {
        let all: Vec<String> = CONTROLLERS.iter().map(|c| c.name.to_string()).collect();
        assert_eq!(select_controllers(&[]).unwrap(), all);
        assert_eq!(select_controllers(&["*".into()]).unwrap(), all);
        assert_eq!(
            select_controllers(&["replicaset".into()]).unwrap(),
            ["replicaset"]
        );
        let without: Vec<String> = all.iter().filter(|n| *n != "replicaset").cloned().collect();
        assert_eq!(
            select_controllers(&["*,-replicaset".into()]).unwrap(),
            without
        );
        assert!(select_controllers(&["nope".into()]).is_err());
    }
}
