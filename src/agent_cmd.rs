//! `kelp agent`, `kelp kubelet` and the node half of `kelp up`: a kubelet
//! (kelp-node-agent) over the in-process Wasm runtime, or over a CRI socket.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use kelp_node_agent::dns::{self, DnsConfig, DnsServer, KubeCatalog};
use kelp_node_agent::kube::Client;
use kelp_node_agent::kubelet::env::ServiceCache;
use kelp_node_agent::network::cni::CniSettings;
use kelp_node_agent::network::{routes, AddressMode, PodNetwork};
use kelp_node_agent::proxy::{self, PlaneConfig, ProxyConfig};
use kelp_node_agent::{client, CriRuntime, Kubelet, KubeletConfig, RemoteRuntime, RuntimeRouter};
use kelp_runtime_wasm::service::{RuntimeConfig, WasmRuntime};
use tokio::sync::watch;

use crate::runtime_process::{RuntimeLaunch, RuntimeProcess};

/// What every node command takes.
#[derive(Args, Clone, Debug)]
pub struct NodeArgs {
    /// The Node's name (default: the hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// The node's InternalIP (default: the local address that routes to the server).
    #[arg(long)]
    node_ip: Option<IpAddr>,
    /// Node state: the Wasm runtime under DATA_DIR/runtime, pods under DATA_DIR/kubelet.
    #[arg(long, default_value = "/var/lib/kelp", env = "KELP_DATA_DIR")]
    data_dir: PathBuf,
    /// A CRI runtime (`unix:///PATH`): containerd runs Linux containers next to the
    /// in-process Wasm runtime; `kelp runtime` replaces the in-process one.
    #[arg(long)]
    container_runtime_endpoint: Option<String>,
    /// Where the Wasm runtime runs when no `--container-runtime-endpoint` is given:
    /// `process`, a `kelp runtime` this command starts (CRI on
    /// DATA_DIR/runtime/cri.sock), which keeps the pods running if this process dies
    /// and is adopted when it restarts; `in-process`, in this process (pods end with
    /// it).
    #[arg(long, value_enum, default_value_t = WasmRuntimeMode::Process)]
    wasm_runtime: WasmRuntimeMode,
    /// A registry reached over plain http although not on loopback (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registry: Vec<String>,
    /// `capacity.pods` the Node reports.
    #[arg(long, default_value_t = 10_000)]
    max_pods: u32,
    /// The kubelet server's HTTPS port on the node IP (0: any free port; the Node
    /// advertises the bound one).
    #[arg(long, default_value_t = 10250)]
    kubelet_port: u16,
    /// `external`: a cloud-controller-manager initializes this Node (it registers
    /// with the `node.cloudprovider.kubernetes.io/uninitialized` taint, and its
    /// addresses are the provider's once set), as upstream's kubelet flag.
    #[arg(long, value_name = "external", value_parser = ["external"])]
    cloud_provider: Option<String>,
    /// Taints the Node registers with: `KEY[=VALUE]:EFFECT`, comma-separated.
    #[arg(long, value_name = "TAINTS", value_parser = check_register_taints)]
    register_with_taints: Option<String>,
    /// The cluster's pod addresses, CIDRs comma-separated (the server's
    /// `--cluster-cidr`, as kube-proxy's flag): Wasm pods' outgoing wasi:http
    /// connections to them, and to this host's own addresses, leave from the pod's
    /// address; other destinations see the node's.
    #[arg(long, default_value = "10.42.0.0/16", value_parser = parse_cidrs)]
    cluster_cidr: Cidrs,
    #[command(flatten)]
    net: NetArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WasmRuntimeMode {
    Process,
    InProcess,
}

/// A comma-separated CIDR list (empty: none).
#[derive(Clone, Debug, Default)]
pub struct Cidrs(pub Vec<ipnet::IpNet>);

pub fn parse_cidrs(s: &str) -> Result<Cidrs, String> {
    s.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| c.parse().map_err(|_| format!("{c:?} is not a CIDR")))
        .collect::<Result<_, _>>()
        .map(Cidrs)
}

