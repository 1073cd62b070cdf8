//! CRI `ImageService` on [`WasmRuntime`]: pulls into the node's content store.

use std::collections::HashMap;

use base64::Engine as _;
use kelp_cri_api::v1 as cri;
use kelp_cri_api::v1::image_service_server::ImageService;
use tonic::{Request, Response, Status};

use super::{now_nanos, ServiceError, WasmRuntime};
use crate::image::{ImageRecord, PullOptions, RegistryAuth};

fn image(rec: &ImageRecord) -> cri::Image {
    cri::Image {
        id: rec.id.clone(),
        repo_tags: rec.repo_tags.clone(),
        repo_digests: rec.repo_digests.clone(),
        size: rec.size,
        uid: None,
        username: String::new(),
        spec: Some(cri::ImageSpec {
            image: rec.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    }
}

/// CRI credentials: `username`/`password`, or `auth` (base64 `user:password`, the
/// docker config form kubelet passes from imagePullSecrets).
/// CRI credentials as the registry client takes them.
pub fn registry_auth(a: Option<cri::AuthConfig>) -> Result<RegistryAuth, Status> {
    let Some(a) = a else {
        return Ok(RegistryAuth::Anonymous);
    };
    if !a.username.is_empty() {
        return Ok(RegistryAuth::Basic(a.username, a.password));
    }
    if !a.auth.is_empty() {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .map_err(|_| Status::invalid_argument("auth is not valid base64"))?;
        let text = String::from_utf8(raw)
            .map_err(|_| Status::invalid_argument("auth is not valid UTF-8"))?;
        let (u, p) = text
            .split_once(':')
            .ok_or_else(|| Status::invalid_argument("auth must be base64 of user:password"))?;
        return Ok(RegistryAuth::Basic(u.to_string(), p.to_string()));
    }
    Ok(RegistryAuth::Anonymous)
}

#[tonic::async_trait]
impl ImageService for WasmRuntime {
    async fn list_images(
        &self,
        req: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let wanted = req
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|i| i.image)
            .filter(|i| !i.is_empty());
        let images = match wanted {
            Some(r) => self.images().get(&r).iter().map(image).collect(),
            None => self.images().list().iter().map(image).collect(),
        };
        Ok(Response::new(cri::ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        req: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let r = req.into_inner().image.map(|i| i.image).unwrap_or_default();
        // CRI: an image that is not present is a nil image, not an error.
        let img = self.images().get(&r).as_ref().map(image);
        Ok(Response::new(cri::ImageStatusResponse {
            image: img,
            info: HashMap::new(),
        }))
    }

    async fn pull_image(
        &self,
        req: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let req = req.into_inner();
        let reference = req.image.map(|i| i.image).unwrap_or_default();
        if reference.is_empty() {
            return Err(Status::invalid_argument("image reference is required"));
        }
        let auth = registry_auth(req.auth)?;
        let opts = PullOptions {
            insecure_registries: self.config().insecure_registries.clone(),
            ..Default::default()
        };
        let rec = self
            .images()
            .pull(&reference, &auth, &opts)
            .await
            .map_err(ServiceError::from)?;
        // Compiled now, in the background: a container created later (another pod,
        // a restart) finds it compiled; one created at once waits for this compile
        // instead of starting its own.
        let (rt, image) = (self.clone(), rec.clone());
        tokio::spawn(async move {
            if let Err(e) = rt.precompile(&image).await {
                tracing::debug!(image = %image.id, error = %e, "precompile after pull failed");
            }
        });
        Ok(Response::new(cri::PullImageResponse {
            image_ref: rec.id.clone(),
        }))
    }

    async fn remove_image(
        &self,
        req: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let r = req.into_inner().image.map(|i| i.image).unwrap_or_default();
        if self.images().get(&r).is_none() {
            // CRI: removing an absent image succeeds.
            return Ok(Response::new(cri::RemoveImageResponse {}));
        }
        self.images().remove(&r).map_err(ServiceError::from)?;
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let (bytes, inodes) = self.images().usage();
        let fs = cri::FilesystemUsage {
            timestamp: now_nanos(),
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: self.config().root.join("images").display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value { value: bytes }),
            inodes_used: Some(cri::UInt64Value { value: inodes }),
        };
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![fs],
            container_filesystems: vec![],
        }))
    }
}
