//! The cloud-controller-manager process shape: build the provider from
//! `--cloud-provider`/`--cloud-config`, hold the `kube-system/cloud-controller-manager`
//! Lease (as upstream), initialize the provider and run the loops while leading,
//! stop them the moment leadership is lost. No loop ends the manager: provider errors
//! are retried inside each loop.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kelp_controllers::leader::{self, LeaderConfig};
use kube::Client;

use crate::provider::{self, CloudError, CloudProvider};
use crate::{lifecycle, node, retry, route, service, CloudContext, CloudSettings};

/// The Lease upstream's cloud-controller-manager holds.
pub const LEASE_NAME: &str = "cloud-controller-manager";

#[derive(Debug, Clone)]
pub struct CloudOptions {
    /// `--cloud-provider`.
    pub provider: String,
    /// `--cloud-config`.
    pub config: Option<PathBuf>,
    /// `--cluster-name`.
    pub cluster_name: String,
    pub leader_elect: bool,
    pub settings: CloudSettings,
}

impl CloudOptions {
    pub fn new(provider: impl Into<String>, config: Option<PathBuf>) -> Self {
        CloudOptions {
            provider: provider.into(),
            config,
            cluster_name: "kubernetes".into(),
            leader_elect: true,
            settings: CloudSettings::default(),
        }
    }

    /// The provider these options name (checked before anything is dialed).
    pub fn build_provider(&self) -> Result<Arc<dyn CloudProvider>, CloudError> {
        provider::build(&self.provider, self.config.as_deref())
    }
}

/// Initializes the provider (retrying with back-off: the API may not serve yet), then
/// runs every loop until the future is dropped.
async fn run_loops(ctx: CloudContext) {
    let backoff = retry::Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        match retry::bounded(ctx.provider.initialize(ctx.client.clone())).await {
            Ok(()) => break,
            Err(e) => {
                let delay = backoff.failed(&());
                tracing::warn!(error = %e, retry_in = ?delay, "initializing the cloud provider failed");
                tokio::time::sleep(delay).await;
            }
        }
    }
    tracing::info!(
        provider = ctx.provider.provider_name(),
        "cloud loops starting"
    );
    tokio::join!(
        node::run(ctx.clone()),
        lifecycle::run(ctx.clone()),
        service::run(ctx.clone()),
        route::run(ctx.clone()),
    );
}

/// Runs the cloud-controller-manager until `shutdown` resolves.
pub async fn run(
    client: Client,
    provider: Arc<dyn CloudProvider>,
    opts: CloudOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), CloudError> {
    let ctx = CloudContext {
        client: client.clone(),
        provider,
        cluster_name: opts.cluster_name.clone(),
        settings: Arc::new(opts.settings.clone()),
    };
    tracing::info!(provider = %opts.provider, leader_elect = opts.leader_elect, "cloud-controller-manager starting");
    tokio::pin!(shutdown);
    if !opts.leader_elect {
        tokio::select! {
            _ = &mut shutdown => {}
            _ = run_loops(ctx) => {}
        }
        return Ok(());
    }
    let cfg = LeaderConfig::new(LEASE_NAME, &kelp_controllers::manager::identity());
    let (mut leading, campaign) = leader::campaign_with_handle(client.clone(), cfg.clone());
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            r = leading.wait_for(|l| *l) => if r.is_err() { break },
        }
        let mut lost = leading.clone();
        tokio::select! {
            _ = &mut shutdown => break,
            _ = run_loops(ctx.clone()) => {}
            _ = lost.wait_for(|l| !*l) => {
                tracing::warn!("leadership lost: cloud loops stopped; campaigning again");
            }
        }
    }
    campaign.abort();
    let _ = campaign.await;
    leader::release(&client, &cfg).await;
    Ok(())
}
