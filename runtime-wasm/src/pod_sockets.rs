//! wasi-sockets on the pod's address: a Wasm pod has no network namespace, so what
//! a Linux pod gets from its own interface the runtime does when the guest binds and
//! connects.
//!
//! - A TCP or UDP socket bound to the unspecified address (`0.0.0.0`/`::`) on a
//!   given port — a server — is bound to the pod's address instead: the pod is
//!   reached on its IP as its endpoints say, and two pods on one node can serve the
//!   same port. A bind to port 0 (a client choosing its source port) is left alone:
//!   the connection it is for may go outside the cluster, which a pod address
//!   cannot reach (nothing masquerades it).
//! - A TCP connect on a socket nobody bound leaves from the pod's address when the
//!   destination is in the cluster's pod networks or on this node, as outgoing
//!   wasi:http requests do ([`crate::outbound::Origin::source_for`]).
//!
//! wasmtime-wasi has no hook for either, so these functions shadow its
//! `start-bind`/`start-connect` in the component linkers and call its own
//! implementation with the address changed.

use std::net::{IpAddr, SocketAddr};

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpSocketAddress};
use wasmtime_wasi::p2::bindings::sockets::{tcp::HostTcpSocket, udp::HostUdpSocket};
use wasmtime_wasi::p2::{Network, SocketError, TcpSocket, UdpSocket};
use wasmtime_wasi::sockets::WasiSocketsView;

use crate::outbound::Origin;

const TCP: &str = "wasi:sockets/tcp@0.2.12";
const UDP: &str = "wasi:sockets/udp@0.2.12";

/// Store data that knows its pod's address.
pub(crate) trait PodAddress: WasiSocketsView + 'static {
    /// Where the pod's connections come from (`None`: the node's addresses).
    fn origin(&self) -> Option<Origin>;
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
                let local = bind_address(origin.as_ref(), local.into());
                let mut view = store.data_mut().sockets();
                let r = HostUdpSocket::start_bind(&mut view, this, network, local.into()).await;
                Ok((answer(r)?,))
            })
        },
    )?;
    Ok(())
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
