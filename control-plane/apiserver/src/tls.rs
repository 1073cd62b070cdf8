//! The cluster's PKI: a CA, the API server's serving certificate, an admin client
//! certificate, the admin kubeconfig and the node join token, all kept in the data dir
//! and reused across restarts.
//!
//! Layout of `DATA_DIR/tls/`: `ca.crt`, `ca.key`, `server.crt`, `server.key`,
//! `admin.crt`, `admin.key`, `apiserver-kubelet-client.crt`,
//! `apiserver-kubelet-client.key` (keys mode 0600). The serving certificate is re-issued when
//! its name set changes (new `--tls-san`, new hostname), when it was not signed by the
//! current CA, or when it is about to expire; everything else is reused as is.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SigningKey,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{debug, info};

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
    #[error("invalid certificate: {0}")]
    Certificate(String),
    #[error("tls configuration: {0}")]
    Config(String),
}

/// Validity of every certificate issued here.
const VALIDITY_DAYS: i64 = 3650;
/// Leaf certificates closer than this to expiry are re-issued at start-up.
const RENEW_BEFORE_DAYS: i64 = 30;
/// The user and group of the admin client certificate.
pub const ADMIN_USER: &str = "kelp-admin";
pub const ADMIN_GROUP: &str = "system:masters";
/// The user of the certificate the API server presents to kubelets (kubeadm's name).
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `data` to `path` atomically (temporary file + rename) with `mode`.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io(&tmp))?;
        // An existing temporary file keeps its old mode; force ours.
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io(&tmp))?;
        f.write_all(data).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn write_private(path: &Path, data: &str) -> Result<(), TlsError> {
    write_atomic(path, data.as_bytes(), 0o600)
}

fn write_public(path: &Path, data: &str) -> Result<(), TlsError> {
    write_atomic(path, data.as_bytes(), 0o644)
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(io(path))
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn validity(p: &mut CertificateParams) {
    let now = time_now();
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(VALIDITY_DAYS);
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
    validity(&mut p);
    Ok(p)
}

/// Certificates and keys of a cluster (PEM).
pub struct Pki {
    pub dir: PathBuf,
    pub ca_pem: String,
    ca_key: KeyPair,
    /// DER of the CA certificate's subject, the issuer of everything issued here.
    ca_subject_der: Vec<u8>,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    /// What the API server presents to kubelets (logs, exec, port-forward).
    pub kubelet_client_cert_pem: String,
    pub kubelet_client_key_pem: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The machine's host name, if it is usable as a DNS name.
fn hostname() -> Option<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()?;
    let h = raw.trim().to_ascii_lowercase();
    let valid = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        debug!(hostname = %h, "host name is not a DNS name; not added to the serving certificate");
    }
    valid.then_some(h)
}

/// Normalises a SAN: IPs in canonical form, DNS names lower-case.
fn normalize_san(s: &str) -> String {
    let s = s.trim();
    match s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        Ok(ip) => ip.to_string(),
        Err(_) => s.to_ascii_lowercase(),
    }
}

/// The serving certificate's names: loopback, `localhost`, the host name, the
/// in-cluster `kubernetes` service names and `extra`.
pub fn server_sans(extra: &[String]) -> Vec<String> {
    let mut sans: Vec<String> = [
        "127.0.0.1",
        "::1",
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    sans.extend(hostname());
    sans.extend(
        extra
            .iter()
            .map(|s| normalize_san(s))
            .filter(|s| !s.is_empty()),
    );
    let mut seen = BTreeSet::new();
    sans.retain(|s| seen.insert(s.clone()));
    sans
}

fn san(s: &str) -> Result<SanType, TlsError> {
    Ok(match s.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(
            s.try_into()
                .map_err(|_| TlsError::Config(format!("invalid DNS name {s:?} in SANs")))?,
        ),
    })
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn first_cert_der(pem: &str, what: &Path) -> Result<CertificateDer<'static>, TlsError> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| TlsError::Pem(what.to_path_buf()))
}

/// What a stored leaf certificate says about itself.
struct LeafInfo {
    issuer_der: Vec<u8>,
    sans: BTreeSet<String>,
    expires_soon: bool,
}

