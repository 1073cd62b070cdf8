//! Request plumbing: query parameters, body decoding, the URL grammar of resources.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::HeaderMap;
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};

use kelp_api::registry::ResourceInfo;

use crate::error::{ApiError, ApiResult};
use crate::objects::Registry;

/// Largest request body accepted (upstream's limit): larger ⇒ 413.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Query parameters (last value wins, as Go's `url.Values.Get` takes the first; both
/// are fine since clients never repeat them).
#[derive(Debug, Clone, Default)]
pub struct Query(pub HashMap<String, String>);

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
        let mut m = HashMap::new();
        if let Some(q) = raw {
            for (k, v) in form_urlencoded::parse(q.as_bytes()) {
                if !k.is_empty() {
                    m.insert(k.into_owned(), v.into_owned());
                }
            }
        }
        Query(m)
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|s| !s.is_empty())
    }

    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1" | "True"))
    }

    pub fn dry_run(&self) -> bool {
        self.get("dryRun") == Some("All")
    }

    pub fn field_manager(&self, default: &str) -> String {
        self.get("fieldManager").unwrap_or(default).to_string()
    }

    /// `Strict` ⇒ unknown fields are an error; `Warn` (default) ⇒ warnings; `Ignore`.
    pub fn field_validation(&self) -> &str {
        self.get("fieldValidation").unwrap_or("Warn")
    }
}

/// Content types a body can come in.
pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| {
            s.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// Decodes an object body: JSON, YAML or Kubernetes protobuf.
pub fn decode_body(headers: &HeaderMap, body: &Bytes) -> ApiResult<Value> {
    let ct = content_type(headers);
    decode_as(&ct, body)
}

pub fn decode_as(ct: &str, body: &Bytes) -> ApiResult<Value> {
    if body.len() > MAX_BODY {
        return Err(ApiError::too_large());
    }
    match ct {
        "application/vnd.kubernetes.protobuf" => kelp_api::protobuf::decode_to_json(body)
            .map_err(|e| ApiError::bad_request(format!("unable to decode protobuf body: {e}"))),
        "application/yaml"
        | "application/x-yaml"
        | "text/yaml"
        | "application/apply-patch+yaml" => {
            let v: Value = serde_yaml::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!("error converting YAML to JSON: {e}"))
            })?;
            Ok(v)
        }
        ""
        | "application/json"
        | "application/merge-patch+json"
        | "application/strategic-merge-patch+json"
        | "application/json-patch+json"
        | "*/*"
        | "text/plain" => serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "couldn't get version/kind; json parse error: {}",
                e.to_string().trim_end_matches('.')
            ))
        }),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

/// Whether the client asked for a `meta.k8s.io` Table.
pub fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            a.split(',')
                .next()
                .is_some_and(|first| first.contains("as=Table"))
        })
}

/// A request for a resource: which one, where, and which subresource.
#[derive(Debug, Clone)]
pub struct Target {
    pub info: Arc<ResourceInfo>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// What a path under `/api` or `/apis` names.
pub enum PathKind {
    /// `/api/v1` or `/apis/g/v`: the resource list of a group version.
    GroupVersion {
        group: String,
        version: String,
    },
    /// `/apis/g`: the group.
    Group(String),
    Resource(Target),
}

/// Parses `/api/v1/...` or `/apis/{g}/{v}/...` (the leading part given split).
pub fn parse_path(registry: &Registry, path: &str) -> ApiResult<PathKind> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", v, rest),
        ["apis", g] => return Ok(PathKind::Group(g.to_string())),
        ["apis", g, v, rest @ ..] => (g, v, rest),
        _ => return Err(ApiError::not_found_path()),
    };
    let find = |plural: &str| registry.get(group, version, plural);
    let res = |info: Arc<ResourceInfo>, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| {
        if let Some(s) = sub {
            if !info.has_subresource(s) {
                return Err(ApiError::not_found_path());
            }
        }
        if ns.is_some() && !info.namespaced {
            return Err(ApiError::not_found_path());
        }
        Ok(PathKind::Resource(Target {
            info,
            namespace: ns.map(str::to_string),
            name: name.map(str::to_string),
            subresource: sub.map(str::to_string),
        }))
    };
    match rest {
        [] => {
            if registry
                .all()
                .iter()
                .any(|i| i.gvk.group == group && i.gvk.version == version)
            {
                Ok(PathKind::GroupVersion {
                    group: group.into(),
                    version: version.into(),
                })
            } else {
                Err(ApiError::not_found_path())
            }
        }
        ["namespaces", ns, plural, tail @ ..]
            if group.is_empty() || find(plural).is_some_and(|i| i.namespaced) =>
        {
            // `/api/v1/namespaces/{ns}/{x}`: a namespaced resource `x`, or a subresource
            // of the namespace itself (`status`, `finalize`).
            match find(plural) {
                Some(info) if info.namespaced => match tail {
                    [] => res(info, Some(ns), None, None),
                    [name] => res(info, Some(ns), Some(name), None),
                    [name, sub] => res(info, Some(ns), Some(name), Some(sub)),
                    _ => Err(ApiError::not_found_path()),
                },
                _ if tail.is_empty() => match find("namespaces") {
                    Some(info) => res(info, None, Some(ns), Some(plural)),
                    None => Err(ApiError::not_found_path()),
                },
                _ => Err(ApiError::not_found_path()),
            }
        }
        [plural] => find(plural).map_or_else(
            || Err(ApiError::not_found_path()),
            |i| res(i, None, None, None),
        ),
        [plural, name] => find(plural).map_or_else(
            || Err(ApiError::not_found_path()),
            |i| {
                if i.namespaced {
                    Err(ApiError::not_found_path())
                } else {
                    res(i, None, Some(name), None)
                }
            },
        ),
        [plural, name, sub] => find(plural).map_or_else(
            || Err(ApiError::not_found_path()),
            |i| {
                if i.namespaced {
                    Err(ApiError::not_found_path())
                } else {
                    res(i, None, Some(name), Some(sub))
                }
            },
        ),
        _ => Err(ApiError::not_found_path()),
    }
}

/// An opaque `continue` token: the list revision and the last key returned.
pub fn encode_continue(revision: i64, last_key: &str) -> String {
    let v = json!({"v": "meta.k8s.io/v1", "rv": revision, "start": last_key});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

pub fn decode_continue(token: &str) -> ApiResult<(i64, String)> {
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v.get("rv").and_then(Value::as_i64).ok_or_else(bad)?;
    let start = v
        .get("start")
        .and_then(Value::as_str)
        .ok_or_else(bad)?
        .to_string();
    Ok((rv, start))
}
