//! `kelp scheduler`: the scheduler alone, as an API client with a kubeconfig.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgAction, Args};

#[derive(Args, Clone, Debug)]
pub struct SchedulerArgs {
    /// The kubeconfig to reach the API server with.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Schedule only while holding the `kube-system/kube-scheduler` Lease.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    leader_elect: bool,
    /// How long a lease holder's claim lasts without renewal (e.g. `15s`).
    #[arg(long, default_value = "15s", value_parser = crate::parse_duration)]
    leader_elect_lease_duration: Duration,
    /// How long the leader keeps trying to renew before stepping down.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    leader_elect_renew_deadline: Duration,
    /// How often candidates try to acquire or renew.
    #[arg(long, default_value = "2s", value_parser = crate::parse_duration)]
    leader_elect_retry_period: Duration,
    /// Pods whose `spec.schedulerName` is this are scheduled; others are left alone.
    #[arg(long, default_value = kelp_scheduler::DEFAULT_SCHEDULER_NAME)]
    scheduler_name: String,
    /// A registry reached over plain http although not on loopback (repeatable): the
    /// scheduler reads image manifests to keep Linux images off Wasm-only nodes.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registry: Vec<String>,
}

pub async fn run(
    args: SchedulerArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let client = kelp_scheduler::client_from_kubeconfig(&args.kubeconfig)
        .await
        .with_context(|| format!("kubeconfig {}", args.kubeconfig.display()))?;
    let mut cfg = crate::image_kind::scheduler_config(args.insecure_registry);
    cfg.scheduler_name = args.scheduler_name;
    println!("kelp scheduler {} starting", cfg.identity);
    let stats = Default::default();
    if args.leader_elect {
        let le = kelp_scheduler::LeaderElection {
            lease_duration: args.leader_elect_lease_duration,
            renew_deadline: args.leader_elect_renew_deadline,
            retry_period: args.leader_elect_retry_period,
        };
        kelp_scheduler::run_leader_elected(client, cfg, le, stats, shutdown).await
    } else {
        kelp_scheduler::run(client, cfg, stats, shutdown).await
    }
    .context("kelp scheduler")
}
