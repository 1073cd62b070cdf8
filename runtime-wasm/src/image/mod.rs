//! Images: OCI-packaged WebAssembly pulled from registries into a content-addressed
//! store on disk, imported from files, and published to registries.
//!
//! - [`ImageStore`] — `blobs/sha256/<hex>` plus an `images.json` index under one root.
//!   Every blob is written to a staging file, verified (size and digest) and only then
//!   renamed into place; the index changes only after every blob of an image is
//!   verified, so a failed pull leaves the store exactly as it was.
//! - [`ImageStore::pull`] accepts every Wasm packaging in use (see [`media_types`]):
//!   CNCF Wasm artifacts, the runwasi/containerd-shim layer types, wasm-to-oci
//!   (Krustlet), Solo/Istio, and plain OCI/Docker images whose tar layer holds the
//!   `.wasm` the entrypoint names; multi-platform indexes pick the `wasi/wasm` entry.
//! - [`push`] publishes a module as a CNCF Wasm artifact.

pub mod media_types;
mod pull;
mod push;
pub mod reference;
mod store;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use pull::inspect;
pub use push::push;
pub use reference::ImageReference;
pub use store::{ImageRecord, ImageStore};

/// Default limit on a manifest (or image index, or image config) in bytes.
pub const DEFAULT_MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Default limit on a Wasm module (or the tar layer that holds it) in bytes.
pub const DEFAULT_MAX_MODULE_BYTES: u64 = 256 << 20;

/// Credentials for a registry. Bearer token exchange (Docker Hub, GHCR, …) is done by
/// the client from these.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum RegistryAuth {
    #[default]
    Anonymous,
    Basic(String, String),
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryAuth::Anonymous => f.write_str("Anonymous"),
            RegistryAuth::Basic(user, _) => write!(f, "Basic({user:?}, <redacted>)"),
        }
    }
}

impl RegistryAuth {
    pub(crate) fn to_oci(&self) -> oci_client::secrets::RegistryAuth {
        match self {
            RegistryAuth::Anonymous => oci_client::secrets::RegistryAuth::Anonymous,
            RegistryAuth::Basic(u, p) => {
                oci_client::secrets::RegistryAuth::Basic(u.clone(), p.clone())
            }
        }
    }
}

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Registries (`host:port`, as written in image references) reached over plain
    /// http. Loopback registries (`localhost`, 127.0.0.0/8, `::1`) always are.
    pub insecure_registries: Vec<String>,
    /// Largest manifest, image index or image config accepted.
    pub max_manifest_bytes: u64,
    /// Largest Wasm module (or tar layer holding one) accepted.
    pub max_module_bytes: u64,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            insecure_registries: Vec::new(),
            max_manifest_bytes: DEFAULT_MAX_MANIFEST_BYTES,
            max_module_bytes: DEFAULT_MAX_MODULE_BYTES,
        }
    }
}

/// What a Wasm binary is, from its header's version/layer field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WasmKind {
    /// A core module (WASI preview 1 and friends).
    Module,
    /// A component (WASI preview 2).
    Component,
}

impl WasmKind {
    /// Reads the 8-byte header: `\0asm`, then version 1/layer 0 (core module) or
    /// layer 1 (component).
    pub fn detect(bytes: &[u8]) -> Result<WasmKind, String> {
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            let shown: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
            return Err(format!(
                "content does not start with the WebAssembly magic \\0asm (starts with [{}])",
                shown.join(" ")
            ));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        let layer = u16::from_le_bytes([bytes[6], bytes[7]]);
        match (layer, version) {
            (0, 1) => Ok(WasmKind::Module),
            (1, _) => Ok(WasmKind::Component),
            _ => Err(format!(
                "unsupported WebAssembly binary version {version} (layer {layer})"
            )),
        }
    }

    /// The WASI `os` a CNCF Wasm artifact config names for this kind.
    pub fn wasi_os(self) -> &'static str {
        match self {
            WasmKind::Module => "wasip1",
            WasmKind::Component => "wasip2",
        }
    }
}

/// Errors of the image layer. Messages are written for `kubectl describe pod`
/// (`ErrImagePull`), so each names the image, registry or digest involved.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("registry {registry} is unreachable: {reason}")]
    Unreachable { registry: String, reason: String },
    #[error("unauthorized: registry {registry} refused access to {reference}: {reason}")]
    Unauthorized {
        registry: String,
        reference: String,
        reason: String,
    },
    #[error("image {reference} not found: {reason}")]
    NotFound { reference: String, reason: String },
    #[error("digest mismatch for {what}: expected {expected}, got {got}")]
    DigestMismatch {
        what: String,
        expected: String,
        got: String,
    },
    #[error(
        "size mismatch for {what}: the manifest declares {expected} bytes, the registry sent {got}{}",
        if got < expected { " (truncated blob)" } else { " or more" }
    )]
    SizeMismatch {
        what: String,
        expected: u64,
        got: u64,
    },
    #[error("manifest of {reference} is too large: {size} bytes, the limit is {limit}")]
    ManifestTooLarge {
        reference: String,
        size: u64,
        limit: u64,
    },
    #[error("{what} of {reference} is too large: {size} bytes, the limit is {limit}")]
    BlobTooLarge {
        reference: String,
        what: String,
        size: u64,
        limit: u64,
    },
    #[error("{reference} is not a WebAssembly image: {reason}")]
    NotWasm { reference: String, reason: String },
    #[error("invalid manifest for {reference}: {reason}")]
    InvalidManifest { reference: String, reason: String },
    #[error("registry {registry}: {message}")]
    Registry { registry: String, message: String },
    #[error("image store i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("image store index {path} is corrupt: {reason}")]
    CorruptIndex { path: PathBuf, reason: String },
}

