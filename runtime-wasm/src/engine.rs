//! One wasmtime engine per node, with an epoch ticker for preemption and stop
//! requests, and a compile cache keyed by the binary's digest and the engine's
//! compatibility hash, so a warm start maps a file instead of compiling. Both core
//! modules (WASI preview 1) and components (preview 2, wasi:http) are compiled here;
//! [`WasmEngine::compile`] tells them apart from the binary's header.
//!
//! Above the disk cache sits an in-process one ([`ArtifactCache`]): every container
//! of an image gets a clone of the same compiled artifact (one mapping of the code
//! per node, not one per pod) and of its pre-resolved instantiation (imports matched
//! against the engine's linker once per image, not once per start).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
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

/// A lock per image digest being compiled.
type InFlight = std::collections::HashMap<[u8; 32], Arc<Mutex<()>>>;

#[derive(Clone)]
pub struct WasmEngine {
    engine: Engine,
    cache_dir: Option<PathBuf>,
    linkers: Arc<Linkers>,
    artifacts: Arc<Mutex<ArtifactCache>>,
    /// One lock per digest being compiled: the first container of an image compiles
    /// it, the others wait for that artifact (a burst of 100 pods of a new image
    /// compiled it ~25 times at once: seconds of CPU and a gigabyte of memory).
    compiling: Arc<Mutex<InFlight>>,
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
        if allocation == Allocation::OnDemand {
            // Copy data segments into each new memory instead of mapping the module's
            // memory image copy-on-write. Each mapping is a kernel VMA, and a process
            // gets `vm.max_map_count` of them (65,530 by default): an on-demand
            // instance of a typical Rust command (stack pages, data image, heap,
            // guards, fiber stack) took 7 with the image mapped — at most ~9,300
            // running containers per node — and takes 5 without it (~13,000). The
            // copy costs a memcpy of the data segments at start (a few KiB for
            // typical commands); the pooling allocator keeps images mapped in its
            // slots, so it keeps copy-on-write.
            cfg.memory_init_cow(false);
        }
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
            artifacts: Arc::new(Mutex::new(ArtifactCache::default())),
            compiling: Default::default(),
            _ticker: Arc::new(Ticker { stop }),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn linkers(&self) -> &Linkers {
        &self.linkers
    }

