//! Images against a real registry (Debian's `docker-registry`): every Wasm packaging
//! pulled and checked byte for byte, and each failure leaving the store as it was.

#[path = "support/registry.rs"]
mod registry;

use std::path::Path;

use kelp_runtime_wasm::image::{
    inspect, push, ImageError, ImageRecord, ImageStore, PullOptions, RegistryAuth, WasmKind,
};
use registry::Registry;
use serde_json::json;
use sha2::Digest as _;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// A WASI command module that prints `pulled <tag>`: every pulled module is run.
fn module(tag: &str) -> Vec<u8> {
    let line = format!("pulled {tag}\n");
    let wat = format!(
        r#"(module
             (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
             (memory (export "memory") 1)
             (data (i32.const 64) "{}")
             (func (export "_start")
               (i32.store (i32.const 0) (i32.const 64))
               (i32.store (i32.const 4) (i32.const {}))
               (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
        line.escape_default(),
        line.len()
    );
    wat::parse_str(wat).expect("fixture WAT")
}

/// A component header (layer 1) followed by a custom section.
fn component(tag: &str) -> Vec<u8> {
    let mut m = b"\0asm\x0d\0\x01\0".to_vec();
    let payload = [&[4u8][..], b"kelp", tag.as_bytes()].concat();
    m.push(0);
    m.push(payload.len() as u8);
    m.extend_from_slice(&payload);
    m
}

fn digest(b: &[u8]) -> String {
    let h = sha2::Sha256::digest(b);
    format!(
        "sha256:{}",
        h.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn desc(media_type: &str, bytes: &[u8]) -> serde_json::Value {
    json!({ "mediaType": media_type, "digest": digest(bytes), "size": bytes.len() })
}

/// Uploads `blobs` and then `manifest` (as `media_type`) to `registry/repo:tag` over the
/// registry API, returning the manifest digest.
async fn upload(
    registry: &Registry,
    repo: &str,
    tag: &str,
    blobs: &[&[u8]],
    manifest: &serde_json::Value,
    media_type: &str,
) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    });
    let reference =
        oci_client::Reference::with_tag(registry.addr.clone(), repo.to_string(), tag.to_string());
    let auth = match &registry.credentials {
        Some((u, p)) => oci_client::secrets::RegistryAuth::Basic(u.clone(), p.clone()),
        None => oci_client::secrets::RegistryAuth::Anonymous,
    };
    client
        .auth(&reference, &auth, oci_client::RegistryOperation::Push)
        .await
        .unwrap();
    for b in blobs {
        client
            .push_blob(&reference, b.to_vec(), &digest(b))
            .await
            .unwrap();
    }
    let body = serde_json::to_vec(manifest).unwrap();
    client
        .push_manifest_raw(&reference, body.clone(), media_type.parse().unwrap())
        .await
        .unwrap_or_else(|e| panic!("pushing manifest: {e}\n{}", registry.log()));
    digest(&body)
}

/// Uploads a single-layer image: `config` (as `config_type`) plus `layer` (as `layer_type`).
async fn upload_single(
    registry: &Registry,
    repo: &str,
    config_type: &str,
    config: &[u8],
    layer_type: &str,
    layer: &[u8],
) -> String {
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc(config_type, config),
        "layers": [desc(layer_type, layer)],
    });
    upload(
        registry,
        repo,
        "v1",
        &[config, layer],
        &manifest,
        OCI_MANIFEST,
    )
    .await
}

fn tar_layer(files: &[(&str, &[u8])], gzip: bool) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        builder.append_data(&mut h, path, *data).unwrap();
    }
    let tar = builder.into_inner().unwrap();
    if gzip {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&tar).unwrap();
        enc.finish().unwrap()
    } else {
        tar
    }
}

fn image_config(os: &str, arch: &str, entrypoint: &[&str], layer_tar: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": arch,
        "os": os,
        "config": {
            "Entrypoint": entrypoint,
            "Env": ["PATH=/", "GREETING=hi"],
            "WorkingDir": "/",
            "Labels": { "org.example": "kelp" },
        },
        "rootfs": { "type": "layers", "diff_ids": [digest(layer_tar)] },
    }))
    .unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: ImageStore,
    seed: ImageRecord,
}

