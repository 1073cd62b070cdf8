//! Authentication: client certificates signed by the cluster CA (CN = user, O = groups)
//! and bearer tokens (the node join token, and any added at start-up).

use std::collections::HashMap;

use serde::Serialize;

/// Who is making a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
}

/// Maps credentials to users.
#[derive(Debug, Default)]
pub struct Authenticator {
    tokens: HashMap<String, UserInfo>,
}

impl Authenticator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_token(&mut self, token: &str, user: UserInfo) {
        self.tokens.insert(token.to_string(), user);
    }

    /// The user of a verified client certificate (DER), if it names one.
    pub fn from_certificate(&self, der: &[u8]) -> Option<UserInfo> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let cn = subject
            .iter_common_name()
            .next()?
            .as_str()
            .ok()?
            .to_string();
        let mut groups: Vec<String> = subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_string))
            .collect();
        groups.push("system:authenticated".into());
        Some(UserInfo {
            username: cn,
            uid: String::new(),
            groups,
        })
    }

    /// The user of an `Authorization: Bearer` token, if known.
    pub fn from_bearer(&self, header: &str) -> Option<UserInfo> {
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))?
            .trim();
        self.tokens.get(token).cloned()
    }
}
