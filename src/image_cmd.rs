//! `kelp image import|ls|pull|rm` (a node's image store, like `kind load` / `crictl
//! images`) and `kelp push` (publish a module to a registry as a CNCF Wasm artifact).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use kelp_runtime_wasm::image::{self, ImageStore, PullOptions, RegistryAuth};
use kelp_runtime_wasm::service::{RuntimeConfig, WasmRuntime};

#[derive(Args, Clone)]
pub struct StoreArgs {
    /// Node state directory; images live in DATA_DIR/runtime/images.
    #[arg(long, default_value = "/var/lib/kelp", env = "KELP_DATA_DIR")]
    data_dir: PathBuf,
}

impl StoreArgs {
    /// Compiles `rec` into the node's compile cache, so its first container starts
    /// without compiling (the runtime shares the data dir's cache).
    async fn precompile(&self, rec: &image::ImageRecord) -> anyhow::Result<()> {
        let t = std::time::Instant::now();
        let rt = WasmRuntime::new(RuntimeConfig::new(self.data_dir.join("runtime")))
            .context("opening the Wasm runtime's compile cache")?;
        let http = rt.precompile(rec).await.context("compiling")?;
        println!(
            "  compiled for the {} engine in {:.0} ms",
            if http { "wasi:http" } else { "command" },
            t.elapsed().as_secs_f64() * 1e3
        );
        Ok(())
    }

    fn open(&self) -> anyhow::Result<ImageStore> {
        let root = self.data_dir.join("runtime").join("images");
        ImageStore::open(&root)
            .with_context(|| format!("opening the image store {}", root.display()))
    }
}

#[derive(Args, Clone)]
pub struct RegistryArgs {
    /// A registry reached over plain http although not on loopback (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registry: Vec<String>,
    /// Registry user name (basic auth; token exchange is automatic).
    #[arg(long, env = "KELP_REGISTRY_USERNAME")]
    username: Option<String>,
    /// Registry password.
    #[arg(long, env = "KELP_REGISTRY_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

impl RegistryArgs {
    fn auth(&self) -> anyhow::Result<RegistryAuth> {
        match (&self.username, &self.password) {
            (Some(u), Some(p)) => Ok(RegistryAuth::Basic(u.clone(), p.clone())),
            (None, None) => Ok(RegistryAuth::Anonymous),
            _ => anyhow::bail!("--username and --password go together"),
        }
    }
}

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Load a .wasm file into the node's image store under a name (like `kind load`).
    Import {
        /// The WebAssembly module or component.
        file: PathBuf,
        /// Image reference to store it as, e.g. `example.com/app:v1`.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List the images in the node's store.
    #[command(alias = "list")]
    Ls {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Pull an image from a registry into the node's store.
    Pull {
        /// Image reference, e.g. `ghcr.io/org/app:v1`.
        reference: String,
        #[command(flatten)]
        registry: RegistryArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove an image (by reference or id) from the node's store.
    #[command(alias = "remove")]
    Rm {
        reference: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Args)]
pub struct PushArgs {
    /// The WebAssembly module or component.
    file: PathBuf,
    /// Where to publish it, e.g. `localhost:5000/app:v1`.
    reference: String,
    #[command(flatten)]
    registry: RegistryArgs,
}

fn read_wasm(file: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(file).with_context(|| format!("reading {}", file.display()))
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

pub async fn run_image(cmd: ImageCommand) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Import { file, name, store } => {
            let wasm = read_wasm(&file)?;
            let rec = store.open()?.import(&wasm, &name).context("importing")?;
            println!(
                "imported {} as {}",
                file.display(),
                rec.repo_tags.join(", ")
            );
            println!("  image id: {}", rec.id);
            println!("  {:?}, {}", rec.kind, human(rec.size));
            store.precompile(&rec).await?;
        }
        ImageCommand::Ls { store } => {
            let store = store.open()?;
            println!(
                "{:<50} {:<16} {:<14} {:<10} SIZE",
                "IMAGE", "TAG", "IMAGE ID", "KIND"
            );
            for img in store.list() {
                let short = img.id.trim_start_matches("sha256:");
                let short = &short[..short.len().min(13)];
                let kind = format!("{:?}", img.kind).to_lowercase();
                let names: Vec<(String, String)> = if img.repo_tags.is_empty() {
                    img.repo_digests
                        .iter()
                        .map(|d| {
                            let name = d.split('@').next().unwrap_or(d).to_string();
                            (name, "<none>".to_string())
                        })
                        .collect()
                } else {
                    img.repo_tags
                        .iter()
                        .map(|t| match t.rsplit_once(':') {
                            Some((n, tag)) if !tag.contains('/') => {
                                (n.to_string(), tag.to_string())
                            }
                            _ => (t.clone(), "<none>".to_string()),
                        })
                        .collect()
                };
                for (name, tag) in names {
                    println!(
                        "{name:<50} {tag:<16} {short:<14} {kind:<10} {}",
                        human(img.size)
                    );
                }
            }
        }
        ImageCommand::Pull {
            reference,
            registry,
            store,
        } => {
            let opts = PullOptions {
                insecure_registries: registry.insecure_registry.clone(),
                ..PullOptions::default()
            };
            let rec = store
                .open()?
                .pull(&reference, &registry.auth()?, &opts)
                .await
                .with_context(|| format!("pulling {reference}"))?;
            for d in &rec.repo_digests {
                println!("pulled {d}");
            }
            println!("  image id: {}", rec.id);
            println!("  {:?}, {}", rec.kind, human(rec.size));
            store.precompile(&rec).await?;
        }
        ImageCommand::Rm { reference, store } => {
            store
                .open()?
                .remove(&reference)
                .with_context(|| format!("removing {reference}"))?;
            println!("removed {reference}");
        }
    }
    Ok(())
}

pub async fn run_push(args: PushArgs) -> anyhow::Result<()> {
    let wasm = read_wasm(&args.file)?;
    let digest = image::push(
        &wasm,
        &args.reference,
        &args.registry.auth()?,
        &args.registry.insecure_registry,
    )
    .await
    .with_context(|| format!("pushing {} to {}", args.file.display(), args.reference))?;
    let r = image::ImageReference::parse(&args.reference)?;
    println!("pushed {}", r.tagged().unwrap_or_else(|| r.name()));
    println!("  digest: {digest}");
    println!("  pull with: {}", r.with_digest(&digest));
    Ok(())
}
