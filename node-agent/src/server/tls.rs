//! The kubelet server's TLS: a self-signed serving certificate per node (upstream's
//! default when no `--tls-cert-file` is given: SANs the node IP and hostname), and
//! client certificates verified against the cluster CA the node trusts.
//!
//! Clients without a certificate still complete the handshake (the verifier allows
//! anonymous clients) so that `/healthz` stays open; every other path answers 401 to
//! them (see [`super::serve`]).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::ServerError;

fn tls_err(e: impl std::fmt::Display) -> ServerError {
    ServerError::Tls(e.to_string())
}

/// A self-signed serving certificate and its key (PEM).
pub struct ServingCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Issues the node's self-signed serving certificate for `node_ip` and `hostname`
/// (CN `<hostname>@<unix time>`, as upstream names it).
pub fn self_signed(node_ip: IpAddr, hostname: &str) -> Result<ServingCert, ServerError> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    let mut sans = vec![SanType::IpAddress(node_ip)];
    if let Ok(name) = hostname.to_string().try_into() {
        sans.push(SanType::DnsName(name));
    }
    p.subject_alt_names = sans;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{hostname}@{now}"));
    p.distinguished_name = dn;
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().map_err(tls_err)?;
    let cert = p.self_signed(&key).map_err(tls_err)?;
    Ok(ServingCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Writes the serving certificate to `dir/kubelet.crt` and `dir/kubelet.key` (as
/// upstream keeps it under `/var/lib/kubelet/pki`), for operators to inspect or pin.
pub fn write(dir: &Path, cert: &ServingCert) -> Result<(), ServerError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| ServerError::Tls(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::write(dir.join("kubelet.crt"), &cert.cert_pem).map_err(io)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join("kubelet.key"))
        .map_err(io)?;
    f.write_all(cert.key_pem.as_bytes()).map_err(io)
}

fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(tls_err)
}

/// The server's TLS settings: ALPN `h2` and `http/1.1` (streaming upgrades are
/// HTTP/1.1), client certificates verified against `client_ca_pem` when presented.
/// Without a CA no client can authenticate (only `/healthz` is served).
pub fn server_config(
    cert: &ServingCert,
    client_ca_pem: Option<&str>,
) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?;
    let builder = match client_ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(pem)? {
                roots.add(c).map_err(tls_err)?;
            }
            if roots.is_empty() {
                return Err(ServerError::Tls(
                    "the client CA file holds no certificate".into(),
                ));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(tls_err)?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut cert.key_pem.as_bytes())
        .map_err(tls_err)?
        .ok_or_else(|| ServerError::Tls("no private key".into()))?;
    let mut cfg = builder
        .with_single_cert(certs(&cert.cert_pem)?, key)
        .map_err(tls_err)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_cert_names_the_node() {
        let c = self_signed("127.0.3.4".parse().unwrap(), "node-a").unwrap();
        assert!(c.cert_pem.contains("BEGIN CERTIFICATE"));
        let cfg = server_config(&c, None).unwrap();
        assert_eq!(cfg.alpn_protocols.len(), 2);
        // A CA file with no certificate is refused rather than silently trusting none.
        assert!(server_config(&c, Some("")).is_err());
        // Our own cert as a CA works as a trust anchor.
        assert!(server_config(&c, Some(&c.cert_pem)).is_ok());
    }
}