/// Rejects a malformed `--register-with-taints` at parse time.
fn check_register_taints(s: &str) -> Result<String, String> {
    kelp_node_agent::kubelet::node::parse_taints(s).map(|_| s.to_string())
}

/// Pod networking and the service proxy of a node.
#[derive(Args, Clone, Debug)]
pub struct NetArgs {
    /// The interface holding pod and ClusterIP addresses (created when missing; needs
    /// CAP_NET_ADMIN, else pods get 127.0.0.0/8 addresses).
    #[arg(long, default_value = kelp_node_agent::network::DEFAULT_INTERFACE, env = "KELP_POD_INTERFACE")]
    pod_interface: String,
    /// Do not run the service proxy on this node.
    #[arg(long)]
    disable_proxy: bool,
    /// Do not install routes to the other nodes' pod ranges (host-gw: `podCIDR via
    /// InternalIP`); use when something else routes pod traffic between nodes.
    #[arg(long)]
    disable_pod_routes: bool,
    /// Where node ports accept (default: every address).
    #[arg(long, default_value = "0.0.0.0")]
    nodeport_address: IpAddr,
    /// Serve the proxy's Prometheus metrics on HOST:PORT.
    #[arg(long)]
    proxy_metrics_address: Option<std::net::SocketAddr>,
    #[command(flatten)]
    proxy_plane: PlaneArgs,
    /// Where the node's cluster DNS listens, ADDR or ADDR:PORT (UDP and TCP; port 0:
    /// any free port). Default: 169.254.20.10:53 on the pod interface (127.0.0.10:53
    /// without CAP_NET_ADMIN), moving to a free port when 53 cannot be had.
    #[arg(long, value_name = "ADDR[:PORT]")]
    cluster_dns_address: Option<String>,
    /// Do not run cluster DNS on this node (ClusterFirst pods get the host's resolvers).
    #[arg(long)]
    disable_cluster_dns: bool,
    /// The cluster domain cluster DNS answers for.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// The host's resolver config: `dnsPolicy: Default` pods get it, cluster DNS
    /// relays names outside the cluster domain to its nameservers.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// With a Linux container runtime: where it reads CNI configs (containerd's CRI
    /// `cni.conf_dir`); the agent writes its pods' network there.
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// The bridge Linux pods are attached to.
    #[arg(long, default_value = "kelp-cni0")]
    cni_bridge: String,
}

impl NetArgs {
    /// The cluster DNS listen address: (address, whether it is the default).
    fn cluster_dns_listen(&self, mode: &AddressMode) -> anyhow::Result<(SocketAddr, bool)> {
        let Some(raw) = &self.cluster_dns_address else {
            let ip = if mode.is_loopback() {
                dns::DEFAULT_LOOPBACK_ADDRESS
            } else {
                dns::DEFAULT_ADDRESS
            };
            return Ok((SocketAddr::new(ip.into(), 53), true));
        };
        let addr = match raw.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, 53),
            Err(_) => raw
                .parse()
                .with_context(|| format!("--cluster-dns-address {raw:?}: not ADDR or ADDR:PORT"))?,
        };
        Ok((addr, false))
    }

    fn proxy_config(&self, node_name: &str) -> ProxyConfig {
        let mut p = ProxyConfig::new(node_name);
        p.nodeport_address = self.nodeport_address;
        p.metrics_address = self.proxy_metrics_address;
        p.plane = self.proxy_plane.config();
        p
    }
}