/// A store holding one imported image, so "unchanged" means something.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("images")).unwrap();
    let seed = store.import(&module("seed"), "seed:v1").unwrap();
    Fixture {
        _dir: dir,
        store,
        seed,
    }
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|it| {
            it.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// (image list, blob file names, raw index file)
type Snapshot = (Vec<ImageRecord>, Vec<String>, Vec<u8>);

fn snapshot(store: &ImageStore) -> Snapshot {
    (
        store.list(),
        files_under(&store.root().join("blobs/sha256")),
        std::fs::read(store.root().join("images.json")).unwrap(),
    )
}

/// The store equals `before` and no staging or temp files are left.
fn assert_consistent(store: &ImageStore, before: &Snapshot) {
    let after = snapshot(store);
    assert_eq!(after.0, before.0, "image list changed");
    assert_eq!(after.1, before.1, "blobs changed");
    assert_eq!(after.2, before.2, "images.json changed");
    assert!(
        files_under(&store.root().join("tmp")).is_empty(),
        "staging files left: {:?}",
        files_under(&store.root().join("tmp"))
    );
    let stray: Vec<String> = files_under(store.root())
        .into_iter()
        .filter(|f| f.contains(".tmp"))
        .collect();
    assert!(stray.is_empty(), "temp files left: {stray:?}");
    // Every indexed blob is present.
    for img in &after.0 {
        for b in &img.blobs {
            assert!(store.blob_path(b).is_file(), "{b} of {} missing", img.id);
        }
    }
}

fn pull_opts() -> PullOptions {
    PullOptions::default()
}

async fn pull_ok(store: &ImageStore, reference: &str) -> ImageRecord {
    store
        .pull(reference, &RegistryAuth::Anonymous, &pull_opts())
        .await
        .unwrap_or_else(|e| panic!("pull {reference}: {e}"))
}

async fn pull_err(store: &ImageStore, reference: &str, opts: &PullOptions) -> ImageError {
    let before = snapshot(store);
    let err = store
        .pull(reference, &RegistryAuth::Anonymous, opts)
        .await
        .expect_err("pull should fail");
    eprintln!("pull {reference}: {err}");
    assert_consistent(store, &before);
    err
}

fn check_pulled(rec: &ImageRecord, wasm: &[u8], kind: WasmKind) {
    assert_eq!(std::fs::read(&rec.wasm_path).unwrap(), wasm);
    assert_eq!(rec.wasm_digest, digest(wasm));
    assert_eq!(rec.kind, kind);
    if kind == WasmKind::Module {
        run_pulled(rec);
    }
}

/// Runs a pulled command module from the store and checks what it printed.
fn run_pulled(rec: &ImageRecord) {
    use kelp_runtime_wasm::{Allocation, ContainerSpec, StopHandle, WasmEngine};
    let engine = WasmEngine::with_allocation(None, Allocation::OnDemand).unwrap();
    let artifact = engine
        .compile(&std::fs::read(&rec.wasm_path).unwrap())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = ContainerSpec {
        args: vec!["app".into()],
        log_path: dir.path().join("0.log"),
        ..Default::default()
    };
    // Its own thread and runtime: the callers are async tests.
    let exit = std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(kelp_runtime_wasm::container::run(
                &engine,
                &artifact,
                &spec,
                &StopHandle::default(),
            ))
        })
        .join()
        .unwrap()
    })
    .unwrap();
    assert_eq!(exit.code, 0, "{exit:?}");
    let log = std::fs::read_to_string(dir.path().join("0.log")).unwrap();
    assert!(log.contains(" stdout F pulled "), "{log}");
}

