//! `metrics.k8s.io/v1beta1` (`NodeMetrics`, `PodMetrics`), what `kubectl top` reads.
//! Upstream serves it from metrics-server, an aggregated API that scrapes every
//! kubelet's `/stats/summary`; Kelp's API server does the scraping itself, on
//! demand, through the same kubelet client connection it uses for logs and exec,
//! so a cluster needs no extra component.
//!
//! A node's summary is kept for [`SCRAPE_TTL`] (metrics-server's resolution is
//! 15 s; `kubectl top` repeated within a few seconds shows the same figures instead
//! of a rate over a few milliseconds). CPU is the kubelet's `usageNanoCores` (the
//! rate between its two latest samples) or, on a first sample, the average since the
//! container started.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use axum::response::Response;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tracing::debug;

use crate::app::App;
use crate::error::{ApiError, ApiResult};
use crate::filter::Filter;
use crate::objects::list_prefix;
use crate::request::{Query, Target};
use crate::rest::json_response;

pub const GROUP: &str = "metrics.k8s.io";
/// How long a node's scraped summary is reused.
pub const SCRAPE_TTL: Duration = Duration::from_secs(5);
/// A kubelet that does not answer within this long is left out of the answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Summaries scraped recently, by node name.
#[derive(Default)]
pub struct SummaryCache(Mutex<HashMap<String, (Instant, Arc<Value>)>>);

pub fn is_metrics(t: &Target) -> bool {
    t.info.gvk.group == GROUP
}

/// Serves a `metrics.k8s.io` request: `get` and `list` of nodes or pods.
pub async fn serve(app: &Arc<App>, t: &Target, method: &Method, q: &Query) -> ApiResult<Response> {
    if *method != Method::GET || q.flag("watch") || t.subresource.is_some() {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({method} {})",
            t.info.plural
        )));
    }
    match t.info.plural.as_str() {
        "nodes" => nodes(app, t, q).await,
        _ => pods(app, t, q).await,
    }
}

fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn core_info(app: &App, plural: &str) -> ApiResult<Arc<kelp_api::registry::ResourceInfo>> {
    app.registry
        .get("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not served")))
}

/// The objects of a core resource, from the watch cache, that `q`'s selectors match
/// (and, with `name`, only that one).
async fn core_objects(
    app: &App,
    plural: &str,
    namespace: Option<&str>,
    name: Option<&str>,
    q: &Query,
) -> ApiResult<Vec<Value>> {
    let info = core_info(app, plural)?;
    let filter = Filter::from_query(&info, q)?;
    let (items, _) = app.cache.list(&list_prefix(&info, namespace)).await;
    Ok(items
        .iter()
        .map(|o| &o.value)
        .filter(|v| {
            name.is_none_or(|n| v.pointer("/metadata/name").and_then(Value::as_str) == Some(n))
        })
        .filter(|v| filter.matches(&info, v))
        .cloned()
        .collect())
}

/// Each named node's summary (scraped or cached); nodes whose kubelet cannot be
/// reached are missing from the map.
async fn summaries(app: &Arc<App>, node_names: &[String]) -> HashMap<String, Arc<Value>> {
    let mut out = HashMap::new();
    let mut wanted = Vec::new();
    {
        let cache = app.summaries.0.lock().await;
        for n in node_names {
            match cache.get(n) {
                Some((at, v)) if at.elapsed() < SCRAPE_TTL => {
                    out.insert(n.clone(), v.clone());
                }
                _ => wanted.push(n.clone()),
            }
        }
    }
    let Some(dialer) = app.kubelet.get() else {
        return out;
    };
    let nodes_info = match core_info(app, "nodes") {
        Ok(i) => i,
        Err(_) => return out,
    };
    let scrapes = wanted.into_iter().map(|name| {
        let nodes_info = nodes_info.clone();
        async move {
            let (node, _) = crate::rest::read(app, &nodes_info, None, &name)
                .await
                .ok()?;
            let addr = crate::node_proxy::kubelet_address(&node).ok()?;
            let got = tokio::time::timeout(SCRAPE_TIMEOUT, dialer.get_json(addr, "/stats/summary"))
                .await
                .map_err(|_| "timeout".to_string())
                .and_then(|r| r);
            match got {
                Ok(v) => Some((name, Arc::new(v))),
                Err(e) => {
                    debug!(node = %name, error = %e, "cannot scrape the kubelet's summary");
                    None
                }
            }
        }
    });
    let scraped: Vec<(String, Arc<Value>)> = futures::future::join_all(scrapes)
        .await
        .into_iter()
        .flatten()
        .collect();
    let mut cache = app.summaries.0.lock().await;
    for (name, v) in scraped {
        cache.insert(name.clone(), (Instant::now(), v.clone()));
        out.insert(name, v);
    }
    out
}