/// The service proxy's data-plane threads.
#[derive(Args, Clone, Debug)]
pub struct PlaneArgs {
    /// Threads forwarding service traffic (0: one per CPU).
    #[arg(long, default_value_t = 0)]
    proxy_threads: usize,
    /// Busy-poll for this many microseconds after a proxy thread's last event instead
    /// of sleeping (0: off). Cuts each hop's wake-up latency on VMs whose idle vCPUs
    /// halt, at the cost of a CPU per busy thread while traffic flows.
    #[arg(long, default_value_t = 0, value_name = "MICROSECONDS")]
    proxy_busy_poll: u64,
    /// Congestion control for a bulk stream's hop to a peer on this node (an
    /// endpoint or client on this machine), which shares no network: BBR's pacing there
    /// only costs wake-ups. Empty: keep the system's (`net.ipv4.tcp_congestion_control`).
    #[arg(long, default_value = "cubic", value_name = "ALGORITHM")]
    proxy_local_congestion_control: String,
}

impl PlaneArgs {
    fn config(&self) -> PlaneConfig {
        PlaneConfig {
            threads: self.proxy_threads,
            busy_poll: (self.proxy_busy_poll > 0)
                .then(|| std::time::Duration::from_micros(self.proxy_busy_poll)),
            local_congestion_control: Some(self.proxy_local_congestion_control.clone())
                .filter(|cc| !cc.is_empty()),
        }
    }
}

/// `kelp proxy`: the service proxy alone.
#[derive(Args, Clone, Debug)]
pub struct ProxyArgs {
    #[arg(long)]
    kubeconfig: PathBuf,
    /// This node's name, for `Local` traffic policies (default: the hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// Where node ports accept (default: every address).
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// The interface holding ClusterIP addresses.
    #[arg(long, default_value = kelp_node_agent::network::DEFAULT_INTERFACE, env = "KELP_POD_INTERFACE")]
    pod_interface: String,
    /// Serve Prometheus metrics on HOST:PORT.
    #[arg(long)]
    metrics_bind_address: Option<std::net::SocketAddr>,
    #[command(flatten)]
    plane: PlaneArgs,
}

/// `kelp agent`: join a cluster as a node.
#[derive(Args, Clone, Debug)]
pub struct AgentArgs {
    /// The API server, `https://HOST:PORT`.
    #[arg(long, required_unless_present = "kubeconfig")]
    server: Option<String>,
    /// The node join token (the server's DATA_DIR/node-token).
    #[arg(long, env = "KELP_TOKEN", conflicts_with = "token_file")]
    token: Option<String>,
    /// A file holding the node join token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The cluster CA certificate (the server's DATA_DIR/tls/ca.crt).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Connect with this kubeconfig instead of --server/--token.
    #[arg(long, conflicts_with_all = ["server", "token", "token_file"])]
    kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    node: NodeArgs,
}

/// `kelp kubelet`: the kubelet alone, with a kubeconfig.
#[derive(Args, Clone, Debug)]
pub struct KubeletArgs {
    #[arg(long)]
    kubeconfig: PathBuf,
    #[command(flatten)]
    node: NodeArgs,
}

/// `kelp up`: the control plane and one node in this process.
#[derive(Args, Clone)]
pub struct UpArgs {
    #[command(flatten)]
    control_plane: crate::ControlPlaneArgs,
    /// Run the control plane only (no kubelet).
    #[arg(long)]
    no_node: bool,
    /// The node's name (default: the hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// Also run Linux containers through this CRI runtime (`unix:///PATH`, e.g.
    /// containerd's socket) next to the in-process Wasm runtime.
    #[arg(long)]
    container_runtime_endpoint: Option<String>,
    /// The in-process node's kubelet server port (0: any free port).
    #[arg(long, default_value_t = 10250)]
    kubelet_port: u16,
    #[command(flatten)]
    net: NetArgs,
}