fn leaf_info(der: &[u8]) -> Result<LeafInfo, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let mut sans = BTreeSet::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    sans.insert(d.to_ascii_lowercase());
                }
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                        _ => None,
                    };
                    sans.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    let not_after = cert.validity().not_after.timestamp();
    let renew_at = (time_now() + time::Duration::days(RENEW_BEFORE_DAYS)).unix_timestamp();
    Ok(LeafInfo {
        issuer_der: cert.issuer().as_raw().to_vec(),
        sans,
        expires_soon: not_after < renew_at,
    })
}

// --- minimal DER, to give issued certificates the CA's exact issuer name and more than
// one Organization (rcgen keeps a single value per attribute type) ---

const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_O: &[u8] = &[0x55, 0x04, 0x0a];

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// Splits the first DER element off `buf`: (whole element, contents, rest).
fn der_split(buf: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let first = *buf.get(1)?;
    let (hdr, len) = if first < 0x80 {
        (2, first as usize)
    } else {
        let k = (first & 0x7f) as usize;
        if k == 0 || k > 4 {
            return None;
        }
        let len = buf
            .get(2..2 + k)?
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (2 + k, len)
    };
    let end = hdr.checked_add(len)?;
    let elem = buf.get(..end)?;
    Some((elem, &elem[hdr..], &buf[end..]))
}

/// `Name` DER: one RDN per group (O), then the CN, as kubeadm and openssl write them.
fn subject_der(cn: &str, groups: &[String]) -> Vec<u8> {
    let attr = |oid: &[u8], v: &str| {
        der(
            0x31,
            &der(0x30, &[der(0x06, oid), der(0x0c, v.as_bytes())].concat()),
        )
    };
    let mut rdns: Vec<u8> = groups.iter().flat_map(|g| attr(OID_O, g)).collect();
    rdns.extend(attr(OID_CN, cn));
    der(0x30, &rdns)
}

/// Re-signs `cert_der` with `issuer` and `subject` in place of its own names.
fn rewrite_names(
    cert_der: &[u8],
    issuer: &[u8],
    subject: &[u8],
    key: &KeyPair,
) -> Result<Vec<u8>, TlsError> {
    let bad = || TlsError::Certificate("unexpected certificate structure".into());
    let (_, cert, _) = der_split(cert_der).ok_or_else(bad)?;
    let (_, tbs, rest) = der_split(cert).ok_or_else(bad)?;
    let (sig_alg, _, _) = der_split(rest).ok_or_else(bad)?;
    // TBSCertificate: [0] version, serial, signature, issuer, validity, subject, ...
    let mut fields = Vec::new();
    let mut cur = tbs;
    while !cur.is_empty() {
        let (elem, _, next) = der_split(cur).ok_or_else(bad)?;
        fields.push(elem);
        cur = next;
    }
    if fields.len() < 7 || fields[0].first() != Some(&0xa0) {
        return Err(bad());
    }
    fields[3] = issuer;
    fields[5] = subject;
    let tbs = der(0x30, &fields.concat());
    let sig = key.sign(&tbs)?;
    let mut bits = vec![0u8];
    bits.extend_from_slice(&sig);
    Ok(der(
        0x30,
        &[tbs, sig_alg.to_vec(), der(0x03, &bits)].concat(),
    ))
}

