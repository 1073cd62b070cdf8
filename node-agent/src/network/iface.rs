//! The interface holding pod and Service addresses (`kelp0`), managed over netlink.
//!
//! Wasm pods have no network namespace: their address is a local address of the host,
//! a /32 on this interface, so the kernel delivers traffic for it to sockets bound on
//! it. A `dummy` link is the natural holder; kernels built without the dummy driver get
//! a port-less bridge instead (addresses behave the same). Several agents on one
//! machine share the interface: every change is idempotent and each agent only touches
//! addresses within its own ranges.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::{Handle, LinkBridge, LinkDummy, LinkUnspec};

/// The default interface name.
pub const DEFAULT_INTERFACE: &str = "kelp0";

const EPERM: i32 = 1;
const ENOENT: i32 = 2;
const EEXIST: i32 = 17;
const EOPNOTSUPP: i32 = 95;
const EADDRNOTAVAIL: i32 = 99;

#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    /// The agent lacks CAP_NET_ADMIN.
    #[error("not permitted to manage network interfaces (CAP_NET_ADMIN)")]
    NotPermitted,
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("cannot open a netlink socket: {0}")]
    Socket(std::io::Error),
}

/// The errno of a netlink failure (the kernel reports it negated).
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        // The kernel reports negative errnos.
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

fn nl(e: rtnetlink::Error) -> IfaceError {
    if errno(&e) == Some(EPERM) {
        IfaceError::NotPermitted
    } else {
        IfaceError::Netlink(e.to_string())
    }
}

/// A handle on the address interface.
#[derive(Clone)]
pub struct PodInterface {
    handle: Handle,
    index: u32,
    name: String,
}

impl std::fmt::Debug for PodInterface {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodInterface")
            .field("name", &self.name)
            .field("index", &self.index)
            .finish()
    }
}

impl PodInterface {
    /// Finds or creates interface `name` and brings it up.
    pub async fn ensure(name: &str) -> Result<Self, IfaceError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(IfaceError::Socket)?;
        tokio::spawn(conn);
        let index = match Self::find(&handle, name).await? {
            Some(i) => i,
            None => {
                let added = handle
                    .link()
                    .add(LinkDummy::new(name).build())
                    .execute()
                    .await;
                match added {
                    Ok(()) => {}
                    Err(e) if errno(&e) == Some(EEXIST) => {}
                    // No dummy driver in this kernel: a bridge without ports holds
                    // local addresses just as well.
                    Err(e) if errno(&e) == Some(EOPNOTSUPP) => {
                        let r = handle
                            .link()
                            .add(LinkBridge::new(name).build())
                            .execute()
                            .await;
                        match r {
                            Ok(()) => {}
                            Err(e) if errno(&e) == Some(EEXIST) => {}
                            Err(e) => return Err(nl(e)),
                        }
                    }
                    Err(e) => return Err(nl(e)),
                }
                Self::find(&handle, name)
                    .await?
                    .ok_or_else(|| IfaceError::Netlink(format!("{name} vanished after creation")))?
            }
        };
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl)?;
        Ok(PodInterface {
            handle,
            index,
            name: name.to_string(),
        })
    }

    async fn find(handle: &Handle, name: &str) -> Result<Option<u32>, IfaceError> {
        let mut links = handle.link().get().match_name(name.to_string()).execute();
        match links.try_next().await {
            Ok(Some(l)) => Ok(Some(l.header.index)),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(19) /* ENODEV */ => Ok(None),
            Err(e) => Err(nl(e)),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds `ip` as a host address (/32 or /128). Already present is fine.
    pub async fn add(&self, ip: IpAddr) -> Result<(), IfaceError> {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        match self
            .handle
            .address()
            .add(self.index, ip, prefix)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(nl(e)),
        }
    }

    /// Removes `ip` from the interface. Already absent is fine.
    pub async fn remove(&self, ip: IpAddr) -> Result<(), IfaceError> {
        let mut found = self
            .handle
            .address()
            .get()
            .set_link_index_filter(self.index)
            .set_address_filter(ip)
            .execute();
        while let Some(msg) = found.try_next().await.map_err(nl)? {
            match self.handle.address().del(msg).execute().await {
                Ok(()) => {}
                Err(e) if matches!(errno(&e), Some(EADDRNOTAVAIL | ENOENT)) => {}
                Err(e) => return Err(nl(e)),
            }
        }
        Ok(())
    }

    /// An `unreachable` route for `range` in the main table (local /32s win: they are
    /// in the local table). Already present is fine.
    pub async fn unreachable_route(&self, range: ipnet::Ipv4Net) -> Result<(), IfaceError> {
        let route = rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(range.network(), range.prefix_len())
            .kind(rtnetlink::packet_route::route::RouteType::Unreachable)
            .build();
        match self.handle.route().add(route).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(nl(e)),
        }
    }

    /// Every address on the interface.
    pub async fn addresses(&self) -> Result<Vec<IpAddr>, IfaceError> {
        let mut out = vec![];
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(self.index)
            .execute();
        while let Some(msg) = s.try_next().await.map_err(nl)? {
            for a in &msg.attributes {
                if let AddressAttribute::Address(ip) = a {
                    out.push(*ip);
                }
            }
        }
        Ok(out)
    }

    /// Deletes the interface (tests and `kelp` uninstall paths).
    pub async fn delete(self) -> Result<(), IfaceError> {
        match self.handle.link().del(self.index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(ENOENT | 19)) => Ok(()),
            Err(e) => Err(nl(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs CAP_NET_ADMIN (CI runs as root); skipped with a message otherwise.
    #[tokio::test]
    async fn add_remove_idempotent_on_a_real_interface() {
        let name = format!("kelpt{}", std::process::id() % 100_000);
        let i = match PodInterface::ensure(&name).await {
            Ok(i) => i,
            Err(IfaceError::NotPermitted) => {
                eprintln!("skipped: no CAP_NET_ADMIN");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        // A second agent finding the same interface.
        let again = PodInterface::ensure(&name).await.unwrap();
        assert_eq!(again.index, i.index);
        let ip: IpAddr = "10.250.7.9".parse().unwrap();
        i.add(ip).await.unwrap();
        again.add(ip).await.unwrap();
        assert!(i.addresses().await.unwrap().contains(&ip));
        // The kernel now answers for it: a listener binds there.
        let l = std::net::TcpListener::bind((ip, 0)).unwrap();
        drop(l);
        i.remove(ip).await.unwrap();
        again.remove(ip).await.unwrap();
        assert!(!i.addresses().await.unwrap().contains(&ip));
        i.delete().await.unwrap();
        again.delete().await.unwrap();
    }
}