/// The runtimes of a node, and whether a Linux runtime networks its pods through CNI:
/// - no endpoint: the Wasm runtime alone, in a `kelp runtime` process of its own
///   (or in this process with `--wasm-runtime in-process`);
/// - an endpoint serving Kelp's Wasm runtime (`kelp runtime`): that runtime alone;
/// - any other CRI runtime (containerd): the in-process Wasm runtime for `wasm`, the
///   remote one for its handlers (`runc` when it names none), and for pods naming no
///   RuntimeClass whose images are Linux images.
async fn runtimes(node: &NodeArgs) -> anyhow::Result<NodeRuntimes> {
    let mut cfg = RuntimeConfig::new(node.data_dir.join("runtime"));
    cfg.insecure_registries = node.insecure_registry.clone();
    cfg.cluster_networks = node.cluster_cidr.0.clone().into();
    let (endpoint, process) = match (&node.container_runtime_endpoint, node.wasm_runtime) {
        (Some(endpoint), _) => (endpoint.clone(), None),
        (None, WasmRuntimeMode::Process) => {
            let launch = RuntimeLaunch {
                data_dir: node.data_dir.clone(),
                insecure_registries: node.insecure_registry.clone(),
                cluster_cidr: node.cluster_cidr.0.clone(),
            };
            let endpoint = launch.endpoint();
            let process = RuntimeProcess::ensure(launch).await?;
            (endpoint, Some(process))
        }
        (None, WasmRuntimeMode::InProcess) => {
            let wasm = WasmRuntime::new(cfg).context("starting the Wasm runtime")?;
            let wasm: Arc<dyn CriRuntime> = Arc::new(Arc::new(wasm));
            return Ok(NodeRuntimes {
                router: RuntimeRouter::new()
                    .with_runtime(kelp_runtime_wasm::service::HANDLER, wasm),
                cni: false,
                process: None,
            });
        }
    };
    let endpoint = &endpoint;
    let remote = RemoteRuntime::connect(endpoint)
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    let status = remote
        .status(kelp_cri_api::v1::StatusRequest { verbose: false })
        .await
        .with_context(|| format!("CRI Status of {endpoint}"))?;
    let version = remote
        .version(kelp_cri_api::v1::VersionRequest {
            version: "v1".into(),
        })
        .await
        .with_context(|| format!("CRI Version of {endpoint}"))?;
    let handlers: Vec<String> = status
        .runtime_handlers
        .into_iter()
        .map(|h| h.name)
        .filter(|h| !h.is_empty())
        .collect();
    let remote_arc: Arc<dyn CriRuntime> = Arc::new(remote.clone());
    if version.runtime_name == kelp_runtime_wasm::service::RUNTIME_NAME {
        let mut router = RuntimeRouter::new();
        let handlers = if handlers.is_empty() {
            vec![kelp_node_agent::cri::DEFAULT_HANDLER.to_string()]
        } else {
            handlers
        };
        for h in &handlers {
            router = router.with_runtime(h, remote_arc.clone());
        }
        if !handlers
            .iter()
            .any(|h| h == kelp_node_agent::cri::DEFAULT_HANDLER)
        {
            router = router.with_default_handler(&handlers[0]);
        }
        return Ok(NodeRuntimes {
            router,
            cni: false,
            process,
        });
    }
    // A Linux runtime (containerd 1.6/1.7 name no handlers in Status: `runc` is the
    // CRI plugin's default runtime).
    let handlers = if handlers.is_empty() {
        vec![LINUX_HANDLER.to_string()]
    } else {
        handlers
    };
    let wasm = Arc::new(WasmRuntime::new(cfg).context("starting the Wasm runtime")?);
    let wasm_cri: Arc<dyn CriRuntime> = Arc::new(wasm.clone());
    let mut router =
        RuntimeRouter::new().with_runtime(kelp_runtime_wasm::service::HANDLER, wasm_cri);
    for h in &handlers {
        if h != kelp_runtime_wasm::service::HANDLER {
            router = router.with_networked_runtime(h, &version.runtime_name, remote_arc.clone());
        }
    }
    let linux = if handlers.iter().any(|h| h == LINUX_HANDLER) {
        LINUX_HANDLER.to_string()
    } else {
        handlers[0].clone()
    };
    let classifier = Arc::new(crate::image_kind::Classifier::new(wasm, remote_arc));
    router = router.with_linux_handler(&linux, classifier);
    println!(
        "kelp kubelet: Linux containers through {} {} at {endpoint}",
        version.runtime_name, version.runtime_version
    );
    Ok(NodeRuntimes {
        router,
        cni: true,
        process: None,
    })
}

