//! WASI preview 1 command modules: `_start` with the `wasi_snapshot_preview1`
//! imports.

use wasmtime::{InstancePre, Linker, Module, Store};
use wasmtime_wasi::p1::WasiP1Ctx;

use super::{configure_store, exit_status, open_log, wasi_builder, Limited, MemoryLimit};
use super::{ContainerSpec, ExitStatus, StopHandle};
use crate::engine::WasmEngine;
use crate::RuntimeError;

/// The store data of a preview 1 container.
pub struct Host {
    wasi: WasiP1Ctx,
    limits: MemoryLimit,
}

impl Limited for Host {
    fn limits(&mut self) -> &mut MemoryLimit {
        &mut self.limits
    }
}

pub(crate) fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<Host>> {
    let mut linker: Linker<Host> = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |h: &mut Host| &mut h.wasi)?;
    Ok(linker)
}

/// The module's imports resolved against the engine's WASI linker: once per
/// compiled module (cached with it by the engine), not once per start.
fn pre(engine: &WasmEngine, module: &Module) -> wasmtime::Result<InstancePre<Host>> {
    let artifact = super::Artifact::Module(module.clone());
    engine.prepared(
        &artifact,
        |p| &p.p1,
        || engine.linkers().p1.instantiate_pre(module),
    )
}

/// Runs the module's `_start` to completion, a trap, the memory limit or a stop.
pub async fn run(
    engine: &WasmEngine,
    module: &Module,
    spec: &ContainerSpec,
    stop: &StopHandle,
) -> Result<ExitStatus, RuntimeError> {
    let log = open_log(spec)?;
    let host = Host {
        wasi: wasi_builder(spec, &log)?.build_p1(),
        limits: MemoryLimit::for_spec(spec),
    };
    let mut store = Store::new(engine.engine(), host);
    configure_store(&mut store, spec, stop, None);
    let result = async {
        let instance = pre(engine, module)?.instantiate_async(&mut store).await?;
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
        start.call_async(&mut store, ()).await
    }
    .await;
    let _ = log.finish();
    Ok(exit_status(result, store.data().limits.exceeded(), stop))
}
