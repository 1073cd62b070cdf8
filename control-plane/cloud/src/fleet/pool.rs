//! The fleet's load-balancer address pool and who holds which address. Pure: the
//! fleet provider persists nothing itself — the allocations are the Services'
//! `status.loadBalancer.ingress`, read back on every leadership start
//! ([`Allocations::reserve`]), so a restarted manager never hands out an address a
//! Service already has.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Addresses from CIDRs (network and broadcast addresses left out, except in /31 and
/// /32) and inclusive `FIRST-LAST` ranges. IPv4 only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPool {
    ranges: Vec<(u32, u32)>,
    label: String,
}

impl AddressPool {
    /// Parses `10.0.0.240/28`, `10.0.0.240-10.0.0.250` or a single address, each item.
    pub fn parse(items: &[String]) -> Result<AddressPool, String> {
        let mut ranges = Vec::new();
        for item in items.iter().map(|s| s.trim()) {
            let (first, last) = if let Some((a, b)) = item.split_once('-') {
                let a: Ipv4Addr = a.trim().parse().map_err(|e| format!("{item:?}: {e}"))?;
                let b: Ipv4Addr = b.trim().parse().map_err(|e| format!("{item:?}: {e}"))?;
                (u32::from(a), u32::from(b))
            } else if item.contains('/') {
                let n: Ipv4Net = item.parse().map_err(|e| format!("{item:?}: {e}"))?;
                let (net, bcast) = (u32::from(n.network()), u32::from(n.broadcast()));
                if n.prefix_len() >= 31 {
                    (net, bcast)
                } else {
                    (net + 1, bcast - 1)
                }
            } else {
                let a: Ipv4Addr = item.parse().map_err(|e| {
                    format!("{item:?}: {e} (use a CIDR, FIRST-LAST or one IPv4 address)")
                })?;
                (u32::from(a), u32::from(a))
            };
            if first > last {
                return Err(format!("{item:?}: the range is empty"));
            }
            ranges.push((first, last));
        }
        if ranges.is_empty() {
            return Err("the address pool is empty".into());
        }
        Ok(AddressPool {
            ranges,
            label: items.join(","),
        })
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        self.ranges.iter().any(|(a, b)| (*a..=*b).contains(&v))
    }

    pub fn size(&self) -> usize {
        self.ranges.iter().map(|(a, b)| (b - a) as usize + 1).sum()
    }

    /// Every address, in the order they are handed out.
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.ranges
            .iter()
            .flat_map(|(a, b)| (*a..=*b).map(Ipv4Addr::from))
    }

    pub fn label(&self) -> &str {
        &self.label
    }
}

/// Which owner (a Service, by UID) holds which address.
#[derive(Debug, Default, Clone)]
pub struct Allocations {
    by_ip: BTreeMap<Ipv4Addr, String>,
    by_owner: HashMap<String, Ipv4Addr>,
}

impl Allocations {
    /// The address `owner` holds, if any.
    pub fn of(&self, owner: &str) -> Option<Ipv4Addr> {
        self.by_owner.get(owner).copied()
    }

    /// Records that `owner` holds `ip` (read back from a Service's status). Refused
    /// (false) when the address is outside the pool or another owner has it.
    pub fn reserve(&mut self, pool: &AddressPool, owner: &str, ip: Ipv4Addr) -> bool {
        if !pool.contains(ip) {
            return false;
        }
        match self.by_ip.get(&ip) {
            Some(o) if o == owner => true,
            Some(_) => false,
            None => {
                if let Some(old) = self.by_owner.insert(owner.to_string(), ip) {
                    self.by_ip.remove(&old);
                }
                self.by_ip.insert(ip, owner.to_string());
                true
            }
        }
    }

    /// The address of `owner`: the one it holds, else the first of `preferred` that is
    /// free (a requested `loadBalancerIP`, or the address its status already shows),
    /// else the lowest free one. `None`: the pool is exhausted.
    pub fn allocate(
        &mut self,
        pool: &AddressPool,
        owner: &str,
        preferred: &[Ipv4Addr],
    ) -> Option<Ipv4Addr> {
        if let Some(ip) = self.of(owner) {
            return Some(ip);
        }
        for ip in preferred {
            if self.reserve(pool, owner, *ip) {
                return Some(*ip);
            }
        }
        let ip = pool.addresses().find(|ip| !self.by_ip.contains_key(ip))?;
        self.reserve(pool, owner, ip).then_some(ip)
    }

    /// Frees what `owner` holds.
    pub fn release(&mut self, owner: &str) -> Option<Ipv4Addr> {
        let ip = self.by_owner.remove(owner)?;
        self.by_ip.remove(&ip);
        Some(ip)
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(items: &[&str]) -> AddressPool {
        AddressPool::parse(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn pools_from_cidrs_ranges_and_single_addresses() {
        let p = pool(&[
            "10.0.0.0/30",
            "10.0.1.5-10.0.1.7",
            "10.0.2.9",
            "10.0.3.0/32",
        ]);
        let all: Vec<String> = p.addresses().map(|a| a.to_string()).collect();
        assert_eq!(
            all,
            ["10.0.0.1", "10.0.0.2", "10.0.1.5", "10.0.1.6", "10.0.1.7", "10.0.2.9", "10.0.3.0"]
        );
        assert_eq!(p.size(), 7);
        assert!(p.contains(ip("10.0.1.6")) && !p.contains(ip("10.0.0.3")));
        for bad in ["", "10.0.0.9-10.0.0.1", "nope", "10.0.0.0/33"] {
            let items = if bad.is_empty() {
                vec![]
            } else {
                vec![bad.to_string()]
            };
            assert!(AddressPool::parse(&items).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn allocation_is_sticky_preferred_first_and_exhausts() {
        let p = pool(&["10.0.0.10-10.0.0.11"]);
        let mut a = Allocations::default();
        assert_eq!(a.allocate(&p, "svc-a", &[]), Some(ip("10.0.0.10")));
        // Asking again returns the same address.
        assert_eq!(a.allocate(&p, "svc-a", &[]), Some(ip("10.0.0.10")));
        // A preferred address held by someone else is skipped.
        assert_eq!(
            a.allocate(&p, "svc-b", &[ip("10.0.0.10")]),
            Some(ip("10.0.0.11"))
        );
        assert_eq!(a.allocate(&p, "svc-c", &[]), None, "exhausted");
        assert_eq!(a.release("svc-a"), Some(ip("10.0.0.10")));
        assert_eq!(a.allocate(&p, "svc-c", &[]), Some(ip("10.0.0.10")));
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn reservations_from_status_survive_a_restart() {
        let p = pool(&["10.0.0.10-10.0.0.12"]);
        let mut a = Allocations::default();
        // What the Services' statuses said when the manager started.
        assert!(a.reserve(&p, "svc-b", ip("10.0.0.10")));
        assert!(!a.reserve(&p, "svc-x", ip("10.0.0.10")), "taken");
        assert!(!a.reserve(&p, "svc-y", ip("192.0.2.1")), "outside the pool");
        // A new Service does not get svc-b's address.
        assert_eq!(a.allocate(&p, "svc-new", &[]), Some(ip("10.0.0.11")));
        assert_eq!(a.of("svc-b"), Some(ip("10.0.0.10")));
    }
}
