//! WASI preview 2 command components: `wasi:cli/run.run` with the `wasi:cli/command`
//! world's imports.

use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::Store;
use wasmtime_wasi::p2::bindings::{Command, CommandPre};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::{configure_store, exit_status, open_log, wasi_builder, Limited, MemoryLimit};
use super::{ContainerSpec, ExitStatus, StopHandle};
use crate::engine::WasmEngine;
use crate::RuntimeError;

/// The store data of a preview 2 container.
pub struct Host {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: MemoryLimit,
    /// Whether names may be looked up, and the pod's resolver.
    names: (bool, Option<std::sync::Arc<crate::dns::PodResolver>>),
    origin: Option<crate::outbound::Origin>,
    deferred_binds: crate::pod_sockets::DeferredBinds,
}

impl crate::pod_sockets::PodAddress for Host {
    fn origin(&self) -> Option<crate::outbound::Origin> {
        self.origin.clone()
    }

    fn deferred_binds(&mut self) -> &mut crate::pod_sockets::DeferredBinds {
        &mut self.deferred_binds
    }
}

impl crate::name_lookup::PodNames for Host {
    fn pod_names(&self) -> (bool, Option<std::sync::Arc<crate::dns::PodResolver>>) {
        self.names.clone()
    }
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl Limited for Host {
    fn limits(&mut self) -> &mut MemoryLimit {
        &mut self.limits
    }
}

pub(crate) fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<Host>> {
    let mut linker: Linker<Host> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    crate::name_lookup::add_to_linker(&mut linker)?;
    crate::pod_sockets::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// The component's imports resolved against the engine's WASI linker and its
/// `wasi:cli/run` export looked up: once per compiled component (cached with it by
/// the engine), not once per start.
fn command_pre(
    engine: &WasmEngine,
    component: &Component,
) -> Result<CommandPre<Host>, RuntimeError> {
    let artifact = super::Artifact::Component(component.clone());
    let make = || {
        let pre = engine
            .linkers()
            .p2
            .instantiate_pre(component)
            .map_err(|e| {
                RuntimeError::Setup(format!(
                    "not a runnable command component ({NOT_COMMAND}): {e:#}"
                ))
            })?;
        CommandPre::new(pre).map_err(|e| {
            RuntimeError::Setup(format!(
                "not a wasi:cli/command component (it does not export wasi:cli/run): {e:#}"
            ))
        })
    };
    engine.prepared(&artifact, |p| &p.command, make)
}

const NOT_COMMAND: &str = "serve wasi:http components instead";

/// Runs the component's `wasi:cli/run.run` to completion, a trap, the memory limit
/// or a stop. `run` returning `err` is exit code 1, as `wasi:cli/exit.exit(err)`.
pub async fn run(
    engine: &WasmEngine,
    component: &Component,
    spec: &ContainerSpec,
    stop: &StopHandle,
) -> Result<ExitStatus, RuntimeError> {
    let log = open_log(spec)?;
    let host = Host {
        wasi: wasi_builder(spec, &log)?.build(),
        table: ResourceTable::new(),
        limits: MemoryLimit::for_spec(spec),
        names: (spec.allow_network, spec.resolver.clone()),
        origin: spec.origin.clone(),
        deferred_binds: Default::default(),
    };
    let mut store = Store::new(engine.engine(), host);
    configure_store(&mut store, spec, stop, None);
    let pre = command_pre(engine, component)?;
    let result = async {
        let command: Command = pre.instantiate_async(&mut store).await?;
        match command.wasi_cli_run().call_run(&mut store).await? {
            Ok(()) => Ok(()),
            Err(()) => Err(wasmtime::Error::new(wasmtime_wasi::I32Exit(1))),
        }
    }
    .await;
    let _ = log.finish();
    Ok(exit_status(result, store.data().limits.exceeded(), stop))
}