impl Pki {
    /// Loads the PKI from `dir/tls`, creating what is missing. The serving certificate
    /// is re-issued when its names change; a new CA re-issues every leaf certificate.
    #[tracing::instrument(level = "debug", skip_all, fields(dir = %dir.display()))]
    pub fn load_or_create(dir: &Path, extra_sans: &[String]) -> Result<Pki, TlsError> {
        let tls = dir.join("tls");
        std::fs::create_dir_all(&tls).map_err(io(&tls))?;
        let ca_crt = tls.join("ca.crt");
        let ca_key_path = tls.join("ca.key");
        let (ca_pem, ca_key, ca_created) = if ca_crt.exists() && ca_key_path.exists() {
            let key_pem = read(&ca_key_path)?;
            let key =
                KeyPair::from_pem(&key_pem).map_err(|_| TlsError::Pem(ca_key_path.clone()))?;
            (read(&ca_crt)?, key, false)
        } else {
            let key = KeyPair::generate()?;
            let cert = ca_params()?.self_signed(&key)?;
            write_private(&ca_key_path, &key.serialize_pem())?;
            write_public(&ca_crt, &cert.pem())?;
            info!(path = %ca_crt.display(), "created cluster CA");
            (cert.pem(), key, true)
        };
        let ca_der = first_cert_der(&ca_pem, &ca_crt)?;
        let ca_subject_der = {
            let (_, ca) = x509_parser::parse_x509_certificate(ca_der.as_ref())
                .map_err(|e| TlsError::Certificate(format!("{}: {e}", ca_crt.display())))?;
            ca.subject().as_raw().to_vec()
        };
        let mut pki = Pki {
            dir: dir.to_path_buf(),
            ca_pem,
            ca_key,
            ca_subject_der,
            server_cert_pem: String::new(),
            server_key_pem: String::new(),
            admin_cert_pem: String::new(),
            admin_key_pem: String::new(),
            kubelet_client_cert_pem: String::new(),
            kubelet_client_key_pem: String::new(),
        };

        let sans = server_sans(extra_sans);
        let (crt, key) = (tls.join("server.crt"), tls.join("server.key"));
        match pki.reusable(&crt, &key, ca_created, Some(&sans))? {
            Some((c, k)) => (pki.server_cert_pem, pki.server_key_pem) = (c, k),
            None => {
                let (c, k) = pki.issue("kube-apiserver", &[], &sans, true)?;
                write_private(&key, &k)?;
                write_public(&crt, &c)?;
                info!(path = %crt.display(), sans = ?sans, "issued serving certificate");
                (pki.server_cert_pem, pki.server_key_pem) = (c, k);
            }
        }

        let (crt, key) = (tls.join("admin.crt"), tls.join("admin.key"));
        match pki.reusable(&crt, &key, ca_created, None)? {
            Some((c, k)) => (pki.admin_cert_pem, pki.admin_key_pem) = (c, k),
            None => {
                let (c, k) = pki.issue_client_cert(ADMIN_USER, &[ADMIN_GROUP.to_string()])?;
                write_private(&key, &k)?;
                write_public(&crt, &c)?;
                info!(path = %crt.display(), "issued admin client certificate");
                (pki.admin_cert_pem, pki.admin_key_pem) = (c, k);
            }
        }

        let (crt, key) = (
            tls.join("apiserver-kubelet-client.crt"),
            tls.join("apiserver-kubelet-client.key"),
        );
        match pki.reusable(&crt, &key, ca_created, None)? {
            Some((c, k)) => (pki.kubelet_client_cert_pem, pki.kubelet_client_key_pem) = (c, k),
            None => {
                let (c, k) =
                    pki.issue_client_cert(KUBELET_CLIENT_USER, &[ADMIN_GROUP.to_string()])?;
                write_private(&key, &k)?;
                write_public(&crt, &c)?;
                info!(path = %crt.display(), "issued kubelet client certificate");
                (pki.kubelet_client_cert_pem, pki.kubelet_client_key_pem) = (c, k);
            }
        }
        Ok(pki)
    }

