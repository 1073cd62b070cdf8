//! The content-addressed image store on disk.
//!
//! ```text
//! ROOT/blobs/sha256/<hex>   every blob (manifests, configs, Wasm binaries), immutable
//! ROOT/images.json          the index of images (written via temp file + rename + fsync)
//! ROOT/tmp/<staging>/       blobs of pulls in progress, verified before moving into blobs/
//! ```
//!
//! One process is expected to write a store at a time (the node's runtime, or the
//! `kelp image` CLI while the node is stopped); readers notice index changes made by
//! another process because the index is re-read whenever its file changes.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::reference::ImageReference;
use super::{is_sha256_digest, sha256_digest, ImageError, WasmKind};

/// One image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `sha256:<hex>`: the config blob's digest when the config identifies the content
    /// (image configs with `rootfs.diff_ids`, Wasm configs with `layerDigests`), else the
    /// manifest's, so that artifacts sharing a `{}` config stay distinct images.
    pub id: String,
    /// Normalised `registry/repository:tag` names.
    pub repo_tags: Vec<String>,
    /// `registry/repository@sha256:<manifest or index digest>`.
    pub repo_digests: Vec<String>,
    /// Bytes this image holds in the store (manifests, config, Wasm binary).
    pub size: u64,
    /// Digest of the (platform) image manifest.
    pub manifest_digest: String,
    /// Digest of the Wasm binary.
    pub wasm_digest: String,
    /// Where the Wasm binary is on disk.
    pub wasm_path: PathBuf,
    pub kind: WasmKind,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Manifest annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Image config labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Every blob this image references (kept while any image references them).
    #[serde(default)]
    pub blobs: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct IndexFile {
    version: u32,
    images: Vec<ImageRecord>,
}

struct State {
    images: Vec<ImageRecord>,
    /// Blobs that pulls in progress rely on without downloading them again; never
    /// garbage-collected while pinned.
    pins: HashMap<String, usize>,
    /// (mtime, len) of the index file as last read or written.
    stamp: Option<(SystemTime, u64)>,
}

struct Inner {
    root: PathBuf,
    state: Mutex<State>,
}

/// The image store. Cheap to clone; clones share one index.
#[derive(Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.inner.root)
            .finish()
    }
}

static STAGING_SEQ: AtomicU64 = AtomicU64::new(0);

/// Staging directories older than this are leftovers of a crashed process.
const STALE_STAGING: Duration = Duration::from_secs(3600);

impl ImageStore {
    /// Opens (creating if needed) the store under `root`.
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        for dir in [
            root.to_path_buf(),
            root.join("blobs/sha256"),
            root.join("tmp"),
        ] {
            std::fs::create_dir_all(&dir).map_err(ImageError::io(&dir))?;
        }
        // Leftover staging directories of a crashed process.
        if let Ok(entries) = std::fs::read_dir(root.join("tmp")) {
            for e in entries.flatten() {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > STALE_STAGING);
                if old {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let store = ImageStore {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                state: Mutex::new(State {
                    images: Vec::new(),
                    pins: HashMap::new(),
                    stamp: None,
                }),
            }),
        };
        {
            let mut st = store.lock();
            store.refresh(&mut st)?;
            for img in &mut st.images {
                img.wasm_path = store.blob_path(&img.wasm_digest);
            }
        }
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    fn index_path(&self) -> PathBuf {
        self.inner.root.join("images.json")
    }