/// A node's runtimes: the router, whether Linux pods network through CNI, and the
/// Wasm runtime process this command watches, if any.
struct NodeRuntimes {
    router: RuntimeRouter,
    cni: bool,
    process: Option<RuntimeProcess>,
}

/// The handler Linux pods run under (the RuntimeClass `runc` that `kelp up` creates).
pub const LINUX_HANDLER: &str = "runc";

fn kubelet_config(
    node: &NodeArgs,
    server: Option<&str>,
    client_ca_pem: Option<String>,
) -> KubeletConfig {
    let name = node
        .node_name
        .clone()
        .unwrap_or_else(kelp_node_agent::kubelet::node::hostname);
    let mut cfg = KubeletConfig::new(name, node.data_dir.join("kubelet"));
    cfg.max_pods = node.max_pods;
    cfg.kubelet_port = node.kubelet_port;
    cfg.client_ca_pem = client_ca_pem;
    cfg.external_cloud_provider = node.cloud_provider.is_some();
    cfg.register_with_taints = node
        .register_with_taints
        .as_deref()
        .and_then(|t| kelp_node_agent::kubelet::node::parse_taints(t).ok())
        .unwrap_or_default();
    cfg.node_ip = node
        .node_ip
        .or_else(|| server.map(client::local_ip_towards))
        .unwrap_or(cfg.node_ip);
    cfg
}

async fn run_node(
    node: NodeArgs,
    client: Client,
    server: Option<String>,
    client_ca_pem: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let NodeRuntimes {
        router,
        cni,
        process,
    } = runtimes(&node).await?;
    let mut cfg = kubelet_config(&node, server.as_deref(), client_ca_pem);
    let mode = AddressMode::detect(&node.net.pod_interface)
        .await
        .with_context(|| format!("pod interface {}", node.net.pod_interface))?;
    let mut network = PodNetwork::new(
        client.clone(),
        cfg.node_name.clone(),
        mode.clone(),
        node.data_dir.join("network"),
    );
    if cni {
        network = network.with_cni(CniSettings {
            conf_dir: node.net.cni_conf_dir.clone(),
            bridge: node.net.cni_bridge.clone(),
            ipam_dir: node.data_dir.join("cni"),
        });
    }
    let network = Arc::new(network);
    cfg.network = Some(network.clone());
    if cni {
        // Linux pods need the CNI config, which needs the node's podCIDR (assigned
        // after registration).
        tokio::spawn(async move {
            loop {
                match network.prepare().await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "pod network not ready"),
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        });
    }
    // One Service reflector for the kubelet (service links) and cluster DNS.
    let services = ServiceCache::start(client.clone());
    cfg.services = Some(services.clone());
    cfg.cluster_domain = node.net.cluster_domain.clone();
    cfg.resolv_conf = Some(node.net.resolv_conf.clone());
    // One shutdown for the kubelet, the proxy and cluster DNS.
    let (tx, rx) = watch::channel(false);
    let dns = if node.net.disable_cluster_dns {
        None
    } else {
        let server = bind_cluster_dns(&node.net, &mode).await?;
        cfg.cluster_dns = vec![server.local_addr()];
        let catalog = Arc::new(KubeCatalog::start(services, client.clone()));
        Some(tokio::spawn(server.run(catalog, stopped(rx.clone()))))
    };
    println!(
        "kelp kubelet: node {} (InternalIP {}) serving handlers {:?}, cluster DNS {}",
        cfg.node_name,
        cfg.node_ip,
        router.handlers(),
        cfg.cluster_dns
            .first()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "off".into())
    );
    // Host-gw routes to the other nodes' pods; only with a real pod interface (in
    // loopback mode pod addresses are 127/8 and never leave the machine).
    let pod_routes = (!node.net.disable_pod_routes && !mode.is_loopback()).then(|| {
        let (client, name, rx) = (client.clone(), cfg.node_name.clone(), rx.clone());
        tokio::spawn(async move {
            if let Err(e) = routes::run(client, name, stopped(rx)).await {
                tracing::warn!(error = %e, "pod routes to other nodes are not managed");
            }
        })
    });
    let proxy = (!node.net.disable_proxy).then(|| {
        let pc = node.net.proxy_config(&cfg.node_name);
        let (client, rx) = (client.clone(), rx.clone());
        tokio::spawn(async move {
            if let Err(e) = proxy::run(pc, client, mode, stopped(rx)).await {
                tracing::error!(error = %e, "the service proxy stopped");
            }
        })
    });
    tokio::spawn(crate::code_pages::release_when_ready(
        client.clone(),
        cfg.node_name.clone(),
    ));
    let kubelet = Kubelet::run(cfg, client, router, stopped(rx));
    tokio::pin!(kubelet);
    tokio::pin!(shutdown);
    let result = tokio::select! {
        r = &mut kubelet => r,
        _ = &mut shutdown => {
            let _ = tx.send(true);
            kubelet.await
        }
    };
    let _ = tx.send(true);
    if let Some(p) = proxy {
        let _ = p.await;
    }
    if let Some(r) = pod_routes {
        let _ = r.await;
    }
    if let Some(d) = dns {
        let _ = d.await;
    }
    if let Some(p) = process {
        p.stop().await;
    }
    result.context("kubelet")
}