fn parse_time(s: Option<&str>) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Nanocores from a Summary `cpu` object and the window it covers, in seconds.
fn cpu_usage(cpu: &Value, start: Option<&str>) -> Option<(u64, f64)> {
    if let Some(n) = cpu.get("usageNanoCores").and_then(Value::as_u64) {
        // The kubelet's rate is between its two latest samples; metrics-server
        // reports the same with its scrape window, which we approximate by ours.
        return Some((n, SCRAPE_TTL.as_secs_f64()));
    }
    let total = cpu.get("usageCoreNanoSeconds").and_then(Value::as_u64)?;
    let at = parse_time(cpu.get("time").and_then(Value::as_str))?;
    let since = parse_time(start)?;
    let secs = (at - since).num_milliseconds() as f64 / 1000.0;
    (secs > 0.0).then(|| ((total as f64 / secs) as u64, secs))
}

fn memory_usage(mem: &Value) -> Option<u64> {
    mem.get("workingSetBytes").and_then(Value::as_u64)
}

/// A quantity string as metrics-server writes them.
fn cpu_quantity(nanocores: u64) -> String {
    format!("{nanocores}n")
}

fn memory_quantity(bytes: u64) -> String {
    if bytes.is_multiple_of(1024) {
        format!("{}Ki", bytes / 1024)
    } else {
        bytes.to_string()
    }
}

fn window(secs: f64) -> String {
    format!("{secs:.3}s")
}

fn metadata(obj: &Value, namespaced: bool) -> Value {
    let m = &obj["metadata"];
    let mut out = json!({
        "name": m["name"],
        "creationTimestamp": now_rfc3339(),
    });
    if namespaced {
        out["namespace"] = m["namespace"].clone();
    }
    if let Some(l) = m.get("labels").filter(|l| l.is_object()) {
        out["labels"] = l.clone();
    }
    out
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({
        "kind": kind,
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": {},
        "items": items,
    })
}

/// A node's metrics from its summary.
fn node_metrics(node: &Value, summary: &Value) -> Option<Value> {
    let s = &summary["node"];
    // The host's cumulative figure counts from boot, not from the kubelet's start:
    // only the kubelet's rate says anything.
    let (cpu, secs) = cpu_usage(s.get("cpu")?, None)?;
    let memory = memory_usage(s.get("memory")?)?;
    let ts = s
        .pointer("/cpu/time")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(now_rfc3339);
    Some(json!({
        "kind": "NodeMetrics",
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": metadata(node, false),
        "timestamp": ts,
        "window": window(secs),
        "usage": {"cpu": cpu_quantity(cpu), "memory": memory_quantity(memory)},
    }))
}

/// A pod's metrics from its node's summary (`None` when the node reports no figures
/// for it yet, as metrics-server leaves such pods out).
fn pod_metrics(pod: &Value, summary: &Value) -> Option<Value> {
    let uid = pod.pointer("/metadata/uid").and_then(Value::as_str)?;
    let entry = summary
        .get("pods")?
        .as_array()?
        .iter()
        .find(|p| p.pointer("/podRef/uid").and_then(Value::as_str) == Some(uid))?;
    let mut containers = Vec::new();
    let mut window_secs: f64 = 0.0;
    let mut ts = None;
    for c in entry.get("containers")?.as_array()? {
        let start = c.get("startTime").and_then(Value::as_str);
        let (cpu, secs) = cpu_usage(c.get("cpu")?, start)?;
        let memory = memory_usage(c.get("memory")?)?;
        window_secs = window_secs.max(secs);
        ts = ts.or_else(|| c.pointer("/cpu/time").and_then(Value::as_str));
        containers.push(json!({
            "name": c["name"],
            "usage": {"cpu": cpu_quantity(cpu), "memory": memory_quantity(memory)},
        }));
    }
    if containers.is_empty() {
        return None;
    }
    Some(json!({
        "kind": "PodMetrics",
        "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": metadata(pod, true),
        "timestamp": ts.map(str::to_string).unwrap_or_else(now_rfc3339),
        "window": window(window_secs),
        "containers": containers,
    }))
}

