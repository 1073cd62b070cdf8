//! The fleet's inventory: one YAML file listing the machines (name, addresses, zone,
//! region, type, shut down or not). It is the fleet provider's "cloud API": edit the
//! file and the next provider call sees the change (the file is re-read whenever its
//! modification time or size changes, so no restart and no watch daemon).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use k8s_openapi::api::core::v1::NodeAddress;
use serde::Deserialize;

use crate::provider::CloudError;

/// The address types a Node may carry (upstream `NodeAddressType`).
const ADDRESS_TYPES: &[&str] = &[
    "InternalIP",
    "ExternalIP",
    "Hostname",
    "InternalDNS",
    "ExternalDNS",
];

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    #[serde(default)]
    pub instances: Vec<Instance>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Instance {
    /// The Node name the machine registers with.
    pub name: String,
    /// Default `fleet://NAME`.
    #[serde(default, rename = "providerID")]
    pub provider_id: Option<String>,
    #[serde(default)]
    pub addresses: Vec<Address>,
    #[serde(default)]
    pub zone: String,
    #[serde(default)]
    pub region: String,
    /// The instance type (`node.kubernetes.io/instance-type`).
    #[serde(default, rename = "type")]
    pub instance_type: String,
    /// Powered off (kept in the fleet): its Node, once NotReady, gets the shutdown
    /// taint instead of being deleted.
    #[serde(default)]
    pub shutdown: bool,
}

/// `{type: InternalIP, address: 10.0.0.5}`, or a bare address meaning InternalIP.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Address {
    Typed {
        #[serde(rename = "type")]
        type_: String,
        address: String,
    },
    Bare(String),
}

impl Address {
    pub fn to_node_address(&self) -> NodeAddress {
        match self {
            Address::Typed { type_, address } => NodeAddress {
                type_: type_.clone(),
                address: address.clone(),
            },
            Address::Bare(a) => NodeAddress {
                type_: "InternalIP".into(),
                address: a.clone(),
            },
        }
    }
}

impl Instance {
    pub fn provider_id(&self) -> String {
        self.provider_id
            .clone()
            .unwrap_or_else(|| format!("{}://{}", super::PROVIDER_NAME, self.name))
    }
}

impl Inventory {
    /// Parses and checks an inventory (unique names and providerIDs, known address
    /// types, addresses that parse).
    pub fn parse(text: &str) -> Result<Inventory, String> {
        // An empty file is an empty fleet, not an error.
        if text.trim().is_empty() {
            return Ok(Inventory::default());
        }
        let inv: Inventory = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        let mut names = BTreeSet::new();
        let mut ids = BTreeSet::new();
        for i in &inv.instances {
            if i.name.is_empty() {
                return Err("an instance without a name".into());
            }
            if !names.insert(i.name.as_str()) {
                return Err(format!("instance {:?} is listed twice", i.name));
            }
            if !ids.insert(i.provider_id()) {
                return Err(format!("providerID {:?} is listed twice", i.provider_id()));
            }
            for a in &i.addresses {
                let a = a.to_node_address();
                if !ADDRESS_TYPES.contains(&a.type_.as_str()) {
                    return Err(format!(
                        "instance {:?}: address type {:?} is not one of {}",
                        i.name,
                        a.type_,
                        ADDRESS_TYPES.join(", ")
                    ));
                }
                if a.type_.ends_with("IP") && a.address.parse::<std::net::IpAddr>().is_err() {
                    return Err(format!(
                        "instance {:?}: {:?} is not an IP address",
                        i.name, a.address
                    ));
                }
            }
        }
        Ok(inv)
    }

    /// The instance with this providerID, or (no providerID given) this name.
    pub fn find(&self, provider_id: Option<&str>, name: &str) -> Option<&Instance> {
        match provider_id.filter(|p| !p.is_empty()) {
            Some(id) => self.instances.iter().find(|i| i.provider_id() == id),
            None => self.instances.iter().find(|i| i.name == name),
        }
    }
}

/// What identifies a version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

