//! One wasmtime engine per node, with an epoch ticker for preemption and stop
//! requests, and a compile cache keyed by the binary's digest and the engine's
//! compatibility hash, so a warm start maps a file instead of compiling. Both core
//! modules (WASI preview 1) and components (preview 2, wasi:http) are compiled here;
//! [`WasmEngine::compile`] tells them apart from the binary's header.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tracing::{debug, warn};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, Module, PoolingAllocationConfig};

use crate::container::{Artifact, Linkers};
use crate::RuntimeError;

/// How often the epoch advances: the granularity of preemption and of stop requests.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How instances get their memories, tables and stacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// Allocated (mmap) per instance and freed with its store: no cap on concurrent
    /// instances.
    OnDemand,
    /// wasmtime's pooling allocator: address space reserved up front for this many
    /// concurrent instances (containers plus in-flight wasi:http requests, node-wide)
    /// and slots reused. It makes the per-request instance of the wasi:http path
    /// about 1.5× faster at the same memory per idle server or running container
    /// (docs/benchmarks.md, "Wasm runtime"); an instance beyond the cap fails to
    /// start (the container exits 1, the request gets 500).
    Pooling { instances: u32 },
}

/// The node default: pooling, with room for 1,000 concurrent instances (a node runs
/// at most a few hundred pods).
pub const DEFAULT_ALLOCATION: Allocation = Allocation::Pooling { instances: 1000 };

impl Default for Allocation {
    fn default() -> Self {
        DEFAULT_ALLOCATION
    }
}

#[derive(Clone)]
pub struct WasmEngine {
    engine: Engine,
    cache_dir: Option<PathBuf>,
    linkers: Arc<Linkers>,
    _ticker: Arc<Ticker>,
}

struct Ticker {
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl WasmEngine {
    /// A new engine with the default allocation (pooling; on-demand where the pool's
    /// address space cannot be reserved); compilations are cached under `cache_dir`
    /// when given.
    pub fn new(cache_dir: Option<&Path>) -> Result<Self, RuntimeError> {
        Self::with_allocation(cache_dir, Allocation::default()).or_else(|e| {
            warn!(error = %e, "pooling allocator unavailable; allocating instances on demand");
            Self::with_allocation(cache_dir, Allocation::OnDemand)
        })
    }

    /// A new engine with an explicit instance allocation strategy.
    pub fn with_allocation(
        cache_dir: Option<&Path>,
        allocation: Allocation,
    ) -> Result<Self, RuntimeError> {
        let mut cfg = Config::new();
        cfg.epoch_interruption(true);
        cfg.wasm_multi_memory(true);
        cfg.wasm_component_model(true);
        if let Allocation::Pooling { instances } = allocation {
            let mut pool = PoolingAllocationConfig::new();
            pool.total_component_instances(instances)
                .total_core_instances(instances.saturating_mul(4))
                .total_memories(instances.saturating_mul(2))
                .total_tables(instances.saturating_mul(4))
                .total_stacks(instances)
                // Room for what on-demand allocation runs too: multi-memory modules
                // and big tables (the memory limit still counts them).
                .max_memories_per_module(8)
                .max_tables_per_module(8)
                .table_elements(1 << 20)
                .max_memory_size(4 << 30);
            cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&cfg).map_err(|e| RuntimeError::Setup(e.to_string()))?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let engine = engine.weak();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("kelp-wasm-epoch".into())
                .spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        match engine.upgrade() {
                            Some(e) => e.increment_epoch(),
                            None => return,
                        }
                    }
                })
                .map_err(|e| RuntimeError::Setup(e.to_string()))?;
        }
        if let Some(d) = cache_dir {
            std::fs::create_dir_all(d).map_err(|source| RuntimeError::Io {
                path: d.to_path_buf(),
                source,
            })?;
        }
        let linkers = Arc::new(Linkers::new(&engine)?);
        Ok(WasmEngine {
            engine,
            cache_dir: cache_dir.map(Path::to_path_buf),
            linkers,
            _ticker: Arc::new(Ticker { stop }),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn linkers(&self) -> &Linkers {
        &self.linkers
    }

    fn cache_path(&self, bytes: &[u8]) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        let digest = Sha256::digest(bytes);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Some(dir.join(format!("{hex}-{:016x}.cwasm", h.finish())))
    }

    /// Compiles `bytes` — a core module or a component, binary or text format — or
    /// loads the cached compilation. The kind comes from the binary's header.
    pub fn compile(&self, bytes: &[u8]) -> Result<Artifact, RuntimeError> {
        let text;
        let binary =
            if wasmparser::Parser::is_core_wasm(bytes) || wasmparser::Parser::is_component(bytes) {
                bytes
            } else {
                text = wat::parse_bytes(bytes)
                    .map_err(|e| RuntimeError::InvalidModule(format!("{e:#}")))?;
                &text[..]
            };
        let component = wasmparser::Parser::is_component(binary);
        // The cache key is the binary as given, so text and binary never collide
        // with each other's kind: the kind is part of the bytes.
        let cached = self.cache_path(bytes);
        if let Some(path) = &cached {
            if path.exists() {
                match self.load_cached(path, component) {
                    Ok(a) => {
                        debug!(path = %path.display(), "loaded from the compile cache");
                        return Ok(a);
                    }
                    Err(e) => {
                        warn!(path = %path.display(), error = %e, "unusable cached compilation; recompiling")
                    }
                }
            }
        }
        let artifact = if component {
            Component::from_binary(&self.engine, binary).map(Artifact::Component)
        } else {
            Module::from_binary(&self.engine, binary).map(Artifact::Module)
        }
        .map_err(|e| RuntimeError::InvalidModule(format!("{e:#}")))?;
        if let Some(path) = cached {
            let data = match &artifact {
                Artifact::Module(m) => m.serialize(),
                Artifact::Component(c) => c.serialize(),
            };
            match data {
                Ok(data) => {
                    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
                    if std::fs::write(&tmp, data)
                        .and_then(|_| std::fs::rename(&tmp, &path))
                        .is_err()
                    {
                        let _ = std::fs::remove_file(&tmp);
                        warn!(path = %path.display(), "could not write the compile cache");
                    }
                }
                Err(e) => warn!(error = %e, "could not serialize a compilation"),
            }
        }
        Ok(artifact)
    }

    fn load_cached(&self, path: &Path, component: bool) -> wasmtime::Result<Artifact> {
        // SAFETY: the file was written by `Module::serialize`/`Component::serialize` of
        // an engine with the same compatibility hash (part of its name), into a
        // directory only this runtime writes; the kind is the one of the source bytes
        // hashed into the name, and wasmtime checks it again (a module file does not
        // load as a component); a truncated file fails to load and is recompiled.
        #[allow(unsafe_code)]
        unsafe {
            if component {
                Component::deserialize_file(&self.engine, path).map(Artifact::Component)
            } else {
                Module::deserialize_file(&self.engine, path).map(Artifact::Module)
            }
        }
    }
}
