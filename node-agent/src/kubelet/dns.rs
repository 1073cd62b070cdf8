//! A pod's DNS configuration (CRI `PodSandboxConfig.dns_config`) from its
//! `dnsPolicy` and `dnsConfig`, as upstream's kubelet builds it
//! (pkg/kubelet/network/dns): pure, over the node's cluster DNS settings and the
//! host's resolv.conf.
//!
//! | dnsPolicy | servers | searches | options |
//! | --- | --- | --- | --- |
//! | `ClusterFirst` (default) | the cluster DNS | `NS.svc.D svc.D D` + the host's | `ndots:5` |
//! | `ClusterFirstWithHostNet` | as ClusterFirst | | |
//! | `ClusterFirst` with `hostNetwork` | as Default | | |
//! | `Default` | the host's | the host's | the host's |
//! | `None` | none | none | none |
//!
//! and then `spec.dnsConfig` is merged in: its nameservers and searches appended
//! (duplicates dropped), its options overriding ones of the same name. ClusterFirst
//! on a node without cluster DNS falls back to Default (upstream does the same, with
//! a `MissingClusterDNS` event). Lists are trimmed to upstream's limits (3
//! nameservers, 32 search domains).

use std::net::SocketAddr;

use k8s_openapi::api::core::v1::Pod;
use kelp_cri_api::v1 as cri;

use super::spec;

/// At most this many nameservers reach a pod (glibc reads no more).
pub const MAX_NAMESERVERS: usize = 3;
/// At most this many search domains (upstream's `MaxDNSSearchPaths`).
pub const MAX_SEARCHES: usize = 32;

/// The node's DNS settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeDns {
    /// The cluster DNS servers (the node's own, from [`crate::dns`]).
    pub cluster_dns: Vec<SocketAddr>,
    /// The cluster domain, `cluster.local`.
    pub cluster_domain: String,
    /// The host's resolver configuration (for `Default` and the search tail).
    pub host: ResolvConf,
}

/// What a resolv.conf says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Parses resolv.conf text (the last `search`/`domain` line wins, as in glibc).
    pub fn parse(text: &str) -> Self {
        let mut r = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut f = line.split_whitespace();
            match f.next() {
                Some("nameserver") => r.nameservers.extend(f.next().map(str::to_string)),
                Some("search") | Some("domain") => {
                    r.searches = f
                        .map(|s| s.trim_end_matches('.').to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                }
                Some("options") => r.options.extend(f.map(str::to_string)),
                _ => {}
            }
        }
        r
    }

    /// The file at `path`, or nothing when it cannot be read.
    pub fn read(path: &std::path::Path) -> Self {
        std::fs::read_to_string(path)
            .map(|t| Self::parse(&t))
            .unwrap_or_default()
    }
}

/// A server as CRI carries it: a bare address on port 53 (what resolv.conf can
/// say), `ADDR:PORT` otherwise (only Kelp's Wasm runtime understands that form).
pub fn server_string(addr: SocketAddr) -> String {
    if addr.port() == 53 {
        addr.ip().to_string()
    } else {
        addr.to_string()
    }
}

fn omit_duplicates(v: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    v.into_iter().filter(|s| seen.insert(s.clone())).collect()
}

/// Upstream's `mergeDNSOptions`: later options replace earlier ones of the same name
/// (the part before `:`), keeping the first one's position.
fn merge_options(base: Vec<String>, extra: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for o in base.into_iter().chain(extra) {
        let name = o.split(':').next().unwrap_or("").to_string();
        match out
            .iter_mut()
            .find(|e| e.split(':').next().unwrap_or("") == name)
        {
            Some(e) => *e = o,
            None => out.push(o),
        }
    }
    out
}

