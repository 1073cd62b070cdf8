//! Review resources answered by the server and never stored: access reviews (through
//! the authorizer) and who-am-I.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use kelp_api::registry::ResourceInfo;

use crate::app::App;
use crate::authn::UserInfo;
use crate::authz::{Decision, RequestAttributes};
use crate::error::{ApiError, ApiResult};
use crate::rest::json_response;

fn s(v: &Value, p: &str) -> String {
    v.pointer(p)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

pub async fn create(
    app: &App,
    info: &ResourceInfo,
    mut obj: Value,
    user: &UserInfo,
) -> ApiResult<Response> {
    let o = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))?;
    o.insert("apiVersion".into(), json!(info.gvk.api_version()));
    o.insert("kind".into(), json!(info.gvk.kind));
    o.entry("metadata").or_insert_with(|| json!({}));
    match info.gvk.kind.as_str() {
        "SelfSubjectAccessReview" | "SubjectAccessReview" => {
            let subject = if info.gvk.kind == "SubjectAccessReview" {
                UserInfo {
                    username: s(&obj, "/spec/user"),
                    uid: s(&obj, "/spec/uid"),
                    groups: obj
                        .pointer("/spec/groups")
                        .and_then(Value::as_array)
                        .map(|g| {
                            g.iter()
                                .filter_map(Value::as_str)
                                .map(str::to_string)
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            } else {
                user.clone()
            };
            let attrs = if let Some(ra) = obj.pointer("/spec/resourceAttributes") {
                RequestAttributes {
                    user: subject,
                    verb: s(ra, "/verb"),
                    api_group: s(ra, "/group"),
                    resource: s(ra, "/resource"),
                    subresource: s(ra, "/subresource"),
                    namespace: s(ra, "/namespace"),
                    name: s(ra, "/name"),
                    path: String::new(),
                    resource_request: true,
                }
            } else {
                let nra = obj
                    .pointer("/spec/nonResourceAttributes")
                    .cloned()
                    .unwrap_or(Value::Null);
                RequestAttributes {
                    user: subject,
                    verb: s(&nra, "/verb"),
                    api_group: String::new(),
                    resource: String::new(),
                    subresource: String::new(),
                    namespace: String::new(),
                    name: String::new(),
                    path: s(&nra, "/path"),
                    resource_request: false,
                }
            };
            let status = match app.authz.authorize(&attrs) {
                Decision::Allow => {
                    json!({"allowed": true, "reason": "allowed by the Kelp authorizer"})
                }
                Decision::Deny(reason) => {
                    json!({"allowed": false, "denied": true, "reason": reason})
                }
                Decision::NoOpinion => {
                    json!({"allowed": false, "reason": "no authorizer allowed it"})
                }
            };
            obj["status"] = status;
        }
        "SelfSubjectRulesReview" => {
            // Every authenticated identity may do everything until RBAC arrives.
            obj["status"] = json!({
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                "incomplete": false,
            });
        }
        "SelfSubjectReview" => {
            obj["status"] = json!({"userInfo": {"username": user.username, "uid": user.uid, "groups": user.groups}});
        }
        _ => return Err(ApiError::method_not_allowed("unsupported review kind")),
    }
    Ok(json_response(StatusCode::CREATED, &obj))
}