    /// Where blob `digest` (`sha256:<hex>`) lives.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.inner.root.join("blobs/sha256").join(hex)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stamp_of(path: &Path) -> Option<(SystemTime, u64)> {
        let m = std::fs::metadata(path).ok()?;
        Some((m.modified().ok()?, m.len()))
    }

    /// Re-reads the index if its file changed since we last saw it.
    fn refresh(&self, st: &mut State) -> Result<(), ImageError> {
        let path = self.index_path();
        let stamp = Self::stamp_of(&path);
        if stamp.is_some() && stamp == st.stamp {
            return Ok(());
        }
        st.images = match std::fs::read(&path) {
            Ok(bytes) => {
                let idx: IndexFile =
                    serde_json::from_slice(&bytes).map_err(|e| ImageError::CorruptIndex {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                idx.images
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(ImageError::Io { path, source: e }),
        };
        for img in &mut st.images {
            img.wasm_path = self.blob_path(&img.wasm_digest);
        }
        st.stamp = stamp;
        Ok(())
    }

    /// Writes the index atomically: temp file, fsync, rename, fsync of the directory.
    fn write_index(&self, st: &mut State, images: &[ImageRecord]) -> Result<(), ImageError> {
        let path = self.index_path();
        let tmp = self.inner.root.join(format!(
            "images.json.tmp-{}-{}",
            std::process::id(),
            STAGING_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let body = serde_json::to_vec_pretty(&IndexFile {
            version: 1,
            images: images.to_vec(),
        })
        .map_err(|e| ImageError::CorruptIndex {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let res = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            sync_dir(&self.inner.root)
        })();
        if let Err(e) = res {
            let _ = std::fs::remove_file(&tmp);
            return Err(ImageError::Io { path, source: e });
        }
        st.images = images.to_vec();
        st.stamp = Self::stamp_of(&path);
        Ok(())
    }

    /// Every image, in the order they were first stored.
    pub fn list(&self) -> Vec<ImageRecord> {
        let mut st = self.lock();
        if let Err(e) = self.refresh(&mut st) {
            tracing::warn!("image store: {e}");
        }
        st.images.clone()
    }

    /// Looks an image up by `name[:tag]`, `name@sha256:…`, its id (`sha256:<hex>`, bare
    /// hex, or an unambiguous hex prefix of at least 12 digits). Names are normalised
    /// (`nginx` = `docker.io/library/nginx:latest`).
    pub fn get(&self, reference_or_id: &str) -> Option<ImageRecord> {
        let mut st = self.lock();
        if let Err(e) = self.refresh(&mut st) {
            tracing::warn!("image store: {e}");
        }
        find(&st.images, reference_or_id).map(|i| st.images[i].clone())
    }

    /// Removes a reference: a tag drops that tag (the image goes when no tag is left);
    /// an id or a digest reference removes the image. Blobs no other image references
    /// are deleted.
    pub fn remove(&self, reference_or_id: &str) -> Result<(), ImageError> {
        let mut st = self.lock();
        self.refresh(&mut st)?;
        let Some(i) = find(&st.images, reference_or_id) else {
            return Err(ImageError::NotFound {
                reference: reference_or_id.to_string(),
                reason: "no such image in the local store".to_string(),
            });
        };
        let mut images = st.images.clone();
        let by_tag = ImageReference::parse(reference_or_id)
            .ok()
            .filter(|r| r.digest.is_none())
            .and_then(|r| r.tagged())
            .filter(|t| images[i].repo_tags.contains(t));
        let removed = match by_tag {
            Some(tag) if images[i].repo_tags.len() > 1 => {
                images[i].repo_tags.retain(|t| *t != tag);
                None
            }
            _ => Some(images.remove(i)),
        };
        self.write_index(&mut st, &images)?;
        if let Some(img) = removed {
            self.collect_garbage(&st, &img.blobs);
        }
        Ok(())
    }

    /// Deletes `candidates` that no image references and no pull in progress relies on.
    fn collect_garbage(&self, st: &State, candidates: &[String]) {
        for d in candidates {
            let used = st.images.iter().any(|img| img.blobs.contains(d))
                || st.pins.get(d).is_some_and(|n| *n > 0);
            if !used {
                let p = self.blob_path(d);
                if let Err(e) = std::fs::remove_file(&p) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!("image store: removing {}: {e}", p.display());
                    }
                }
            }
        }
        let _ = sync_dir(&self.inner.root.join("blobs/sha256"));
    }

    /// Disk use of the store: bytes allocated and inodes, for CRI `ImageFsInfo`.
    pub fn usage(&self) -> (u64, u64) {
        fn walk(dir: &Path, acc: &mut (u64, u64)) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let Ok(m) = e.metadata() else { continue };
                acc.1 += 1;
                if m.is_dir() {
                    walk(&e.path(), acc);
                } else {
                    use std::os::unix::fs::MetadataExt;
                    acc.0 += (m.blocks() * 512).max(m.len());
                }
            }
        }
        let mut acc = (0, 1);
        walk(&self.inner.root, &mut acc);
        acc
    }

    /// Puts a Wasm binary straight into the store under `name` (like `kind load`),
    /// packaged as the CNCF Wasm artifact `push` would publish.
    pub fn import(&self, wasm: &[u8], name: &str) -> Result<ImageRecord, ImageError> {
        let r = ImageReference::parse(name)?;
        if r.digest.is_some() {
            return Err(ImageError::InvalidReference {
                reference: name.to_string(),
                reason: "an imported image is named by a tag, not a digest".to_string(),
            });
        }
        let kind = WasmKind::detect(wasm).map_err(|reason| ImageError::NotWasm {
            reference: name.to_string(),
            reason,
        })?;
        let art = super::push::wasm_artifact(wasm, kind, None);
        let mut staging = self.staging()?;
        staging.stage_bytes(&art.manifest)?;
        staging.stage_bytes(&art.config)?;
        staging.stage_bytes(wasm)?;
        let record = ImageRecord {
            id: art.config_digest.clone(),
            repo_tags: r.tagged().into_iter().collect(),
            repo_digests: Vec::new(),
            size: 0,
            manifest_digest: art.manifest_digest.clone(),
            wasm_digest: art.wasm_digest.clone(),
            wasm_path: PathBuf::new(),
            kind,
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            env: Vec::new(),
            working_dir: None,
            annotations: BTreeMap::new(),
            labels: BTreeMap::new(),
            blobs: vec![art.manifest_digest, art.config_digest, art.wasm_digest],
        };
        self.commit(staging, record)
    }

    /// A fresh staging area for one pull or import.
    pub(crate) fn staging(&self) -> Result<Staging, ImageError> {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = self.inner.root.join("tmp").join(format!(
            "pull-{}-{nanos}-{}",
            std::process::id(),
            STAGING_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(ImageError::io(&dir))?;
        Ok(Staging {
            store: self.clone(),
            dir,
            files: 0,
            blobs: Vec::new(),
            pinned: Vec::new(),
        })
    }

    /// The stored image whose manifest is `manifest_digest`, if all its blobs are present.
    pub(crate) fn by_manifest(&self, manifest_digest: &str) -> Option<ImageRecord> {
        let mut st = self.lock();
        let _ = self.refresh(&mut st);
        st.images
            .iter()
            .find(|i| i.manifest_digest == manifest_digest)
            .filter(|i| i.blobs.iter().all(|b| self.blob_path(b).is_file()))
            .cloned()
    }

    /// Moves the staged (verified) blobs into place and records `record`: its tags move
    /// to it from any other image, images left without tags or digests are dropped.
    pub(crate) fn commit(
        &self,
        staging: Staging,
        mut record: ImageRecord,
    ) -> Result<ImageRecord, ImageError> {
        let mut st = self.lock();
        self.refresh(&mut st)?;
        // Every blob the record names is either staged or already stored (and pinned).
        for d in &record.blobs {
            let staged = staging.blobs.iter().any(|(sd, _, _)| sd == d);
            if !staged && !self.blob_path(d).is_file() {
                return Err(ImageError::Io {
                    path: self.blob_path(d),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("blob {d} is neither staged nor stored"),
                    ),
                });
            }
        }
        let blob_dir = self.inner.root.join("blobs/sha256");
        for (digest, path, _) in &staging.blobs {
            let dest = self.blob_path(digest);
            if dest.is_file() {
                continue;
            }
            std::fs::rename(path, &dest).map_err(ImageError::io(&dest))?;
        }
        sync_dir(&blob_dir).map_err(ImageError::io(&blob_dir))?;

        record.wasm_path = self.blob_path(&record.wasm_digest);
        record.size = record
            .blobs
            .iter()
            .filter_map(|d| std::fs::metadata(self.blob_path(d)).ok())
            .map(|m| m.len())
            .sum();

        let mut images = st.images.clone();
        for other in images.iter_mut().filter(|o| o.id != record.id) {
            other.repo_tags.retain(|t| !record.repo_tags.contains(t));
            other
                .repo_digests
                .retain(|t| !record.repo_digests.contains(t));
        }
        let (kept, dropped): (Vec<_>, Vec<_>) = images.into_iter().partition(|o| {
            o.id == record.id || !o.repo_tags.is_empty() || !o.repo_digests.is_empty()
        });
        let mut images = kept;
        let result = match images.iter_mut().find(|o| o.id == record.id) {
            Some(existing) => {
                let mut merged = record.clone();
                merged.repo_tags = union(&existing.repo_tags, &record.repo_tags);
                merged.repo_digests = union(&existing.repo_digests, &record.repo_digests);
                merged.blobs = union(&existing.blobs, &record.blobs);
                *existing = merged.clone();
                merged
            }
            None => {
                images.push(record.clone());
                record
            }
        };
        self.write_index(&mut st, &images)?;
        let candidates: Vec<String> = dropped.into_iter().flat_map(|d| d.blobs).collect();
        self.collect_garbage(&st, &candidates);
        drop(st);
        drop(staging);
        Ok(result)
    }
}

fn find(images: &[ImageRecord], s: &str) -> Option<usize> {
    let s = s.trim();
    if is_sha256_digest(s) {
        if let Some(i) = images.iter().position(|img| img.id == s) {
            return Some(i);
        }
    }
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        let id = format!("sha256:{s}");
        if let Some(i) = images.iter().position(|img| img.id == id) {
            return Some(i);
        }
    }
    if let Ok(r) = ImageReference::parse(s) {
        let found = match &r.digest {
            Some(d) => {
                let want = r.with_digest(d);
                images
                    .iter()
                    .position(|img| img.repo_digests.contains(&want))
            }
            None => r
                .tagged()
                .and_then(|t| images.iter().position(|img| img.repo_tags.contains(&t))),
        };
        if found.is_some() {
            return found;
        }
    }
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    if hex.len() >= 12 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let prefix = format!("sha256:{}", hex.to_ascii_lowercase());
        let mut hits = images
            .iter()
            .enumerate()
            .filter(|(_, img)| img.id.starts_with(&prefix));
        if let (Some((i, _)), None) = (hits.next(), hits.next()) {
            return Some(i);
        }
    }
    None
}

