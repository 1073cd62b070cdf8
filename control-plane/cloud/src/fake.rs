//! An in-memory provider for unit tests of the loops: instances by name, an error
//! switch. Users get [`crate::fleet`].

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Node;

use crate::provider::{CloudError, CloudProvider, InstanceMetadata, InstancesV2};

#[derive(Default)]
pub struct FakeCloud {
    /// name → shut down
    instances: Mutex<BTreeMap<String, bool>>,
    failure: Mutex<Option<String>>,
}

impl FakeCloud {
    pub fn add_instance(&self, name: &str, shutdown: bool) {
        self.instances
            .lock()
            .unwrap()
            .insert(name.to_string(), shutdown);
    }

    /// Every call fails with `message` from now on.
    pub fn fail_with(&self, message: &str) {
        *self.failure.lock().unwrap() = Some(message.to_string());
    }

    pub fn instances_v2_ref(&self) -> &dyn InstancesV2 {
        self
    }

    fn lookup(&self, node: &Node) -> Result<Option<bool>, CloudError> {
        if let Some(m) = self.failure.lock().unwrap().clone() {
            return Err(CloudError::Other(m));
        }
        let name = node.metadata.name.as_deref().unwrap_or_default();
        Ok(self.instances.lock().unwrap().get(name).copied())
    }
}

#[async_trait]
impl CloudProvider for FakeCloud {
    fn provider_name(&self) -> &'static str {
        "fake"
    }

    fn instances_v2(&self) -> Option<&dyn InstancesV2> {
        Some(self)
    }
}

#[async_trait]
impl InstancesV2 for FakeCloud {
    async fn instance_exists(&self, node: &Node) -> Result<bool, CloudError> {
        Ok(self.lookup(node)?.is_some())
    }

    async fn instance_shutdown(&self, node: &Node) -> Result<bool, CloudError> {
        Ok(self.lookup(node)?.unwrap_or(false))
    }

    async fn instance_metadata(&self, node: &Node) -> Result<InstanceMetadata, CloudError> {
        self.lookup(node)?.ok_or(CloudError::InstanceNotFound)?;
        Ok(InstanceMetadata {
            provider_id: format!(
                "fake://{}",
                node.metadata.name.as_deref().unwrap_or_default()
            ),
            ..Default::default()
        })
    }
}
