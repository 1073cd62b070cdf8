//! Resource quantities and what a pod requests, as upstream's `resource.Quantity`
//! and `resourcehelper.PodRequests` compute them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Requests a container without any count as, for spreading scores only (upstream's
/// `DefaultMilliCPURequest` and `DefaultMemoryRequest`).
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// Parses a Kubernetes quantity ("100m", "1.5", "128Mi", "1e3", "2G") scaled by
/// `scale` (1000 for millicores, 1 for bytes), rounding up as `Quantity.MilliValue`
/// and `Quantity.Value` do. `None` for text that is not a quantity.
pub fn parse_quantity(s: &str, scale: i64) -> Option<i64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    let value: f64 = num.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with('e') || e.starts_with('E') => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    let v = value * factor * scale as f64;
    // Tolerate float noise ("0.1" * 1000 = 100.00000000000001) before rounding up.
    let rounded = (v - 1e-6).ceil();
    if !rounded.is_finite() || rounded.abs() > i64::MAX as f64 {
        return None;
    }
    Some(rounded as i64)
}

fn q(qty: &Quantity, scale: i64) -> i64 {
    parse_quantity(&qty.0, scale).unwrap_or(0)
}

/// Amounts of the resources the scheduler accounts for: cpu in millicores, memory
/// and ephemeral storage in bytes, a pod count, and extended resources by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resource {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    pub pods: i64,
    pub scalar: BTreeMap<String, i64>,
}

impl Resource {
    /// From a `requests`/`allocatable` map; unknown names are scalar resources.
    pub fn from_map(m: Option<&BTreeMap<String, Quantity>>) -> Resource {
        let mut r = Resource::default();
        for (name, qty) in m.into_iter().flatten() {
            r.set(name, qty);
        }
        r
    }

    fn set(&mut self, name: &str, qty: &Quantity) {
        match name {
            "cpu" => self.milli_cpu = q(qty, 1000),
            "memory" => self.memory = q(qty, 1),
            "ephemeral-storage" => self.ephemeral_storage = q(qty, 1),
            "pods" => self.pods = q(qty, 1),
            // Hugepages and extended resources (vendor.io/x) are counted like upstream's
            // ScalarResources; anything else (e.g. attachable volumes) is not a request.
            n if n.starts_with("hugepages-") || n.contains('/') => {
                self.scalar.insert(n.to_string(), q(qty, 1));
            }
            _ => {}
        }
    }

    pub fn add(&mut self, o: &Resource) {
        self.milli_cpu += o.milli_cpu;
        self.memory += o.memory;
        self.ephemeral_storage += o.ephemeral_storage;
        self.pods += o.pods;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    pub fn sub(&mut self, o: &Resource) {
        self.milli_cpu -= o.milli_cpu;
        self.memory -= o.memory;
        self.ephemeral_storage -= o.ephemeral_storage;
        self.pods -= o.pods;
        for (k, v) in &o.scalar {
            *self.scalar.entry(k.clone()).or_default() -= v;
        }
    }

    /// Each amount the larger of the two.
    pub fn max_with(&mut self, o: &Resource) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
        for (k, v) in &o.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }
}

/// What one pod asks of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRequests {
    /// The effective requests (NodeResourcesFit, BalancedAllocation).
    pub requested: Resource,
    /// The same with 100m cpu / 200Mi memory for containers that request none
    /// (LeastAllocated, so best-effort pods still spread).
    pub non_zero: Resource,
}

fn container_requests(c: &Container) -> Resource {
    Resource::from_map(c.resources.as_ref().and_then(|r| r.requests.as_ref()))
}

fn non_zero(mut r: Resource, c: &Container) -> Resource {
    let has = |name: &str| {
        c.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .is_some_and(|m| m.contains_key(name))
    };
    if !has("cpu") {
        r.milli_cpu = DEFAULT_MILLI_CPU_REQUEST;
    }
    if !has("memory") {
        r.memory = DEFAULT_MEMORY_REQUEST;
    }
    r
}

