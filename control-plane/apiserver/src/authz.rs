//! The authorizer seam. Every authenticated identity is allowed until RBAC lands; the
//! request attributes are what RBAC (and node authorization) will decide on.

use std::collections::HashMap;

use axum::http::Method;

use crate::authn::UserInfo;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
    NoOpinion,
}

/// What a request does, in Kubernetes' terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAttributes {
    pub user: UserInfo,
    pub verb: String,
    pub api_group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub path: String,
    pub resource_request: bool,
}

impl RequestAttributes {
    /// Parses the Kubernetes URL grammar (upstream `RequestInfoFactory`).
    pub fn from_request(
        method: &Method,
        path: &str,
        query: &HashMap<String, String>,
        user: UserInfo,
    ) -> Self {
        let mut a = RequestAttributes {
            user,
            verb: method.as_str().to_ascii_lowercase(),
            api_group: String::new(),
            resource: String::new(),
            subresource: String::new(),
            namespace: String::new(),
            name: String::new(),
            path: path.to_string(),
            resource_request: false,
        };
        let segs: Vec<&str> = path
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        let rest: &[&str] = match segs.as_slice() {
            ["api", _v, rest @ ..] => rest,
            ["apis", g, _v, rest @ ..] => {
                a.api_group = g.to_string();
                rest
            }
            _ => return a,
        };
        if rest.is_empty() {
            return a;
        }
        a.resource_request = true;
        let rest: Vec<&str> = match rest {
            ["namespaces", ns, tail @ ..]
                if !tail.is_empty() && !matches!(tail, ["status"] | ["finalize"]) =>
            {
                a.namespace = ns.to_string();
                tail.to_vec()
            }
            ["namespaces", ns, tail @ ..] => {
                a.namespace = ns.to_string();
                let mut v = vec!["namespaces", *ns];
                v.extend_from_slice(tail);
                v
            }
            other => other.to_vec(),
        };
        a.resource = rest.first().map(|s| s.to_string()).unwrap_or_default();
        a.name = rest.get(1).map(|s| s.to_string()).unwrap_or_default();
        a.subresource = rest.get(2).map(|s| s.to_string()).unwrap_or_default();
        let watch = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
        a.verb = match *method {
            Method::GET | Method::HEAD if watch => "watch",
            Method::GET | Method::HEAD if a.name.is_empty() => "list",
            Method::GET | Method::HEAD => "get",
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE if a.name.is_empty() => "deletecollection",
            Method::DELETE => "delete",
            _ => "unknown",
        }
        .to_string();
        a
    }
}

pub trait Authorizer: Send + Sync {
    fn authorize(&self, attrs: &RequestAttributes) -> Decision;
}

/// Allows every authenticated request (the default until RBAC).
#[derive(Debug, Default, Clone, Copy)]
pub struct AlwaysAllow;

impl Authorizer for AlwaysAllow {
    fn authorize(&self, _attrs: &RequestAttributes) -> Decision {
        Decision::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(method: Method, path: &str, q: &[(&str, &str)]) -> RequestAttributes {
        let q = q
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        RequestAttributes::from_request(
            &method,
            path,
            &q,
            UserInfo {
                username: "u".into(),
                uid: String::new(),
                groups: vec![],
            },
        )
    }

    #[test]
    fn parses_paths() {
        let a = attrs(Method::GET, "/api/v1/namespaces/default/pods/x/log", &[]);
        assert_eq!(
            (
                a.verb.as_str(),
                a.resource.as_str(),
                a.name.as_str(),
                a.subresource.as_str(),
                a.namespace.as_str()
            ),
            ("get", "pods", "x", "log", "default")
        );
        let a = attrs(
            Method::GET,
            "/apis/apps/v1/deployments",
            &[("watch", "true")],
        );
        assert_eq!(
            (a.verb.as_str(), a.api_group.as_str(), a.resource.as_str()),
            ("watch", "apps", "deployments")
        );
        let a = attrs(Method::GET, "/api/v1/namespaces/kube-system", &[]);
        assert_eq!(
            (a.verb.as_str(), a.resource.as_str(), a.name.as_str()),
            ("get", "namespaces", "kube-system")
        );
        let a = attrs(Method::PUT, "/api/v1/namespaces/x/finalize", &[]);
        assert_eq!(
            (a.resource.as_str(), a.name.as_str(), a.subresource.as_str()),
            ("namespaces", "x", "finalize")
        );
        let a = attrs(Method::DELETE, "/api/v1/namespaces/d/configmaps", &[]);
        assert_eq!(a.verb, "deletecollection");
        let a = attrs(Method::GET, "/version", &[]);
        assert!(!a.resource_request);
    }
}