    fn cache_path(&self, digest: &[u8; 32]) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Some(dir.join(format!("{hex}-{:016x}.cwasm", h.finish())))
    }

    /// Compiles `bytes` — a core module or a component, binary or text format — or
    /// loads the cached compilation. The kind comes from the binary's header.
    ///
    /// The same bytes compiled again return a clone of the artifact already in this
    /// process (sharing its code; see [`ArtifactCache`]) while it is cached; the
    /// disk cache serves the first compilation in a process.
    pub fn compile(&self, bytes: &[u8]) -> Result<Artifact, RuntimeError> {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(a) = self.cache().by_digest(&digest) {
            return Ok(a);
        }
        let flight = self
            .compiling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(digest)
            .or_default()
            .clone();
        let result = {
            let _only = flight.lock().unwrap_or_else(|e| e.into_inner());
            // (The cache guard must not outlive the lookup: the miss arm locks it.)
            let cached = self.cache().by_digest(&digest);
            match cached {
                Some(a) => Ok(a),
                None => self
                    .compile_uncached(bytes, &digest)
                    .map(|artifact| self.cache().insert(artifact, Some(digest)).artifact.clone()),
            }
        };
        let mut compiling = self.compiling.lock().unwrap_or_else(|e| e.into_inner());
        // The last one out removes the lock (the map holds one reference).
        if Arc::strong_count(&flight) <= 2 {
            compiling.remove(&digest);
        }
        result
    }

    /// The artifact compiled earlier from the bytes whose SHA-256 is `digest`, if the
    /// cache still holds it: a content-addressed image finds its code without its
    /// file being read and hashed again.
    pub fn cached(&self, digest: &[u8; 32]) -> Option<Artifact> {
        self.cache().by_digest(digest)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, ArtifactCache> {
        self.artifacts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pre-resolved instantiation of `artifact` kept in `slot` of its cache entry,
    /// made by `make` the first time (and again after the entry was evicted). An
    /// artifact this engine's [`compile`](Self::compile) did not return (or one
    /// evicted since) gets an entry of its own.
    pub(crate) fn prepared<P: Clone, E>(
        &self,
        artifact: &Artifact,
        slot: impl FnOnce(&Prepared) -> &OnceLock<P>,
        make: impl FnOnce() -> Result<P, E>,
    ) -> Result<P, E> {
        let entry = {
            let mut cache = self.cache();
            match cache.by_code(artifact) {
                Some(e) => e,
                None => cache.insert(artifact.clone(), None),
            }
        };
        // Outside the lock: resolving imports takes microseconds to milliseconds.
        let cell = slot(&entry.prepared);
        if let Some(p) = cell.get() {
            return Ok(p.clone());
        }
        // Errors are not cached (they only happen for a workload of the wrong kind,
        // which fails to start anyway). Two first starts racing both resolve; one
        // result is kept.
        let p = make()?;
        let _ = cell.set(p.clone());
        Ok(p)
    }

    fn compile_uncached(&self, bytes: &[u8], digest: &[u8; 32]) -> Result<Artifact, RuntimeError> {
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
        let cached = self.cache_path(digest);
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

/// Pre-resolved instantiations of one artifact, one per way of running it, each made
/// on first use with the engine's linker for that way (the same linkers `run` and
/// `serve` use, so the host state types match).
#[derive(Default)]
pub(crate) struct Prepared {
    pub(crate) p1: OnceLock<wasmtime::InstancePre<crate::container::p1::Host>>,
    pub(crate) command:
        OnceLock<wasmtime_wasi::p2::bindings::CommandPre<crate::container::component::Host>>,
    pub(crate) proxy: OnceLock<wasmtime_wasi_http::p2::bindings::ProxyPre<crate::http::Host>>,
}

pub(crate) struct CacheEntry {
    pub(crate) artifact: Artifact,
    pub(crate) prepared: Prepared,
}

/// The most images whose compiled code the in-process cache keeps.
const ARTIFACT_CACHE_ENTRIES: usize = 512;
/// The most compiled code (bytes of images) it keeps, beyond the entry last used.
const ARTIFACT_CACHE_BYTES: usize = 1 << 30;

/// The in-process artifact cache: compiled artifacts by digest of the bytes they were
/// compiled from, and by the address of their code (which is how `run` and `serve`,
/// given an artifact, find its pre-resolved instantiations).
///
/// Bounded, least recently used out: at most [`ARTIFACT_CACHE_ENTRIES`] images and
/// [`ARTIFACT_CACHE_BYTES`] of code. Entries are strong references: wasmtime has no
/// weak handle on a `Module`/`Component`, so the cache cannot tell when the last
/// container of an image has gone; an image no container uses any more keeps its
/// code mapped until it ages out (from the disk cache these are mostly clean,
/// file-backed pages the kernel can reclaim). Evicting an entry in use costs nothing
/// but sharing: running containers hold their own clones, and the next compile of
/// those bytes maps a new copy.
///
/// Keying by code address is sound because an entry holds its artifact: while it is
/// in the cache, its code stays mapped and no other artifact can be given that
/// address.
#[derive(Default)]
pub(crate) struct ArtifactCache {
    /// By code address.
    entries: HashMap<usize, Slot>,
    digests: HashMap<[u8; 32], usize>,
    bytes: usize,
    clock: u64,
}

struct Slot {
    entry: Arc<CacheEntry>,
    /// The digest of the bytes it was compiled from, if it came from `compile`.
    digest: Option<[u8; 32]>,
    last_used: u64,
}

fn code_range(artifact: &Artifact) -> std::ops::Range<*const u8> {
    match artifact {
        Artifact::Module(m) => m.image_range(),
        Artifact::Component(c) => c.image_range(),
    }
}

fn same_code(a: &Artifact, b: &Artifact) -> bool {
    match (a, b) {
        (Artifact::Module(a), Artifact::Module(b)) => Module::same(a, b),
        (Artifact::Component(a), Artifact::Component(b)) => a.image_range() == b.image_range(),
        _ => false,
    }
}

impl ArtifactCache {
    fn touch(&mut self, key: usize) -> Option<Arc<CacheEntry>> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(&key).map(|slot| {
            slot.last_used = clock;
            slot.entry.clone()
        })
    }

    fn by_digest(&mut self, digest: &[u8; 32]) -> Option<Artifact> {
        let key = *self.digests.get(digest)?;
        self.touch(key).map(|e| e.artifact.clone())
    }

    fn by_code(&mut self, artifact: &Artifact) -> Option<Arc<CacheEntry>> {
        let key = code_range(artifact).start as usize;
        let e = self.touch(key)?;
        same_code(&e.artifact, artifact).then_some(e)
    }

    /// Adds `artifact` (or returns the entry already there for its digest or code),
    /// evicting the least recently used entries beyond the bounds.
    fn insert(&mut self, artifact: Artifact, digest: Option<[u8; 32]>) -> Arc<CacheEntry> {
        if let Some(d) = &digest {
            if let Some(&key) = self.digests.get(d) {
                if let Some(e) = self.touch(key) {
                    return e;
                }
            }
        }
        if let Some(e) = self.by_code(&artifact) {
            return e;
        }
        let range = code_range(&artifact);
        let key = range.start as usize;
        let size = (range.end as usize).saturating_sub(key);
        self.clock += 1;
        let entry = Arc::new(CacheEntry {
            artifact,
            prepared: Prepared::default(),
        });
        // An entry's artifact keeps its code mapped, so no stale entry can hold this
        // address; should one anyway, it goes rather than be shadowed.
        self.remove(key);
        if let Some(d) = digest {
            self.digests.insert(d, key);
        }
        let last_used = self.clock;
        self.entries.insert(
            key,
            Slot {
                entry: entry.clone(),
                digest,
                last_used,
            },
        );
        self.bytes += size;
        while self.entries.len() > ARTIFACT_CACHE_ENTRIES
            || (self.bytes > ARTIFACT_CACHE_BYTES && self.entries.len() > 1)
        {
            let Some((&oldest, _)) = self.entries.iter().min_by_key(|(_, slot)| slot.last_used)
            else {
                break;
            };
            self.remove(oldest);
        }
        entry
    }

    fn remove(&mut self, key: usize) {
        if let Some(Slot { entry, digest, .. }) = self.entries.remove(&key) {
            let r = code_range(&entry.artifact);
            self.bytes = self
                .bytes
                .saturating_sub((r.end as usize).saturating_sub(r.start as usize));
            if let Some(d) = digest {
                self.digests.remove(&d);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULE: &str = r#"(module (func (export "_start")))"#;
    const COMPONENT: &str = r#"(component (core module (func (export "f"))))"#;

    fn engine(cache_dir: Option<&Path>) -> WasmEngine {
        WasmEngine::with_allocation(cache_dir, Allocation::OnDemand).unwrap()
    }

    fn shares_code(a: &Artifact, b: &Artifact) -> bool {
        same_code(a, b) && code_range(a) == code_range(b)
    }

    #[test]
    fn compiling_the_same_bytes_again_shares_the_code() {
        let dir = tempfile::tempdir().unwrap();
        for cache_dir in [None, Some(dir.path())] {
            let engine = engine(cache_dir);
            for src in [MODULE, COMPONENT] {
                let a = engine.compile(src.as_bytes()).unwrap();
                let b = engine.compile(src.as_bytes()).unwrap();
                assert!(shares_code(&a, &b), "{src} with cache dir {cache_dir:?}");
                // A clone of the engine shares the cache too.
                let c = engine.clone().compile(src.as_bytes()).unwrap();
                assert!(shares_code(&a, &c));
            }
            let (m, c) = (
                engine.compile(MODULE.as_bytes()).unwrap(),
                engine.compile(COMPONENT.as_bytes()).unwrap(),
            );
            assert!(!shares_code(&m, &c));
            assert_eq!(engine.cache().len(), 2);
        }
        // A second engine (a new process, say) loads from the disk cache: its own copy.
        let a = engine(Some(dir.path())).compile(MODULE.as_bytes()).unwrap();
        let b = engine(Some(dir.path())).compile(MODULE.as_bytes()).unwrap();
        assert!(!shares_code(&a, &b));
    }

    #[test]
    fn pre_instances_are_made_once_per_artifact() {
        let engine = engine(None);
        let a = engine.compile(MODULE.as_bytes()).unwrap();
        let made = std::sync::atomic::AtomicUsize::new(0);
        let make = || {
            made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Artifact::Module(m) = &a else {
                unreachable!()
            };
            engine.linkers().p1.instantiate_pre(m)
        };
        engine.prepared(&a, |p| &p.p1, make).unwrap();
        let again = engine.compile(MODULE.as_bytes()).unwrap();
        engine.prepared(&again, |p| &p.p1, make).unwrap();
        assert_eq!(made.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn least_recently_used_entries_go_beyond_the_bound() {
        let engine = engine(None);
        let first = engine.compile(b"(module (func (export \"f0\")))").unwrap();
        for i in 1..=ARTIFACT_CACHE_ENTRIES {
            if i % 100 == 0 {
                // Used recently: stays.
                let again = engine.compile(b"(module (func (export \"f0\")))").unwrap();
                assert!(shares_code(&first, &again));
            }
            engine
                .compile(format!("(module (func (export \"f{i}\")))").as_bytes())
                .unwrap();
        }
        assert_eq!(engine.cache().len(), ARTIFACT_CACHE_ENTRIES);
        let again = engine.compile(b"(module (func (export \"f0\")))").unwrap();
        assert!(shares_code(&first, &again));
        assert_eq!(engine.cache().len(), ARTIFACT_CACHE_ENTRIES);
        // f1 was the least recently used one: evicted.
        let mut cache = engine.cache();
        let f1: [u8; 32] = Sha256::digest(b"(module (func (export \"f1\")))").into();
        assert!(cache.by_digest(&f1).is_none());
    }
}