#[tokio::test]
async fn cncf_artifact_pushed_and_pulled() {
    let reg = Registry::start();
    let f = fixture();
    let wasm = module("cncf");
    let reference = format!("{}/apps/hello:v1", reg.addr);
    let manifest_digest = push(&wasm, &reference, &RegistryAuth::Anonymous, &[])
        .await
        .unwrap();
    let rec = pull_ok(&f.store, &reference).await;
    check_pulled(&rec, &wasm, WasmKind::Module);
    assert_eq!(rec.repo_tags, vec![reference.clone()]);
    assert_eq!(
        rec.repo_digests,
        vec![format!("{}/apps/hello@{manifest_digest}", reg.addr)]
    );
    assert_eq!(rec.manifest_digest, manifest_digest);
    assert_eq!(f.store.get(&reference).unwrap().id, rec.id);
    assert_eq!(f.store.get(&rec.repo_digests[0]).unwrap().id, rec.id);
    assert_eq!(f.store.list().len(), 2);
    assert!(rec.size >= wasm.len() as u64);

    // The published manifest and config follow the CNCF layout.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.store.blob_path(&manifest_digest)).unwrap())
            .unwrap();
    assert_eq!(
        manifest["artifactType"],
        "application/vnd.wasm.config.v0+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.store.blob_path(config_digest)).unwrap()).unwrap();
    assert_eq!(config["os"], "wasip1");
    assert_eq!(config["architecture"], "wasm");
    assert_eq!(config["layerDigests"][0], digest(&wasm));
    assert!(config["created"].is_string());
    assert_eq!(rec.id, config_digest);

    // Pulling by digest finds the same image; a second pull changes nothing.
    let by_digest = pull_ok(&f.store, &rec.repo_digests[0]).await;
    assert_eq!(by_digest.id, rec.id);
    let again = pull_ok(&f.store, &reference).await;
    assert_eq!(again.id, rec.id);
    assert_eq!(f.store.list().len(), 2);

    // remove drops it and its blobs; the seed stays.
    f.store.remove(&reference).unwrap();
    assert!(!rec.wasm_path.exists());
    assert_eq!(f.store.list(), vec![f.seed.clone()]);
}

#[tokio::test]
async fn cncf_component_is_a_component() {
    let reg = Registry::start();
    let f = fixture();
    let wasm = component("p2");
    let reference = format!("{}/apps/comp:v1", reg.addr);
    let d = push(&wasm, &reference, &RegistryAuth::Anonymous, &[])
        .await
        .unwrap();
    let rec = pull_ok(&f.store, &reference).await;
    check_pulled(&rec, &wasm, WasmKind::Component);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.store.blob_path(&d)).unwrap()).unwrap();
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            f.store
                .blob_path(manifest["config"]["digest"].as_str().unwrap()),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(config["os"], "wasip2");
}

/// (repository, config media type, config, layer media type, module, kind)
type Case = (
    &'static str,
    &'static str,
    Vec<u8>,
    &'static str,
    Vec<u8>,
    WasmKind,
);

#[tokio::test]
async fn every_wasm_layer_packaging() {
    let reg = Registry::start();
    let f = fixture();
    let wasi_config = serde_json::to_vec(
        &json!({"architecture": "wasm", "os": "wasi", "config": {"Entrypoint": ["/app.wasm"]}}),
    )
    .unwrap();
    let cases: Vec<Case> = vec![
        (
            "runwasi-component",
            OCI_CONFIG,
            wasi_config.clone(),
            "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
            component("runwasi"),
            WasmKind::Component,
        ),
        (
            "runwasi-module",
            OCI_CONFIG,
            wasi_config.clone(),
            "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
            module("runwasi-module"),
            WasmKind::Module,
        ),
        (
            "w3c-module",
            OCI_CONFIG,
            wasi_config.clone(),
            "application/vnd.w3c.wasm.module.v1+wasm",
            module("w3c"),
            WasmKind::Module,
        ),
        (
            "w3c-component",
            OCI_CONFIG,
            wasi_config.clone(),
            "application/vnd.w3c.wasm.component.v1+wasm",
            component("w3c"),
            WasmKind::Component,
        ),
        (
            "wasm-to-oci",
            "application/vnd.wasm.config.v1+json",
            b"{}".to_vec(),
            "application/vnd.wasm.content.layer.v1+wasm",
            module("krustlet"),
            WasmKind::Module,
        ),
        (
            "solo",
            "application/vnd.module.wasm.config.v1+json",
            b"{}".to_vec(),
            "application/vnd.module.wasm.content.layer.v1+wasm",
            module("istio"),
            WasmKind::Module,
        ),
    ];
    let mut ids = Vec::new();
    for (repo, config_type, config, layer_type, wasm, kind) in &cases {
        upload_single(&reg, repo, config_type, config, layer_type, wasm).await;
        let rec = pull_ok(&f.store, &format!("{}/{repo}:v1", reg.addr)).await;
        check_pulled(&rec, wasm, *kind);
        ids.push(rec.id);
    }
    // Images sharing a `{}` config are still distinct images.
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), cases.len());
    assert_eq!(f.store.list().len(), cases.len() + 1);
    let runwasi = f
        .store
        .get(&format!("{}/runwasi-component:v1", reg.addr))
        .unwrap();
    assert_eq!(runwasi.entrypoint, vec!["/app.wasm".to_string()]);
}