async fn nodes(app: &Arc<App>, t: &Target, q: &Query) -> ApiResult<Response> {
    let nodes = core_objects(app, "nodes", None, t.name.as_deref(), q).await?;
    let names: Vec<String> = nodes
        .iter()
        .filter_map(|n| n.pointer("/metadata/name").and_then(Value::as_str))
        .map(str::to_string)
        .collect();
    let sums = summaries(app, &names).await;
    let items: Vec<Value> = nodes
        .iter()
        .zip(&names)
        .filter_map(|(n, name)| node_metrics(n, sums.get(name)?))
        .collect();
    one_or_list(t, "NodeMetricsList", "nodemetrics", items)
}

async fn pods(app: &Arc<App>, t: &Target, q: &Query) -> ApiResult<Response> {
    let pods = core_objects(app, "pods", t.namespace.as_deref(), t.name.as_deref(), q).await?;
    let mut by_node: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for p in &pods {
        if let Some(n) = p.pointer("/spec/nodeName").and_then(Value::as_str) {
            if !n.is_empty() {
                by_node.entry(n.to_string()).or_default().push(p);
            }
        }
    }
    let names: Vec<String> = by_node.keys().cloned().collect();
    let sums = summaries(app, &names).await;
    let mut items: Vec<Value> = by_node
        .iter()
        .filter_map(|(node, pods)| Some((sums.get(node)?, pods)))
        .flat_map(|(s, pods)| pods.iter().filter_map(|p| pod_metrics(p, s)))
        .collect();
    items.sort_by(|a, b| {
        let key = |v: &Value| {
            (
                v.pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                v.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            )
        };
        key(a).cmp(&key(b))
    });
    one_or_list(t, "PodMetricsList", "podmetrics", items)
}

fn one_or_list(
    t: &Target,
    list_kind: &str,
    resource: &str,
    mut items: Vec<Value>,
) -> ApiResult<Response> {
    match &t.name {
        None => Ok(json_response(StatusCode::OK, &list(list_kind, items))),
        Some(name) => match items.pop() {
            Some(item) => Ok(json_response(StatusCode::OK, &item)),
            None => {
                // Upstream metrics-server's wording: the object named with its
                // namespace for pods.
                let shown = match &t.namespace {
                    Some(ns) => format!("{ns}/{name}"),
                    None => name.clone(),
                };
                Err(ApiError::not_found(GROUP, resource, &shown))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_figures_from_a_summary() {
        let pod = json!({"metadata": {"name": "web", "namespace": "default", "uid": "u1", "labels": {"app": "web"}}});
        let summary = json!({"pods": [{
            "podRef": {"name": "web", "namespace": "default", "uid": "u1"},
            "containers": [
                {"name": "a", "startTime": "2026-01-01T00:00:00Z",
                 "cpu": {"time": "2026-01-01T00:00:10Z", "usageCoreNanoSeconds": 5_000_000_000u64},
                 "memory": {"workingSetBytes": 2048}},
                {"name": "b",
                 "cpu": {"time": "2026-01-01T00:00:10Z", "usageCoreNanoSeconds": 1, "usageNanoCores": 1234},
                 "memory": {"workingSetBytes": 1000}}
            ]
        }]});
        let m = pod_metrics(&pod, &summary).expect("figures");
        assert_eq!(m["kind"], "PodMetrics");
        assert_eq!(m["metadata"]["labels"]["app"], "web");
        // 5 core-seconds over the 10 s since the start: half a core.
        assert_eq!(m["containers"][0]["usage"]["cpu"], "500000000n");
        assert_eq!(m["containers"][0]["usage"]["memory"], "2Ki");
        assert_eq!(m["containers"][1]["usage"]["cpu"], "1234n");
        assert_eq!(m["containers"][1]["usage"]["memory"], "1000");
        // Another pod's uid: no figures.
        let other = json!({"metadata": {"name": "web", "namespace": "default", "uid": "u2"}});
        assert!(pod_metrics(&other, &summary).is_none());
    }

    #[test]
    fn node_figures_need_cpu_and_memory() {
        let node = json!({"metadata": {"name": "n1"}});
        let s = json!({"node": {"startTime": "2026-01-01T00:00:00Z",
            "cpu": {"time": "2026-01-01T00:01:00Z", "usageCoreNanoSeconds": 1, "usageNanoCores": 250_000_000u64},
            "memory": {"workingSetBytes": 1048576}}});
        let m = node_metrics(&node, &s).expect("figures");
        assert_eq!(m["usage"]["cpu"], "250000000n");
        assert_eq!(m["usage"]["memory"], "1024Ki");
        assert!(node_metrics(&node, &json!({"node": {"cpu": {}}})).is_none());
    }
}
