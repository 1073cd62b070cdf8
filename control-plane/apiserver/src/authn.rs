//! Authentication: client certificates signed by the cluster CA (CN = user, O = groups)
//! and bearer tokens (the node join token, and any added at start-up).
//!
//! The TLS layer has already verified a presented client certificate against the
//! cluster CA (see [`crate::tls::server_config`]); here it is only mapped to a user.
//! As in kube-apiserver, a certificate wins over a token, and every authenticated user
//! is in the group `system:authenticated`.

use std::collections::HashMap;

use axum::http::{header, HeaderMap};
use serde::Serialize;

/// The group every authenticated user is in.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";
/// The user and group of the node join token.
pub const NODE_USER: &str = "kelp-node";
pub const NODES_GROUP: &str = "system:nodes";

/// Who is making a request. [`crate::serve`] puts it into every authenticated request's
/// extensions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    pub fn new(username: impl Into<String>, groups: &[&str]) -> Self {
        UserInfo {
            username: username.into(),
            uid: String::new(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn with_authenticated_group(mut self) -> Self {
        if !self.groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
            self.groups.push(AUTHENTICATED_GROUP.to_string());
        }
        self
    }
}

/// Maps credentials to users.
#[derive(Default)]
pub struct Authenticator {
    tokens: HashMap<String, UserInfo>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the tokens themselves.
        f.debug_struct("Authenticator")
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl Authenticator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts `Authorization: Bearer <token>` as `user`.
    pub fn add_token(&mut self, token: &str, user: UserInfo) {
        self.tokens.insert(token.trim().to_string(), user);
    }

    /// Accepts the node join token as user `kelp-node` in group `system:nodes`.
    pub fn add_node_token(&mut self, token: &str) {
        self.add_token(token, UserInfo::new(NODE_USER, &[NODES_GROUP]));
    }

    /// The user of a client certificate (DER) the TLS layer verified: CN is the user
    /// name, each O a group. `None` without a CN.
    pub fn user_from_certificate(&self, der: &[u8]) -> Option<UserInfo> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let cn = subject.iter_common_name().next()?.as_str().ok()?;
        if cn.is_empty() {
            return None;
        }
        let groups = subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_string))
            .collect();
        Some(
            UserInfo {
                username: cn.to_string(),
                uid: String::new(),
                groups,
            }
            .with_authenticated_group(),
        )
    }

    /// The user of a bearer token, if known.
    pub fn user_from_token(&self, token: &str) -> Option<UserInfo> {
        let token = token.trim();
        if token.is_empty() {
            return None;
        }
        self.tokens
            .get(token)
            .cloned()
            .map(UserInfo::with_authenticated_group)
    }

    /// Authenticates a request: the verified peer certificate (leaf, DER) if it names a
    /// user, else an `Authorization: Bearer` token. `None` means anonymous.
    pub fn authenticate(&self, peer_cert: Option<&[u8]>, headers: &HeaderMap) -> Option<UserInfo> {
        peer_cert
            .and_then(|der| self.user_from_certificate(der))
            .or_else(|| bearer_token(headers).and_then(|t| self.user_from_token(t)))
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(auth).expect("header"),
        );
        h
    }

    #[test]
    fn tokens() {
        let mut a = Authenticator::new();
        a.add_node_token("K10abc");
        let u = a
            .authenticate(None, &headers("Bearer K10abc"))
            .expect("user");
        assert_eq!(u.username, "kelp-node");
        assert_eq!(u.groups, vec!["system:nodes", "system:authenticated"]);
        assert!(a.authenticate(None, &headers("bearer  K10abc ")).is_some());
        assert!(a.authenticate(None, &headers("Bearer K10abd")).is_none());
        assert!(a.authenticate(None, &headers("Basic K10abc")).is_none());
        assert!(a.authenticate(None, &headers("Bearer ")).is_none());
        assert!(a.authenticate(None, &HeaderMap::new()).is_none());
        assert!(!format!("{a:?}").contains("K10abc"));
    }

    #[test]
    fn certificate_user() {
        let d = std::env::temp_dir().join(format!("kelp-authn-{}", rand::random::<u64>()));
        let pki = crate::tls::Pki::load_or_create(&d, &[]).expect("pki");
        let der = rustls_pemfile::certs(&mut pki.admin_cert_pem.as_bytes())
            .next()
            .expect("cert")
            .expect("pem");
        let mut a = Authenticator::new();
        a.add_node_token("t");
        // The certificate wins over a token.
        let u = a
            .authenticate(Some(der.as_ref()), &headers("Bearer t"))
            .expect("user");
        assert_eq!(u.username, "kelp-admin");
        assert_eq!(u.groups, vec!["system:masters", "system:authenticated"]);
        std::fs::remove_dir_all(&d).ok();
    }
}