#[tokio::test]
async fn plain_oci_image_with_tar_layer() {
    let reg = Registry::start();
    let f = fixture();
    let wasm = module("tar");

    // gzip layer, linux platform, entrypoint names the .wasm (docker build FROM scratch).
    let layer = tar_layer(
        &[
            ("etc/motd", b"hello\n"),
            ("app.wasm", &wasm),
            ("other.wasm", &module("x")),
        ],
        true,
    );
    let config = image_config("linux", "amd64", &["/app.wasm", "--flag"], &layer);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc(OCI_CONFIG, &config),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", &layer)],
    });
    upload(
        &reg,
        "plain/app",
        "v1",
        &[&config, &layer],
        &manifest,
        OCI_MANIFEST,
    )
    .await;
    let plain = format!("{}/plain/app:v1", reg.addr);
    inspect(&plain, &RegistryAuth::Anonymous, &pull_opts())
        .await
        .expect("a wasi/wasm image with tar layers is a Wasm image");
    let rec = pull_ok(&f.store, &plain).await;
    check_pulled(&rec, &wasm, WasmKind::Module);
    assert_eq!(rec.id, digest(&config));
    assert_eq!(
        rec.entrypoint,
        vec!["/app.wasm".to_string(), "--flag".to_string()]
    );
    assert_eq!(
        rec.env,
        vec!["PATH=/".to_string(), "GREETING=hi".to_string()]
    );
    assert_eq!(rec.working_dir.as_deref(), Some("/"));
    assert_eq!(
        rec.labels.get("org.example").map(String::as_str),
        Some("kelp")
    );
    // The tar layer itself is not kept: manifest, config and module only.
    assert_eq!(rec.blobs.len(), 3);
    assert!(!f.store.blob_path(&digest(&layer)).exists());

    // Uncompressed Docker layer, wasi/wasm platform, Cmd naming a nested path.
    let wasm2 = component("tar2");
    let layer2 = tar_layer(&[("./bin/svc.wasm", &wasm2)], false);
    let config2 = serde_json::to_vec(&json!({
        "architecture": "wasm", "os": "wasi",
        "config": { "Cmd": ["/bin/svc.wasm"] },
        "rootfs": { "type": "layers", "diff_ids": [digest(&layer2)] },
    }))
    .unwrap();
    let manifest2 = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": desc("application/vnd.docker.container.image.v1+json", &config2),
        "layers": [desc("application/vnd.docker.image.rootfs.diff.tar", &layer2)],
    });
    upload(
        &reg,
        "plain/svc",
        "v1",
        &[&config2, &layer2],
        &manifest2,
        "application/vnd.docker.distribution.manifest.v2+json",
    )
    .await;
    let rec2 = pull_ok(&f.store, &format!("{}/plain/svc:v1", reg.addr)).await;
    check_pulled(&rec2, &wasm2, WasmKind::Component);
    assert_eq!(rec2.cmd, vec!["/bin/svc.wasm".to_string()]);
}

