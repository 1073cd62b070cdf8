//! A table of bad requests and the Kubernetes `Status` each must get.

use kube::client::Body;
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::Value;

use crate::common::{Backend, Cluster};

struct Case {
    what: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    code: u16,
    reason: &'static str,
    /// A piece the message or causes must contain.
    contains: &'static str,
}

async fn client(c: &Cluster, anonymous: bool) -> Client {
    let kc = Kubeconfig::read_from(c.kubeconfig()).expect("kubeconfig");
    let mut cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    if anonymous {
        cfg.auth_info = AuthInfo::default();
    }
    Client::try_from(cfg).expect("client")
}

async fn send(client: &Client, method: &str, path: &str, ct: &str, body: Vec<u8>) -> (u16, Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", ct)
        .body(Body::from(body))
        .expect("request");
    let resp = client.send(req).await.expect("send");
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect_bytes().await.expect("body");
    (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn cm(name: &str) -> Vec<u8> {
    format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}},"data":{{"a":"b"}}}}"#).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_kubernetes_statuses() {
    let c = Cluster::start(Backend::Sqlite);
    let admin = client(&c, false).await;
    let (code, v) = send(
        &admin,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        cm("exists"),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    let rv = v["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    // Make the object newer than `rv`.
    let (code, _) = send(
        &admin,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/exists",
        "application/merge-patch+json",
        br#"{"data":{"a":"c"}}"#.to_vec(),
    )
    .await;
    assert_eq!(code, 200);
    let stale = format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"exists","resourceVersion":"{rv}"}},"data":{{"a":"d"}}}}"#).into_bytes();
    let big = {
        let mut s = String::from(
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"big"},"data":{"a":""#,
        );
        s.push_str(&"x".repeat(3 * 1024 * 1024 + 10));
        s.push_str("\"}}");
        s.into_bytes()
    };
    let cases = vec![
        Case { what: "malformed JSON", method: "POST", path: "/api/v1/namespaces/default/configmaps", content_type: "application/json", body: b"{\"apiVersion\":".to_vec(), code: 400, reason: "BadRequest", contains: "" },
        Case { what: "malformed YAML", method: "POST", path: "/api/v1/namespaces/default/configmaps", content_type: "application/yaml", body: b"metadata: [unclosed\n  - : :".to_vec(), code: 400, reason: "BadRequest", contains: "YAML" },
        Case { what: "unknown field under Strict", method: "POST", path: "/api/v1/namespaces/default/configmaps?fieldValidation=Strict", content_type: "application/json", body: br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"strict"},"spec":{"foo":1}}"#.to_vec(), code: 400, reason: "BadRequest", contains: "unknown field \"spec\"" },
        Case { what: "wrong field type", method: "POST", path: "/apis/apps/v1/namespaces/default/deployments", content_type: "application/json", body: br#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"t"},"spec":{"replicas":"two"}}"#.to_vec(), code: 400, reason: "BadRequest", contains: "cannot be handled as a Deployment" },
        Case { what: "invalid name", method: "POST", path: "/api/v1/namespaces/default/configmaps", content_type: "application/json", body: cm("Bad_Name"), code: 422, reason: "Invalid", contains: "metadata.name" },
        Case { what: "missing required field", method: "POST", path: "/apis/apps/v1/namespaces/default/deployments", content_type: "application/json", body: br#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"nosel"},"spec":{"template":{"spec":{"containers":[{"name":"c","image":"i"}]}}}}"#.to_vec(), code: 422, reason: "Invalid", contains: "spec.selector" },
        Case { what: "missing namespace", method: "POST", path: "/api/v1/namespaces/nowhere/configmaps", content_type: "application/json", body: cm("lost"), code: 404, reason: "NotFound", contains: "namespaces \"nowhere\" not found" },
        Case { what: "stale update", method: "PUT", path: "/api/v1/namespaces/default/configmaps/exists", content_type: "application/json", body: stale, code: 409, reason: "Conflict", contains: "the object has been modified" },
        Case { what: "create of an existing name", method: "POST", path: "/api/v1/namespaces/default/configmaps", content_type: "application/json", body: cm("exists"), code: 409, reason: "AlreadyExists", contains: "already exists" },
        Case { what: "oversized body", method: "POST", path: "/api/v1/namespaces/default/configmaps", content_type: "application/json", body: big, code: 413, reason: "RequestEntityTooLarge", contains: "" },
        Case { what: "wrong kind in body", method: "POST", path: "/api/v1/namespaces/default/configmaps", content_type: "application/json", body: br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"k"}}"#.to_vec(), code: 400, reason: "BadRequest", contains: "kind" },
        Case { what: "unknown resource", method: "GET", path: "/api/v1/namespaces/default/widgets", content_type: "application/json", body: vec![], code: 404, reason: "NotFound", contains: "" },
        Case { what: "missing object", method: "GET", path: "/api/v1/namespaces/default/configmaps/none", content_type: "application/json", body: vec![], code: 404, reason: "NotFound", contains: "configmaps \"none\" not found" },
        Case { what: "unsupported media type", method: "PATCH", path: "/api/v1/namespaces/default/configmaps/exists", content_type: "text/csv", body: b"a,b".to_vec(), code: 415, reason: "UnsupportedMediaType", contains: "" },
        Case { what: "bad label selector", method: "GET", path: "/api/v1/namespaces/default/configmaps?labelSelector=a%20in%20b", content_type: "application/json", body: vec![], code: 400, reason: "BadRequest", contains: "" },
    ];
    let mut failures = Vec::new();
    for case in cases {
        let (code, v) = send(&admin, case.method, case.path, case.content_type, case.body).await;
        // The message and the causes, unescaped.
        let text = format!("{} {}", v["message"].as_str().unwrap_or(""), v["details"]);
        if code != case.code
            || v["reason"] != case.reason
            || v["kind"] != "Status"
            || !text.contains(case.contains)
        {
            failures.push(format!(
                "{}: want {} {} containing {:?}, got {code} {text:.300}",
                case.what, case.code, case.reason, case.contains
            ));
        }
    }
    // No credentials at all.
    let anon = client(&c, true).await;
    for path in ["/api/v1/namespaces", "/version", "/apis"] {
        let (code, v) = send(&anon, "GET", path, "application/json", vec![]).await;
        if code != 401 || v["reason"] != "Unauthorized" {
            failures.push(format!(
                "no credentials on {path}: want 401 Unauthorized, got {code} {v}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "bad inputs answered wrongly:\n{}",
        failures.join("\n")
    );
    // Nothing the bad requests did changed the object.
    let (_, v) = send(
        &admin,
        "GET",
        "/api/v1/namespaces/default/configmaps/exists",
        "application/json",
        vec![],
    )
    .await;
    assert_eq!(v["data"]["a"], "c");
}