    /// The stored certificate and key at `crt`/`key` if they can be kept: issued by
    /// the current CA, not about to expire and (for `sans`) naming exactly `sans`.
    fn reusable(
        &self,
        crt: &Path,
        key: &Path,
        ca_created: bool,
        sans: Option<&[String]>,
    ) -> Result<Option<(String, String)>, TlsError> {
        if ca_created || !crt.exists() || !key.exists() {
            return Ok(None);
        }
        let cert_pem = read(crt)?;
        let key_pem = read(key)?;
        let Ok(der) = first_cert_der(&cert_pem, crt) else {
            debug!(path = %crt.display(), "unreadable certificate; re-issuing");
            return Ok(None);
        };
        let Ok(info) = leaf_info(der.as_ref()) else {
            debug!(path = %crt.display(), "unparsable certificate; re-issuing");
            return Ok(None);
        };
        if info.issuer_der != self.ca_subject_der || info.expires_soon {
            debug!(path = %crt.display(), "certificate from another CA or expiring; re-issuing");
            return Ok(None);
        }
        if let Some(sans) = sans {
            let want: BTreeSet<String> = sans.iter().map(|s| normalize_san(s)).collect();
            if want != info.sans {
                debug!(path = %crt.display(), "names changed; re-issuing");
                return Ok(None);
            }
        }
        Ok(Some((cert_pem, key_pem)))
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
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = if server {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        p.use_authority_key_identifier_extension = true;
        validity(&mut p);
        let key = KeyPair::generate()?;
        let issuer = Issuer::new(ca_params()?, &self.ca_key);
        let cert = p.signed_by(&key, &issuer)?;
        let der = rewrite_names(
            cert.der(),
            &self.ca_subject_der,
            &subject_der(cn, groups),
            &self.ca_key,
        )?;
        Ok((pem_encode("CERTIFICATE", &der), key.serialize_pem()))
    }

    /// A client certificate (PEM certificate, PEM key) for user `cn` in `groups`
    /// (Kubernetes reads the CN as the user name and each O as a group).
    pub fn issue_client_cert(
        &self,
        cn: &str,
        groups: &[String],
    ) -> Result<(String, String), TlsError> {
        self.issue(cn, groups, &[], false)
    }

    /// The CA certificate (DER), e.g. for a client's root store.
    pub fn ca_der(&self) -> Result<CertificateDer<'static>, TlsError> {
        first_cert_der(&self.ca_pem, &self.dir.join("tls/ca.crt"))
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Writes an admin kubeconfig (mode 0600) for `server_url`: cluster, user and context
/// all named `name`, and `current-context: name`.
pub fn write_kubeconfig(
    path: &Path,
    server_url: &str,
    pki: &Pki,
    name: &str,
) -> Result<(), TlsError> {
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": name,
            "cluster": {
                "server": server_url,
                "certificate-authority-data": b64(&pki.ca_pem),
            },
        }],
        "users": [{
            "name": name,
            "user": {
                "client-certificate-data": b64(&pki.admin_cert_pem),
                "client-key-data": b64(&pki.admin_key_pem),
            },
        }],
        "contexts": [{
            "name": name,
            "context": {"cluster": name, "user": name, "namespace": "default"},
        }],
        "current-context": name,
        "preferences": {},
    });
    let text = serde_yaml::to_string(&doc).map_err(|e| TlsError::Config(e.to_string()))?;
    write_private(path, &text)
}

