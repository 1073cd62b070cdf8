//! A table of bad requests, sent over HTTPS with the admin client certificate (kube-rs'
//! raw `Client::send`), each with the HTTP status and `metav1.Status` it must get.
//! All against one SQLite cluster; every case is checked and all mismatches are
//! reported together.

mod common;

use kube::client::Body;
use kube::config::AuthInfo;
use kube::Client;
use serde_json::{json, Value};

use common::{Backend, Cluster};

struct Case {
    what: &'static str,
    method: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    code: u16,
    reason: &'static str,
    /// Must occur in the Status message.
    message: &'static str,
    /// Extra checks on the Status (`details` etc.).
    check: fn(&Value) -> Result<(), String>,
}

fn no_check(_: &Value) -> Result<(), String> {
    Ok(())
}

struct Resp {
    code: u16,
    content_type: String,
    body: Value,
    raw: String,
}

async fn send(
    client: &Client,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Resp {
    let mut req = http::Request::builder().method(method).uri(path);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let req = req.body(Body::from(body)).expect("request");
    let resp = client
        .send(req)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: no response: {e}"));
    let code = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = resp
        .into_body()
        .collect_bytes()
        .await
        .expect("response body");
    let raw = String::from_utf8_lossy(&bytes).into_owned();
    Resp {
        code,
        content_type,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        raw,
    }
}

fn configmap(name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name}, "data": {"a": "b"}
    }))
    .expect("json")
}

