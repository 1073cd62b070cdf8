//! The media types of the Wasm packagings in use, and how a layer is read.

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index (multi-platform).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest v2 schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (multi-platform).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Every manifest type we ask registries for.
pub const MANIFEST_TYPES: &[&str] = &[
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// CNCF TAG-Runtime Wasm artifact config.
pub const WASM_CONFIG_V0: &str = "application/vnd.wasm.config.v0+json";
/// wasm-to-oci / Krustlet config.
pub const WASM_CONFIG_V1: &str = "application/vnd.wasm.config.v1+json";
/// Solo / Istio Wasm plugin config.
pub const SOLO_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";
/// The OCI empty descriptor's media type (`{}` config of artifacts).
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// CNCF Wasm artifact layer.
pub const WASM_LAYER: &str = "application/wasm";
/// runwasi / containerd-shim-wasm layer (module or component).
pub const BYTECODEALLIANCE_LAYER: &str =
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";
/// W3C-style module layer used by some containerd shims.
pub const W3C_MODULE_LAYER: &str = "application/vnd.w3c.wasm.module.v1+wasm";
/// W3C-style component layer used by some containerd shims.
pub const W3C_COMPONENT_LAYER: &str = "application/vnd.w3c.wasm.component.v1+wasm";
/// wasm-to-oci / Krustlet layer.
pub const WASM_TO_OCI_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// Solo / Istio Wasm plugin layer.
pub const SOLO_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";

/// Layers whose blob is the Wasm binary itself.
pub const WASM_LAYER_TYPES: &[&str] = &[
    WASM_LAYER,
    BYTECODEALLIANCE_LAYER,
    W3C_MODULE_LAYER,
    W3C_COMPONENT_LAYER,
    WASM_TO_OCI_LAYER,
    SOLO_LAYER,
];

/// Uncompressed tar layers (OCI, including non-distributable).
pub const TAR_LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar",
];

/// gzip-compressed tar layers (OCI and Docker).
pub const TAR_GZIP_LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// How a layer's blob is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// The blob is a Wasm binary.
    Wasm,
    /// The blob is a filesystem tar, gzip-compressed or not.
    Tar { gzip: bool },
    /// Anything else (configuration layers, zstd tars, unknown types).
    Other,
}

/// Classifies a layer by media type (parameters such as `;version=` are ignored).
pub fn classify_layer(media_type: &str) -> LayerKind {
    let mt = media_type.split(';').next().unwrap_or("").trim();
    if WASM_LAYER_TYPES.contains(&mt) {
        LayerKind::Wasm
    } else if TAR_LAYER_TYPES.contains(&mt) {
        LayerKind::Tar { gzip: false }
    } else if TAR_GZIP_LAYER_TYPES.contains(&mt) {
        LayerKind::Tar { gzip: true }
    } else {
        LayerKind::Other
    }
}

/// Whether `media_type` is an index / manifest list.
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify() {
        for t in WASM_LAYER_TYPES {
            assert_eq!(classify_layer(t), LayerKind::Wasm);
        }
        assert_eq!(
            classify_layer("application/vnd.oci.image.layer.v1.tar+gzip"),
            LayerKind::Tar { gzip: true }
        );
        assert_eq!(
            classify_layer("application/vnd.oci.image.layer.v1.tar"),
            LayerKind::Tar { gzip: false }
        );
        assert_eq!(classify_layer("application/octet-stream"), LayerKind::Other);
    }
}
