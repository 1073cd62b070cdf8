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

/// What a request does, in Kubernetes' terms (upstream `RequestInfo` + user).
///
/// For resource requests `verb` is one of get, list, watch, create, update, patch,
/// delete, deletecollection (or proxy for the legacy `/proxy/` prefix); for
/// non-resource requests it is the lower-case HTTP method.
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

/// Subresources of a namespace object: `/api/v1/namespaces/{ns}/status` is the
/// namespace's status, not a resource called "status" inside it.
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

/// Go's `strconv.ParseBool`, as the `watch` parameter is decoded upstream.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// The name a `metadata.name=x` field selector pins a list or watch to (upstream puts it
/// into the attributes so `resourceNames` rules can apply).
fn name_from_field_selector(selector: &str) -> Option<String> {
    let s = selector.trim();
    if s.contains(',') {
        return None;
    }
    let (k, v) = s
        .split_once("==")
        .or_else(|| s.split_once('='))
        .filter(|(k, _)| !k.ends_with('!'))?;
    let (k, v) = (k.trim(), v.trim());
    let valid = !v.is_empty() && v != "." && v != ".." && !v.contains(['/', '%']);
    (k == "metadata.name" && valid).then(|| v.to_string())
}

impl RequestAttributes {
    /// Parses the Kubernetes URL grammar the way upstream `RequestInfoFactory` does:
    ///
    /// ```text
    /// /api/{version}/...  /apis/{group}/{version}/...  then
    ///   [watch|proxy/] [namespaces/{ns}/] {resource} [/{name} [/{subresource}]]
    /// ```
    ///
    /// Anything else (`/version`, `/api`, `/apis/apps/v1`, `/openapi/v3`, ...) is a
    /// non-resource request with the lower-case HTTP method as verb. `query` is the
    /// decoded query string (`watch`, `fieldSelector` are looked at).
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
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, rest): (&str, &[&str]) = match parts.as_slice() {
            ["api", _version, rest @ ..] if !rest.is_empty() => ("", rest),
            ["apis", group, _version, rest @ ..] if !rest.is_empty() => (group, rest),
            _ => return a,
        };
        a.resource_request = true;
        a.api_group = group.to_string();

        let mut parts: &[&str] = rest;
        let special = matches!(parts.first(), Some(&("watch" | "proxy")));
        if special && parts.len() >= 2 {
            a.verb = parts[0].to_string();
            parts = &parts[1..];
        } else {
            a.verb = match *method {
                Method::POST => "create",
                Method::GET | Method::HEAD => "get",
                Method::PUT => "update",
                Method::PATCH => "patch",
                Method::DELETE => "delete",
                _ => "",
            }
            .to_string();
        }

        if parts.first() == Some(&"namespaces") {
            if let Some(ns) = parts.get(1) {
                a.namespace = ns.to_string();
                if parts.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&parts[2]) {
                    parts = &parts[2..];
                }
            }
        }

        if parts.len() >= 3 && a.verb != "proxy" {
            a.subresource = parts[2].to_string();
        }
        if parts.len() >= 2 {
            a.name = parts[1].to_string();
        }
        if let Some(r) = parts.first() {
            a.resource = r.to_string();
        }

        if a.name.is_empty() && a.verb == "get" {
            let watch = query
                .get("watch")
                .and_then(|v| parse_bool(v))
                .unwrap_or(false);
            a.verb = if watch { "watch" } else { "list" }.to_string();
        }
        if a.name.is_empty() && matches!(a.verb.as_str(), "list" | "watch") {
            if let Some(n) = query
                .get("fieldSelector")
                .and_then(|s| name_from_field_selector(s))
            {
                a.name = n;
            }
        }
        if a.name.is_empty() && a.verb == "delete" {
            a.verb = "deletecollection".to_string();
        }
        a
    }

    /// Whether the request may run for long (watches, exec/attach/port-forward, proxy,
    /// followed logs), as upstream's long-running check: such requests are not subject
    /// to request timeouts and their duration is not a latency.
    pub fn is_long_running(&self, query: &HashMap<String, String>) -> bool {
        if !self.resource_request {
            return false;
        }
        matches!(self.verb.as_str(), "watch" | "proxy")
            || matches!(
                self.subresource.as_str(),
                "exec" | "attach" | "portforward" | "proxy"
            )
            || (self.subresource == "log"
                && query.get("follow").and_then(|v| parse_bool(v)) == Some(true))
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

    fn query(q: &[(&str, &str)]) -> HashMap<String, String> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn attrs(method: Method, path: &str, q: &[(&str, &str)]) -> RequestAttributes {
        RequestAttributes::from_request(&method, path, &query(q), UserInfo::new("u", &[]))
    }

    /// (verb, group, resource, subresource, namespace, name, resource request)
    type Parsed<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str, &'a str, bool);

    fn parsed(a: &RequestAttributes) -> Parsed<'_> {
        (
            &a.verb,
            &a.api_group,
            &a.resource,
            &a.subresource,
            &a.namespace,
            &a.name,
            a.resource_request,
        )
    }

    #[test]
    fn parses_kubernetes_paths() {
        use Method as M;
        type Case<'a> = (M, &'a str, &'a [(&'a str, &'a str)], Parsed<'a>);
        let cases: &[Case<'_>] = &[
            (
                M::GET,
                "/api/v1/namespaces/default/pods/x/log",
                &[],
                ("get", "", "pods", "log", "default", "x", true),
            ),
            (
                M::GET,
                "/api/v1/namespaces/default/pods/x/log",
                &[("follow", "true")],
                ("get", "", "pods", "log", "default", "x", true),
            ),
            (
                M::GET,
                "/apis/apps/v1/deployments",
                &[],
                ("list", "apps", "deployments", "", "", "", true),
            ),
            (
                M::GET,
                "/apis/apps/v1/deployments",
                &[("watch", "true")],
                ("watch", "apps", "deployments", "", "", "", true),
            ),
            (
                M::GET,
                "/apis/apps/v1/deployments",
                &[("watch", "1")],
                ("watch", "apps", "deployments", "", "", "", true),
            ),
            (
                M::GET,
                "/apis/apps/v1/deployments",
                &[("watch", "false")],
                ("list", "apps", "deployments", "", "", "", true),
            ),
            (
                M::GET,
                "/apis/apps/v1/namespaces/ns1/deployments/web",
                &[],
                ("get", "apps", "deployments", "", "ns1", "web", true),
            ),
            (
                M::PUT,
                "/apis/apps/v1/namespaces/ns1/deployments/web/scale",
                &[],
                ("update", "apps", "deployments", "scale", "ns1", "web", true),
            ),
            (
                M::PATCH,
                "/apis/apps/v1/namespaces/ns1/deployments/web/status",
                &[],
                ("patch", "apps", "deployments", "status", "ns1", "web", true),
            ),
            (
                M::POST,
                "/apis/apps/v1/namespaces/ns1/deployments",
                &[],
                ("create", "apps", "deployments", "", "ns1", "", true),
            ),
            (
                M::DELETE,
                "/apis/apps/v1/namespaces/ns1/deployments/web",
                &[],
                ("delete", "apps", "deployments", "", "ns1", "web", true),
            ),
            (
                M::DELETE,
                "/api/v1/namespaces/d/configmaps",
                &[],
                ("deletecollection", "", "configmaps", "", "d", "", true),
            ),
            // The namespace object itself, and its subresources.
            (
                M::GET,
                "/api/v1/namespaces/kube-system",
                &[],
                (
                    "get",
                    "",
                    "namespaces",
                    "",
                    "kube-system",
                    "kube-system",
                    true,
                ),
            ),
            (
                M::GET,
                "/api/v1/namespaces",
                &[],
                ("list", "", "namespaces", "", "", "", true),
            ),
            (
                M::PUT,
                "/api/v1/namespaces/x/finalize",
                &[],
                ("update", "", "namespaces", "finalize", "x", "x", true),
            ),
            (
                M::PUT,
                "/api/v1/namespaces/x/status",
                &[],
                ("update", "", "namespaces", "status", "x", "x", true),
            ),
            (
                M::DELETE,
                "/api/v1/namespaces/x",
                &[],
                ("delete", "", "namespaces", "", "x", "x", true),
            ),
            // Cluster-scoped.
            (
                M::GET,
                "/api/v1/nodes/n1",
                &[],
                ("get", "", "nodes", "", "", "n1", true),
            ),
            (
                M::PATCH,
                "/api/v1/nodes/n1/status",
                &[],
                ("patch", "", "nodes", "status", "", "n1", true),
            ),
            (
                M::GET,
                "/api/v1/pods",
                &[],
                ("list", "", "pods", "", "", "", true),
            ),
            // Subresources that create.
            (
                M::POST,
                "/api/v1/namespaces/d/pods/p/eviction",
                &[],
                ("create", "", "pods", "eviction", "d", "p", true),
            ),
            (
                M::GET,
                "/api/v1/namespaces/d/pods/p/exec",
                &[("command", "sh")],
                ("get", "", "pods", "exec", "d", "p", true),
            ),
            (
                M::POST,
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                &[],
                (
                    "create",
                    "authorization.k8s.io",
                    "selfsubjectaccessreviews",
                    "",
                    "",
                    "",
                    true,
                ),
            ),
            // A field selector on the name pins lists and watches to that name.
            (
                M::GET,
                "/api/v1/namespaces/d/pods",
                &[("fieldSelector", "metadata.name=doomed"), ("watch", "true")],
                ("watch", "", "pods", "", "d", "doomed", true),
            ),
            (
                M::GET,
                "/api/v1/namespaces/d/pods",
                &[("fieldSelector", "metadata.name!=doomed")],
                ("list", "", "pods", "", "d", "", true),
            ),
            (
                M::GET,
                "/api/v1/namespaces/d/pods",
                &[("fieldSelector", "metadata.name=a,status.phase=Running")],
                ("list", "", "pods", "", "d", "", true),
            ),
            // Legacy verb prefixes.
            (
                M::GET,
                "/api/v1/watch/namespaces/d/pods",
                &[],
                ("watch", "", "pods", "", "d", "", true),
            ),
            (
                M::GET,
                "/api/v1/watch/namespaces/d/pods/p",
                &[],
                ("watch", "", "pods", "", "d", "p", true),
            ),
            (
                M::GET,
                "/api/v1/proxy/namespaces/d/services/s/a/b",
                &[],
                ("proxy", "", "services", "", "d", "s", true),
            ),
            // Trailing slashes are ignored.
            (
                M::GET,
                "/api/v1/namespaces/d/pods/",
                &[],
                ("list", "", "pods", "", "d", "", true),
            ),
            // Non-resource requests: lower-case method, nothing else.
            (M::GET, "/version", &[], ("get", "", "", "", "", "", false)),
            (
                M::GET,
                "/openapi/v3",
                &[],
                ("get", "", "", "", "", "", false),
            ),
            (
                M::GET,
                "/openapi/v3/apis/apps/v1",
                &[],
                ("get", "", "", "", "", "", false),
            ),
            (M::GET, "/api", &[], ("get", "", "", "", "", "", false)),
            (M::GET, "/api/v1", &[], ("get", "", "", "", "", "", false)),
            (M::GET, "/apis", &[], ("get", "", "", "", "", "", false)),
            (
                M::GET,
                "/apis/apps",
                &[],
                ("get", "", "", "", "", "", false),
            ),
            (
                M::GET,
                "/apis/apps/v1/",
                &[],
                ("get", "", "", "", "", "", false),
            ),
            (
                M::POST,
                "/healthz",
                &[],
                ("post", "", "", "", "", "", false),
            ),
            (M::GET, "/", &[], ("get", "", "", "", "", "", false)),
        ];
        for (method, path, q, want) in cases {
            let a = attrs(method.clone(), path, q);
            assert_eq!(parsed(&a), *want, "{method} {path} {q:?}");
            assert_eq!(a.path, *path);
        }
    }

    #[test]
    fn long_running() {
        let lr = |m: Method, p: &str, q: &[(&str, &str)]| attrs(m, p, q).is_long_running(&query(q));
        assert!(lr(Method::GET, "/api/v1/pods", &[("watch", "true")]));
        assert!(lr(Method::GET, "/api/v1/namespaces/d/pods/p/exec", &[]));
        assert!(lr(
            Method::POST,
            "/api/v1/namespaces/d/pods/p/portforward",
            &[]
        ));
        assert!(lr(
            Method::GET,
            "/api/v1/namespaces/d/pods/p/log",
            &[("follow", "true")]
        ));
        assert!(!lr(Method::GET, "/api/v1/namespaces/d/pods/p/log", &[]));
        assert!(!lr(Method::GET, "/api/v1/pods", &[]));
        assert!(!lr(Method::GET, "/version", &[("watch", "true")]));
    }

    #[test]
    fn always_allow() {
        let a = attrs(Method::DELETE, "/api/v1/nodes/n1", &[]);
        assert_eq!(AlwaysAllow.authorize(&a), Decision::Allow);
        let dynamic: &dyn Authorizer = &AlwaysAllow;
        assert_eq!(dynamic.authorize(&a), Decision::Allow);
    }
}
