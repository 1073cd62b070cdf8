//! Outbound policy for a pod's Wasm containers: with `kelp.dev/egress: deny` on the
//! pod, its modules may open connections only to what `kelp.dev/egress-allow` lists —
//! CIDRs or addresses, host names (`api.example.com`, `*.svc.cluster.local`), each
//! with an optional port or port range:
//!
//! ```yaml
//! kelp.dev/egress: deny
//! kelp.dev/egress-allow: "10.43.0.0/16, db.default.svc.cluster.local:5432, *.example.com:443, 192.0.2.7:8000-8100"
//! ```
//!
//! Checked where a module's traffic leaves the runtime: every wasi-sockets connect
//! and UDP send (by address: CIDR and address entries), and every wasi:http outgoing
//! request (by its host name against name entries, or by the address it resolves to
//! against CIDR entries). Listening is not restricted. A Wasm pod has no network
//! namespace, so this is the runtime's own check, not the kernel's.

use std::net::{IpAddr, SocketAddr};

/// `deny` turns the policy on (`allow`, the default, leaves it off).
pub const EGRESS_ANNOTATION: &str = "kelp.dev/egress";
/// What a denying pod may reach (comma- or whitespace-separated).
pub const EGRESS_ALLOW_ANNOTATION: &str = "kelp.dev/egress-allow";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// Network address and prefix length.
    Cidr(IpAddr, u8),
    /// A lower-case host name; `*.suffix` matches any name under `suffix`.
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    target: Target,
    /// Inclusive; `None`: every port.
    ports: Option<(u16, u16)>,
}

/// A pod's deny-by-default outbound policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPolicy {
    rules: Vec<Rule>,
}