/// Checks that `r` is a `metav1.Status` failure with `code` and `reason`.
fn check_status(r: &Resp, code: u16, reason: &str, message: &str) -> Result<(), String> {
    let v = &r.body;
    let mut problems = Vec::new();
    if r.code != code {
        problems.push(format!("HTTP {} (want {code})", r.code));
    }
    if !r.content_type.starts_with("application/json") {
        problems.push(format!("Content-Type {:?}", r.content_type));
    }
    if v["kind"] != "Status" || v["apiVersion"] != "v1" || v["status"] != "Failure" {
        problems.push("not a v1 Status with status=Failure".into());
    }
    if v["reason"] != reason {
        problems.push(format!("reason {} (want {reason})", v["reason"]));
    }
    if v["code"] != code {
        problems.push(format!("Status.code {} (want {code})", v["code"]));
    }
    let msg = v["message"].as_str().unwrap_or("");
    if !msg.contains(message) {
        problems.push(format!("message {msg:?} lacks {message:?}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_kubernetes_statuses() {
    let c = Cluster::start(Backend::Sqlite);
    let admin = c.kube_client().await;

    // An object for the conflict cases, then a newer version of it.
    let r = send(
        &admin,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some("application/json"),
        configmap("exists"),
    )
    .await;
    assert_eq!(r.code, 201, "{}", r.raw);
    let stale_rv = r.body["metadata"]["resourceVersion"]
        .as_str()
        .expect("resourceVersion")
        .to_string();
    let r = send(
        &admin,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/exists",
        Some("application/merge-patch+json"),
        br#"{"data":{"a":"c"}}"#.to_vec(),
    )
    .await;
    assert_eq!(r.code, 200, "{}", r.raw);
    let stale = serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "exists", "resourceVersion": stale_rv},
        "data": {"a": "stale"}
    }))
    .expect("json");
    let big = serde_json::to_vec(&json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "big"},
        "data": {"a": "x".repeat(3 * 1024 * 1024 + 16)}
    }))
    .expect("json");

    const CMS: &str = "/api/v1/namespaces/default/configmaps";
    const DEPLOYS: &str = "/apis/apps/v1/namespaces/default/deployments";
    let deployment_with_foo = br#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"strict"},
        "spec":{"foo":1,"selector":{"matchLabels":{"a":"b"}},
        "template":{"metadata":{"labels":{"a":"b"}},"spec":{"containers":[{"name":"c","image":"i"}]}}}}"#;
    let cases = vec![
        Case {
            what: "malformed JSON",
            method: "POST",
            path: CMS,
            content_type: Some("application/json"),
            body: br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"#.to_vec(),
            code: 400,
            reason: "BadRequest",
            message: "",
            check: no_check,
        },
        Case {
            what: "malformed YAML",
            method: "POST",
            path: CMS,
            content_type: Some("application/yaml"),
            body: b"apiVersion: v1\nkind: ConfigMap\nmetadata: [unclosed\n  name: : x\n".to_vec(),
            code: 400,
            reason: "BadRequest",
            message: "",
            check: no_check,
        },
        Case {
            what: "unknown field with fieldValidation=Strict",
            method: "POST",
            path: "/apis/apps/v1/namespaces/default/deployments?fieldValidation=Strict",
            content_type: Some("application/json"),
            body: deployment_with_foo.to_vec(),
            code: 400,
            reason: "BadRequest",
            message: "unknown field \"spec.foo\"",
            check: no_check,
        },
        Case {
            what: "duplicate field with fieldValidation=Strict",
            method: "POST",
            path: "/api/v1/namespaces/default/configmaps?fieldValidation=Strict",
            content_type: Some("application/json"),
            body: br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"dup"},"data":{"a":"1"},"data":{"b":"2"}}"#.to_vec(),
            code: 400,
            reason: "BadRequest",
            message: "duplicate field \"data\"",
            check: no_check,
        },
        Case {
            what: "wrong type for a field",
            method: "POST",
            path: DEPLOYS,
            content_type: Some("application/json"),
            body: br#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"t"},"spec":{"replicas":"two"}}"#.to_vec(),
            code: 400,
            reason: "BadRequest",
            message: "",
            check: no_check,
        },
        Case {
            what: "invalid name",
            method: "POST",
            path: CMS,
            content_type: Some("application/json"),
            body: configmap("Bad_Name"),
            code: 422,
            reason: "Invalid",
            message: "ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\"",
            check: |v| {
                let d = &v["details"];
                if d["causes"][0]["field"] != "metadata.name" {
                    return Err(format!("details.causes[0].field: {}", d["causes"]));
                }
                if d["causes"][0]["reason"] != "FieldValueInvalid" {
                    return Err(format!("details.causes[0].reason: {}", d["causes"]));
                }
                if d["name"] != "Bad_Name" || d["kind"] != "ConfigMap" {
                    return Err(format!("details name/kind: {d}"));
                }
                Ok(())
            },
        },
        Case {
            what: "missing required field",
            method: "POST",
            path: DEPLOYS,
            content_type: Some("application/json"),
            body: br#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"nosel"},"spec":{"template":{"spec":{"containers":[{"name":"c","image":"i"}]}}}}"#.to_vec(),
            code: 422,
            reason: "Invalid",
            message: "Deployment.apps \"nosel\" is invalid",
            check: |v| {
                let fields: Vec<&str> = v["details"]["causes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["field"].as_str())
                    .collect();
                if fields.contains(&"spec.selector") {
                    Ok(())
                } else {
                    Err(format!("no cause for spec.selector: {fields:?}"))
                }
            },
        },
        Case {
            what: "object in a missing namespace",
            method: "POST",
            path: "/api/v1/namespaces/nowhere/configmaps",
            content_type: Some("application/json"),
            body: configmap("lost"),
            code: 404,
            reason: "NotFound",
            message: "namespaces \"nowhere\" not found",
            check: no_check,
        },
        Case {
            what: "namespace in the body differs from the URL",
            method: "POST",
            path: CMS,
            content_type: Some("application/json"),
            body: br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x","namespace":"kube-system"}}"#.to_vec(),
            code: 400,
            reason: "BadRequest",
            message: "the namespace of the provided object does not match the namespace sent on the request",
            check: no_check,
        },
        Case {
            what: "name in the body differs from the URL on PUT",
            method: "PUT",
            path: "/api/v1/namespaces/default/configmaps/exists",
            content_type: Some("application/json"),
            body: configmap("other"),
            code: 400,
            reason: "BadRequest",
            message: "the name of the object (other) does not match the name on the URL (exists)",
            check: no_check,
        },
        Case {
            what: "stale resourceVersion on PUT",
            method: "PUT",
            path: "/api/v1/namespaces/default/configmaps/exists",
            content_type: Some("application/json"),
            body: stale,
            code: 409,
            reason: "Conflict",
            message: "Operation cannot be fulfilled on configmaps \"exists\": the object has been modified; please apply your changes to the latest version and try again",
            check: |v| {
                if v["details"]["name"] == "exists" && v["details"]["kind"] == "configmaps" {
                    Ok(())
                } else {
                    Err(format!("details: {}", v["details"]))
                }
            },
        },
        Case {
            what: "POST of an existing name",
            method: "POST",
            path: CMS,
            content_type: Some("application/json"),
            body: configmap("exists"),
            code: 409,
            reason: "AlreadyExists",
            message: "configmaps \"exists\" already exists",
            check: |v| {
                let d = &v["details"];
                // The core group is "" (omitted, as Go's omitempty does).
                let core = d.get("group").is_none_or(|g| g == "");
                if d["name"] == "exists" && d["kind"] == "configmaps" && core {
                    Ok(())
                } else {
                    Err(format!("details: {d}"))
                }
            },
        },
        Case {
            what: "body over 3 MiB",
            method: "POST",
            path: CMS,
            content_type: Some("application/json"),
            body: big,
            code: 413,
            reason: "RequestEntityTooLarge",
            message: "",
            check: no_check,
        },
        Case {
            what: "unknown resource",
            method: "GET",
            path: "/api/v1/namespaces/default/widgets",
            content_type: None,
            body: vec![],
            code: 404,
            reason: "NotFound",
            message: "the server could not find the requested resource",
            check: no_check,
        },
        Case {
            what: "unknown API group",
            method: "GET",
            path: "/apis/widgets.example.com/v1/widgets",
            content_type: None,
            body: vec![],
            code: 404,
            reason: "NotFound",
            message: "",
            check: no_check,
        },
        Case {
            what: "missing object",
            method: "GET",
            path: "/apis/apps/v1/namespaces/default/deployments/none",
            content_type: None,
            body: vec![],
            code: 404,
            reason: "NotFound",
            message: "deployments.apps \"none\" not found",
            check: |v| {
                let d = &v["details"];
                if d["name"] == "none" && d["kind"] == "deployments" && d["group"] == "apps" {
                    Ok(())
                } else {
                    Err(format!("details: {d}"))
                }
            },
        },
        Case {
            what: "wrong kind in body",
            method: "POST",
            path: CMS,
            content_type: Some("application/json"),
            body: br#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"k"}}"#.to_vec(),
            code: 400,
            reason: "BadRequest",
            message: "",
            check: no_check,
        },
        Case {
            what: "wrong apiVersion in body",
            method: "POST",
            path: DEPLOYS,
            content_type: Some("application/json"),
            body: br#"{"apiVersion":"v1","kind":"Deployment","metadata":{"name":"k"}}"#.to_vec(),
            code: 400,
            reason: "BadRequest",
            message: "",
            check: no_check,
        },
        Case {
            what: "unsupported patch media type",
            method: "PATCH",
            path: "/api/v1/namespaces/default/configmaps/exists",
            content_type: Some("text/csv"),
            body: b"a,b".to_vec(),
            code: 415,
            reason: "UnsupportedMediaType",
            message: "",
            check: no_check,
        },
        Case {
            what: "server-side apply without fieldManager",
            method: "PATCH",
            path: "/api/v1/namespaces/default/configmaps/exists",
            content_type: Some("application/apply-patch+yaml"),
            body: b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: exists}\n".to_vec(),
            code: 400,
            reason: "BadRequest",
            message: "fieldManager",
            check: no_check,
        },
        Case {
            what: "malformed JSON patch",
            method: "PATCH",
            path: "/api/v1/namespaces/default/configmaps/exists",
            content_type: Some("application/json-patch+json"),
            body: br#"{"op":"add"}"#.to_vec(),
            code: 400,
            reason: "BadRequest",
            message: "",
            check: no_check,
        },
        Case {
            what: "PATCH of a missing object",
            method: "PATCH",
            path: "/api/v1/namespaces/default/configmaps/none",
            content_type: Some("application/merge-patch+json"),
            body: br#"{"data":{"a":"b"}}"#.to_vec(),
            code: 404,
            reason: "NotFound",
            message: "configmaps \"none\" not found",
            check: no_check,
        },
        Case {
            what: "DELETE with a wrong uid precondition",
            method: "DELETE",
            path: "/api/v1/namespaces/default/configmaps/exists",
            content_type: Some("application/json"),
            body: br#"{"kind":"DeleteOptions","apiVersion":"v1","preconditions":{"uid":"00000000-0000-0000-0000-000000000000"}}"#.to_vec(),
            code: 409,
            reason: "Conflict",
            message: "Precondition failed: UID in precondition: 00000000-0000-0000-0000-000000000000",
            check: no_check,
        },
        Case {
            what: "bad label selector",
            method: "GET",
            path: "/api/v1/namespaces/default/configmaps?labelSelector=a%20in%20b",
            content_type: None,
            body: vec![],
            code: 400,
            reason: "BadRequest",
            message: "",
            check: no_check,
        },
        Case {
            what: "unsupported field selector",
            method: "GET",
            path: "/api/v1/namespaces/default/configmaps?fieldSelector=spec.nope%3Dx",
            content_type: None,
            body: vec![],
            code: 400,
            reason: "BadRequest",
            message: "field label not supported: spec.nope",
            check: no_check,
        },
        Case {
            what: "unsupported verb on a collection",
            method: "PUT",
            path: CMS,
            content_type: Some("application/json"),
            body: configmap("x"),
            code: 405,
            reason: "MethodNotAllowed",
            message: "",
            check: no_check,
        },
    ];

    let mut failures = Vec::new();
    for case in cases {
        let r = send(&admin, case.method, case.path, case.content_type, case.body).await;
        if let Err(e) = check_status(&r, case.code, case.reason, case.message)
            .and_then(|()| (case.check)(&r.body))
        {
            failures.push(format!(
                "{} ({} {}): {e}\n    got: {} {:.400}",
                case.what, case.method, case.path, r.code, r.raw
            ));
        }
    }

    // No credentials at all: the CA is still trusted, no client certificate is sent.
    let mut cfg = c.kube_config().await;
    cfg.auth_info = AuthInfo::default();
    let anonymous = Client::try_from(cfg).expect("client");
    for path in [
        "/api/v1/namespaces",
        "/api/v1/namespaces/default/configmaps/exists",
    ] {
        let r = send(&anonymous, "GET", path, None, vec![]).await;
        if let Err(e) = check_status(&r, 401, "Unauthorized", "Unauthorized") {
            failures.push(format!(
                "no credentials (GET {path}): {e}\n    got: {} {:.400}",
                r.code, r.raw
            ));
        }
    }
    // A bearer token that is not known.
    let mut cfg = c.kube_config().await;
    cfg.auth_info = AuthInfo {
        token: Some("not-a-token".to_string().into()),
        ..AuthInfo::default()
    };
    let bad_token = Client::try_from(cfg).expect("client");
    let r = send(&bad_token, "GET", "/api/v1/namespaces", None, vec![]).await;
    if let Err(e) = check_status(&r, 401, "Unauthorized", "") {
        failures.push(format!(
            "unknown bearer token: {e}\n    got: {} {:.400}",
            r.code, r.raw
        ));
    }

    assert!(
        failures.is_empty(),
        "{} bad request(s) answered wrongly:\n{}\n--- server log ---\n{}",
        failures.len(),
        failures.join("\n"),
        c.log_tail()
    );

    // None of the bad requests changed or created anything.
    let r = send(
        &admin,
        "GET",
        "/api/v1/namespaces/default/configmaps/exists",
        None,
        vec![],
    )
    .await;
    assert_eq!(r.body["data"]["a"], "c", "{}", r.raw);
    let r = send(&admin, "GET", CMS, None, vec![]).await;
    let names: Vec<&str> = r.body["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .filter(|n| *n != "kube-root-ca.crt")
        .collect();
    assert_eq!(names, ["exists"], "{}", r.raw);
    let r = send(&admin, "GET", DEPLOYS, None, vec![]).await;
    assert_eq!(r.body["items"], json!([]), "{}", r.raw);
}