/// The node join token in `path`, created (`K10` + 64 hex digits, 256 random bits,
/// mode 0600) if missing or empty.
pub fn load_or_create_token(path: &Path) -> Result<String, TlsError> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(path)(e)),
    }
    let bytes: [u8; 32] = rand::random();
    let token = format!(
        "K10{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    write_private(path, &format!("{token}\n"))?;
    info!(path = %path.display(), "created node join token");
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

/// The API server's TLS settings (ring provider): ALPN `h2` and `http/1.1` (client-go
/// upgrades over HTTP/1.1), client certificates optional but, when presented, verified
/// against the cluster CA.
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

/// Accepts any kubelet serving certificate: kubelets serve self-signed certificates
/// by default, and upstream's API server does not verify them either unless
/// `--kubelet-certificate-authority` is set. The handshake signature is still
/// checked, so the session is bound to the key the kubelet presented.
#[derive(Debug)]
struct AnyKubeletCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyKubeletCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS settings the API server dials kubelets with: the kubelet client
/// certificate, HTTP/1.1 (streams are upgrades), kubelet certificates not verified
/// (see [`AnyKubeletCert`]).
pub fn kubelet_client_config(pki: &Pki) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyKubeletCert(provider)))
        .with_client_auth_cert(
            certs(&pki.kubelet_client_cert_pem)?,
            key(&pki.kubelet_client_key_pem)?,
        )
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "kelp-tls-{name}-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&d).expect("tmpdir");
        d
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    fn subject_of(pem: &str) -> (String, Vec<String>, Vec<u8>) {
        let der = first_cert_der(pem, Path::new("x")).expect("pem");
        let (_, c) = x509_parser::parse_x509_certificate(der.as_ref()).expect("parse");
        let cn = c
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or_default()
            .to_string();
        let orgs = c
            .subject()
            .iter_organization()
            .filter_map(|a| a.as_str().ok().map(String::from))
            .collect();
        (cn, orgs, c.issuer().as_raw().to_vec())
    }

    #[test]
    fn creates_then_reuses() {
        let d = tmpdir("reuse");
        let a = Pki::load_or_create(&d, &[]).expect("create");
        for f in ["ca.key", "server.key", "admin.key"] {
            assert_eq!(mode(&d.join("tls").join(f)), 0o600, "{f}");
        }
        for f in [
            "ca.crt",
            "server.crt",
            "admin.crt",
            "apiserver-kubelet-client.crt",
        ] {
            assert!(d.join("tls").join(f).exists(), "{f}");
        }
        let b = Pki::load_or_create(&d, &[]).expect("reload");
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.server_cert_pem, b.server_cert_pem);
        assert_eq!(a.admin_cert_pem, b.admin_cert_pem);
        assert_eq!(a.kubelet_client_cert_pem, b.kubelet_client_cert_pem);
        let (cn, _, _) = subject_of(&a.kubelet_client_cert_pem);
        assert_eq!(cn, KUBELET_CLIENT_USER);
        kubelet_client_config(&a).expect("kubelet client config");

        // A new SAN re-issues only the serving certificate.
        let c = Pki::load_or_create(&d, &["10.1.2.3".into(), "api.example.com".into()])
            .expect("new sans");
        assert_eq!(a.ca_pem, c.ca_pem);
        assert_ne!(a.server_cert_pem, c.server_cert_pem);
        assert_eq!(a.admin_cert_pem, c.admin_cert_pem);
        let der = first_cert_der(&c.server_cert_pem, Path::new("x")).expect("pem");
        let info = leaf_info(der.as_ref()).expect("info");
        for s in [
            "10.1.2.3",
            "api.example.com",
            "127.0.0.1",
            "::1",
            "localhost",
            "kubernetes.default.svc.cluster.local",
        ] {
            assert!(info.sans.contains(s), "{s} in {:?}", info.sans);
        }
        // Same names, other order/case: reused.
        let e = Pki::load_or_create(&d, &["API.example.com".into(), "10.1.2.3".into()])
            .expect("same sans");
        assert_eq!(c.server_cert_pem, e.server_cert_pem);
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn client_certs_carry_user_groups_and_ca_issuer() {
        let d = tmpdir("client");
        let pki = Pki::load_or_create(&d, &[]).expect("create");
        let (cn, orgs, issuer) = subject_of(&pki.admin_cert_pem);
        assert_eq!(cn, "kelp-admin");
        assert_eq!(orgs, vec!["system:masters"]);
        assert_eq!(issuer, pki.ca_subject_der);
        let (cert, key) = pki
            .issue_client_cert("system:node:n1", &["system:nodes".into(), "extra".into()])
            .expect("issue");
        let (cn, orgs, _) = subject_of(&cert);
        assert_eq!(cn, "system:node:n1");
        assert_eq!(orgs, vec!["system:nodes", "extra"]);
        assert!(key.contains("PRIVATE KEY"));
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn kubeconfig_and_token() {
        let d = tmpdir("kubeconfig");
        let pki = Pki::load_or_create(&d, &[]).expect("create");
        let p = d.join("kubeconfig");
        write_kubeconfig(&p, "https://127.0.0.1:6443", &pki, "kelp").expect("write");
        assert_eq!(mode(&p), 0o600);
        let v: serde_json::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&p).expect("read")).expect("yaml");
        assert_eq!(v["current-context"], "kelp");
        assert_eq!(v["clusters"][0]["name"], "kelp");
        assert_eq!(v["users"][0]["name"], "kelp");
        assert_eq!(v["contexts"][0]["context"]["user"], "kelp");
        assert_eq!(
            v["clusters"][0]["cluster"]["server"],
            "https://127.0.0.1:6443"
        );
        assert_eq!(
            v["clusters"][0]["cluster"]["certificate-authority-data"],
            b64(&pki.ca_pem)
        );

        let tp = d.join("node-token");
        let t = load_or_create_token(&tp).expect("token");
        assert!(t.starts_with("K10") && t.len() == 67, "{t}");
        assert_eq!(mode(&tp), 0o600);
        assert_eq!(load_or_create_token(&tp).expect("again"), t);
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn der_lengths() {
        for n in [0usize, 1, 127, 128, 255, 256, 70000] {
            let e = der(0x04, &vec![7u8; n]);
            let (elem, content, rest) = der_split(&e).expect("split");
            assert_eq!((elem.len(), content.len(), rest.len()), (e.len(), n, 0));
        }
    }

    #[test]
    fn server_config_builds() {
        let d = tmpdir("cfg");
        let pki = Pki::load_or_create(&d, &[]).expect("create");
        let cfg = server_config(&pki).expect("config");
        assert_eq!(
            cfg.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        std::fs::remove_dir_all(&d).ok();
    }
}