impl ImageError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io { path, source }
    }

    /// A short CRI-style reason (`ErrImagePull`, `ImageNotFound`, …) for events/status.
    pub fn reason(&self) -> &'static str {
        match self {
            ImageError::InvalidReference { .. } => "InvalidImageName",
            ImageError::NotFound { .. } => "ErrImageNotFound",
            ImageError::Unauthorized { .. } => "ErrImagePullUnauthorized",
            _ => "ErrImagePull",
        }
    }
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex(&sha2::Sha256::digest(bytes)))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// `true` for `sha256:` followed by 64 lowercase hex digits.
pub(crate) fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Whether `registry` (`host[:port]`) is a loopback address, reached over plain http
/// without configuration (as Docker does).
pub fn is_loopback_registry(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match registry.rsplit_once(':') {
            Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => registry,
        }
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

/// An oci-client for `registry`, plain http for loopback and listed insecure registries.
pub(crate) fn registry_client(registry: &str, insecure: &[String]) -> oci_client::Client {
    // reqwest is built without a bundled crypto provider; use the workspace's (ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut http: Vec<String> = insecure.to_vec();
    if is_loopback_registry(registry) {
        http.push(registry.to_string());
    }
    let config = oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::HttpsExcept(http),
        connect_timeout: Some(std::time::Duration::from_secs(15)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        platform_resolver: None,
        ..Default::default()
    };
    oci_client::Client::new(config)
}

/// Maps an oci-client error to an [`ImageError`] naming the registry and image.
pub(crate) fn map_oci_error(
    err: oci_client::errors::OciDistributionError,
    registry: &str,
    reference: &str,
) -> ImageError {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode as C};
    let registry_s = registry.to_string();
    let reference_s = reference.to_string();
    match err {
        E::RequestError(e) => {
            if e.is_connect() || e.is_timeout() {
                ImageError::Unreachable {
                    registry: registry_s,
                    reason: error_chain(&e),
                }
            } else {
                ImageError::Registry {
                    registry: registry_s,
                    message: error_chain(&e),
                }
            }
        }
        E::UnauthorizedError { url } => ImageError::Unauthorized {
            registry: registry_s,
            reference: reference_s,
            reason: format!("the registry answered 401 Unauthorized for {url}"),
        },
        E::AuthenticationFailure(m) => ImageError::Unauthorized {
            registry: registry_s,
            reference: reference_s,
            reason: m,
        },
        E::ImageManifestNotFoundError(m) => ImageError::NotFound {
            reference: reference_s,
            reason: m,
        },
        E::RegistryError { envelope, url } => {
            let codes: Vec<&C> = envelope.errors.iter().map(|e| &e.code).collect();
            let msg = envelope
                .errors
                .iter()
                .map(|e| format!("{:?}: {}", e.code, e.message))
                .collect::<Vec<_>>()
                .join("; ");
            if codes.iter().any(|c| {
                matches!(
                    c,
                    C::ManifestUnknown | C::BlobUnknown | C::NameUnknown | C::NotFound
                )
            }) {
                ImageError::NotFound {
                    reference: reference_s,
                    reason: format!("{msg} ({url})"),
                }
            } else if codes
                .iter()
                .any(|c| matches!(c, C::Unauthorized | C::Denied))
            {
                ImageError::Unauthorized {
                    registry: registry_s,
                    reference: reference_s,
                    reason: msg,
                }
            } else {
                ImageError::Registry {
                    registry: registry_s,
                    message: format!("{msg} ({url})"),
                }
            }
        }
        E::ServerError { code, url, message } => match code {
            401 | 403 => ImageError::Unauthorized {
                registry: registry_s,
                reference: reference_s,
                reason: format!("HTTP {code} for {url}"),
            },
            404 => ImageError::NotFound {
                reference: reference_s,
                reason: format!("HTTP 404 for {url}"),
            },
            _ => ImageError::Registry {
                registry: registry_s,
                message: format!("HTTP {code} for {url}: {}", message.trim()),
            },
        },
        E::DigestError(oci_client::errors::DigestError::VerificationError { expected, actual }) => {
            ImageError::DigestMismatch {
                what: format!("{reference} (manifest)"),
                expected,
                got: actual,
            }
        }
        other => ImageError::Registry {
            registry: registry_s,
            message: other.to_string(),
        },
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(
            WasmKind::detect(b"\0asm\x01\0\0\0").unwrap(),
            WasmKind::Module
        );
        assert_eq!(
            WasmKind::detect(b"\0asm\x0d\0\x01\0").unwrap(),
            WasmKind::Component
        );
        assert!(WasmKind::detect(b"\x7fELF\x02\x01\x01\0").is_err());
        assert!(WasmKind::detect(b"\0asm").is_err());
    }

    #[test]
    fn loopback() {
        for r in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.3.2.1",
            "[::1]:5000",
        ] {
            assert!(is_loopback_registry(r), "{r}");
        }
        for r in [
            "docker.io",
            "10.0.0.1:5000",
            "ghcr.io",
            "[fe80::1]:80",
            "localhost.example.com",
        ] {
            assert!(!is_loopback_registry(r), "{r}");
        }
    }
}
