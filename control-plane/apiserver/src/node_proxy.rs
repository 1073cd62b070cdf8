//! The pod subresources served by the pod's kubelet: `pods/log`, `pods/exec`,
//! `pods/attach`, `pods/portforward`. The API server checks the request against the
//! pod (upstream's `LogLocation`/`streamLocation` rules and wording), finds the
//! kubelet through the Node (`InternalIP` and `daemonEndpoints.kubeletEndpoint.Port`),
//! dials it over TLS with the kubelet client certificate, and relays: a streamed
//! body for logs, and for upgrades (WebSocket, SPDY) the 101 answer followed by a
//! byte splice in both directions.
//!
//! The kubelet's serving certificate is not verified (upstream's default without
//! `--kubelet-certificate-authority`): kubelets serve self-signed certificates.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::app::App;
use crate::error::{ApiError, ApiResult};
use crate::request::{Query, Target};
use crate::rest::read;

/// Upstream's default kubelet port, used when a Node advertises none.
const DEFAULT_KUBELET_PORT: u16 = 10250;
/// Dialing a kubelet (TCP and TLS) gives up after this long.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// An error body from a kubelet is read up to this many bytes.
const MAX_ERROR_BODY: usize = 4096;

/// The subresources proxied to kubelets.
pub fn is_node_subresource(t: &Target) -> bool {
    t.info.gvk.group.is_empty()
        && t.info.plural == "pods"
        && t.name.is_some()
        && matches!(
            t.subresource.as_deref(),
            Some("log" | "exec" | "attach" | "portforward")
        )
}

/// How the API server reaches kubelets.
pub struct KubeletDialer {
    tls: tokio_rustls::TlsConnector,
}

impl KubeletDialer {
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Self {
        KubeletDialer {
            tls: tokio_rustls::TlsConnector::from(tls),
        }
    }

    async fn dial(
        &self,
        addr: SocketAddr,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let tcp = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("dial tcp {addr}: i/o timeout"))?
            .map_err(|e| format!("dial tcp {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        tokio::time::timeout(DIAL_TIMEOUT, self.tls.connect(name, tcp))
            .await
            .map_err(|_| format!("tls handshake with {addr}: timeout"))?
            .map_err(|e| format!("tls handshake with {addr}: {e}"))
    }
}

impl KubeletDialer {
    /// `GET path` on the kubelet at `addr`, its JSON answer.
    pub async fn get_json(&self, addr: SocketAddr, path: &str) -> Result<Value, String> {
        use http_body_util::BodyExt;
        let stream = self.dial(addr).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(header::HOST, addr.to_string())
            .header(header::ACCEPT, "application/json")
            .body(Body::empty())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "{path}: {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(MAX_ERROR_BODY)])
            ));
        }
        serde_json::from_slice(&body).map_err(|e| format!("{path}: {e}"))
    }
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn names(list: Option<&Value>) -> Vec<String> {
    list.and_then(Value::as_array)
        .map(|cs| cs.iter().map(|c| str_at(c, "/name").to_string()).collect())
        .unwrap_or_default()
}

/// The container a request is about: the one named (which must exist), or the only
/// one (upstream's `validateContainer` wording).
pub fn pick_container(pod: &Value, requested: Option<&str>) -> ApiResult<String> {
    let name = str_at(pod, "/metadata/name");
    let containers = names(pod.pointer("/spec/containers"));
    let inits = names(pod.pointer("/spec/initContainers"));
    let ephemeral = names(pod.pointer("/spec/ephemeralContainers"));
    match requested.filter(|c| !c.is_empty()) {
        Some(c) => {
            if containers
                .iter()
                .chain(&inits)
                .chain(&ephemeral)
                .any(|n| n == c)
            {
                Ok(c.to_string())
            } else {
                Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )))
            }
        }
        None => match containers.as_slice() {
            [only] => Ok(only.clone()),
            [] => Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}"
            ))),
            many => {
                let mut msg = format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    many.join(" ")
                );
                if !inits.is_empty() {
                    msg.push_str(&format!(
                        " or one of the init containers: [{}]",
                        inits.join(" ")
                    ));
                }
                if !ephemeral.is_empty() {
                    msg.push_str(&format!(
                        " or one of the ephemeral containers: [{}]",
                        ephemeral.join(" ")
                    ));
                }
                Err(ApiError::bad_request(msg))
            }
        },
    }
}

