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
}
