//! wasi-sockets on the pod's address: a Wasm pod has no network namespace, so what
//! a Linux pod gets from its own interface the runtime does when the guest binds and
//! connects.
//!
//! - A TCP or UDP socket bound to the unspecified address (`0.0.0.0`/`::`) on a
//!   given port — a server — is bound to the pod's address instead: the pod is
//!   reached on its IP as its endpoints say, and two pods on one node can serve the
//!   same port. A TCP bind to port 0 (a client choosing its source port) is left
//!   alone: the connection it is for may go outside the cluster, which a pod address
//!   cannot reach (nothing masquerades it).
//! - A UDP socket bound to `0.0.0.0:0`/`[::]:0` (wasi-libc binds so before every
//!   UDP `connect` or `sendto`) is bound when the guest streams it: to the pod's
//!   address when it connects to the cluster's pod networks or this node, as TCP, else
//!   to the unspecified address as asked. Until then the bind is only recorded
//!   ([`DeferredBinds`]); asking the socket's local address settles it as asked.
//! - A TCP connect on a socket nobody bound leaves from the pod's address when the
//!   destination is in the cluster's pod networks or on this node, as outgoing
//!   wasi:http requests do ([`crate::outbound::Origin::source_for`]).
//!
//! wasmtime-wasi has no hook for either, so these functions shadow its
//! `start-bind`/`start-connect` in the component linkers and call its own
//! implementation with the address changed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddressFamily, IpSocketAddress};
use wasmtime_wasi::p2::bindings::sockets::udp::{IncomingDatagramStream, OutgoingDatagramStream};
use wasmtime_wasi::p2::bindings::sockets::{tcp::HostTcpSocket, udp::HostUdpSocket};
use wasmtime_wasi::p2::{Network, SocketError, TcpSocket, UdpSocket};
use wasmtime_wasi::sockets::WasiSocketsView;

use crate::outbound::Origin;

const TCP: &str = "wasi:sockets/tcp@0.2.12";
const UDP: &str = "wasi:sockets/udp@0.2.12";
const UDP_CREATE: &str = "wasi:sockets/udp-create-socket@0.2.12";

/// UDP binds to `0.0.0.0:0`/`[::]:0` not made yet, by socket handle: the address
/// asked for, and whether `finish-bind` was called.
#[derive(Default)]
pub(crate) struct DeferredBinds(HashMap<u32, (SocketAddr, bool)>);

/// Store data that knows its pod's address.
pub(crate) trait PodAddress: WasiSocketsView + 'static {
    /// Where the pod's connections come from (`None`: the node's addresses).
    fn origin(&self) -> Option<Origin>;
    /// The store's UDP binds not made yet.
    fn deferred_binds(&mut self) -> &mut DeferredBinds;
}

/// The address to bind for a guest's bind to `local`.
fn bind_address(origin: Option<&Origin>, local: SocketAddr) -> SocketAddr {
    match origin {
        Some(o)
            if local.ip().is_unspecified()
                && local.port() != 0
                && !o.ip.is_unspecified()
                && o.ip.is_ipv4() == local.is_ipv4() =>
        {
            SocketAddr::new(o.ip, local.port())
        }
        _ => local,
    }
}

/// The guest's answer: an error code, or a trap for what is not one (a bad handle).
fn answer(r: Result<(), SocketError>) -> wasmtime::Result<Result<(), ErrorCode>> {
    match r {
        Ok(()) => Ok(Ok(())),
        Err(e) => Ok(Err(e.downcast()?)),
    }
}