/// Binds the node's cluster DNS (the default address is made local first).
async fn bind_cluster_dns(net: &NetArgs, mode: &AddressMode) -> anyhow::Result<DnsServer> {
    let (listen, is_default) = net.cluster_dns_listen(mode)?;
    if is_default {
        mode.add(listen.ip())
            .await
            .with_context(|| format!("adding the cluster DNS address {}", listen.ip()))?;
    }
    let mut cfg = DnsConfig::new(listen);
    cfg.fallback_to_free_port = is_default;
    cfg.domain = net.cluster_domain.clone();
    cfg.upstreams = std::fs::read_to_string(&net.resolv_conf)
        .map(|t| dns::resolv_conf_nameservers(&t))
        .unwrap_or_default();
    DnsServer::bind(cfg).await.context("cluster DNS")
}

/// `kelp proxy`: the service proxy alone, over a kubeconfig.
pub async fn run_proxy(
    args: ProxyArgs,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let client = client::from_kubeconfig(&args.kubeconfig)
        .await
        .with_context(|| format!("kubeconfig {}", args.kubeconfig.display()))?;
    let name = args
        .node_name
        .clone()
        .unwrap_or_else(kelp_node_agent::kubelet::node::hostname);
    let mode = AddressMode::detect(&args.pod_interface)
        .await
        .with_context(|| format!("pod interface {}", args.pod_interface))?;
    let mut cfg = ProxyConfig::new(name);
    cfg.nodeport_address = args.bind_address;
    cfg.metrics_address = args.metrics_bind_address;
    cfg.plane = args.plane.config();
    println!(
        "kelp proxy: node {} (node ports on {})",
        cfg.node_name, cfg.nodeport_address
    );
    proxy::run(cfg, client, mode, shutdown)
        .await
        .context("kelp proxy")
}