/// The kubelet address of node `node` (InternalIP, else ExternalIP, and the advertised
/// kubelet port).
pub fn kubelet_address(node: &Value) -> ApiResult<SocketAddr> {
    let addresses = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ip = ["InternalIP", "ExternalIP"]
        .iter()
        .find_map(|kind| {
            addresses
                .iter()
                .filter(|a| str_at(a, "/type") == *kind)
                .find_map(|a| str_at(a, "/address").parse::<IpAddr>().ok())
        })
        .ok_or_else(|| {
            let known: Vec<String> = addresses
                .iter()
                .map(|a| format!("{{{} {}}}", str_at(a, "/type"), str_at(a, "/address")))
                .collect();
            ApiError::internal(format!(
                "no preferred addresses found; known addresses: [{}]",
                known.join(" ")
            ))
        })?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .unwrap_or(DEFAULT_KUBELET_PORT);
    Ok(SocketAddr::new(ip, port))
}

/// Query keys `pods/log` passes on to the kubelet.
const LOG_PARAMS: &[&str] = &[
    "follow",
    "previous",
    "sinceSeconds",
    "sinceTime",
    "timestamps",
    "tailLines",
    "limitBytes",
];

fn encode(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// Serves a kubelet-backed pod subresource.
pub async fn serve(app: Arc<App>, t: &Target, mut parts: Parts, q: &Query) -> ApiResult<Response> {
    let ns = t.namespace.clone().unwrap_or_else(|| "default".into());
    let name = t.name.clone().unwrap_or_default();
    let sub = t.subresource.clone().unwrap_or_default();
    let is_log = sub == "log";
    if is_log && !(parts.method == Method::GET || parts.method == Method::HEAD) {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({} pods/log)",
            parts.method
        )));
    }
    if !(is_log || parts.method == Method::GET || parts.method == Method::POST) {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({} pods/{sub})",
            parts.method
        )));
    }
    let (pod, _) = read(&app, &t.info, Some(&ns), &name).await?;
    let node = str_at(&pod, "/spec/nodeName").to_string();
    let raw_query = parts.uri.query().unwrap_or("").to_string();
    let path = match sub.as_str() {
        "log" => {
            let container = pick_container(&pod, q.get("container"))?;
            if node.is_empty() {
                // Upstream: an unscheduled pod has no log yet, an empty answer.
                return Ok(Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, "text/plain")
                    .body(Body::empty())
                    .unwrap_or_default());
            }
            let pairs: Vec<(&str, &str)> = LOG_PARAMS
                .iter()
                .filter_map(|k| q.get(k).map(|v| (*k, v)))
                .collect();
            let query = encode(&pairs);
            format!(
                "/containerLogs/{ns}/{name}/{container}{}",
                if query.is_empty() {
                    String::new()
                } else {
                    format!("?{query}")
                }
            )
        }
        "exec" | "attach" => {
            let container = pick_container(&pod, q.get("container"))?;
            if node.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "pod {name} does not have a host assigned"
                )));
            }
            if sub == "exec" && q.get("command").is_none() {
                return Err(ApiError::bad_request("you must specify at least 1 command"));
            }
            // The container may have been defaulted: the kubelet's path names it.
            format!("/{sub}/{ns}/{name}/{container}?{raw_query}")
        }
        _ => {
            if node.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "pod {name} does not have a host assigned"
                )));
            }
            format!("/portForward/{ns}/{name}?{raw_query}")
        }
    };

    let nodes = app
        .registry
        .get("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("nodes are not served"))?;
    let (node_obj, _) = read(&app, &nodes, None, &node).await?;
    let addr = kubelet_address(&node_obj)?;
    let dialer = app
        .kubelet
        .get()
        .ok_or_else(|| ApiError::internal("this API server has no kubelet client configured"))?;
    let stream = dialer
        .dial(addr)
        .await
        .map_err(|e| ApiError::internal(format!("error dialing backend: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ApiError::internal(format!("error dialing backend: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(error = %e, "kubelet connection ended");
        }
    });

    let mut req = Request::builder()
        .method(parts.method.clone())
        .uri(&path)
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    for (k, v) in parts.headers.iter() {
        // The client's credentials are for us; the kubelet gets ours (the TLS cert).
        if k == header::AUTHORIZATION || k == header::HOST || k == header::CONTENT_LENGTH {
            continue;
        }
        if k.as_str().starts_with("impersonate-") {
            continue;
        }
        req.headers_mut().append(k.clone(), v.clone());
    }
    if let Ok(h) = HeaderValue::from_str(&addr.to_string()) {
        req.headers_mut().insert(header::HOST, h);
    }
    let mut resp = sender
        .send_request(req)
        .await
        .map_err(|e| ApiError::internal(format!("error talking to the kubelet: {e}")))?;
    debug!(%addr, %path, status = %resp.status(), "kubelet answered");

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_side) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            return Err(ApiError::bad_request(
                "Upgrade request required (streaming needs HTTP/1.1)",
            ));
        };
        let kubelet_side = hyper::upgrade::on(&mut resp);
        let mut out = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
        for (k, v) in resp.headers() {
            out = out.header(k, v);
        }
        tokio::spawn(async move {
            let (c, k) = match tokio::try_join!(client_side, kubelet_side) {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(error = %e, "stream upgrade failed");
                    return;
                }
            };
            let (mut c, mut k) = (TokioIo::new(c), TokioIo::new(k));
            match tokio::io::copy_bidirectional(&mut c, &mut k).await {
                Ok((up, down)) => debug!(up, down, "stream relay ended"),
                Err(e) => debug!(error = %e, "stream relay ended with an error"),
            }
        });
        return out
            .body(Body::empty())
            .map_err(|e| ApiError::internal(e.to_string()));
    }

    let status = resp.status();
    if is_log && !status.is_success() {
        return Err(kubelet_error(status, &name, resp.into_body()).await);
    }
    // Everything else (log bodies, refusals of upgrades) is passed through as is.
    let mut out = Response::builder().status(status);
    for (k, v) in resp.headers() {
        if k == header::CONNECTION || k == header::TRANSFER_ENCODING {
            continue;
        }
        out = out.header(k, v);
    }
    out.body(Body::new(resp.into_body()))
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// A kubelet's refusal as a `Status` (upstream's `GenericHttpResponseChecker`).
async fn kubelet_error(status: StatusCode, name: &str, body: hyper::body::Incoming) -> ApiError {
    use http_body_util::BodyExt;
    let bytes = http_body_util::Limited::new(body, MAX_ERROR_BODY)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    match status.as_u16() {
        400 => ApiError::bad_request(text),
        404 => ApiError::new(404, "NotFound", text).with_details(serde_json::json!({
            "name": name, "kind": "pods/log"
        })),
        500 => ApiError::internal(text),
        code => ApiError::new(code, "InternalError", text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn container_choice_and_wording() {
        let one = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}});
        assert_eq!(pick_container(&one, None).unwrap(), "a");
        assert_eq!(pick_container(&one, Some("")).unwrap(), "a");
        assert_eq!(
            pick_container(&one, Some("x")).unwrap_err().message,
            "container x is not valid for pod p"
        );
        let two = json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "a"}, {"name": "b"}],
            "initContainers": [{"name": "i"}]}});
        let e = pick_container(&two, None).unwrap_err();
        assert_eq!(e.code, 400);
        assert_eq!(
            e.message,
            "a container name must be specified for pod p, choose one of: [a b] or one of the init containers: [i]"
        );
        assert_eq!(pick_container(&two, Some("i")).unwrap(), "i");
    }

    #[test]
    fn kubelet_address_from_node_status() {
        let n = json!({"status": {
            "addresses": [{"type": "Hostname", "address": "h"}, {"type": "InternalIP", "address": "127.0.3.4"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 12345}}}});
        assert_eq!(
            kubelet_address(&n).unwrap(),
            "127.0.3.4:12345".parse().unwrap()
        );
        let n = json!({"status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}});
        assert_eq!(kubelet_address(&n).unwrap().port(), 10250);
        let n = json!({"status": {"addresses": [{"type": "Hostname", "address": "h"}]}});
        assert!(kubelet_address(&n)
            .unwrap_err()
            .message
            .contains("no preferred addresses found"));
    }
}