/// Replaces wasmtime-wasi's TCP and UDP `start-bind` and TCP `start-connect` in
/// `linker` (which must already hold the WASI interfaces).
pub(crate) fn add_to_linker<T: PodAddress>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut tcp = linker.instance(TCP)?;
    tcp.func_wrap_async(
        "[method]tcp-socket.start-bind",
        |mut store,
         (this, network, local): (Resource<TcpSocket>, Resource<Network>, IpSocketAddress)| {
            Box::new(async move {
                let origin = store.data().origin();
                let local = bind_address(origin.as_ref(), local.into());
                let mut view = store.data_mut().sockets();
                let r = HostTcpSocket::start_bind(&mut view, this, network, local.into()).await;
                Ok((answer(r)?,))
            })
        },
    )?;
    tcp.func_wrap_async(
        "[method]tcp-socket.start-connect",
        |mut store,
         (this, network, remote): (Resource<TcpSocket>, Resource<Network>, IpSocketAddress)| {
            Box::new(async move {
                let origin = store.data().origin();
                let dest: SocketAddr = remote.into();
                let mut view = store.data_mut().sockets();
                let source = origin.as_ref().and_then(|o| o.source_for(dest.ip()));
                if let Some(src) = source {
                    let bound = HostTcpSocket::local_address(
                        &mut view,
                        Resource::new_borrow(this.rep()),
                    )
                    .is_ok();
                    if !bound {
                        bind_source(&mut view, &this, &network, src).await;
                    }
                }
                let r = HostTcpSocket::start_connect(&mut view, this, network, remote);
                Ok((answer(r)?,))
            })
        },
    )?;
    let mut udp = linker.instance(UDP)?;
    udp.func_wrap_async(
        "[method]udp-socket.start-bind",
        |mut store,
         (this, network, local): (Resource<UdpSocket>, Resource<Network>, IpSocketAddress)| {
            Box::new(async move {
                let origin = store.data().origin();
                let local: SocketAddr = local.into();
                let rep = this.rep();
                if store.data_mut().deferred_binds().0.contains_key(&rep) {
                    return Ok((Err(ErrorCode::InvalidState),));
                }
                let mut view = store.data_mut().sockets();
                // Only a client's bind of an unbound socket of the address's family
                // waits; anything else goes through now, checks and errors included.
                let defer = origin.as_ref().is_some_and(|o| o.ip.is_ipv4() == local.is_ipv4())
                    && local.ip().is_unspecified()
                    && local.port() == 0
                    && HostUdpSocket::local_address(&mut view, Resource::new_borrow(rep)).is_err()
                    && matches!(
                        (HostUdpSocket::address_family(&mut view, Resource::new_borrow(rep)), local),
                        (Ok(IpAddressFamily::Ipv4), SocketAddr::V4(_))
                            | (Ok(IpAddressFamily::Ipv6), SocketAddr::V6(_))
                    );
                if defer {
                    // A bad network handle traps, as in the real bind.
                    view.table.get(&network)?;
                    store.data_mut().deferred_binds().0.insert(rep, (local, false));
                    return Ok((Ok(()),));
                }
                let local = bind_address(origin.as_ref(), local);
                let r = HostUdpSocket::start_bind(&mut view, this, network, local.into()).await;
                Ok((answer(r)?,))
            })
        },
    )?;
    udp.func_wrap(
        "[method]udp-socket.finish-bind",
        |mut store, (this,): (Resource<UdpSocket>,)| {
            if let Some(entry) = store.data_mut().deferred_binds().0.get_mut(&this.rep()) {
                let first = !entry.1;
                entry.1 = true;
                return Ok((if first {
                    Ok(())
                } else {
                    Err(ErrorCode::NotInProgress)
                },));
            }
            let mut view = store.data_mut().sockets();
            let r = HostUdpSocket::finish_bind(&mut view, this);
            Ok((answer(r)?,))
        },
    )?;
    udp.func_wrap_async(
        "[method]udp-socket.local-address",
        |mut store, (this,): (Resource<UdpSocket>,)| {
            Box::new(async move {
                settle_bind(&mut store, this.rep(), None).await;
                let mut view = store.data_mut().sockets();
                let r = HostUdpSocket::local_address(&mut view, this);
                Ok((match r {
                    Ok(a) => Ok(a),
                    Err(e) => Err(e.downcast()?),
                },))
            })
        },
    )?;
    udp.func_wrap_async(
        "[method]udp-socket.stream",
        |mut store, (this, remote): (Resource<UdpSocket>, Option<IpSocketAddress>)| {
            Box::new(async move {
                let dest = remote.map(|r| SocketAddr::from(r).ip());
                settle_bind(&mut store, this.rep(), dest).await;
                let mut view = store.data_mut().sockets();
                let r: Result<
                    (
                        Resource<IncomingDatagramStream>,
                        Resource<OutgoingDatagramStream>,
                    ),
                    _,
                > = HostUdpSocket::stream(&mut view, this, remote).await;
                Ok((match r {
                    Ok(streams) => Ok(streams),
                    Err(e) => Err(e.downcast()?),
                },))
            })
        },
    )?;
    // A new socket may get the handle number of a dropped one: it starts with no
    // deferred bind.
    linker.instance(UDP_CREATE)?.func_wrap_async(
        "create-udp-socket",
        |mut store, (family,): (IpAddressFamily,)| {
            Box::new(async move {
                let mut view = store.data_mut().sockets();
                let r = wasmtime_wasi::p2::bindings::sockets::udp_create_socket::Host::create_udp_socket(
                    &mut view, family,
                )
                .await;
                match r {
                    Ok(socket) => {
                        store.data_mut().deferred_binds().0.remove(&socket.rep());
                        Ok((Ok(socket),))
                    }
                    Err(e) => Ok((Err(e.downcast()?),)),
                }
            })
        },
    )?;
    Ok(())
}

