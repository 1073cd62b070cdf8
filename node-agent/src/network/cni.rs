//! The CNI network config for a Linux container runtime on the node (containerd's CRI
//! plugin reads it from its `conf_dir`): a `bridge` with `host-local` addresses, both
//! from Debian's `containernetworking-plugins`.
//!
//! The node's pod CIDR is shared by two address managers: the kubelet's own (Wasm pods,
//! whose addresses are local addresses of the host, see [`super::PodNetwork`]) takes
//! the lower half, CNI's host-local the upper half ([`split`]). The bridge's connected
//! route for the upper half is more specific than the unreachable route fencing the
//! node's range, so Linux pods are reached through the bridge and Wasm pods locally;
//! both see each other and the node's Service addresses without NAT.

use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde_json::json;

/// The file the agent owns in the CNI config directory (lowest name wins in
/// containerd, so an operator's `00-…` config still takes precedence).
pub const CONF_FILE: &str = "10-kelp.conflist";

/// Where the config goes and what it names.
#[derive(Debug, Clone)]
pub struct CniSettings {
    /// The directory the runtime reads CNI configs from.
    pub conf_dir: PathBuf,
    /// The Linux bridge the plugin creates (≤ 15 bytes).
    pub bridge: String,
    /// host-local's allocation records.
    pub ipam_dir: PathBuf,
}

/// (Wasm pods' range, Linux pods' range): the two halves of the node's pod CIDR. A
/// /31 or /32 cannot be split; Linux pods then get nothing.
pub fn split(cidr: Ipv4Net) -> (Ipv4Net, Option<Ipv4Net>) {
    let cidr = cidr.trunc();
    match cidr.subnets(cidr.prefix_len() + 1) {
        Ok(mut halves) if cidr.prefix_len() < 30 => {
            let lower = halves.next().expect("two halves");
            let upper = halves.next().expect("two halves");
            (lower, Some(upper))
        }
        _ => (cidr, None),
    }
}

/// The conflist for Linux pods in `range`.
pub fn conflist(s: &CniSettings, range: Ipv4Net) -> serde_json::Value {
    let gateway = std::net::Ipv4Addr::from(u32::from(range.network()) + 1);
    json!({
        "cniVersion": "1.0.0",
        "name": "kelp",
        "plugins": [
            {
                "type": "bridge",
                "bridge": s.bridge,
                "isGateway": true,
                // Masquerading needs iptables, which a Kelp node does not need
                // otherwise; pods reach the cluster by their own addresses.
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": range.to_string(), "gateway": gateway.to_string() }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": s.ipam_dir.display().to_string(),
                }
            }
        ]
    })
}

/// Writes the conflist for `range` (atomically: the runtime watches the directory and
/// must never read half a file). Unchanged content is not rewritten.
pub fn write(s: &CniSettings, range: Ipv4Net) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(&s.conf_dir)?;
    let path = s.conf_dir.join(CONF_FILE);
    let body = serde_json::to_vec_pretty(&conflist(s, range)).expect("JSON");
    if std::fs::read(&path).is_ok_and(|old| old == body) {
        return Ok(path);
    }
    let tmp = tmp_path(&s.conf_dir);
    std::fs::write(&tmp, &body)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

// A dot file: CNI loaders only read *.conf, *.conflist and *.json.
fn tmp_path(dir: &Path) -> PathBuf {
    dir.join(format!(".{CONF_FILE}.tmp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_of_the_node_range() {
        let (w, l) = split("10.42.3.0/24".parse().unwrap());
        assert_eq!(w.to_string(), "10.42.3.0/25");
        assert_eq!(l.unwrap().to_string(), "10.42.3.128/25");
        let (w, l) = split("10.42.3.0/30".parse().unwrap());
        assert_eq!((w.to_string(), l), ("10.42.3.0/30".to_string(), None));
    }

    #[test]
    fn conflist_names_the_bridge_range_and_gateway() {
        let s = CniSettings {
            conf_dir: "/etc/cni/net.d".into(),
            bridge: "kelp-cni0".into(),
            ipam_dir: "/var/lib/kelp/cni".into(),
        };
        let c = conflist(&s, "10.42.3.128/25".parse().unwrap());
        let p = &c["plugins"][0];
        assert_eq!(p["type"], "bridge");
        assert_eq!(p["bridge"], "kelp-cni0");
        assert_eq!(p["ipam"]["ranges"][0][0]["subnet"], "10.42.3.128/25");
        assert_eq!(p["ipam"]["ranges"][0][0]["gateway"], "10.42.3.129");
    }

    #[test]
    fn write_is_atomic_and_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let s = CniSettings {
            conf_dir: d.path().join("net.d"),
            bridge: "b0".into(),
            ipam_dir: d.path().join("ipam"),
        };
        let p = write(&s, "10.1.0.128/25".parse().unwrap()).unwrap();
        let before = std::fs::metadata(&p).unwrap().modified().unwrap();
        write(&s, "10.1.0.128/25".parse().unwrap()).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().modified().unwrap(), before);
        let names: Vec<_> = std::fs::read_dir(&s.conf_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(CONF_FILE)]);
    }
}