impl EgressPolicy {
    /// The policy the sandbox annotations ask for: `Ok(None)` when none.
    pub fn from_annotations<'a>(
        get: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Option<EgressPolicy>, String> {
        match get(EGRESS_ANNOTATION).map(str::trim) {
            None | Some("") | Some("allow") => return Ok(None),
            Some("deny") => {}
            Some(other) => {
                return Err(format!(
                    "annotation {EGRESS_ANNOTATION}: {other:?} is neither \"deny\" nor \"allow\""
                ))
            }
        }
        let list = get(EGRESS_ALLOW_ANNOTATION).unwrap_or("");
        let rules = list
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(|e| {
                parse_rule(e).map_err(|why| {
                    format!("annotation {EGRESS_ALLOW_ANNOTATION}: entry {e:?}: {why}")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(EgressPolicy { rules }))
    }

    /// May a module connect (or send a datagram) to `addr`?
    pub fn allows_addr(&self, addr: SocketAddr) -> bool {
        self.rules.iter().any(|r| match &r.target {
            Target::Cidr(net, len) => in_net(addr.ip(), *net, *len) && port_ok(r, addr.port()),
            Target::Name(_) => false,
        })
    }

    /// May a module send an HTTP request to `host` (a name, or an address) on `port`?
    pub fn allows_host(&self, host: &str, port: u16) -> bool {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self.allows_addr(SocketAddr::new(ip, port));
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.rules.iter().any(|r| match &r.target {
            Target::Name(n) => {
                let matched = match n.strip_prefix("*.") {
                    Some(suffix) => host.ends_with(&format!(".{suffix}")),
                    None => *n == host,
                };
                matched && port_ok(r, port)
            }
            Target::Cidr(..) => false,
        })
    }
}

fn port_ok(r: &Rule, port: u16) -> bool {
    r.ports.is_none_or(|(lo, hi)| (lo..=hi).contains(&port))
}

fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

fn parse_ports(p: &str) -> Result<(u16, u16), String> {
    let num = |s: &str| {
        s.parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{s:?} is not a port (1-65535)"))
    };
    let (lo, hi) = match p.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => (num(p)?, num(p)?),
    };
    if lo > hi {
        return Err(format!("port range {p:?} is empty"));
    }
    Ok((lo, hi))
}

fn parse_rule(e: &str) -> Result<Rule, String> {
    // [v6]:port, [v6/len]:port, host:port, a.b.c.d/len:port, or any of them bare.
    let (target, ports) = if let Some(rest) = e.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or("unclosed '['")?;
        let ports = match after.strip_prefix(':') {
            Some(p) => Some(parse_ports(p)?),
            None if after.is_empty() => None,
            None => return Err("text after ']' must be :PORT".into()),
        };
        (inside, ports)
    } else if e.matches(':').count() == 1 {
        let (t, p) = e.split_once(':').expect("one colon");
        (t, Some(parse_ports(p)?))
    } else {
        (e, None)
    };
    let target = if let Some((net, len)) = target.split_once('/') {
        let ip: IpAddr = net
            .parse()
            .map_err(|_| format!("{net:?} is not an IP address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("prefix length {len:?} is not 0-{max}"))?;
        Target::Cidr(ip, len)
    } else if let Ok(ip) = target.parse::<IpAddr>() {
        Target::Cidr(ip, if ip.is_ipv4() { 32 } else { 128 })
    } else {
        let name = target.trim_end_matches('.').to_ascii_lowercase();
        let plain = name.strip_prefix("*.").unwrap_or(&name);
        let valid = !plain.is_empty()
            && plain.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            return Err(format!(
                "{target:?} is not a CIDR, an address or a host name"
            ));
        }
        Target::Name(name)
    };
    Ok(Rule { target, ports })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &str) -> EgressPolicy {
        EgressPolicy::from_annotations(|k| match k {
            EGRESS_ANNOTATION => Some("deny"),
            EGRESS_ALLOW_ANNOTATION => Some(allow),
            _ => None,
        })
        .unwrap()
        .unwrap()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn off_unless_deny() {
        assert_eq!(EgressPolicy::from_annotations(|_| None), Ok(None));
        assert_eq!(
            EgressPolicy::from_annotations(|k| (k == EGRESS_ANNOTATION).then_some("allow")),
            Ok(None)
        );
        let err = EgressPolicy::from_annotations(|k| (k == EGRESS_ANNOTATION).then_some("block"))
            .unwrap_err();
        assert!(err.contains("neither"), "{err}");
    }

    #[test]
    fn deny_with_nothing_allowed_denies_everything() {
        let p = policy("");
        assert!(!p.allows_addr(addr("10.0.0.1:80")));
        assert!(!p.allows_host("example.com", 80));
    }

    #[test]
    fn cidrs_addresses_and_ports() {
        let p = policy("10.43.0.0/16, 192.0.2.7:8000-8100 [2001:db8::/32]:443");
        assert!(p.allows_addr(addr("10.43.9.9:1")));
        assert!(!p.allows_addr(addr("10.44.0.1:80")));
        assert!(p.allows_addr(addr("192.0.2.7:8050")));
        assert!(!p.allows_addr(addr("192.0.2.7:8101")));
        assert!(!p.allows_addr(addr("192.0.2.8:8050")));
        assert!(p.allows_addr(addr("[2001:db8::1]:443")));
        assert!(!p.allows_addr(addr("[2001:db8::1]:80")));
        assert!(p.allows_host("10.43.1.2", 80), "an address as the host");
    }

    #[test]
    fn names_and_wildcards() {
        let p = policy("db.default.svc.cluster.local:5432,*.Example.com:443");
        assert!(p.allows_host("db.default.svc.cluster.local", 5432));
        assert!(p.allows_host("DB.default.svc.cluster.local.", 5432));
        assert!(!p.allows_host("db.default.svc.cluster.local", 80));
        assert!(p.allows_host("api.example.com", 443));
        assert!(
            !p.allows_host("example.com", 443),
            "*. needs a label before"
        );
        assert!(
            !p.allows_addr(addr("10.0.0.1:443")),
            "names never match addresses"
        );
    }

    #[test]
    fn bad_entries_are_named() {
        for (bad, why) in [
            ("10.0.0.0/33", "prefix length"),
            ("host:0", "not a port"),
            ("host:90-80", "empty"),
            ("bad_name!", "not a CIDR"),
            ("[::1", "unclosed"),
        ] {
            let err = EgressPolicy::from_annotations(|k| match k {
                EGRESS_ANNOTATION => Some("deny"),
                EGRESS_ALLOW_ANNOTATION => Some(bad),
                _ => None,
            })
            .unwrap_err();
            assert!(err.contains(why) && err.contains(bad), "{bad}: {err}");
        }
    }
}