/// Makes the deferred bind of socket `rep`, if any: to the pod's address when `dest`
/// is one the pod's connections leave from it for, else as the guest asked.
async fn settle_bind<T: PodAddress>(
    store: &mut wasmtime::StoreContextMut<'_, T>,
    rep: u32,
    dest: Option<IpAddr>,
) {
    let Some((asked, _)) = store.data_mut().deferred_binds().0.remove(&rep) else {
        return;
    };
    let origin = store.data().origin();
    let local = dest
        .and_then(|d| origin.as_ref()?.source_for(d))
        .filter(|src| src.is_ipv4() == asked.is_ipv4())
        .map_or(asked, |src| SocketAddr::new(src, 0));
    let mut view = store.data_mut().sockets();
    if !bind_now(&mut view, rep, local).await && local != asked {
        // The pod's address is gone: bind as asked, as without one.
        tracing::debug!(%local, "cannot bind a UDP socket to the pod's address; binding as asked");
        bind_now(&mut view, rep, asked).await;
    }
}

/// Binds UDP socket `rep` to `local` through wasmtime-wasi (its checks included), on
/// a network handle of its own; whether it is bound.
async fn bind_now(
    view: &mut wasmtime_wasi::sockets::WasiSocketsCtxView<'_>,
    rep: u32,
    local: SocketAddr,
) -> bool {
    use wasmtime_wasi::p2::bindings::sockets::instance_network::Host as _;
    let Ok(network) = view.instance_network() else {
        return false;
    };
    let net = Resource::<Network>::new_borrow(network.rep());
    let bound =
        match HostUdpSocket::start_bind(view, Resource::new_borrow(rep), net, local.into()).await {
            Ok(()) => HostUdpSocket::finish_bind(view, Resource::new_borrow(rep)).is_ok(),
            Err(e) => {
                tracing::debug!(%local, error = ?e.downcast_ref(), "deferred UDP bind");
                false
            }
        };
    let _ = view.table.delete(network);
    bound
}

/// Binds the unbound `socket` to `src` before a connect. A failure (the address is
/// gone, the family differs) leaves the socket unbound, and the connect then leaves
/// from the node's address as it would have without a pod address.
async fn bind_source(
    view: &mut wasmtime_wasi::sockets::WasiSocketsCtxView<'_>,
    socket: &Resource<TcpSocket>,
    network: &Resource<Network>,
    src: IpAddr,
) {
    let local = SocketAddr::new(src, 0).into();
    let borrow = || Resource::<TcpSocket>::new_borrow(socket.rep());
    let net = Resource::<Network>::new_borrow(network.rep());
    match HostTcpSocket::start_bind(view, borrow(), net, local).await {
        Ok(()) => {
            if let Err(e) = HostTcpSocket::finish_bind(view, borrow()) {
                tracing::debug!(%src, error = ?e.downcast_ref(), "finishing the bind to the pod's address");
            }
        }
        Err(e) => {
            tracing::debug!(%src, error = ?e.downcast_ref(), "cannot bind the pod's address for a connect")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn origin(ip: &str) -> Origin {
        Origin {
            ip: ip.parse().unwrap(),
            cluster: Arc::from(vec!["10.42.0.0/16".parse().unwrap()]),
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn servers_bind_the_pod_address_clients_keep_theirs() {
        let o = origin("10.42.0.7");
        assert_eq!(
            bind_address(Some(&o), addr("0.0.0.0:8080")),
            addr("10.42.0.7:8080")
        );
        // A client's source port, an explicit address, another family, no pod address.
        assert_eq!(bind_address(Some(&o), addr("0.0.0.0:0")), addr("0.0.0.0:0"));
        assert_eq!(
            bind_address(Some(&o), addr("127.0.0.1:8080")),
            addr("127.0.0.1:8080")
        );
        assert_eq!(bind_address(Some(&o), addr("[::]:8080")), addr("[::]:8080"));
        assert_eq!(
            bind_address(None, addr("0.0.0.0:8080")),
            addr("0.0.0.0:8080")
        );
        assert_eq!(
            bind_address(Some(&origin("0.0.0.0")), addr("0.0.0.0:8080")),
            addr("0.0.0.0:8080")
        );
    }
}