/// Upstream's `PodRequests`: the sum over containers, then init containers in order
/// (a restartable "sidecar" init container keeps running, so it adds to everything
/// after it; a plain one only needs its own request plus the sidecars before it),
/// the larger of the two, plus the pod overhead. The pod itself counts one `pods`.
pub fn pod_requests(pod: &Pod) -> PodRequests {
    let Some(spec) = pod.spec.as_ref() else {
        return PodRequests::default();
    };
    let mut req = Resource::default();
    let mut nz = Resource::default();
    for c in &spec.containers {
        let r = container_requests(c);
        nz.add(&non_zero(r.clone(), c));
        req.add(&r);
    }
    let mut sidecars = Resource::default();
    let mut sidecars_nz = Resource::default();
    let mut init_max = Resource::default();
    let mut init_max_nz = Resource::default();
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(c);
        let rnz = non_zero(r.clone(), c);
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars.add(&r);
            sidecars_nz.add(&rnz);
            // Starting a sidecar needs it and every sidecar before it.
            init_max.max_with(&sidecars);
            init_max_nz.max_with(&sidecars_nz);
        } else {
            let mut a = r;
            a.add(&sidecars);
            let mut b = rnz;
            b.add(&sidecars_nz);
            init_max.max_with(&a);
            init_max_nz.max_with(&b);
        }
    }
    req.add(&sidecars);
    nz.add(&sidecars_nz);
    req.max_with(&init_max);
    nz.max_with(&init_max_nz);
    if let Some(o) = spec.overhead.as_ref() {
        let o = Resource::from_map(Some(o));
        req.add(&o);
        nz.add(&o);
    }
    req.pods = 1;
    nz.pods = 1;
    PodRequests {
        requested: req,
        non_zero: nz,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities() {
        let cases = [
            ("100m", 1000, Some(100)),
            ("1", 1000, Some(1000)),
            ("1.5", 1000, Some(1500)),
            ("0.1", 1000, Some(100)),
            ("250u", 1000, Some(1)),
            ("128Mi", 1, Some(134217728)),
            ("1Gi", 1, Some(1 << 30)),
            ("2G", 1, Some(2_000_000_000)),
            ("1e3", 1, Some(1000)),
            ("5k", 1, Some(5000)),
            ("12Ki", 1, Some(12288)),
            ("x", 1, None),
            ("1Zi", 1, None),
            ("", 1, None),
        ];
        for (s, scale, want) in cases {
            assert_eq!(parse_quantity(s, scale), want, "{s}");
        }
    }

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    #[test]
    fn requests_sum_containers_max_init_and_add_overhead() {
        let p = pod(json!({
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "100Mi"}}},
                {"name": "b", "resources": {"requests": {"cpu": "200m"}}}
            ],
            "initContainers": [
                {"name": "i", "resources": {"requests": {"cpu": "1", "memory": "10Mi"}}}
            ],
            "overhead": {"cpu": "10m"}
        }));
        let r = pod_requests(&p);
        assert_eq!(r.requested.milli_cpu, 1010);
        assert_eq!(r.requested.memory, 100 << 20);
        assert_eq!(r.requested.pods, 1);
        // Non-zero: b gets the 200Mi default memory.
        assert_eq!(r.non_zero.memory, (100 << 20) + DEFAULT_MEMORY_REQUEST);
    }

    #[test]
    fn sidecar_init_containers_add_to_the_pod() {
        let p = pod(json!({
            "containers": [{"name": "a", "resources": {"requests": {"cpu": "100m"}}}],
            "initContainers": [
                {"name": "s", "restartPolicy": "Always", "resources": {"requests": {"cpu": "50m"}}},
                {"name": "i", "resources": {"requests": {"cpu": "120m"}}}
            ]
        }));
        let r = pod_requests(&p);
        // max(100 + 50, 120 + 50) = 170
        assert_eq!(r.requested.milli_cpu, 170);
    }

    #[test]
    fn empty_pod_requests_only_its_slot() {
        let r = pod_requests(&pod(json!({"containers": [{"name": "a"}]})));
        assert_eq!(r.requested.milli_cpu, 0);
        assert_eq!(r.requested.pods, 1);
        assert_eq!(r.non_zero.milli_cpu, DEFAULT_MILLI_CPU_REQUEST);
    }
}
