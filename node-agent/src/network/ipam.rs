//! Pod IP allocation within one node's range: a pure allocator ([`Allocations`]) and
//! its on-disk record ([`AllocationFile`]), so an agent restart keeps every running
//! pod's address and never hands one out twice.
//!
//! Allocation is next-fit (the search starts after the last address handed out, as
//! CNI's host-local does): an address released by a deleted pod is not reused at once,
//! so connections and endpoint lists still naming it drain before it comes back.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no free address left in {0}")]
    Exhausted(Ipv4Net),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Which pod holds which address, within `range`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocations {
    /// Where new addresses come from.
    pub range: Ipv4Net,
    /// The address handed out last (next-fit starts after it).
    #[serde(default)]
    pub last: Option<Ipv4Addr>,
    /// Pod UID → address. An address outside `range` (the range changed) stays valid
    /// for its pod until released.
    #[serde(default)]
    pub pods: BTreeMap<String, Ipv4Addr>,
}

impl Allocations {
    pub fn new(range: Ipv4Net) -> Self {
        Allocations {
            range,
            last: None,
            pods: BTreeMap::new(),
        }
    }

    /// The first usable address: the network address and the gateway (`.1`, reserved
    /// as upstream bridges do) are skipped, and so is the broadcast address.
    fn bounds(&self) -> (u32, u32) {
        let net = u32::from(self.range.network());
        let bcast = u32::from(self.range.broadcast());
        if self.range.prefix_len() >= 31 {
            return (net, bcast);
        }
        (net + 2, bcast - 1)
    }

    /// The address of pod `uid`: the one it holds, or a free one.
    pub fn allocate(&mut self, uid: &str) -> Result<Ipv4Addr, IpamError> {
        if let Some(ip) = self.pods.get(uid) {
            return Ok(*ip);
        }
        let (lo, hi) = self.bounds();
        if lo > hi {
            return Err(IpamError::Exhausted(self.range));
        }
        let taken: std::collections::HashSet<Ipv4Addr> = self.pods.values().copied().collect();
        let size = hi - lo + 1;
        let start = match self.last.map(u32::from) {
            Some(l) if (lo..=hi).contains(&l) => l - lo + 1,
            _ => 0,
        };
        for i in 0..size {
            let ip = Ipv4Addr::from(lo + (start + i) % size);
            if !taken.contains(&ip) {
                self.pods.insert(uid.to_string(), ip);
                self.last = Some(ip);
                return Ok(ip);
            }
        }
        Err(IpamError::Exhausted(self.range))
    }

    /// Frees pod `uid`'s address (None if it held none).
    pub fn release(&mut self, uid: &str) -> Option<Ipv4Addr> {
        self.pods.remove(uid)
    }

    /// Frees the address of every pod `keep` refuses; returns the freed addresses.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) -> Vec<Ipv4Addr> {
        let mut freed = vec![];
        self.pods.retain(|uid, ip| {
            let k = keep(uid);
            if !k {
                freed.push(*ip);
            }
            k
        });
        freed
    }

    /// Moves new allocations to `range`; pods keep what they hold.
    pub fn set_range(&mut self, range: Ipv4Net) {
        if self.range != range {
            self.range = range;
            self.last = None;
        }
    }
}

/// The allocations as a JSON file, replaced atomically (write + rename) on each change.
#[derive(Debug, Clone)]
pub struct AllocationFile {
    path: PathBuf,
}

impl AllocationFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        AllocationFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the file holds, or None when there is no file yet.
    pub fn load(&self) -> Result<Option<Allocations>, IpamError> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|source| IpamError::Corrupt {
                    path: self.path.clone(),
                    source,
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(IpamError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    pub fn save(&self, a: &Allocations) -> Result<(), IpamError> {
        let io = |source| IpamError::Io {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(a).expect("allocations serialize");
        std::fs::write(&tmp, body).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn skips_network_gateway_and_broadcast() {
        let mut a = Allocations::new(net("10.42.3.0/30"));
        // /30: .0 network, .1 gateway, .3 broadcast → only .2.
        assert_eq!(a.allocate("a").unwrap(), Ipv4Addr::new(10, 42, 3, 2));
        assert!(matches!(a.allocate("b"), Err(IpamError::Exhausted(_))));
    }

    #[test]
    fn same_pod_same_address_and_no_double_allocation() {
        let mut a = Allocations::new(net("10.42.3.0/24"));
        let x = a.allocate("x").unwrap();
        let y = a.allocate("y").unwrap();
        assert_ne!(x, y);
        assert_eq!(a.allocate("x").unwrap(), x);
        assert_eq!(x, Ipv4Addr::new(10, 42, 3, 2));
        assert_eq!(y, Ipv4Addr::new(10, 42, 3, 3));
    }

    #[test]
    fn next_fit_does_not_reuse_a_released_address_at_once() {
        let mut a = Allocations::new(net("10.42.3.0/24"));
        let x = a.allocate("x").unwrap();
        assert_eq!(a.release("x"), Some(x));
        assert_eq!(a.release("x"), None);
        let y = a.allocate("y").unwrap();
        assert_ne!(x, y);
    }

    #[test]
    fn wraps_around_and_fills_holes() {
        let mut a = Allocations::new(net("10.0.0.0/29")); // .2 ..= .6
        for p in ["a", "b", "c", "d", "e"] {
            a.allocate(p).unwrap();
        }
        assert!(a.allocate("f").is_err());
        let c = a.pods["c"];
        a.release("c");
        assert_eq!(a.allocate("f").unwrap(), c);
    }

    #[test]
    fn retain_frees_unknown_pods() {
        let mut a = Allocations::new(net("10.42.0.0/24"));
        a.allocate("keep").unwrap();
        let gone = a.allocate("gone").unwrap();
        assert_eq!(a.retain(|u| u == "keep"), vec![gone]);
        assert_eq!(a.pods.len(), 1);
    }

    #[test]
    fn range_change_keeps_held_addresses() {
        let mut a = Allocations::new(net("10.42.200.0/24"));
        let old = a.allocate("old").unwrap();
        a.set_range(net("10.42.1.0/24"));
        assert_eq!(a.allocate("old").unwrap(), old);
        assert_eq!(a.allocate("new").unwrap(), Ipv4Addr::new(10, 42, 1, 2));
    }

    #[test]
    fn file_round_trip() {
        let dir = std::env::temp_dir().join(format!("kelp-ipam-{}", std::process::id()));
        let f = AllocationFile::new(dir.join("pod-ips.json"));
        assert_eq!(f.load().unwrap(), None);
        let mut a = Allocations::new(net("10.42.7.0/24"));
        a.allocate("p").unwrap();
        f.save(&a).unwrap();
        assert_eq!(f.load().unwrap(), Some(a));
        std::fs::write(f.path(), b"{not json").unwrap();
        assert!(matches!(f.load(), Err(IpamError::Corrupt { .. })));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
