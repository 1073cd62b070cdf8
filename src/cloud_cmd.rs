//! `kelp cloud-controller-manager`, and the `--cloud-provider`/`--cloud-config` flags
//! that run the same manager inside `kelp server` and `kelp up`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use kelp_control_plane::cloud::manager::{self, CloudOptions};
use kelp_control_plane::cloud::CloudSettings;

/// The provider flags (upstream cloud-controller-manager names).
#[derive(Args, Clone, Debug)]
pub struct CloudFlags {
    /// The cloud provider to run the cloud-controller-manager with (`fleet`). In
    /// `kelp server`/`kelp up`, giving one runs the manager in-process.
    #[arg(long, value_name = "NAME")]
    pub cloud_provider: Option<String>,
    /// The provider's configuration file.
    #[arg(long, value_name = "FILE", requires = "cloud_provider")]
    pub cloud_config: Option<PathBuf>,
    /// The cluster's name, passed to the provider.
    #[arg(long, default_value = "kubernetes")]
    pub cluster_name: String,
    /// Create routes for the nodes' pod CIDRs through the provider.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub configure_cloud_routes: bool,
    /// How often initialized nodes' addresses are refreshed from the provider, e.g. `5m`.
    #[arg(long, default_value = "5m", value_parser = crate::parse_duration)]
    pub node_status_update_frequency: std::time::Duration,
    /// How often routes are reconciled, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    pub route_reconciliation_period: std::time::Duration,
}

impl CloudFlags {
    /// The manager's options when a provider is named; the provider is built once here
    /// so a bad `--cloud-config` fails the command at start.
    pub fn options(
        &self,
        node_monitor_period: std::time::Duration,
    ) -> anyhow::Result<Option<CloudOptions>> {
        let Some(name) = &self.cloud_provider else {
            return Ok(None);
        };
        let mut opts = CloudOptions::new(name, self.cloud_config.clone());
        opts.cluster_name = self.cluster_name.clone();
        opts.settings = CloudSettings {
            node_monitor_period,
            node_status_update_frequency: self.node_status_update_frequency,
            route_reconciliation_period: self.route_reconciliation_period,
            configure_cloud_routes: self.configure_cloud_routes,
        };
        opts.build_provider()
            .with_context(|| format!("--cloud-provider {name}"))?;
        Ok(Some(opts))
    }
}

#[derive(Args, Clone)]
pub struct CloudControllerManagerArgs {
    /// How to reach the API server.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Hold the kube-system/cloud-controller-manager Lease; run the loops only while leading.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// How often the node lifecycle loop checks nodes, e.g. `5s`.
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    node_monitor_period: std::time::Duration,
    #[command(flatten)]
    cloud: CloudFlags,
}

pub async fn run(
    args: CloudControllerManagerArgs,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let mut opts = args
        .cloud
        .options(args.node_monitor_period)?
        .context("--cloud-provider is required")?;
    opts.leader_elect = args.leader_elect;
    let provider = opts.build_provider()?;
    let client =
        kelp_control_plane::controllers::manager::client_from_kubeconfig(&args.kubeconfig).await?;
    println!(
        "kelp cloud-controller-manager: provider {} (leader election {})",
        opts.provider,
        if opts.leader_elect { "on" } else { "off" }
    );
    manager::run(client, provider, opts, shutdown)
        .await
        .context("kelp cloud-controller-manager")
}
