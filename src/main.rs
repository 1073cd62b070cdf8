//! `kelp`: the Kelp orchestrator's one binary.

mod agent_cmd;
mod cloud_cmd;
mod code_pages;
mod image_cmd;
mod image_kind;
mod runtime_cmd;
mod runtime_process;
mod scheduler_cmd;

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

// glibc's allocator was a fifth of the API server's CPU time under load (scheduler
// benchmark profile: malloc/free and chunk consolidation); mimalloc's thread-local
// free lists cost far less.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "kelp",
    version,
    about = "Kelp: the Kubernetes architecture, in Rust, for WebAssembly workloads"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everything in one process on the embedded store (the single-machine default):
    /// the control plane and a node running Wasm pods.
    Up(agent_cmd::UpArgs),
    /// The control plane without a node (API server and scheduler; controllers as they land).
    Server(ControlPlaneArgs),
    /// The API server alone.
    Apiserver(ControlPlaneArgs),
    /// The controller-manager alone: every controller, leader-elected, as an API client.
    ControllerManager(ControllerManagerArgs),
    /// The cloud-controller-manager alone: the cloud node, node lifecycle, service and
    /// route loops over a cloud provider, leader-elected, as an API client.
    CloudControllerManager(cloud_cmd::CloudControllerManagerArgs),
    /// Images in a node's store: import a .wasm file, list, pull, remove.
    #[command(subcommand)]
    Image(image_cmd::ImageCommand),
    /// Publish a .wasm file to a registry as a CNCF Wasm artifact.
    Push(image_cmd::PushArgs),
    /// The Wasm runtime alone, serving CRI over gRPC on a unix socket.
    Runtime(runtime_cmd::RuntimeArgs),
    /// A node joining a cluster: the kubelet over the in-process Wasm runtime.
    Agent(agent_cmd::AgentArgs),
    /// The kubelet alone, with a kubeconfig.
    Kubelet(agent_cmd::KubeletArgs),
    /// The scheduler alone, with a kubeconfig.
    Scheduler(scheduler_cmd::SchedulerArgs),
    /// The userspace service proxy alone (ClusterIPs and node ports), with a kubeconfig.
    Proxy(agent_cmd::ProxyArgs),
}

#[derive(Args, Clone)]
struct ControlPlaneArgs {
    /// Where state, certificates, the kubeconfig and the node token live.
    #[arg(long, default_value = "/var/lib/kelp", env = "KELP_DATA_DIR")]
    data_dir: PathBuf,
    /// `sqlite://PATH` (default: DATA_DIR/db/state.db) or `etcd://HOST:PORT[,HOST:PORT…]`.
    #[arg(long)]
    datastore: Option<String>,
    /// HTTPS port of the API server.
    #[arg(long, default_value_t = 6443)]
    https_port: u16,
    /// Address the API server listens on.
    #[arg(long, default_value = "127.0.0.1")]
    bind_address: IpAddr,
    /// Where to write the admin kubeconfig (default: DATA_DIR/kubeconfig).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Extra names or addresses for the serving certificate (repeatable).
    #[arg(long = "tls-san")]
    tls_san: Vec<String>,
    /// The CIDR Service ClusterIPs are allocated from (IPv4).
    #[arg(long, default_value = "10.43.0.0/16")]
    service_cluster_ip_range: String,
    /// The port range NodePort Services are allocated from.
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
    /// A registry reached over plain http although not on loopback (repeatable): the
    /// in-process scheduler of `kelp server`/`kelp up` reads image manifests there,
    /// `kelp up`'s node pulls from it (`kelp apiserver` has no use for it).
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registry: Vec<String>,
    /// Do not run the scheduler in this process (`kelp server` and `kelp up`).
    #[arg(long)]
    disable_scheduler: bool,
    #[command(flatten)]
    controller_flags: ControllerFlags,
    #[command(flatten)]
    cloud: cloud_cmd::CloudFlags,
}

/// The controllers' own flags (upstream kube-controller-manager names and defaults).
#[derive(Args, Clone)]
struct ControllerFlags {
    /// Pod addresses of the cluster: node IPAM gives each node a subnet of it
    /// (`spec.podCIDR`). Empty turns node IPAM off.
    #[arg(long, default_value = "10.42.0.0/16")]
    cluster_cidr: String,
    /// Prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// How long a node's Lease may go unrenewed before the node is marked
    /// NotReady (Ready=Unknown) and tainted unreachable, e.g. `40s`.
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    node_monitor_grace_period: std::time::Duration,
    /// How often node health is checked, e.g. `5s`.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    node_monitor_period: std::time::Duration,
}

/// `40s`, `2m`, `1h`, `500ms`, or plain seconds.
pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let v: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("invalid duration {s:?}: use ms, s, m or h")),
    };
    Ok(std::time::Duration::from_secs_f64(secs))
}