#[tokio::test]
async fn multi_arch_index_picks_wasi_wasm() {
    let reg = Registry::start();
    let f = fixture();
    // linux/amd64: a junk ELF in a tar layer.
    let junk = tar_layer(&[("bin/sh", b"\x7fELF\x02\x01\x01junk")], true);
    let linux_config = image_config("linux", "amd64", &["/bin/sh"], &junk);
    let linux_manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": desc(OCI_CONFIG, &linux_config),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", &junk)],
    });
    let linux_digest = upload(
        &reg,
        "multi",
        "linux",
        &[&linux_config, &junk],
        &linux_manifest,
        OCI_MANIFEST,
    )
    .await;
    let linux_len = serde_json::to_vec(&linux_manifest).unwrap().len();
    // wasi/wasm: a CNCF artifact pushed by `push`.
    let wasm = module("multi");
    let wasm_ref = format!("{}/multi:wasm", reg.addr);
    let wasm_digest = push(&wasm, &wasm_ref, &RegistryAuth::Anonymous, &[])
        .await
        .unwrap();
    let wasm_len = std::fs::read(reg.blob_data_path(&wasm_digest))
        .unwrap()
        .len();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            { "mediaType": OCI_MANIFEST, "digest": linux_digest, "size": linux_len,
              "platform": { "os": "linux", "architecture": "amd64" } },
            { "mediaType": OCI_MANIFEST, "digest": wasm_digest, "size": wasm_len,
              "platform": { "os": "wasi", "architecture": "wasm" } },
        ],
    });
    let index_digest = upload(&reg, "multi", "v1", &[], &index, OCI_INDEX).await;
    let rec = pull_ok(&f.store, &format!("{}/multi:v1", reg.addr)).await;
    check_pulled(&rec, &wasm, WasmKind::Module);
    assert_eq!(rec.manifest_digest, wasm_digest);
    assert_eq!(
        rec.repo_digests,
        vec![format!("{}/multi@{index_digest}", reg.addr)]
    );
    assert!(rec.blobs.contains(&index_digest));

    // The linux image alone is not WebAssembly.
    let err = pull_err(&f.store, &format!("{}/multi:linux", reg.addr), &pull_opts()).await;
    assert!(matches!(err, ImageError::NotWasm { .. }), "{err}");
    assert!(err.to_string().contains("linux/amd64"), "{err}");

    // An index without a wasi/wasm entry (and more than one entry) is refused clearly.
    let linux_only = json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            { "mediaType": OCI_MANIFEST, "digest": linux_digest, "size": linux_len,
              "platform": { "os": "linux", "architecture": "amd64" } },
            { "mediaType": OCI_MANIFEST, "digest": linux_digest, "size": linux_len,
              "platform": { "os": "linux", "architecture": "arm64" } },
        ],
    });
    upload(&reg, "multi", "linux-only", &[], &linux_only, OCI_INDEX).await;
    let err = pull_err(
        &f.store,
        &format!("{}/multi:linux-only", reg.addr),
        &pull_opts(),
    )
    .await;
    assert!(matches!(err, ImageError::NotWasm { .. }), "{err}");
    assert!(err.to_string().contains("no wasi/wasm entry"), "{err}");

    // Inspecting (manifests and config only) tells the same apart.
    let kind = |tag: &str| {
        let r = format!("{}/multi:{tag}", reg.addr);
        async move { inspect(&r, &RegistryAuth::Anonymous, &pull_opts()).await }
    };
    for tag in ["v1", "wasm"] {
        assert!(kind(tag).await.is_ok(), "{tag}");
    }
    for tag in ["linux", "linux-only"] {
        let err = kind(tag).await.unwrap_err();
        assert!(matches!(err, ImageError::NotWasm { .. }), "{tag}: {err}");
    }
    let err = kind("absent").await.unwrap_err();
    assert!(!matches!(err, ImageError::NotWasm { .. }), "{err}");
}

#[tokio::test]
async fn size_mismatches_are_refused() {
    let reg = Registry::start();
    let f = fixture();
    let wasm = module("sizes");
    let config = b"{}".to_vec();
    // Manifest declares more bytes than the blob has: truncated.
    let manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": desc("application/vnd.wasm.config.v1+json", &config),
        "layers": [{ "mediaType": "application/wasm", "digest": digest(&wasm), "size": wasm.len() + 10 }],
    });
    upload(
        &reg,
        "sizes",
        "long",
        &[&config, &wasm],
        &manifest,
        OCI_MANIFEST,
    )
    .await;
    let err = pull_err(&f.store, &format!("{}/sizes:long", reg.addr), &pull_opts()).await;
    assert!(matches!(err, ImageError::SizeMismatch { .. }), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");
    assert!(err.to_string().contains(&digest(&wasm)), "{err}");

    // Manifest declares fewer bytes than the blob has.
    let manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": desc("application/vnd.wasm.config.v1+json", &config),
        "layers": [{ "mediaType": "application/wasm", "digest": digest(&wasm), "size": wasm.len() - 3 }],
    });
    upload(
        &reg,
        "sizes",
        "short",
        &[&config, &wasm],
        &manifest,
        OCI_MANIFEST,
    )
    .await;
    let err = pull_err(&f.store, &format!("{}/sizes:short", reg.addr), &pull_opts()).await;
    assert!(matches!(err, ImageError::SizeMismatch { .. }), "{err}");
}

