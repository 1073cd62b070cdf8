//! How a node reaches the API server: a bearer token (the node join token) and the
//! cluster CA, or a kubeconfig file.

use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs, UdpSocket};
use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("client: {0}")]
    Client(#[from] kube::Error),
    #[error("{0}")]
    Invalid(String),
}

/// A client for `server` (`https://HOST:PORT`) authenticating with `token`, trusting
/// the CA certificate(s) in `ca_file` (PEM) or, without one, the system's roots.
pub async fn from_token(
    server: &str,
    token: &str,
    ca_file: Option<&Path>,
) -> Result<Client, ClientError> {
    if !server.starts_with("https://") && !server.starts_with("http://") {
        return Err(ClientError::Invalid(format!(
            "--server {server:?}: expected https://HOST:PORT"
        )));
    }
    let mut cluster = serde_json::json!({ "server": server });
    if let Some(ca) = ca_file {
        cluster["certificate-authority"] = ca.display().to_string().into();
    }
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kelp", "cluster": cluster}],
        "users": [{"name": "node", "user": {"token": token.trim()}}],
        "contexts": [{"name": "node", "context": {"cluster": "kelp", "user": "node"}}],
        "current-context": "node",
    });
    let kc = Kubeconfig::from_yaml(&doc.to_string())?;
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(cfg)?)
}

/// A client from a kubeconfig file (its current context).
pub async fn from_kubeconfig(path: &Path) -> Result<Client, ClientError> {
    let kc = Kubeconfig::read_from(path)?;
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(cfg)?)
}

/// The server URL of a kubeconfig's current context.
pub fn kubeconfig_server(path: &Path) -> Option<String> {
    let kc = Kubeconfig::read_from(path).ok()?;
    let ctx_name = kc.current_context.clone()?;
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)?
        .context
        .clone()?;
    kc.clusters
        .iter()
        .find(|c| c.name == ctx.cluster)?
        .cluster
        .as_ref()?
        .server
        .clone()
}

/// The cluster CA (PEM) of a kubeconfig's current context: `certificate-authority-data`
/// or the file `certificate-authority` names.
pub fn kubeconfig_ca(path: &Path) -> Option<String> {
    let kc = Kubeconfig::read_from(path).ok()?;
    let ctx_name = kc.current_context.clone()?;
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)?
        .context
        .clone()?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)?
        .cluster
        .clone()?;
    if let Some(data) = cluster.certificate_authority_data {
        use base64::Engine;
        let pem = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .ok()?;
        return String::from_utf8(pem).ok();
    }
    std::fs::read_to_string(cluster.certificate_authority?).ok()
}

/// The local address this machine uses to reach `server` (the node's InternalIP by
/// default): a UDP "connect" picks the route without sending anything.
pub fn local_ip_towards(server: &str) -> IpAddr {
    let host_port = server
        .split("://")
        .nth(1)
        .unwrap_or(server)
        .split('/')
        .next()
        .unwrap_or("");
    let addr = host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .or_else(|| format!("{host_port}:443").to_socket_addrs().ok()?.next());
    let Some(addr) = addr else {
        return IpAddr::V4(Ipv4Addr::LOCALHOST);
    };
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    UdpSocket::bind(bind)
        .and_then(|s| {
            s.connect(addr)?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_ip_towards_loopback_is_loopback() {
        assert!(local_ip_towards("https://127.0.0.1:6443").is_loopback());
        assert!(local_ip_towards("https://127.3.4.5:6443/").is_loopback());
    }
}
