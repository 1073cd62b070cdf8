//! Pulling an image from a registry into the store.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use futures::StreamExt;
use serde::Deserialize;
use sha2::Digest as _;
use tokio::io::AsyncWriteExt;

use super::media_types::{self, classify_layer, LayerKind};
use super::reference::ImageReference;
use super::store::{ImageRecord, ImageStore, Staging};
use super::{
    hex, is_sha256_digest, map_oci_error, registry_client, sha256_digest, ImageError, PullOptions,
    RegistryAuth, WasmKind,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

impl Manifest {
    fn is_index(&self) -> bool {
        self.media_type
            .as_deref()
            .is_some_and(media_types::is_index)
            || (self.manifests.is_some() && self.config.is_none())
    }
}

/// What an image config says about running the image.
#[derive(Debug, Default)]
struct ConfigInfo {
    os: String,
    architecture: String,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<String>,
    working_dir: Option<String>,
    labels: BTreeMap<String, String>,
    /// Whether the config names its layers (diff_ids / layerDigests), i.e. identifies
    /// the image's content.
    identifies_content: bool,
}

fn parse_config(bytes: &[u8]) -> ConfigInfo {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return ConfigInfo::default();
    };
    let s = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(String::from);
    let list = |v: Option<&serde_json::Value>| -> Vec<String> {
        v.and_then(|x| x.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let inner = v.get("config").cloned().unwrap_or(serde_json::Value::Null);
    let labels = inner
        .get("Labels")
        .and_then(|l| l.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let non_empty =
        |x: Option<&serde_json::Value>| x.and_then(|a| a.as_array()).is_some_and(|a| !a.is_empty());
    ConfigInfo {
        os: s(&v, "os").unwrap_or_default(),
        architecture: s(&v, "architecture").unwrap_or_default(),
        entrypoint: list(inner.get("Entrypoint")),
        cmd: list(inner.get("Cmd")),
        env: list(inner.get("Env")),
        working_dir: s(&inner, "WorkingDir").filter(|w| !w.is_empty()),
        labels,
        identifies_content: non_empty(v.get("rootfs").and_then(|r| r.get("diff_ids")))
            || non_empty(v.get("layerDigests")),
    }
}

fn is_wasi_platform(os: &str, arch: &str) -> bool {
    arch == "wasm" && (os == "wasi" || os.starts_with("wasip"))
}

/// One pull: the registry client and the names errors mention.
struct Puller<'a> {
    client: oci_client::Client,
    auth: oci_client::secrets::RegistryAuth,
    r: ImageReference,
    oci_ref: oci_client::Reference,
    shown: String,
    opts: &'a PullOptions,
}

impl<'a> Puller<'a> {
    fn new(
        reference: &str,
        auth: &RegistryAuth,
        opts: &'a PullOptions,
    ) -> Result<Puller<'a>, ImageError> {
        let r = ImageReference::parse(reference)?;
        Ok(Puller {
            client: registry_client(&r.registry, &opts.insecure_registries),
            auth: auth.to_oci(),
            oci_ref: r.to_oci(),
            shown: r.to_string(),
            r,
            opts,
        })
    }

    fn map(&self, e: oci_client::errors::OciDistributionError) -> ImageError {
        map_oci_error(e, &self.r.registry, &self.shown)
    }

    fn invalid(&self, reason: impl Into<String>) -> ImageError {
        ImageError::InvalidManifest {
            reference: self.shown.clone(),
            reason: reason.into(),
        }
    }

    fn check_descriptor(&self, d: &Descriptor) -> Result<u64, ImageError> {
        if !is_sha256_digest(&d.digest) {
            return Err(self.invalid(format!(
                "unsupported or malformed digest {:?} (only sha256 is supported)",
                d.digest
            )));
        }
        u64::try_from(d.size).map_err(|_| self.invalid(format!("negative size for {}", d.digest)))
    }

    /// The entry of image index `index` to run: its wasi/wasm entry, or its only image
    /// entry. None: the image is not a Wasm image.
    fn index_entry(&self, index: &Manifest) -> Result<Descriptor, ImageError> {
        let entries = index.manifests.clone().unwrap_or_default();
        // Attestations and other non-image entries carry an unknown platform.
        let real: Vec<&Descriptor> = entries
            .iter()
            .filter(|e| {
                e.platform
                    .as_ref()
                    .is_none_or(|p| p.os != "unknown" && p.architecture != "unknown")
            })
            .collect();
        let pick = real
            .iter()
            .find(|e| {
                e.platform
                    .as_ref()
                    .is_some_and(|p| is_wasi_platform(&p.os, &p.architecture))
            })
            .or(if real.len() == 1 { real.first() } else { None })
            .copied()
            .cloned();
        pick.ok_or_else(|| {
            let platforms: Vec<String> =
                entries.iter().map(|e| platform_name(&e.platform)).collect();
            ImageError::NotWasm {
                reference: self.shown.clone(),
                reason: format!(
                    "the image index has no wasi/wasm entry (platforms: {})",
                    platforms.join(", ")
                ),
            }
        })
    }

    /// Whether an image manifest can hold a Wasm binary: a Wasm layer, or tar layers
    /// of a wasi/wasm image or of one whose entrypoint names a `.wasm` file.
    fn check_packaging(
        &self,
        manifest: &Manifest,
        config_desc: &Descriptor,
        config: &ConfigInfo,
    ) -> Result<(), ImageError> {
        let layers = || {
            manifest
                .layers
                .iter()
                .map(|l| classify_layer(&l.media_type))
        };
        if layers().any(|k| k == LayerKind::Wasm) {
            return Ok(());
        }
        let has_tar = layers().any(|k| matches!(k, LayerKind::Tar { .. }));
        let platform_ok = is_wasi_platform(&config.os, &config.architecture);
        let target = config.entrypoint.first().or(config.cmd.first());
        let names_wasm = target.is_some_and(|t| t.ends_with(".wasm"));
        if has_tar && (platform_ok || names_wasm) {
            return Ok(());
        }
        let types: Vec<&str> = manifest
            .layers
            .iter()
            .map(|l| l.media_type.as_str())
            .collect();
        let platform = if config.os.is_empty() {
            String::new()
        } else {
            format!("; platform {}/{}", config.os, config.architecture)
        };
        Err(ImageError::NotWasm {
            reference: self.shown.clone(),
            reason: format!(
                "the manifest has no WebAssembly layer (config {}, layers [{}]{platform}) \
                 and is not an image whose entrypoint names a .wasm file",
                config_desc.media_type,
                types.join(", ")
            ),
        })
    }

    /// Fetches a manifest (by the pull's reference, or by `digest`), enforcing the size
    /// limit and, for digests, the expected digest and size.
    async fn manifest(&self, by: Option<&Descriptor>) -> Result<(Vec<u8>, String), ImageError> {
        let limit = self.opts.max_manifest_bytes;
        let reference = match by {
            Some(d) => {
                let size = self.check_descriptor(d)?;
                if size > limit {
                    return Err(ImageError::ManifestTooLarge {
                        reference: self.r.with_digest(&d.digest),
                        size,
                        limit,
                    });
                }
                self.oci_ref.clone_with_digest(d.digest.clone())
            }
            None => self.oci_ref.clone(),
        };
        let (body, _) = self
            .client
            .pull_manifest_raw(&reference, &self.auth, media_types::MANIFEST_TYPES)
            .await
            .map_err(|e| self.map(e))?;
        let size = body.len() as u64;
        if size > limit {
            return Err(ImageError::ManifestTooLarge {
                reference: self.shown.clone(),
                size,
                limit,
            });
        }
        let digest = sha256_digest(&body);
        let expected = by
            .map(|d| d.digest.clone())
            .or_else(|| self.r.digest.clone());
        if let Some(expected) = expected {
            if digest != expected {
                return Err(ImageError::DigestMismatch {
                    what: format!("manifest of {}", self.shown),
                    expected,
                    got: digest,
                });
            }
        }
        if let Some(d) = by {
            if d.size as u64 != size {
                return Err(ImageError::SizeMismatch {
                    what: format!("manifest {}", d.digest),
                    expected: d.size as u64,
                    got: size,
                });
            }
        }
        Ok((body.to_vec(), digest))
    }

    /// Streams blob `d` into `out`, verifying size and digest as it goes (`dest` names
    /// it in errors).
    async fn blob<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        d: &Descriptor,
        what: &str,
        limit: u64,
        out: &mut W,
        dest: &Path,
    ) -> Result<(), ImageError> {
        let expected_size = self.check_descriptor(d)?;
        if expected_size > limit {
            return Err(ImageError::BlobTooLarge {
                reference: self.shown.clone(),
                what: format!("{what} {}", d.digest),
                size: expected_size,
                limit,
            });
        }
        let desc = oci_client::manifest::OciDescriptor {
            media_type: d.media_type.clone(),
            digest: d.digest.clone(),
            size: d.size,
            ..Default::default()
        };
        let mut stream = self
            .client
            .pull_blob_stream(&self.oci_ref, &desc)
            .await
            .map_err(|e| self.map(e))?;
        let mut hasher = sha2::Sha256::new();
        let mut got: u64 = 0;
        let what_d = format!("{what} {}", d.digest);
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    // oci-client's own verification fails at the end of the stream;
                    // report what we measured ourselves when it is a mismatch.
                    let actual = format!("sha256:{}", hex(&hasher.clone().finalize()));
                    if got == expected_size && actual != d.digest {
                        return Err(ImageError::DigestMismatch {
                            what: what_d,
                            expected: d.digest.clone(),
                            got: actual,
                        });
                    }
                    if got < expected_size {
                        return Err(ImageError::SizeMismatch {
                            what: format!("{what_d} ({e})"),
                            expected: expected_size,
                            got,
                        });
                    }
                    return Err(ImageError::Registry {
                        registry: self.r.registry.clone(),
                        message: format!("downloading {what_d}: {e}"),
                    });
                }
            };
            got += chunk.len() as u64;
            if got > expected_size {
                return Err(ImageError::SizeMismatch {
                    what: what_d,
                    expected: expected_size,
                    got,
                });
            }
            hasher.update(&chunk);
            out.write_all(&chunk).await.map_err(ImageError::io(dest))?;
        }
        if got != expected_size {
            return Err(ImageError::SizeMismatch {
                what: what_d,
                expected: expected_size,
                got,
            });
        }
        let actual = format!("sha256:{}", hex(&hasher.finalize()));
        if actual != d.digest {
            return Err(ImageError::DigestMismatch {
                what: what_d,
                expected: d.digest.clone(),
                got: actual,
            });
        }
        Ok(())
    }

    /// Blob `d` (a config) in memory, verified.
    async fn blob_bytes(&self, d: &Descriptor, what: &str) -> Result<Vec<u8>, ImageError> {
        let mut out = Vec::new();
        let limit = self.opts.max_manifest_bytes;
        self.blob(d, what, limit, &mut out, Path::new(&d.digest))
            .await?;
        Ok(out)
    }

    /// The stored or freshly downloaded (and staged) blob `d`.
    async fn blob_into(
        &self,
        staging: &mut Staging,
        d: &Descriptor,
        what: &str,
        limit: u64,
    ) -> Result<PathBuf, ImageError> {
        if let Some(p) = staging.staged_path(&d.digest) {
            return Ok(p.to_path_buf());
        }
        if let Some(p) = staging.reuse_stored(&d.digest) {
            let size = std::fs::metadata(&p).map_err(ImageError::io(&p))?.len();
            if size == d.size as u64 {
                return Ok(p);
            }
            return Err(ImageError::SizeMismatch {
                what: format!("{what} {}", d.digest),
                expected: d.size as u64,
                got: size,
            });
        }
        let path = staging.new_path();
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(ImageError::io(&path))?;
        self.blob(d, what, limit, &mut file, &path).await?;
        file.sync_all().await.map_err(ImageError::io(&path))?;
        staging.add_verified(d.digest.clone(), path.clone(), d.size as u64);
        Ok(path)
    }
}

