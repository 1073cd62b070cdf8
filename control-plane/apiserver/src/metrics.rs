//! Prometheus metrics: request counts and latency histograms by verb and resource,
//! rendered in the text exposition format on `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::authn::UserInfo;
use crate::authz::RequestAttributes;

/// Upstream `apiserver_request_duration_seconds` buckets.
const BUCKETS: &[f64] = &[
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, String, u16), u64>,
    durations: BTreeMap<(String, String), Histogram>,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    pub fn observe(&self, verb: &str, resource: &str, code: u16, seconds: Option<f64>) {
        let mut i = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *i.requests
            .entry((verb.to_string(), resource.to_string(), code))
            .or_default() += 1;
        if let Some(s) = seconds {
            let h = i
                .durations
                .entry((verb.to_string(), resource.to_string()))
                .or_default();
            if h.counts.is_empty() {
                h.counts = vec![0; BUCKETS.len()];
            }
            for (idx, b) in BUCKETS.iter().enumerate() {
                if s <= *b {
                    h.counts[idx] += 1;
                }
            }
            h.sum += s;
            h.count += 1;
        }
    }

    pub fn render(&self) -> String {
        let i = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        out.push_str("# HELP apiserver_request_total Counter of apiserver requests broken out by verb, resource and HTTP response code.\n");
        out.push_str("# TYPE apiserver_request_total counter\n");
        for ((verb, resource, code), n) in &i.requests {
            let _ = writeln!(out, "apiserver_request_total{{code=\"{code}\",resource=\"{resource}\",verb=\"{verb}\"}} {n}");
        }
        out.push_str("# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb and resource.\n");
        out.push_str("# TYPE apiserver_request_duration_seconds histogram\n");
        for ((verb, resource), h) in &i.durations {
            for (idx, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "apiserver_request_duration_seconds_bucket{{resource=\"{resource}\",verb=\"{verb}\",le=\"{b}\"}} {}",
                    h.counts[idx]
                );
            }
            let _ = writeln!(out, "apiserver_request_duration_seconds_bucket{{resource=\"{resource}\",verb=\"{verb}\",le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "apiserver_request_duration_seconds_sum{{resource=\"{resource}\",verb=\"{verb}\"}} {}", h.sum);
            let _ = writeln!(out, "apiserver_request_duration_seconds_count{{resource=\"{resource}\",verb=\"{verb}\"}} {}", h.count);
        }
        out
    }
}

/// Records every request; watches are counted, but their (long) duration is not
/// a latency.
pub async fn metrics_layer(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let q: std::collections::HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let user = UserInfo {
        username: String::new(),
        uid: String::new(),
        groups: vec![],
    };
    let a = RequestAttributes::from_request(req.method(), req.uri().path(), &q, user);
    let (verb, resource) = if a.resource_request {
        let r = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        (a.verb.to_ascii_uppercase(), r)
    } else {
        (req.method().as_str().to_string(), String::new())
    };
    let start = Instant::now();
    let resp = next.run(req).await;
    let secs = (a.verb != "watch").then(|| start.elapsed().as_secs_f64());
    m.observe(&verb, &resource, resp.status().as_u16(), secs);
    resp
}