#[tokio::test]
async fn corrupted_blob_is_a_digest_mismatch() {
    let reg = Registry::start();
    let f = fixture();
    let wasm = module("corrupt-me");
    let reference = format!("{}/corrupt:v1", reg.addr);
    push(&wasm, &reference, &RegistryAuth::Anonymous, &[])
        .await
        .unwrap();
    // The registry now serves other bytes of the same length under the module's digest.
    let path = reg.blob_data_path(&digest(&wasm));
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let err = pull_err(&f.store, &reference, &pull_opts()).await;
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("expected {}", digest(&wasm))),
        "{msg}"
    );
    assert!(msg.contains(&format!("got {}", digest(&bytes))), "{msg}");
}

#[tokio::test]
async fn non_wasm_layers_are_refused() {
    let reg = Registry::start();
    let f = fixture();
    let config = b"{}".to_vec();
    // An application/wasm layer that is an ELF binary.
    upload_single(
        &reg,
        "notwasm/elf",
        "application/vnd.wasm.config.v0+json",
        &config,
        "application/wasm",
        b"\x7fELF\x02\x01\x01\0\0\0\0\0",
    )
    .await;
    let err = pull_err(
        &f.store,
        &format!("{}/notwasm/elf:v1", reg.addr),
        &pull_opts(),
    )
    .await;
    assert!(matches!(err, ImageError::NotWasm { .. }), "{err}");
    assert!(err.to_string().contains("\\0asm"), "{err}");

    // A layer of an unknown media type.
    upload_single(
        &reg,
        "notwasm/octet",
        "application/vnd.wasm.config.v0+json",
        &config,
        "application/octet-stream",
        &module("octet"),
    )
    .await;
    let err = pull_err(
        &f.store,
        &format!("{}/notwasm/octet:v1", reg.addr),
        &pull_opts(),
    )
    .await;
    assert!(matches!(err, ImageError::NotWasm { .. }), "{err}");
    assert!(
        err.to_string().contains("application/octet-stream"),
        "{err}"
    );

    // A plain image whose entrypoint file is missing from its layer.
    let layer = tar_layer(&[("other.txt", b"x")], true);
    let cfg = image_config("wasi", "wasm", &["/app.wasm"], &layer);
    upload_single(
        &reg,
        "notwasm/missing",
        OCI_CONFIG,
        &cfg,
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &layer,
    )
    .await;
    let err = pull_err(
        &f.store,
        &format!("{}/notwasm/missing:v1", reg.addr),
        &pull_opts(),
    )
    .await;
    assert!(matches!(err, ImageError::NotWasm { .. }), "{err}");
    assert!(err.to_string().contains("/app.wasm"), "{err}");
}

#[tokio::test]
async fn limits_are_enforced() {
    let reg = Registry::start();
    let f = fixture();
    let wasm = module("limits");
    let reference = format!("{}/limits:v1", reg.addr);
    push(&wasm, &reference, &RegistryAuth::Anonymous, &[])
        .await
        .unwrap();
    let opts = PullOptions {
        max_manifest_bytes: 100,
        ..PullOptions::default()
    };
    let err = pull_err(&f.store, &reference, &opts).await;
    assert!(matches!(err, ImageError::ManifestTooLarge { .. }), "{err}");
    assert!(err.to_string().contains("limit is 100"), "{err}");

    let opts = PullOptions {
        max_module_bytes: 8,
        ..PullOptions::default()
    };
    let err = pull_err(&f.store, &reference, &opts).await;
    assert!(matches!(err, ImageError::BlobTooLarge { .. }), "{err}");
}