/// The inventory file, re-read when it changes.
#[derive(Debug)]
pub struct InventoryFile {
    path: PathBuf,
    cached: Mutex<Option<(Stamp, Arc<Inventory>)>>,
}

impl InventoryFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        InventoryFile {
            path: path.into(),
            cached: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, message: String) -> CloudError {
        CloudError::File {
            path: self.path.display().to_string(),
            message,
        }
    }

    /// The inventory as the file says now. An unreadable or invalid file is an error,
    /// never an empty fleet: the lifecycle loop must not read a broken edit as "every
    /// machine is gone" and delete every Node.
    pub fn current(&self) -> Result<Arc<Inventory>, CloudError> {
        let meta = std::fs::metadata(&self.path).map_err(|e| self.error(e.to_string()))?;
        let stamp = Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
        };
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, inv)) = cached.as_ref() {
            if *s == stamp {
                return Ok(inv.clone());
            }
        }
        let text = std::fs::read_to_string(&self.path).map_err(|e| self.error(e.to_string()))?;
        let inv = Arc::new(Inventory::parse(&text).map_err(|e| self.error(e))?);
        tracing::info!(path = %self.path.display(), instances = inv.instances.len(), "fleet inventory loaded");
        *cached = Some((stamp, inv.clone()));
        Ok(inv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_typed_and_bare_addresses_and_defaults() {
        let inv = Inventory::parse(
            r#"
instances:
- name: edge-01
  addresses:
  - {type: InternalIP, address: 192.168.1.10}
  - 192.168.1.11
  - {type: Hostname, address: edge-01.lan}
  zone: rack-a
  region: site-1
  type: rpi4
- name: edge-02
  providerID: fleet://serial-42
  shutdown: true
"#,
        )
        .unwrap();
        let a = &inv.instances[0];
        assert_eq!(a.provider_id(), "fleet://edge-01");
        let addrs: Vec<(String, String)> = a
            .addresses
            .iter()
            .map(|x| {
                let n = x.to_node_address();
                (n.type_, n.address)
            })
            .collect();
        assert_eq!(
            addrs,
            [
                ("InternalIP".into(), "192.168.1.10".into()),
                ("InternalIP".into(), "192.168.1.11".into()),
                ("Hostname".into(), "edge-01.lan".into())
            ]
        );
        assert_eq!(
            (a.zone.as_str(), a.region.as_str(), a.instance_type.as_str()),
            ("rack-a", "site-1", "rpi4")
        );
        assert!(inv.instances[1].shutdown);
        // Lookup by providerID when the Node has one, else by name.
        assert_eq!(
            inv.find(Some("fleet://serial-42"), "whatever")
                .unwrap()
                .name,
            "edge-02"
        );
        assert!(inv.find(Some("fleet://edge-02"), "edge-02").is_none());
        assert_eq!(inv.find(None, "edge-01").unwrap().name, "edge-01");
        assert_eq!(Inventory::parse("").unwrap(), Inventory::default());
    }

    #[test]
    fn rejects_what_would_be_ambiguous_or_wrong() {
        for bad in [
            "instances: [{name: a}, {name: a}]",
            "instances: [{name: a, providerID: x}, {name: b, providerID: x}]",
            "instances: [{name: a, addresses: [{type: PublicIP, address: 1.2.3.4}]}]",
            "instances: [{name: a, addresses: [not-an-ip]}]",
            "instances: [{name: a, colour: blue}]",
            "instances: {name: a}",
        ] {
            assert!(Inventory::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_file_is_reread_when_it_changes_and_errors_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inventory.yaml");
        let f = InventoryFile::new(&path);
        assert!(f.current().is_err(), "a missing file is an error");
        std::fs::write(&path, "instances: [{name: a}]").unwrap();
        assert_eq!(f.current().unwrap().instances.len(), 1);
        std::fs::write(&path, "instances: [{name: a}, {name: bb}]").unwrap();
        assert_eq!(f.current().unwrap().instances.len(), 2);
        std::fs::write(&path, "instances: [{name: a}, {name: a}]").unwrap();
        assert!(f.current().is_err(), "an invalid edit is an error");
    }
}
