//! Prometheus metrics: request counts and latency histograms by verb and resource,
//! rendered in the text exposition format (0.0.4) on `/metrics`.
//!
//! Series, with upstream's names and verb values (`GET`, `LIST`, `WATCH`, `POST`,
//! `PUT`, `PATCH`, `APPLY`, `DELETE`, `CONNECT`):
//! - `apiserver_request_total{code,group,resource,subresource,verb}` (counter)
//! - `apiserver_request_duration_seconds{group,resource,subresource,verb}` (histogram,
//!   time to response headers; long-running requests — watches, exec/attach/
//!   port-forward, proxy, followed logs — are counted but not timed)
//! - `apiserver_longrunning_requests{group,resource,subresource,verb}` (gauge of
//!   long-running requests whose response is still streaming)

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::authn::UserInfo;
use crate::authz::RequestAttributes;

/// Upstream `apiserver_request_duration_seconds` buckets.
pub const BUCKETS: &[f64] = &[
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

/// Bound on distinct label sets per metric, so that requests for made-up resources
/// cannot grow memory without limit; further new sets are folded into
/// `resource="other"`.
const MAX_SERIES: usize = 4096;

/// Labels shared by every series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Labels {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
}

impl Labels {
    /// The labels of a request as upstream reports them.
    pub fn of(
        attrs: &RequestAttributes,
        method: &Method,
        apply: bool,
        upgrade: bool,
        long_running: bool,
    ) -> Labels {
        let verb = if !attrs.resource_request {
            method.as_str().to_string()
        } else if attrs.verb == "watch" {
            "WATCH".to_string()
        } else if attrs.verb == "list" {
            "LIST".to_string()
        } else if upgrade || (long_running && *method != Method::GET) || attrs.verb == "proxy" {
            "CONNECT".to_string()
        } else if apply && *method == Method::PATCH {
            "APPLY".to_string()
        } else {
            method.as_str().to_string()
        };
        Labels {
            verb,
            group: attrs.api_group.clone(),
            resource: attrs.resource.clone(),
            subresource: attrs.subresource.clone(),
        }
    }

    fn overflow(&self) -> Labels {
        Labels {
            verb: self.verb.clone(),
            group: String::new(),
            resource: "other".to_string(),
            subresource: String::new(),
        }
    }

