//! `wasi:sockets/ip-name-lookup` answered by the pod's resolver: a module resolving
//! `web.default.svc.cluster.local` (or `web`, through the pod's search domains) gets
//! the Service's address from cluster DNS, as a Linux container's libc would, instead
//! of the host's resolver, which knows nothing of the cluster. Names the pod's DNS
//! leaves to the system (see [`PodResolver::lookup`]) go to the system resolver, as
//! wasmtime-wasi's own implementation does for every name.
//!
//! Names are taken as ASCII (A-labels): unlike wasmtime-wasi, a Unicode name is not
//! converted to punycode (the pod's resolver refuses it as `invalid-argument`; the
//! system resolver does not find it).
//!
//! wasmtime-wasi's implementation has no resolver hook, so this one shadows the whole
//! interface in the component linkers: `resolve-addresses` and the
//! `resolve-address-stream` resource with its methods.

use std::net::IpAddr;
use std::sync::Arc;
use std::task::Poll;

use wasmtime::component::{Linker, Resource, ResourceType};
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddress};
use wasmtime_wasi::p2::{DynPollable, Network, Pollable};
use wasmtime_wasi::WasiView;

use crate::dns::{LookupError, PodResolver};

/// The interface as wasmtime-wasi's bindings name it (guests importing any 0.2.x
/// version are linked to it).
const INTERFACE: &str = "wasi:sockets/ip-name-lookup@0.2.12";

/// Store data whose name lookups follow the pod's DNS.
pub(crate) trait PodNames: WasiView {
    /// Whether the container may look names up at all, and the pod's resolver
    /// (`None`: the system resolver only).
    fn pod_names(&self) -> (bool, Option<Arc<PodResolver>>);
}

type Lookup = Result<Vec<IpAddr>, ErrorCode>;

/// A lookup in flight (its task) or done (the addresses not handed out yet).
pub struct AddressStream {
    pending: Option<tokio::task::JoinHandle<Lookup>>,
    done: Option<Result<std::vec::IntoIter<IpAddr>, ErrorCode>>,
}

impl AddressStream {
    fn settle(&mut self, result: Result<Lookup, tokio::task::JoinError>) {
        self.pending = None;
        self.done = Some(match result {
            Ok(r) => r.map(Vec::into_iter),
            Err(_) => Err(ErrorCode::PermanentResolverFailure),
        });
    }

    /// Completes the lookup if its task has finished, without waiting.
    fn poll_now(&mut self) {
        if let Some(task) = self.pending.as_mut() {
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            if let Poll::Ready(r) = std::future::Future::poll(std::pin::Pin::new(task), &mut cx) {
                self.settle(r);
            }
        }
    }
}

#[async_trait::async_trait]
impl Pollable for AddressStream {
    async fn ready(&mut self) {
        if let Some(task) = self.pending.as_mut() {
            let r = task.await;
            self.settle(r);
        }
    }
}

async fn resolve(name: String, resolver: Option<Arc<PodResolver>>) -> Lookup {
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    if let Some(r) = resolver {
        match r.lookup(&name).await {
            Ok(Some(ips)) => return Ok(ips),
            Ok(None) => {}
            Err(LookupError::BadName(_)) => return Err(ErrorCode::InvalidArgument),
            Err(LookupError::NotFound(_)) => return Err(ErrorCode::NameUnresolvable),
            Err(LookupError::Unavailable(_)) => return Err(ErrorCode::TemporaryResolverFailure),
        }
    }
    if name.is_empty() || name.contains(['/', ' ', ':']) {
        return Err(ErrorCode::InvalidArgument);
    }
    match tokio::net::lookup_host((name.as_str(), 0)).await {
        Ok(addrs) => Ok(addrs.map(|a| a.ip().to_canonical()).collect()),
        Err(_) => Err(ErrorCode::NameUnresolvable),
    }
}

/// Replaces wasmtime-wasi's `ip-name-lookup` in `linker` (which must already hold the
/// WASI interfaces: `network` and `pollable` come from there).
pub(crate) fn add_to_linker<T: PodNames + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut inst = linker.instance(INTERFACE)?;
    inst.resource(
        "resolve-address-stream",
        ResourceType::host::<AddressStream>(),
        |mut store, rep| {
            store
                .data_mut()
                .ctx()
                .table
                .delete(Resource::<AddressStream>::new_own(rep))?;
            Ok(())
        },
    )?;
    inst.func_wrap(
        "resolve-addresses",
        |mut store, (network, name): (Resource<Network>, String)| {
            let (allowed, resolver) = store.data().pod_names();
            let view = store.data_mut().ctx();
            // The network resource is the capability to look names up.
            view.table.get(&network)?;
            if !allowed {
                return Ok((Err(ErrorCode::PermanentResolverFailure),));
            }
            let stream = AddressStream {
                pending: Some(tokio::spawn(resolve(name, resolver))),
                done: None,
            };
            Ok((Ok(view.table.push(stream)?),))
        },
    )?;
    inst.func_wrap(
        "[method]resolve-address-stream.resolve-next-address",
        |mut store, (stream,): (Resource<AddressStream>,)| {
            let view = store.data_mut().ctx();
            let stream = view.table.get_mut(&stream)?;
            stream.poll_now();
            let r: Result<Option<IpAddress>, ErrorCode> = match &mut stream.done {
                None => Err(ErrorCode::WouldBlock),
                Some(Ok(addrs)) => Ok(addrs.next().map(IpAddress::from)),
                Some(Err(e)) => Err(*e),
            };
            Ok((r,))
        },
    )?;
    inst.func_wrap(
        "[method]resolve-address-stream.subscribe",
        |mut store, (stream,): (Resource<AddressStream>,)| {
            let view = store.data_mut().ctx();
            let p: Resource<DynPollable> = wasmtime_wasi::p2::subscribe(view.table, stream)?;
            Ok((p,))
        },
    )?;
    Ok(())
}
