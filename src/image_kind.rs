//! Tells Wasm images from Linux images for pods that name no RuntimeClass on a node
//! running both: what either runtime already holds decides first; otherwise the
//! registry's manifest and config do (the Wasm runtime's pull stops there for a Linux
//! image, and a Wasm image pulled now is the pull its container would make anyway).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kelp_cri_api::v1 as cri;
use kelp_node_agent::cri::{ImageClassifier, ImageKind};
use kelp_node_agent::CriRuntime;
use kelp_runtime_wasm::image::{ImageError, PullOptions};
use kelp_runtime_wasm::service::WasmRuntime;

pub struct Classifier {
    wasm: Arc<WasmRuntime>,
    linux: Arc<dyn CriRuntime>,
    /// Answers by image reference: a reference's kind does not change in practice, and
    /// each new pod of a Deployment would otherwise ask the registry again.
    known: Mutex<HashMap<String, ImageKind>>,
}

impl Classifier {
    pub fn new(wasm: Arc<WasmRuntime>, linux: Arc<dyn CriRuntime>) -> Self {
        Classifier {
            wasm,
            linux,
            known: Mutex::new(HashMap::new()),
        }
    }

    async fn look(&self, image: &str, auth: Option<cri::AuthConfig>) -> Result<ImageKind, String> {
        if self.wasm.images().get(image).is_some() {
            return Ok(ImageKind::Wasm);
        }
        let held = self
            .linux
            .image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: image.to_string(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
            .map_err(|e| e.message().to_string())?;
        if held.image.is_some() {
            return Ok(ImageKind::Linux);
        }
        let auth =
            kelp_runtime_wasm::service::registry_auth(auth).map_err(|e| e.message().to_string())?;
        let opts = PullOptions {
            insecure_registries: self.wasm.config().insecure_registries.clone(),
            ..Default::default()
        };
        match self.wasm.images().pull(image, &auth, &opts).await {
            Ok(_) => Ok(ImageKind::Wasm),
            Err(ImageError::NotWasm { .. }) => Ok(ImageKind::Linux),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[async_trait::async_trait]
impl ImageClassifier for Classifier {
    async fn classify(
        &self,
        image: &str,
        auth: Option<cri::AuthConfig>,
    ) -> Result<ImageKind, String> {
        if let Some(k) = self.known.lock().expect("classifier lock").get(image) {
            return Ok(*k);
        }
        let kind = self.look(image, auth).await?;
        self.known
            .lock()
            .expect("classifier lock")
            .insert(image.to_string(), kind);
        Ok(kind)
    }

    fn known(&self, image: &str) -> Option<ImageKind> {
        self.known
            .lock()
            .expect("classifier lock")
            .get(image)
            .copied()
    }
}

const INSPECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The scheduler's view of an image's kind: its manifest and config in the registry
/// (nothing is downloaded into a store), with the pod's imagePullSecrets.
pub struct RegistryInspector {
    pub insecure_registries: Vec<String>,
}

#[async_trait::async_trait]
impl kelp_scheduler::ImageInspector for RegistryInspector {
    async fn kind(
        &self,
        client: &kelp_node_agent::kube::Client,
        image: &str,
        pod: &kelp_node_agent::k8s_openapi::api::core::v1::Pod,
    ) -> Result<kelp_scheduler::ImageKind, String> {
        use kelp_node_agent::k8s_openapi::api::core::v1::Secret;
        use kelp_node_agent::kubelet::pull_secrets;
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let api: kelp_node_agent::kube::Api<Secret> =
            kelp_node_agent::kube::Api::namespaced(client.clone(), ns);
        let mut secrets = Vec::new();
        for r in pod
            .spec
            .iter()
            .flat_map(|s| s.image_pull_secrets.iter().flatten())
        {
            // A missing secret is the kubelet's to report; try anonymously.
            if let Ok(Some(s)) = api.get_opt(&r.name).await {
                secrets.push(pull_secrets::secret_data(s));
            }
        }
        let auth = pull_secrets::credentials_for(image, &secrets)
            .into_iter()
            .next();
        let auth =
            kelp_runtime_wasm::service::registry_auth(auth).map_err(|e| e.message().to_string())?;
        let opts = PullOptions {
            insecure_registries: self.insecure_registries.clone(),
            ..Default::default()
        };
        // Pods wait for this answer: a registry that does not answer soon is treated
        // as one that cannot be asked.
        let asked = tokio::time::timeout(
            INSPECT_TIMEOUT,
            kelp_runtime_wasm::image::inspect(image, &auth, &opts),
        );
        match asked.await {
            Ok(Ok(())) => Ok(kelp_scheduler::ImageKind::Wasm),
            Ok(Err(ImageError::NotWasm { .. })) => Ok(kelp_scheduler::ImageKind::Linux),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {INSPECT_TIMEOUT:?}")),
        }
    }
}

/// The scheduler configuration of `kelp up`, `kelp server` and `kelp scheduler`: pods
/// naming no RuntimeClass go to nodes serving the handler their images need.
pub fn scheduler_config(insecure_registries: Vec<String>) -> kelp_scheduler::SchedulerConfig {
    let mut cfg = kelp_scheduler::SchedulerConfig::new();
    cfg.image_routing = Some(kelp_scheduler::ImageRouting::new(Arc::new(
        RegistryInspector {
            insecure_registries,
        },
    )));
    cfg
}
