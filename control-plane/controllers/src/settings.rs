//! Tunables of the controllers (upstream kube-controller-manager flags), with
//! upstream's defaults. The binary's flags fill this in.

use std::time::Duration;

use ipnet::Ipv4Net;

#[derive(Debug, Clone)]
pub struct Settings {
    /// `--node-monitor-grace-period`: how long a node's Lease may go unrenewed before
    /// the node is marked `Ready=Unknown` (upstream: 40 s).
    pub node_monitor_grace_period: Duration,
    /// `--node-monitor-period`: how often node health is checked (upstream: 5 s).
    pub node_monitor_period: Duration,
    /// `--cluster-cidr`: pod addresses of the whole cluster; node IPAM hands out
    /// subnets of it. `None` turns node IPAM off.
    pub cluster_cidr: Option<Ipv4Net>,
    /// `--node-cidr-mask-size`: the prefix length of each node's pod CIDR.
    pub node_cidr_mask_size: u8,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            node_monitor_grace_period: Duration::from_secs(40),
            node_monitor_period: Duration::from_secs(5),
            cluster_cidr: Some("10.42.0.0/16".parse().expect("valid default CIDR")),
            node_cidr_mask_size: 24,
        }
    }
}

impl Settings {
    /// Settings from the flags' values, checked: `cluster_cidr` empty turns node IPAM
    /// off; the mask must fit inside it.
    pub fn from_flags(
        cluster_cidr: &str,
        node_cidr_mask_size: u8,
        node_monitor_grace_period: Duration,
        node_monitor_period: Duration,
    ) -> Result<Settings, String> {
        let cluster_cidr: Option<Ipv4Net> = match cluster_cidr.trim() {
            "" => None,
            c => Some(c.parse().map_err(|e| {
                format!("--cluster-cidr {c:?}: {e} (an IPv4 CIDR such as 10.42.0.0/16)")
            })?),
        };
        if let Some(c) = &cluster_cidr {
            if node_cidr_mask_size < c.prefix_len() || node_cidr_mask_size > 32 {
                return Err(format!(
                    "--node-cidr-mask-size {node_cidr_mask_size} must be between the cluster CIDR's prefix length ({}) and 32",
                    c.prefix_len()
                ));
            }
        }
        if node_monitor_period.is_zero() {
            return Err("--node-monitor-period must be positive".into());
        }
        Ok(Settings {
            node_monitor_grace_period,
            node_monitor_period,
            cluster_cidr,
            node_cidr_mask_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_checked() {
        let s = Duration::from_secs(1);
        assert!(Settings::from_flags("10.42.0.0/16", 24, s, s)
            .unwrap()
            .cluster_cidr
            .is_some());
        assert!(Settings::from_flags("", 24, s, s)
            .unwrap()
            .cluster_cidr
            .is_none());
        assert!(Settings::from_flags("10.42.0.0/16", 8, s, s).is_err());
        assert!(Settings::from_flags("nope", 24, s, s).is_err());
    }
}
