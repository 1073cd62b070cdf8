//! The cluster's PKI: a CA, the API server's serving certificate, an admin client
//! certificate, the admin kubeconfig and the node join token, all kept in the data dir
//! and reused across restarts.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid PEM in {0}")]
    Pem(PathBuf),
    #[error("tls configuration: {0}")]
    Config(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_private(path: &Path, data: &str) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(data.as_bytes()).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "kelp-ca");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time_now();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(3650);
    Ok(p)
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// Certificates and keys of a cluster.
pub struct Pki {
    pub dir: PathBuf,
    pub ca_pem: String,
    ca_key: KeyPair,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn server_sans(extra: &[String]) -> Vec<String> {
    let mut sans: Vec<String> = vec![
        "127.0.0.1".into(),
        "::1".into(),
        "localhost".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
    ];
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            sans.push(h.to_string());
        }
    }
    for s in extra {
        if !sans.contains(s) {
            sans.push(s.clone());
        }
    }
    sans
}

fn san(s: &str) -> Result<SanType, TlsError> {
    Ok(match s.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(
            s.try_into()
                .map_err(|_| TlsError::Config(format!("invalid DNS name {s:?}")))?,
        ),
    })
}

impl Pki {
    /// Loads the PKI from `dir/tls`, creating what is missing. The serving certificate
    /// is re-issued when its names change.
    pub fn load_or_create(dir: &Path, extra_sans: &[String]) -> Result<Pki, TlsError> {
        let tls = dir.join("tls");
        std::fs::create_dir_all(&tls).map_err(io(&tls))?;
        let ca_crt = tls.join("ca.crt");
        let ca_key_path = tls.join("ca.key");
        let (ca_pem, ca_key) = if ca_crt.exists() && ca_key_path.exists() {
            let key_pem = std::fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
            let key =
                KeyPair::from_pem(&key_pem).map_err(|_| TlsError::Pem(ca_key_path.clone()))?;
            (std::fs::read_to_string(&ca_crt).map_err(io(&ca_crt))?, key)
        } else {
            let key = KeyPair::generate()?;
            let cert = ca_params()?.self_signed(&key)?;
            write_private(&ca_key_path, &key.serialize_pem())?;
            std::fs::write(&ca_crt, cert.pem()).map_err(io(&ca_crt))?;
            (cert.pem(), key)
        };
        let mut pki = Pki {
            dir: dir.to_path_buf(),
            ca_pem,
            ca_key,
            server_cert_pem: String::new(),
            server_key_pem: String::new(),
            admin_cert_pem: String::new(),
            admin_key_pem: String::new(),
        };
        let sans = server_sans(extra_sans);
        let sans_file = tls.join("server.sans");
        let same_sans =
            std::fs::read_to_string(&sans_file).ok().as_deref() == Some(sans.join("\n").as_str());
        let (crt, key) = (tls.join("server.crt"), tls.join("server.key"));
        if same_sans && crt.exists() && key.exists() {
            pki.server_cert_pem = std::fs::read_to_string(&crt).map_err(io(&crt))?;
            pki.server_key_pem = std::fs::read_to_string(&key).map_err(io(&key))?;
        } else {
            let (c, k) = pki.issue("kube-apiserver", &[], &sans, true)?;
            write_private(&key, &k)?;
            std::fs::write(&crt, &c).map_err(io(&crt))?;
            std::fs::write(&sans_file, sans.join("\n")).map_err(io(&sans_file))?;
            pki.server_cert_pem = c;
            pki.server_key_pem = k;
        }
        let (crt, key) = (tls.join("admin.crt"), tls.join("admin.key"));
        if crt.exists() && key.exists() {
            pki.admin_cert_pem = std::fs::read_to_string(&crt).map_err(io(&crt))?;
            pki.admin_key_pem = std::fs::read_to_string(&key).map_err(io(&key))?;
        } else {
            let (c, k) = pki.issue_client_cert("kelp-admin", &["system:masters".to_string()])?;
            write_private(&key, &k)?;
            std::fs::write(&crt, &c).map_err(io(&crt))?;
            pki.admin_cert_pem = c;
            pki.admin_key_pem = k;
        }
        Ok(pki)
    }

    fn issue(
        &self,
        cn: &str,
        groups: &[String],
        sans: &[String],
        server: bool,
    ) -> Result<(String, String), TlsError> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.subject_alt_names = sans.iter().map(|s| san(s)).collect::<Result<_, _>>()?;
        let mut dn = DistinguishedName::new();
        for g in groups {
            dn.push(DnType::OrganizationName, g.as_str());
        }
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = if server {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        let now = time_now();
        p.not_before = now - time::Duration::days(1);
        p.not_after = now + time::Duration::days(3650);
        let key = KeyPair::generate()?;
        let issuer = Issuer::new(ca_params()?, &self.ca_key);
        let cert = p.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A client certificate for `cn` in `groups` (user name and groups in Kubernetes).
    pub fn issue_client_cert(
        &self,
        cn: &str,
        groups: &[String],
    ) -> Result<(String, String), TlsError> {
        self.issue(cn, groups, &[], false)
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Writes an admin kubeconfig (mode 0600) for `server_url`.
pub fn write_kubeconfig(
    path: &Path,
    server_url: &str,
    pki: &Pki,
    name: &str,
) -> Result<(), TlsError> {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: {server_url}\n    certificate-authority-data: {ca}\nusers:\n- name: {name}-admin\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}-admin\n    namespace: default\ncurrent-context: {name}\npreferences: {{}}\n",
        ca = b64(&pki.ca_pem),
        cert = b64(&pki.admin_cert_pem),
        key = b64(&pki.admin_key_pem),
    );
    write_private(path, &text)
}

/// The node join token in `path`, created (random, 256 bits) if missing.
pub fn load_or_create_token(path: &Path) -> Result<String, TlsError> {
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let bytes: [u8; 32] = rand::random();
    let token = format!(
        "K10{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    write_private(path, &format!("{token}\n"))?;
    Ok(token)
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Config(e.to_string()))
}

fn key(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| TlsError::Config(e.to_string()))?
        .ok_or_else(|| TlsError::Config("no private key".into()))
}

/// The API server's TLS settings: ALPN h2 and http/1.1 (client-go upgrades over
/// HTTP/1.1), client certificates optional but verified against the cluster CA.
pub fn server_config(pki: &Pki) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&pki.ca_pem)? {
        roots.add(c).map_err(|e| TlsError::Config(e.to_string()))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&pki.server_cert_pem)?, key(&pki.server_key_pem)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