/// The DNS config for `pod` on a node with `node`'s settings.
pub fn pod_dns_config(pod: &Pod, node: &NodeDns) -> cri::DnsConfig {
    let spec = pod.spec.clone().unwrap_or_default();
    let host_network = spec.host_network.unwrap_or(false);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let cluster_first = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let mut cfg = match policy {
        "None" => cri::DnsConfig::default(),
        _ if cluster_first && !node.cluster_dns.is_empty() => {
            let d = node.cluster_domain.trim_end_matches('.');
            let mut searches = vec![
                format!("{}.svc.{d}", spec::namespace(pod)),
                format!("svc.{d}"),
                d.to_string(),
            ];
            searches.extend(node.host.searches.iter().cloned());
            cri::DnsConfig {
                servers: node
                    .cluster_dns
                    .iter()
                    .copied()
                    .map(server_string)
                    .collect(),
                searches,
                options: vec!["ndots:5".into()],
            }
        }
        // Default, an unknown policy (rejected by validation upstream), or
        // ClusterFirst without cluster DNS.
        _ => cri::DnsConfig {
            servers: node.host.nameservers.clone(),
            searches: node.host.searches.clone(),
            options: node.host.options.clone(),
        },
    };
    if let Some(extra) = spec.dns_config {
        cfg.servers.extend(extra.nameservers.unwrap_or_default());
        cfg.searches.extend(extra.searches.unwrap_or_default());
        let opts = extra
            .options
            .unwrap_or_default()
            .into_iter()
            .filter_map(|o| {
                let name = o.name?;
                Some(match o.value {
                    Some(v) => format!("{name}:{v}"),
                    None => name,
                })
            })
            .collect();
        cfg.options = merge_options(cfg.options, opts);
    }
    cfg.servers = omit_duplicates(cfg.servers);
    cfg.servers.truncate(MAX_NAMESERVERS);
    cfg.searches = omit_duplicates(cfg.searches);
    cfg.searches.truncate(MAX_SEARCHES);
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        let mut spec = spec;
        spec["containers"] = json!([{"name": "c", "image": "i"}]);
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "team"}, "spec": spec}),
        )
        .unwrap()
    }

    fn node(cluster_dns: &[&str]) -> NodeDns {
        NodeDns {
            cluster_dns: cluster_dns.iter().map(|s| s.parse().unwrap()).collect(),
            cluster_domain: "cluster.local".into(),
            host: ResolvConf::parse(
                "nameserver 10.0.0.2\nnameserver 10.0.0.3\nsearch corp.example\noptions timeout:2 ndots:1\n",
            ),
        }
    }

    fn cfg(servers: &[&str], searches: &[&str], options: &[&str]) -> cri::DnsConfig {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        cri::DnsConfig {
            servers: v(servers),
            searches: v(searches),
            options: v(options),
        }
    }

    #[test]
    fn dns_policies_as_upstream() {
        let cluster = [
            "team.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
            "corp.example",
        ];
        let table = vec![
            (
                "default policy",
                json!({}),
                node(&["169.254.20.10:53"]),
                cfg(&["169.254.20.10"], &cluster, &["ndots:5"]),
            ),
            (
                "explicit ClusterFirst, non-53 port",
                json!({"dnsPolicy": "ClusterFirst"}),
                node(&["127.0.0.10:5353"]),
                cfg(&["127.0.0.10:5353"], &cluster, &["ndots:5"]),
            ),
            (
                "ClusterFirst with hostNetwork is Default",
                json!({"hostNetwork": true}),
                node(&["169.254.20.10:53"]),
                cfg(
                    &["10.0.0.2", "10.0.0.3"],
                    &["corp.example"],
                    &["timeout:2", "ndots:1"],
                ),
            ),
            (
                "ClusterFirstWithHostNet",
                json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}),
                node(&["169.254.20.10:53"]),
                cfg(&["169.254.20.10"], &cluster, &["ndots:5"]),
            ),
            (
                "ClusterFirst without cluster DNS falls back to Default",
                json!({}),
                node(&[]),
                cfg(
                    &["10.0.0.2", "10.0.0.3"],
                    &["corp.example"],
                    &["timeout:2", "ndots:1"],
                ),
            ),
            (
                "Default",
                json!({"dnsPolicy": "Default"}),
                node(&["169.254.20.10:53"]),
                cfg(
                    &["10.0.0.2", "10.0.0.3"],
                    &["corp.example"],
                    &["timeout:2", "ndots:1"],
                ),
            ),
            (
                "None takes dnsConfig only",
                json!({"dnsPolicy": "None", "dnsConfig": {
                "nameservers": ["1.1.1.1"], "searches": ["a.example"], "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}),
                node(&["169.254.20.10:53"]),
                cfg(&["1.1.1.1"], &["a.example"], &["ndots:2", "edns0"]),
            ),
            (
                "dnsConfig merged into ClusterFirst",
                json!({"dnsConfig": {
                "nameservers": ["169.254.20.10", "1.1.1.1", "8.8.8.8", "9.9.9.9"],
                "searches": ["svc.cluster.local", "x.example"],
                "options": [{"name": "ndots", "value": "2"}, {"name": "single-request"}]}}),
                node(&["169.254.20.10:53"]),
                cfg(
                    &["169.254.20.10", "1.1.1.1", "8.8.8.8"],
                    &[
                        "team.svc.cluster.local",
                        "svc.cluster.local",
                        "cluster.local",
                        "corp.example",
                        "x.example",
                    ],
                    &["ndots:2", "single-request"],
                ),
            ),
        ];
        for (what, spec, node, want) in table {
            assert_eq!(pod_dns_config(&pod(spec), &node), want, "{what}");
        }
    }

    #[test]
    fn resolv_conf_parsing() {
        let r = ResolvConf::parse(
            "# comment\ndomain old.example\nsearch a.example b.example. ; trailing\nnameserver 10.0.0.2\noptions ndots:2 rotate\n\ngarbage line\n",
        );
        assert_eq!(r.nameservers, vec!["10.0.0.2"]);
        assert_eq!(r.searches, vec!["a.example", "b.example"]);
        assert_eq!(r.options, vec!["ndots:2", "rotate"]);
        assert_eq!(ResolvConf::parse(""), ResolvConf::default());
    }
}