impl ControllerFlags {
    fn settings(&self) -> anyhow::Result<kelp_control_plane::controllers::settings::Settings> {
        kelp_control_plane::controllers::settings::Settings::from_flags(
            &self.cluster_cidr,
            self.node_cidr_mask_size,
            self.node_monitor_grace_period,
            self.node_monitor_period,
        )
        .map_err(anyhow::Error::msg)
    }

    /// The in-process controller-manager's options.
    fn manager_options(
        &self,
    ) -> anyhow::Result<kelp_control_plane::controllers::manager::ManagerOptions> {
        Ok(kelp_control_plane::controllers::manager::ManagerOptions {
            settings: self.settings()?,
            ..Default::default()
        })
    }
}

#[derive(Args, Clone)]
struct ControllerManagerArgs {
    /// How to reach the API server.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Hold the kube-system/kube-controller-manager Lease; run controllers only while leading.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Controllers to run: `*` (all), `NAME`, `-NAME` (comma-separated, as upstream).
    #[arg(long, value_delimiter = ',', default_value = "*")]
    controllers: Vec<String>,
    #[command(flatten)]
    controller_flags: ControllerFlags,
}

async fn run_controller_manager(args: ControllerManagerArgs) -> anyhow::Result<()> {
    use kelp_control_plane::controllers::manager;
    let opts = manager::ManagerOptions {
        leader_elect: args.leader_elect,
        controllers: args.controllers,
        settings: args.controller_flags.settings()?,
    };
    // Reject a bad --controllers before dialing anything.
    manager::select_controllers(&opts.controllers)?;
    let client = manager::client_from_kubeconfig(&args.kubeconfig).await?;
    manager::run_manager(client, opts, shutdown_signal())
        .await
        .context("kelp controller-manager")
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutdown signal received");
}

impl ControlPlaneArgs {
    /// The control plane's configuration from the flags.
    fn config(&self) -> anyhow::Result<kelp_control_plane::Config> {
        let datastore = self
            .datastore
            .as_deref()
            .map(kelp_control_plane::Datastore::parse)
            .transpose()
            .context("--datastore")?;
        Ok(kelp_control_plane::Config {
            data_dir: self.data_dir.clone(),
            datastore,
            bind_address: self.bind_address,
            https_port: self.https_port,
            kubeconfig: self.kubeconfig.clone(),
            tls_sans: self.tls_san.clone(),
            service_ranges: kelp_control_plane::apiserver::service_alloc::ServiceRanges::parse(
                &self.service_cluster_ip_range,
                &self.service_node_port_range,
            )
            .map_err(anyhow::Error::msg)
            .context("--service-cluster-ip-range / --service-node-port-range")?,
            controllers: None,
            scheduler: None,
            cloud: None,
        })
    }
}

async fn run_control_plane(args: ControlPlaneArgs, what: &'static str) -> anyhow::Result<()> {
    // `kelp server` runs the controllers in-process; `kelp apiserver` is the API alone.
    let mut cfg = args.config()?;
    cfg.controllers = if what == "server" {
        Some(args.controller_flags.manager_options()?)
    } else {
        None
    };
    cfg.scheduler = (what == "server" && !args.disable_scheduler)
        .then(|| image_kind::scheduler_config(args.insecure_registry.clone()));
    if what == "server" {
        cfg.cloud = args
            .cloud
            .options(args.controller_flags.node_monitor_period)?;
    }
    kelp_control_plane::run(cfg, shutdown_signal(), |s| {
        println!("kelp {what} is serving the Kubernetes API at {}", s.url);
        println!("  admin kubeconfig: {}", s.kubeconfig.display());
        println!("  node join token:  {}", s.token_file.display());
        println!(
            "  try: KUBECONFIG={} kubectl get namespaces",
            s.kubeconfig.display()
        );
    })
    .await
    .with_context(|| format!("kelp {what}"))?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("KELP_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Up(a) => agent_cmd::run_up(a).await,
            Command::Server(a) => run_control_plane(a, "server").await,
            Command::Apiserver(a) => run_control_plane(a, "apiserver").await,
            Command::ControllerManager(a) => run_controller_manager(a).await,
            Command::CloudControllerManager(a) => cloud_cmd::run(a, shutdown_signal()).await,
            Command::Image(c) => image_cmd::run_image(c).await,
            Command::Push(a) => image_cmd::run_push(a).await,
            Command::Runtime(a) => runtime_cmd::run(a, shutdown_signal()).await,
            Command::Agent(a) => agent_cmd::run_agent(a, shutdown_signal()).await,
            Command::Kubelet(a) => agent_cmd::run_kubelet(a, shutdown_signal()).await,
            Command::Scheduler(a) => scheduler_cmd::run(a, shutdown_signal()).await,
            Command::Proxy(a) => agent_cmd::run_proxy(a, shutdown_signal()).await,
        }
    })
}
