//! `kelp runtime`: the Wasm runtime alone, serving CRI over gRPC on a unix socket
//! (the upstream shape: a kubelet, or crictl, dials it like containerd's socket).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use kelp_node_agent::server::streaming::StreamingServer;
use kelp_node_agent::CriRuntime;

#[derive(Args, Clone)]
pub struct RuntimeArgs {
    /// CRI endpoint to serve, `unix:///PATH`.
    #[arg(long, default_value = "unix:///run/kelp/wasm.sock")]
    listen: String,
    /// Node state directory; the runtime keeps images and compiled modules under
    /// DATA_DIR/runtime.
    #[arg(long, default_value = "/var/lib/kelp", env = "KELP_DATA_DIR")]
    data_dir: PathBuf,
    /// A registry reached over plain http although not on loopback (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registry: Vec<String>,
    /// The cluster's pod addresses, CIDRs comma-separated: Wasm pods' outgoing
    /// wasi:http connections to them, and to this host's own addresses, leave from
    /// the pod's address.
    #[arg(long, default_value = "10.42.0.0/16", value_parser = crate::agent_cmd::parse_cidrs)]
    cluster_cidr: crate::agent_cmd::Cidrs,
    /// Where the CRI streaming server listens (CRI `Exec` and `PortForward` answer
    /// with URLs of it; port 0: any free port). Its URLs are single-use secrets: keep
    /// it on an address only the kubelet's host reaches.
    #[arg(long, default_value = "127.0.0.1:0")]
    streaming_address: std::net::SocketAddr,
}

pub async fn run(
    args: RuntimeArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let path = args
        .listen
        .strip_prefix("unix://")
        .map(PathBuf::from)
        .with_context(|| format!("--listen {:?}: only unix:///PATH is served", args.listen))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut cfg = kelp_runtime_wasm::service::RuntimeConfig::new(args.data_dir.join("runtime"));
    cfg.insecure_registries = args.insecure_registry;
    cfg.cluster_networks = args.cluster_cidr.0.into();
    let (streaming, listener) = StreamingServer::bind(args.streaming_address)
        .await
        .context("starting the CRI streaming server")?;
    cfg.stream_urls = Some(streaming.clone());
    let rt =
        kelp_runtime_wasm::service::WasmRuntime::new(cfg).context("starting the Wasm runtime")?;
    let rt = Arc::new(rt);
    let cri: Arc<dyn CriRuntime> = Arc::new(rt.clone());
    tokio::spawn(streaming.serve(listener, cri, std::future::pending()));
    // Start-up (argument parsing, engine and store set-up) touched code serving never
    // runs again; what serving uses maps back at its next access.
    crate::code_pages::release_startup_pages();
    println!("kelp runtime is serving CRI at unix://{}", path.display());
    kelp_cri_api::serve_unix(&path, rt.clone(), rt, shutdown)
        .await
        .context("serving CRI")?;
    Ok(())
}