pub(crate) fn union(a: &[String], b: &[String]) -> Vec<String> {
    let mut out = a.to_vec();
    for x in b {
        if !out.contains(x) {
            out.push(x.clone());
        }
    }
    out
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Blobs of one pull or import on their way into the store. Dropping it removes
/// whatever was not committed and releases its pins.
pub(crate) struct Staging {
    store: ImageStore,
    dir: PathBuf,
    files: u64,
    /// (digest, staged path, size) of verified blobs.
    blobs: Vec<(String, PathBuf, u64)>,
    pinned: Vec<String>,
}

impl Staging {
    /// A new file path inside the staging directory.
    pub(crate) fn new_path(&mut self) -> PathBuf {
        self.files += 1;
        self.dir.join(format!("blob-{}", self.files))
    }

    /// Records a verified staged blob.
    pub(crate) fn add_verified(&mut self, digest: String, path: PathBuf, size: u64) {
        self.blobs.push((digest, path, size));
    }

    /// Stages `bytes`, returning their digest.
    pub(crate) fn stage_bytes(&mut self, bytes: &[u8]) -> Result<String, ImageError> {
        let digest = sha256_digest(bytes);
        if self.blobs.iter().any(|(d, _, _)| *d == digest) {
            return Ok(digest);
        }
        let path = self.new_path();
        let res = (|| {
            let mut f = std::fs::File::create(&path)?;
            f.write_all(bytes)?;
            f.sync_all()
        })();
        res.map_err(ImageError::io(&path))?;
        self.add_verified(digest.clone(), path, bytes.len() as u64);
        Ok(digest)
    }

    /// Drops a staged blob that is not to be kept (a tar layer once unpacked).
    pub(crate) fn forget(&mut self, digest: &str) {
        self.blobs.retain(|(d, p, _)| {
            if d == digest {
                let _ = std::fs::remove_file(p);
                false
            } else {
                true
            }
        });
    }

    /// The staged path of `digest`, if staged.
    pub(crate) fn staged_path(&self, digest: &str) -> Option<&Path> {
        self.blobs
            .iter()
            .find(|(d, _, _)| d == digest)
            .map(|(_, p, _)| p.as_path())
    }

    /// If `digest` is already stored, pins it for this pull and returns its path.
    pub(crate) fn reuse_stored(&mut self, digest: &str) -> Option<PathBuf> {
        let path = self.store.blob_path(digest);
        let mut st = self.store.lock();
        if path.is_file() {
            *st.pins.entry(digest.to_string()).or_default() += 1;
            self.pinned.push(digest.to_string());
            Some(path)
        } else {
            None
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.pinned.is_empty() {
            let mut st = self.store.lock();
            for d in self.pinned.drain(..) {
                if let Some(n) = st.pins.get_mut(&d) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        st.pins.remove(&d);
                    }
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("image store: removing {}: {e}", self.dir.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULE: &[u8] = b"\0asm\x01\0\0\0";

    fn module_with(n: u8) -> Vec<u8> {
        // An empty module plus one custom section named "k" holding `n`.
        let mut m = MODULE.to_vec();
        m.extend_from_slice(&[0, 3, 1, b'k', n]);
        m
    }

    #[test]
    fn import_get_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let a = store.import(&module_with(1), "app:v1").unwrap();
        assert_eq!(a.repo_tags, vec!["docker.io/library/app:v1".to_string()]);
        assert_eq!(a.kind, WasmKind::Module);
        assert_eq!(std::fs::read(&a.wasm_path).unwrap(), module_with(1));
        assert_eq!(store.get("app:v1").unwrap().id, a.id);
        assert_eq!(store.get("docker.io/library/app:v1").unwrap().id, a.id);
        assert_eq!(store.get(&a.id).unwrap().id, a.id);
        assert_eq!(store.get(&a.id["sha256:".len()..]).unwrap().id, a.id);
        assert_eq!(store.get(&a.id[7..20]).unwrap().id, a.id);
        assert!(store.get("app").is_none());
        assert!(store.get("app:v2").is_none());

        // A second tag of the same bytes is the same image.
        let a2 = store.import(&module_with(1), "app:latest").unwrap();
        assert_eq!(a2.id, a.id);
        assert_eq!(a2.repo_tags.len(), 2);
        assert_eq!(store.list().len(), 1);
        assert!(store.get("app").is_some());

        // Re-tagging moves the tag; the old image keeps its other tag.
        let b = store.import(&module_with(2), "app:latest").unwrap();
        assert_ne!(b.id, a.id);
        assert_eq!(store.list().len(), 2);
        assert_eq!(store.get("app:v1").unwrap().repo_tags.len(), 1);
        assert_eq!(store.get("app").unwrap().id, b.id);

        // Reopening reads the same index.
        let reopened = ImageStore::open(dir.path()).unwrap();
        assert_eq!(reopened.list(), store.list());

        // Removing the last tag removes the image and its blobs.
        let a_path = a.wasm_path.clone();
        store.remove("app:v1").unwrap();
        assert!(store.get(&a.id).is_none());
        assert!(!a_path.exists());
        assert_eq!(store.list().len(), 1);
        assert!(matches!(
            store.remove("app:v1"),
            Err(ImageError::NotFound { .. })
        ));
        store.remove(&b.id).unwrap();
        assert!(store.list().is_empty());
        let blobs = std::fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .count();
        assert_eq!(blobs, 0);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        let (bytes, inodes) = store.usage();
        assert!(bytes > 0 && inodes >= 4);
    }

    #[test]
    fn remove_one_of_two_tags_keeps_image() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let a = store.import(MODULE, "x:1").unwrap();
        store.import(MODULE, "x:2").unwrap();
        store.remove("x:1").unwrap();
        let left = store.get(&a.id).unwrap();
        assert_eq!(left.repo_tags, vec!["docker.io/library/x:2".to_string()]);
        assert!(left.wasm_path.is_file());
    }

    #[test]
    fn import_rejects_non_wasm() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let err = store.import(b"#!/bin/sh\necho hi\n", "x:1").unwrap_err();
        assert!(matches!(err, ImageError::NotWasm { .. }), "{err}");
        assert!(err.to_string().contains("\\0asm"), "{err}");
        assert!(store.list().is_empty());
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn component_kind() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path()).unwrap();
        let r = store.import(b"\0asm\x0d\0\x01\0", "c:1").unwrap();
        assert_eq!(r.kind, WasmKind::Component);
    }
}