fn read_header(path: &Path) -> Result<Vec<u8>, ImageError> {
    let mut f = std::fs::File::open(path).map_err(ImageError::io(path))?;
    let mut buf = Vec::with_capacity(8);
    (&mut f)
        .take(8)
        .read_to_end(&mut buf)
        .map_err(ImageError::io(path))?;
    Ok(buf)
}

fn platform_name(p: &Option<Platform>) -> String {
    match p {
        Some(p) => format!("{}/{}", p.os, p.architecture),
        None => "unknown".to_string(),
    }
}

/// Finds `target` (or, without one, the only `.wasm` file) in a tar layer and copies it
/// into `dest`, returning its digest and size, or `None` when the layer lacks it.
fn extract_from_tar(
    layer: &Path,
    gzip: bool,
    target: Option<&str>,
    limit: u64,
    dest: &Path,
) -> Result<Option<(String, u64)>, String> {
    let f = std::fs::File::open(layer).map_err(|e| e.to_string())?;
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(f)))
    } else {
        Box::new(std::io::BufReader::new(f))
    };
    let norm = |p: &str| {
        p.trim_start_matches("./")
            .trim_start_matches('/')
            .to_string()
    };
    let want = target.map(norm);
    let mut archive = tar::Archive::new(reader);
    for entry in archive
        .entries()
        .map_err(|e| format!("reading tar layer: {e}"))?
    {
        let mut entry = entry.map_err(|e| format!("reading tar layer: {e}"))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| format!("reading tar layer: {e}"))?
            .to_string_lossy()
            .into_owned();
        let path = norm(&path);
        let hit = match &want {
            Some(w) => path == *w,
            None => path.ends_with(".wasm"),
        };
        if !hit {
            continue;
        }
        let size = entry.header().size().map_err(|e| e.to_string())?;
        if size > limit {
            return Err(format!(
                "/{path} in the tar layer is {size} bytes, the limit is {limit}"
            ));
        }
        let mut out = std::fs::File::create(dest).map_err(|e| e.to_string())?;
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut n_total = 0u64;
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| format!("reading /{path}: {e}"))?;
            if n == 0 {
                break;
            }
            n_total += n as u64;
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        }
        out.sync_all().map_err(|e| e.to_string())?;
        return Ok(Some((
            format!("sha256:{}", hex(&hasher.finalize())),
            n_total,
        )));
    }
    Ok(None)
}

