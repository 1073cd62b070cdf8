//! One wasmtime engine per node, with an epoch ticker for preemption and stop
//! requests, and a compiled-module cache keyed by the module's digest and the engine's
//! compatibility hash, so a warm start maps a file instead of compiling.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tracing::{debug, warn};
use wasmtime::{Config, Engine, Module};

use crate::RuntimeError;

/// How often the epoch advances: the granularity of preemption and of stop requests.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

#[derive(Clone)]
pub struct WasmEngine {
    engine: Engine,
    cache_dir: Option<PathBuf>,
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
    /// A new engine; compiled modules are cached under `cache_dir` when given.
    pub fn new(cache_dir: Option<&Path>) -> Result<Self, RuntimeError> {
        let mut cfg = Config::new();
        cfg.epoch_interruption(true);
        cfg.wasm_multi_memory(true);
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
        Ok(WasmEngine {
            engine,
            cache_dir: cache_dir.map(Path::to_path_buf),
            _ticker: Arc::new(Ticker { stop }),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn cache_path(&self, bytes: &[u8]) -> Option<PathBuf> {
        let dir = self.cache_dir.as_ref()?;
        let digest = Sha256::digest(bytes);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Some(dir.join(format!("{hex}-{:016x}.cwasm", h.finish())))
    }

    /// Compiles `bytes` (binary or text format), or loads the cached compilation.
    pub fn compile(&self, bytes: &[u8]) -> Result<Module, RuntimeError> {
        let cached = self.cache_path(bytes);
        if let Some(path) = &cached {
            if path.exists() {
                // SAFETY: the file was written by `Module::serialize` of an engine with the
                // same compatibility hash (part of its name), into a directory only this
                // runtime writes; a truncated file fails to load and is recompiled.
                #[allow(unsafe_code)]
                match unsafe { Module::deserialize_file(&self.engine, path) } {
                    Ok(m) => {
                        debug!(path = %path.display(), "module loaded from the compile cache");
                        return Ok(m);
                    }
                    Err(e) => {
                        warn!(path = %path.display(), error = %e, "unusable cached module; recompiling")
                    }
                }
            }
        }
        let module = Module::new(&self.engine, bytes)
            .map_err(|e| RuntimeError::InvalidModule(format!("{e:#}")))?;
        if let Some(path) = cached {
            match module.serialize() {
                Ok(data) => {
                    let tmp = path.with_extension("tmp");
                    if std::fs::write(&tmp, data)
                        .and_then(|_| std::fs::rename(&tmp, &path))
                        .is_err()
                    {
                        warn!(path = %path.display(), "could not write the compile cache");
                    }
                }
                Err(e) => warn!(error = %e, "could not serialize a compiled module"),
            }
        }
        Ok(module)
    }
}