pub async fn run_agent(
    args: AgentArgs,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let (client, server) = match &args.kubeconfig {
        Some(kc) => (
            client::from_kubeconfig(kc)
                .await
                .with_context(|| format!("kubeconfig {}", kc.display()))?,
            client::kubeconfig_server(kc),
        ),
        None => {
            let server = args.server.clone().context("--server is required")?;
            let token = match (&args.token, &args.token_file) {
                (Some(t), _) => t.clone(),
                (None, Some(f)) => std::fs::read_to_string(f)
                    .with_context(|| format!("reading --token-file {}", f.display()))?,
                (None, None) => anyhow::bail!("--token or --token-file is required"),
            };
            let c = client::from_token(&server, &token, args.ca_file.as_deref())
                .await
                .context("building the API client")?;
            (c, Some(server))
        }
    };
    // The kubelet server trusts client certificates of the cluster CA.
    let ca = match (&args.ca_file, &args.kubeconfig) {
        (Some(f), _) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading --ca-file {}", f.display()))?,
        ),
        (None, Some(kc)) => client::kubeconfig_ca(kc),
        (None, None) => None,
    };
    run_node(args.node, client, server, ca, shutdown).await
}

pub async fn run_kubelet(
    args: KubeletArgs,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let client = client::from_kubeconfig(&args.kubeconfig)
        .await
        .with_context(|| format!("kubeconfig {}", args.kubeconfig.display()))?;
    let server = client::kubeconfig_server(&args.kubeconfig);
    let ca = client::kubeconfig_ca(&args.kubeconfig);
    run_node(args.node, client, server, ca, shutdown).await
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn node_for_up(up: &UpArgs, data_dir: &Path) -> NodeArgs {
    NodeArgs {
        node_name: up.node_name.clone(),
        node_ip: None,
        data_dir: data_dir.to_path_buf(),
        container_runtime_endpoint: up.container_runtime_endpoint.clone(),
        // One process is `kelp up`'s point: the node's runtime runs in it.
        wasm_runtime: WasmRuntimeMode::InProcess,
        insecure_registry: up.control_plane.insecure_registry.clone(),
        max_pods: 10_000,
        kubelet_port: up.kubelet_port,
        cloud_provider: None,
        register_with_taints: None,
        // Checked when the control plane's flags were read.
        cluster_cidr: parse_cidrs(&up.control_plane.controller_flags.cluster_cidr)
            .unwrap_or_default(),
        net: up.net.clone(),
    }
}

/// `kelp up`: the control plane, and once it serves, a kubelet in the same process
/// joining with the node token.
pub async fn run_up(up: UpArgs) -> anyhow::Result<()> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        crate::shutdown_signal().await;
        let _ = tx.send(true);
    });
    let args = up.control_plane.clone();
    let mut cfg = args.config()?;
    cfg.controllers = Some(args.controller_flags.manager_options()?);
    cfg.scheduler = (!args.disable_scheduler)
        .then(|| crate::image_kind::scheduler_config(args.insecure_registry.clone()));
    cfg.cloud = args
        .cloud
        .options(args.controller_flags.node_monitor_period)?;
    let node = (!up.no_node).then(|| node_for_up(&up, &args.data_dir));
    let ca = args.data_dir.join("tls").join("ca.crt");
    let node_rx = rx.clone();
    kelp_control_plane::run(cfg, stopped(rx), move |s| {
        println!("kelp up is serving the Kubernetes API at {}", s.url);
        println!("  admin kubeconfig: {}", s.kubeconfig.display());
        println!("  node join token:  {}", s.token_file.display());
        println!(
            "  try: KUBECONFIG={} kubectl get nodes",
            s.kubeconfig.display()
        );
        let Some(node) = node else { return };
        let url = s.url.clone();
        // The node of `kelp up` calls its API server in-process, with the identity the
        // join token gives a separate agent.
        let client = s.loopback.node();
        tokio::spawn(async move {
            let run = async {
                let ca_pem = std::fs::read_to_string(&ca)
                    .with_context(|| format!("reading {}", ca.display()))?;
                run_node(
                    node,
                    client,
                    Some(url.clone()),
                    Some(ca_pem),
                    stopped(node_rx),
                )
                .await
            };
            if let Err(e) = run.await {
                tracing::error!(error = format!("{e:#}"), "the node of kelp up stopped");
            }
        });
    })
    .await
    .context("kelp up")?;
    Ok(())
}