impl ImageStore {
    /// Pulls `reference` into the store and returns its record. Nothing in the store
    /// changes unless every blob arrived complete and matched its digest.
    pub async fn pull(
        &self,
        reference: &str,
        auth: &RegistryAuth,
        opts: &PullOptions,
    ) -> Result<ImageRecord, ImageError> {
        let p = Puller::new(reference, auth, opts)?;
        let mut staging = self.staging()?;

        // The manifest, through the index if there is one.
        let (top_bytes, top_digest) = p.manifest(None).await?;
        let top: Manifest = serde_json::from_slice(&top_bytes)
            .map_err(|e| p.invalid(format!("not a JSON manifest: {e}")))?;
        if top.schema_version.is_some_and(|v| v != 2) {
            return Err(p.invalid(format!(
                "unsupported schemaVersion {} (Docker schema 1 images are not supported)",
                top.schema_version.unwrap_or_default()
            )));
        }
        staging.stage_bytes(&top_bytes)?;
        let mut blobs = vec![top_digest.clone()];
        let (manifest, manifest_digest) = if top.is_index() {
            let entry = p.index_entry(&top)?;
            let (bytes, digest) = p.manifest(Some(&entry)).await?;
            let m: Manifest = serde_json::from_slice(&bytes)
                .map_err(|e| p.invalid(format!("manifest {digest} is not JSON: {e}")))?;
            if m.is_index() {
                return Err(p.invalid(format!("index entry {digest} is itself an index")));
            }
            staging.stage_bytes(&bytes)?;
            blobs.push(digest.clone());
            (m, digest)
        } else {
            (top, top_digest.clone())
        };
        let repo_tags: Vec<String> = if p.r.digest.is_none() {
            p.r.tagged().into_iter().collect()
        } else {
            Vec::new()
        };
        let repo_digests = vec![p.r.with_digest(&top_digest)];

        // Already stored under another name or tag: only the names change.
        if let Some(existing) = self.by_manifest(&manifest_digest) {
            let mut all_pinned = true;
            for b in &existing.blobs {
                all_pinned &= staging.staged_path(b).is_some() || staging.reuse_stored(b).is_some();
            }
            if all_pinned {
                let mut rec = existing;
                rec.repo_tags = repo_tags;
                rec.repo_digests = repo_digests;
                rec.blobs = super::store::union(&rec.blobs, &blobs);
                return self.commit(staging, rec);
            }
        }

        // The config.
        let config_desc = manifest
            .config
            .clone()
            .ok_or_else(|| p.invalid("the manifest has no config descriptor"))?;
        let config_path = p
            .blob_into(
                &mut staging,
                &config_desc,
                "image config",
                opts.max_manifest_bytes,
            )
            .await?;
        let config_bytes = std::fs::read(&config_path).map_err(ImageError::io(&config_path))?;
        let config = parse_config(&config_bytes);
        blobs.push(config_desc.digest.clone());

        // The Wasm binary: a Wasm layer, or a file in tar layers.
        let wasm_layers: Vec<&Descriptor> = manifest
            .layers
            .iter()
            .filter(|l| classify_layer(&l.media_type) == LayerKind::Wasm)
            .collect();
        let target = config.entrypoint.first().or(config.cmd.first()).cloned();
        let (wasm_digest, wasm_path) = if !wasm_layers.is_empty() {
            let title = |l: &Descriptor| {
                l.annotations
                    .as_ref()
                    .and_then(|a| a.get("org.opencontainers.image.title"))
                    .cloned()
            };
            let by_name = target.as_ref().and_then(|t| {
                let base = t.rsplit('/').next().unwrap_or(t);
                wasm_layers
                    .iter()
                    .find(|l| title(l).is_some_and(|n| n == base))
            });
            let layer = (*by_name.unwrap_or(&wasm_layers[0])).clone();
            let path = p
                .blob_into(&mut staging, &layer, "wasm layer", opts.max_module_bytes)
                .await?;
            (layer.digest, path)
        } else {
            let tar_layers: Vec<(&Descriptor, bool)> = manifest
                .layers
                .iter()
                .filter_map(|l| match classify_layer(&l.media_type) {
                    LayerKind::Tar { gzip } => Some((l, gzip)),
                    _ => None,
                })
                .collect();
            p.check_packaging(&manifest, &config_desc, &config)?;
            let mut found = None;
            for (layer, gzip) in tar_layers.iter().rev() {
                let layer_path = p
                    .blob_into(&mut staging, layer, "tar layer", opts.max_module_bytes)
                    .await?;
                let dest = staging.new_path();
                let (lp, d, t, limit) = (
                    layer_path.clone(),
                    dest.clone(),
                    target.clone(),
                    opts.max_module_bytes,
                );
                let gz = *gzip;
                let res = tokio::task::spawn_blocking(move || {
                    extract_from_tar(&lp, gz, t.as_deref(), limit, &d)
                })
                .await
                .map_err(|e| p.invalid(format!("extracting the wasm file: {e}")))?
                .map_err(|reason| ImageError::NotWasm {
                    reference: p.shown.clone(),
                    reason: format!("layer {}: {reason}", layer.digest),
                })?;
                // The tar layer itself is not kept.
                staging.forget(&layer.digest);
                if let Some((digest, size)) = res {
                    staging.add_verified(digest.clone(), dest.clone(), size);
                    found = Some((digest, dest));
                    break;
                }
            }
            let Some(found) = found else {
                return Err(ImageError::NotWasm {
                    reference: p.shown.clone(),
                    reason: match &target {
                        Some(t) => format!("no layer holds {t}, which the entrypoint names"),
                        None => "no layer holds a .wasm file and the image names no entrypoint"
                            .to_string(),
                    },
                });
            };
            found
        };
        let kind =
            WasmKind::detect(&read_header(&wasm_path)?).map_err(|reason| ImageError::NotWasm {
                reference: p.shown.clone(),
                reason: format!("blob {wasm_digest}: {reason}"),
            })?;
        blobs.push(wasm_digest.clone());
        blobs.dedup();

        let id = if config.identifies_content {
            config_desc.digest.clone()
        } else {
            manifest_digest.clone()
        };
        let record = ImageRecord {
            id,
            repo_tags,
            repo_digests,
            size: 0,
            manifest_digest,
            wasm_digest,
            wasm_path: PathBuf::new(),
            kind,
            entrypoint: config.entrypoint,
            cmd: config.cmd,
            env: config.env,
            working_dir: config.working_dir,
            annotations: manifest.annotations.unwrap_or_default(),
            labels: config.labels,
            blobs,
        };
        self.commit(staging, record)
    }
}