#[tokio::test]
async fn unreachable_registry_names_the_host() {
    let f = fixture();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let host = format!("127.0.0.1:{port}");
    let err = pull_err(&f.store, &format!("{host}/app:v1"), &pull_opts()).await;
    assert!(matches!(err, ImageError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains(&host), "{err}");

    let err = push(
        &module("x"),
        &format!("{host}/app:v1"),
        &RegistryAuth::Anonymous,
        &[],
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ImageError::Unreachable { .. }), "{err}");
}

#[tokio::test]
async fn missing_image_is_not_found() {
    let reg = Registry::start();
    let f = fixture();
    push(
        &module("nf"),
        &format!("{}/nf:v1", reg.addr),
        &RegistryAuth::Anonymous,
        &[],
    )
    .await
    .unwrap();
    let err = pull_err(&f.store, &format!("{}/nf:nope", reg.addr), &pull_opts()).await;
    assert!(matches!(err, ImageError::NotFound { .. }), "{err}");
    let err = pull_err(&f.store, &format!("{}/other:v1", reg.addr), &pull_opts()).await;
    assert!(matches!(err, ImageError::NotFound { .. }), "{err}");
}

#[tokio::test]
async fn basic_auth_registry() {
    let reg = Registry::start_with_auth("kelp", "s3cret");
    let f = fixture();
    let wasm = module("auth");
    let reference = format!("{}/private/app:v1", reg.addr);
    let creds = RegistryAuth::Basic("kelp".into(), "s3cret".into());

    let err = push(&wasm, &reference, &RegistryAuth::Anonymous, &[])
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");
    push(&wasm, &reference, &creds, &[]).await.unwrap();

    let err = pull_err(&f.store, &reference, &pull_opts()).await;
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains(&reg.addr), "{err}");

    let before = snapshot(&f.store);
    let wrong = RegistryAuth::Basic("kelp".into(), "wrong".into());
    let err = f
        .store
        .pull(&reference, &wrong, &pull_opts())
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err}");
    assert_consistent(&f.store, &before);

    let rec = f
        .store
        .pull(&reference, &creds, &pull_opts())
        .await
        .unwrap();
    check_pulled(&rec, &wasm, WasmKind::Module);
}

#[test]
fn import_get_list_remove() {
    let f = fixture();
    let store = &f.store;
    assert_eq!(store.get("seed:v1").unwrap(), f.seed);
    assert_eq!(store.get("docker.io/library/seed:v1").unwrap(), f.seed);
    assert_eq!(store.get(&f.seed.id).unwrap(), f.seed);
    assert!(
        store.get("seed").is_none(),
        "seed:latest was never imported"
    );

    let rec = store
        .import(&component("imp"), "example.com/team/app:1.0")
        .unwrap();
    assert_eq!(rec.kind, WasmKind::Component);
    assert_eq!(rec.repo_tags, vec!["example.com/team/app:1.0".to_string()]);
    assert_eq!(std::fs::read(&rec.wasm_path).unwrap(), component("imp"));
    assert_eq!(store.list().len(), 2);

    // Importing under another name keeps one image with two tags.
    let again = store.import(&component("imp"), "app2").unwrap();
    assert_eq!(again.id, rec.id);
    assert_eq!(store.get("app2:latest").unwrap().repo_tags.len(), 2);
    assert_eq!(store.list().len(), 2);

    // A fresh handle on the same root sees the same images.
    let reopened = ImageStore::open(store.root()).unwrap();
    assert_eq!(reopened.list(), store.list());

    store.remove("app2").unwrap();
    assert!(store.get("app2").is_none());
    assert!(
        rec.wasm_path.is_file(),
        "still tagged example.com/team/app:1.0"
    );
    store.remove(&rec.id).unwrap();
    assert!(!rec.wasm_path.exists());
    assert_eq!(store.list(), vec![f.seed.clone()]);
    assert!(matches!(
        store.remove("nothing:here"),
        Err(ImageError::NotFound { .. })
    ));

    let err = store.import(b"not wasm", "bad:1").unwrap_err();
    assert!(matches!(err, ImageError::NotWasm { .. }), "{err}");
    let err = store.import(&module("x"), "Bad Name").unwrap_err();
    assert!(matches!(err, ImageError::InvalidReference { .. }), "{err}");

    let (bytes, inodes) = store.usage();
    assert!(bytes >= f.seed.size && inodes > 3);
}
