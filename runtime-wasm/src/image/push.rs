//! Publishing a Wasm binary as a CNCF Wasm OCI artifact.

use super::media_types::{OCI_MANIFEST, WASM_CONFIG_V0, WASM_LAYER};
use super::reference::ImageReference;
use super::{map_oci_error, registry_client, sha256_digest, ImageError, RegistryAuth, WasmKind};

/// The blobs of a CNCF Wasm artifact for one binary.
pub(crate) struct Artifact {
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    pub config_digest: String,
    pub manifest_digest: String,
    pub wasm_digest: String,
}

/// Builds the config (`application/vnd.wasm.config.v0+json`) and manifest of a CNCF
/// Wasm artifact holding `wasm`. Without `created` the result is deterministic.
pub(crate) fn wasm_artifact(wasm: &[u8], kind: WasmKind, created: Option<&str>) -> Artifact {
    let wasm_digest = sha256_digest(wasm);
    let mut config = serde_json::Map::new();
    if let Some(c) = created {
        config.insert("created".into(), c.into());
    }
    config.insert("architecture".into(), "wasm".into());
    config.insert("os".into(), kind.wasi_os().into());
    config.insert("layerDigests".into(), vec![wasm_digest.clone()].into());
    let config = serde_json::to_vec(&serde_json::Value::Object(config)).expect("json");
    let config_digest = sha256_digest(&config);
    let mut manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": WASM_CONFIG_V0,
        "config": {
            "mediaType": WASM_CONFIG_V0,
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": WASM_LAYER,
            "digest": wasm_digest,
            "size": wasm.len(),
        }],
    });
    if let Some(c) = created {
        manifest["annotations"] = serde_json::json!({ "org.opencontainers.image.created": c });
    }
    let manifest = serde_json::to_vec(&manifest).expect("json");
    let manifest_digest = sha256_digest(&manifest);
    Artifact {
        config,
        manifest,
        config_digest,
        manifest_digest,
        wasm_digest,
    }
}

/// Publishes `wasm` to `reference` as a CNCF Wasm artifact (config
/// `application/vnd.wasm.config.v0+json`, one `application/wasm` layer). Loopback
/// registries and those in `insecure_registries` are reached over plain http.
/// Returns the manifest digest.
pub async fn push(
    wasm: &[u8],
    reference: &str,
    auth: &RegistryAuth,
    insecure_registries: &[String],
) -> Result<String, ImageError> {
    let r = ImageReference::parse(reference)?;
    if r.digest.is_some() {
        return Err(ImageError::InvalidReference {
            reference: reference.to_string(),
            reason: "push to a tag, not a digest".to_string(),
        });
    }
    let kind = WasmKind::detect(wasm).map_err(|reason| ImageError::NotWasm {
        reference: reference.to_string(),
        reason,
    })?;
    let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let art = wasm_artifact(wasm, kind, Some(&created));
    let client = registry_client(&r.registry, insecure_registries);
    let oci_ref = r.to_oci();
    let shown = r.to_string();
    let map = |e| map_oci_error(e, &r.registry, &shown);
    client
        .auth(
            &oci_ref,
            &auth.to_oci(),
            oci_client::RegistryOperation::Push,
        )
        .await
        .map_err(map)?;
    client
        .push_blob(&oci_ref, wasm.to_vec(), &art.wasm_digest)
        .await
        .map_err(map)?;
    client
        .push_blob(&oci_ref, art.config.clone(), &art.config_digest)
        .await
        .map_err(map)?;
    let content_type = OCI_MANIFEST.parse().map_err(|_| ImageError::Registry {
        registry: r.registry.clone(),
        message: "invalid manifest content type".to_string(),
    })?;
    client
        .push_manifest_raw(&oci_ref, art.manifest, content_type)
        .await
        .map_err(map)?;
    Ok(art.manifest_digest)
}