/// Tells whether `reference` is a Wasm image from its manifest and config alone (no
/// layers are downloaded): `Ok` for a Wasm image, [`ImageError::NotWasm`] for any
/// other (a Linux image), other errors when the registry could not be asked. The same
/// test [`ImageStore::pull`] makes before it downloads the module.
pub async fn inspect(
    reference: &str,
    auth: &RegistryAuth,
    opts: &PullOptions,
) -> Result<(), ImageError> {
    let p = Puller::new(reference, auth, opts)?;
    let (top_bytes, _) = p.manifest(None).await?;
    let top: Manifest = serde_json::from_slice(&top_bytes)
        .map_err(|e| p.invalid(format!("not a JSON manifest: {e}")))?;
    let manifest = if top.is_index() {
        let entry = p.index_entry(&top)?;
        if entry
            .platform
            .as_ref()
            .is_some_and(|pl| is_wasi_platform(&pl.os, &pl.architecture))
        {
            return Ok(());
        }
        let (bytes, digest) = p.manifest(Some(&entry)).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| p.invalid(format!("manifest {digest} is not JSON: {e}")))?
    } else {
        top
    };
    let config_desc = manifest
        .config
        .clone()
        .ok_or_else(|| p.invalid("the manifest has no config descriptor"))?;
    // A Wasm layer decides without the config.
    if manifest
        .layers
        .iter()
        .any(|l| classify_layer(&l.media_type) == LayerKind::Wasm)
    {
        return Ok(());
    }
    let config = parse_config(&p.blob_bytes(&config_desc, "image config").await?);
    p.check_packaging(&manifest, &config_desc, &config)
}