    fn write(&self, out: &mut String) {
        let _ = write!(
            out,
            "group=\"{}\",resource=\"{}\",subresource=\"{}\",verb=\"{}\"",
            escape(&self.group),
            escape(&self.resource),
            escape(&self.subresource),
            escape(&self.verb)
        );
    }
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[derive(Default)]
struct Histogram {
    /// Non-cumulative counts per bucket; rendering accumulates.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(Labels, u16), u64>,
    durations: BTreeMap<Labels, Histogram>,
    longrunning: BTreeMap<Labels, i64>,
}

/// The metrics registry of an API server.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// The brief's name for [`Metrics`].
pub type Registry = Metrics;

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn bounded<K: Ord + Clone, V>(map: &BTreeMap<K, V>, key: K, overflow: impl FnOnce() -> K) -> K {
    if map.len() < MAX_SERIES || map.contains_key(&key) {
        key
    } else {
        overflow()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a request that answered `code`.
    pub fn count(&self, labels: &Labels, code: u16) {
        let mut i = self.lock();
        let key = bounded(&i.requests, (labels.clone(), code), || {
            (labels.overflow(), code)
        });
        *i.requests.entry(key).or_default() += 1;
    }

    /// Records a request's latency.
    pub fn observe_duration(&self, labels: &Labels, seconds: f64) {
        let mut i = self.lock();
        let key = bounded(&i.durations, labels.clone(), || labels.overflow());
        let h = i.durations.entry(key).or_default();
        if h.counts.is_empty() {
            h.counts = vec![0; BUCKETS.len()];
        }
        if let Some(idx) = BUCKETS.iter().position(|b| seconds <= *b) {
            h.counts[idx] += 1;
        }
        h.sum += seconds;
        h.count += 1;
    }

    fn longrunning(&self, labels: &Labels, delta: i64) {
        let mut i = self.lock();
        let key = bounded(&i.longrunning, labels.clone(), || labels.overflow());
        *i.longrunning.entry(key).or_default() += delta;
    }

    /// The text exposition of every series.
    pub fn render(&self) -> String {
        let i = self.lock();
        let mut out = String::new();
        out.push_str("# HELP apiserver_request_total Counter of apiserver requests broken out for each verb, group, resource, subresource and HTTP response code.\n");
        out.push_str("# TYPE apiserver_request_total counter\n");
        for ((labels, code), n) in &i.requests {
            let _ = write!(out, "apiserver_request_total{{code=\"{code}\",");
            labels.write(&mut out);
            let _ = writeln!(out, "}} {n}");
        }
        out.push_str("# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb, group, resource and subresource.\n");
        out.push_str("# TYPE apiserver_request_duration_seconds histogram\n");
        for (labels, h) in &i.durations {
            let mut cumulative = 0;
            for (b, n) in BUCKETS.iter().zip(&h.counts) {
                cumulative += n;
                out.push_str("apiserver_request_duration_seconds_bucket{");
                labels.write(&mut out);
                let _ = writeln!(out, ",le=\"{b}\"}} {cumulative}");
            }
            out.push_str("apiserver_request_duration_seconds_bucket{");
            labels.write(&mut out);
            let _ = writeln!(out, ",le=\"+Inf\"}} {}", h.count);
            out.push_str("apiserver_request_duration_seconds_sum{");
            labels.write(&mut out);
            let _ = writeln!(out, "}} {}", h.sum);
            out.push_str("apiserver_request_duration_seconds_count{");
            labels.write(&mut out);
            let _ = writeln!(out, "}} {}", h.count);
        }
        out.push_str("# HELP apiserver_longrunning_requests Gauge of all active long-running apiserver requests broken out by verb, group, resource and subresource.\n");
        out.push_str("# TYPE apiserver_longrunning_requests gauge\n");
        for (labels, n) in &i.longrunning {
            out.push_str("apiserver_longrunning_requests{");
            labels.write(&mut out);
            let _ = writeln!(out, "}} {n}");
        }
        out
    }
}

/// The text exposition of `registry` (serve it as
/// `text/plain; version=0.0.4; charset=utf-8`).
pub fn render(registry: &Registry) -> String {
    registry.render()
}

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Decrements the long-running gauge when a streamed response body ends or is dropped.
struct LongRunningGuard {
    metrics: Arc<Metrics>,
    labels: Labels,
}

impl Drop for LongRunningGuard {
    fn drop(&mut self) {
        self.metrics.longrunning(&self.labels, -1);
    }
}

/// A response body that holds a [`LongRunningGuard`] while it streams.
struct GuardedBody {
    inner: Body,
    _guard: LongRunningGuard,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware (`axum::middleware::from_fn_with_state(metrics, metrics_layer)`) that
/// records every request. It also puts the request's [`RequestAttributes`] (with the
/// [`UserInfo`] from [`crate::serve`], or an empty user) into the request extensions,
/// so handlers need not parse the URL again. Long-running requests are counted when
/// their response starts and tracked in `apiserver_longrunning_requests` while it
/// streams; their duration is not a latency.
pub async fn metrics_layer(
    State(m): State<Arc<Metrics>>,
    mut req: Request,
    next: Next,
) -> Response {
    let q: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let user = req
        .extensions()
        .get::<UserInfo>()
        .cloned()
        .unwrap_or_default();
    let method = req.method().clone();
    let attrs = RequestAttributes::from_request(&method, req.uri().path(), &q, user);
    let long_running = attrs.is_long_running(&q);
    let apply = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/apply-patch"));
    let upgrade = req.headers().contains_key(header::UPGRADE);
    let labels = Labels::of(&attrs, &method, apply, upgrade, long_running);
    req.extensions_mut().insert(attrs);

    let start = Instant::now();
    let path = tracing::enabled!(tracing::Level::DEBUG).then(|| req.uri().path().to_string());
    let resp = next.run(req).await;
    m.count(&labels, resp.status().as_u16());
    if !long_running && !upgrade {
        let elapsed = start.elapsed();
        m.observe_duration(&labels, elapsed.as_secs_f64());
        if let Some(path) = path {
            tracing::debug!(%method, path, status = resp.status().as_u16(), micros = elapsed.as_micros() as u64, "request served");
        }
        return resp;
    }
    if !resp.status().is_success() {
        return resp;
    }
    m.longrunning(&labels, 1);
    let guard = LongRunningGuard { metrics: m, labels };
    resp.map(|inner| {
        Body::new(GuardedBody {
            inner,
            _guard: guard,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use axum::Router;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn labels(verb: &str, resource: &str) -> Labels {
        Labels {
            verb: verb.into(),
            resource: resource.into(),
            ..Labels::default()
        }
    }

    #[test]
    fn renders_counters_and_cumulative_histograms() {
        let m = Metrics::new();
        let l = labels("GET", "pods");
        m.count(&l, 200);
        m.count(&l, 200);
        m.count(&l, 404);
        m.observe_duration(&l, 0.01);
        m.observe_duration(&l, 100.0);
        let text = render(&m);
        assert!(text.contains(
            "apiserver_request_total{code=\"200\",group=\"\",resource=\"pods\",subresource=\"\",verb=\"GET\"} 2\n"
        ), "{text}");
        assert!(text.contains("apiserver_request_total{code=\"404\","));
        let b = |le: &str| {
            format!("apiserver_request_duration_seconds_bucket{{group=\"\",resource=\"pods\",subresource=\"\",verb=\"GET\",le=\"{le}\"}}")
        };
        assert!(text.contains(&format!("{} 0\n", b("0.005"))), "{text}");
        assert!(text.contains(&format!("{} 1\n", b("0.025"))));
        assert!(text.contains(&format!("{} 1\n", b("60"))));
        assert!(text.contains(&format!("{} 2\n", b("+Inf"))));
        assert!(text.contains("apiserver_request_duration_seconds_count{group=\"\",resource=\"pods\",subresource=\"\",verb=\"GET\"} 2\n"));
        assert!(text.contains("# TYPE apiserver_request_duration_seconds histogram"));
    }

    #[test]
    fn escapes_and_bounds_labels() {
        let m = Metrics::new();
        m.count(&labels("GET", "a\"b\\c\nd"), 200);
        assert!(render(&m).contains("resource=\"a\\\"b\\\\c\\nd\""));
        for i in 0..MAX_SERIES + 10 {
            m.count(&labels("GET", &format!("r{i}")), 404);
        }
        let text = render(&m);
        let series = text
            .lines()
            .filter(|l| l.starts_with("apiserver_request_total{"))
            .count();
        assert_eq!(series, MAX_SERIES + 1, "bounded plus the overflow series");
        assert!(text.contains("resource=\"other\""));
    }

    fn app(m: Arc<Metrics>) -> Router {
        Router::new()
            .route(
                "/api/v1/namespaces/{ns}/pods",
                get(|req: Request| async move {
                    let a = req
                        .extensions()
                        .get::<RequestAttributes>()
                        .cloned()
                        .map(|a| format!("{} {} {}", a.verb, a.resource, a.user.username))
                        .unwrap_or_default();
                    a
                }),
            )
            .route("/version", get(|| async { "{}" }))
            .layer(axum::middleware::from_fn_with_state(m, metrics_layer))
    }

    async fn call(router: &Router, uri: &str) -> (u16, Bytes) {
        let mut req = Request::builder()
            .uri(uri)
            .body(Body::empty())
            .expect("request");
        req.extensions_mut().insert(UserInfo::new("alice", &[]));
        let resp = router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, body)
    }

    #[tokio::test]
    async fn middleware_counts_and_times() {
        let m = Arc::new(Metrics::new());
        let router = app(m.clone());
        let (code, body) = call(&router, "/api/v1/namespaces/d/pods").await;
        assert_eq!((code, &body[..]), (200, &b"list pods alice"[..]));
        let (code, body) = call(&router, "/api/v1/namespaces/d/pods?watch=true").await;
        assert_eq!((code, &body[..]), (200, &b"watch pods alice"[..]));
        call(&router, "/version").await;
        call(&router, "/api/v1/nodes").await;
        let text = m.render();
        let has = |s: &str| text.lines().any(|l| l == s);
        assert!(has("apiserver_request_total{code=\"200\",group=\"\",resource=\"pods\",subresource=\"\",verb=\"LIST\"} 1"), "{text}");
        assert!(has("apiserver_request_total{code=\"200\",group=\"\",resource=\"pods\",subresource=\"\",verb=\"WATCH\"} 1"));
        assert!(has("apiserver_request_total{code=\"200\",group=\"\",resource=\"\",subresource=\"\",verb=\"GET\"} 1"));
        assert!(has("apiserver_request_total{code=\"404\",group=\"\",resource=\"nodes\",subresource=\"\",verb=\"LIST\"} 1"));
        assert!(has("apiserver_request_duration_seconds_count{group=\"\",resource=\"pods\",subresource=\"\",verb=\"LIST\"} 1"));
        assert!(
            !text.contains("apiserver_request_duration_seconds_count{group=\"\",resource=\"pods\",subresource=\"\",verb=\"WATCH\"}"),
            "watches are not timed: {text}"
        );
        // The watch finished streaming: the gauge is back to zero.
        assert!(has("apiserver_longrunning_requests{group=\"\",resource=\"pods\",subresource=\"\",verb=\"WATCH\"} 0"));
    }
}
