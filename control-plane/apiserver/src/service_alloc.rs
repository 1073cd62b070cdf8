//! Service ClusterIP and NodePort allocation, as upstream's ipallocator/portallocator:
//! a bitmap per range persisted in the store as a `RangeAllocation`
//! (`/registry/ranges/serviceips`, `/registry/ranges/servicenodeports`) and changed
//! only by compare-and-swap on its revision, so concurrent creates (in one API server
//! or several) never hand out the same address. An allocation made for a write that
//! then fails is released; bits leaked by a crash between the two are found by
//! [`ServiceAllocator::repair`], which frees a bit only after seeing it unused on
//! several consecutive passes (a create in flight holds its bit for a moment).

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use base64::Engine as _;
use kelp_api::validation::FieldError;
use kelp_storage::{Store, WriteOutcome};
use rand::Rng;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::error::{ApiError, ApiResult};

pub const SERVICE_IPS_KEY: &str = "/registry/ranges/serviceips";
pub const NODE_PORTS_KEY: &str = "/registry/ranges/servicenodeports";
pub const SERVICES_PREFIX: &str = "/registry/services/specs/";

/// How many consecutive repair passes must find a bit unused before it is freed.
const LEAK_PASSES: u32 = 3;

/// The ranges Services draw from (`--service-cluster-ip-range`,
/// `--service-node-port-range`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRanges {
    pub cluster_ip_base: Ipv4Addr,
    pub cluster_ip_prefix: u8,
    pub node_port_first: u16,
    pub node_port_last: u16,
}

impl Default for ServiceRanges {
    fn default() -> Self {
        ServiceRanges {
            cluster_ip_base: Ipv4Addr::new(10, 43, 0, 0),
            cluster_ip_prefix: 16,
            node_port_first: 30000,
            node_port_last: 32767,
        }
    }
}

impl ServiceRanges {
    /// Parses `A.B.C.D/N` (IPv4, N from 8 to 30) and `FIRST-LAST`.
    pub fn parse(cidr: &str, ports: &str) -> Result<Self, String> {
        let (ip, prefix) = cidr
            .split_once('/')
            .ok_or_else(|| format!("service CIDR {cidr:?}: expected A.B.C.D/N"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|e| format!("service CIDR {cidr:?}: {e}"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|e| format!("service CIDR {cidr:?}: {e}"))?;
        if !(8..=30).contains(&prefix) {
            return Err(format!(
                "service CIDR {cidr:?}: the prefix must be between /8 and /30"
            ));
        }
        let mask = u32::MAX << (32 - prefix);
        let (first, last) = ports
            .split_once('-')
            .ok_or_else(|| format!("node port range {ports:?}: expected FIRST-LAST"))?;
        let first: u16 = first
            .trim()
            .parse()
            .map_err(|e| format!("node port range {ports:?}: {e}"))?;
        let last: u16 = last
            .trim()
            .parse()
            .map_err(|e| format!("node port range {ports:?}: {e}"))?;
        if first == 0 || first > last {
            return Err(format!("node port range {ports:?}: empty or invalid"));
        }
        Ok(ServiceRanges {
            cluster_ip_base: Ipv4Addr::from(u32::from(ip) & mask),
            cluster_ip_prefix: prefix,
            node_port_first: first,
            node_port_last: last,
        })
    }

    pub fn cidr(&self) -> String {
        format!("{}/{}", self.cluster_ip_base, self.cluster_ip_prefix)
    }

    pub fn node_port_range(&self) -> String {
        format!("{}-{}", self.node_port_first, self.node_port_last)
    }

    /// Usable addresses: the network and broadcast addresses are never handed out.
    fn ip_count(&self) -> usize {
        (1usize << (32 - self.cluster_ip_prefix)) - 2
    }

    fn ip_offset(&self, ip: Ipv4Addr) -> Option<usize> {
        let base = u32::from(self.cluster_ip_base);
        let v = u32::from(ip);
        let off = v.checked_sub(base + 1)? as usize;
        (off < self.ip_count()).then_some(off)
    }

    fn ip_at(&self, offset: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cluster_ip_base) + 1 + offset as u32)
    }

    /// The first address of the range: the `kubernetes` Service's.
    pub fn first_ip(&self) -> Ipv4Addr {
        self.ip_at(0)
    }

    fn port_count(&self) -> usize {
        (self.node_port_last - self.node_port_first) as usize + 1
    }

    fn port_offset(&self, port: i64) -> Option<usize> {
        (port >= self.node_port_first as i64 && port <= self.node_port_last as i64)
            .then(|| (port - self.node_port_first as i64) as usize)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Ip,
    Port,
}

/// A bitmap of allocated offsets.
#[derive(Debug, Clone)]
struct Bitmap {
    bits: Vec<u8>,
    size: usize,
}

impl Bitmap {
    fn new(size: usize) -> Self {
        Bitmap {
            bits: vec![0; size.div_ceil(8)],
            size,
        }
    }

    fn get(&self, i: usize) -> bool {
        i < self.size && self.bits[i / 8] & (1 << (i % 8)) != 0
    }

    fn set(&mut self, i: usize, on: bool) {
        if i >= self.size {
            return;
        }
        if on {
            self.bits[i / 8] |= 1 << (i % 8);
        } else {
            self.bits[i / 8] &= !(1 << (i % 8));
        }
    }

    /// A free offset, scanning from a random start (upstream's random scan), or none.
    fn next_free(&self, from: usize) -> Option<usize> {
        (0..self.size)
            .map(|k| (from + k) % self.size)
            .find(|&i| !self.get(i))
    }
}

/// What one write allocated (offsets), to release if the write does not happen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocation {
    ips: BTreeSet<usize>,
    ports: BTreeSet<usize>,
}

impl Allocation {
    pub fn is_empty(&self) -> bool {
        self.ips.is_empty() && self.ports.is_empty()
    }
}

/// What a request asks of one range: specific offsets (with the field that named each,
/// for errors) and a number of any-free offsets.
struct Request {
    specific: Vec<(usize, FieldError)>,
    any: usize,
}

pub struct ServiceAllocator {
    store: Arc<dyn Store>,
    pub ranges: ServiceRanges,
    /// Offsets found allocated but unused, with how many passes in a row saw them so.
    leaks: std::sync::Mutex<HashMap<(Kind, usize), u32>>,
}

fn needs_node_ports(spec: &Value) -> bool {
    matches!(
        spec.get("type").and_then(Value::as_str),
        Some("NodePort") | Some("LoadBalancer")
    ) && !(spec.get("type").and_then(Value::as_str) == Some("LoadBalancer")
        && spec.get("allocateLoadBalancerNodePorts") == Some(&json!(false)))
}

fn needs_cluster_ip(spec: &Value) -> bool {
    spec.get("type").and_then(Value::as_str) != Some("ExternalName")
        && spec.get("clusterIP").and_then(Value::as_str) != Some("None")
}

fn requested_ip(spec: &Value) -> Option<String> {
    spec.get("clusterIP")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .or_else(|| {
            spec.pointer("/clusterIPs/0")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        })
        .map(str::to_string)
}

fn service_name(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

impl ServiceAllocator {
    pub fn new(store: Arc<dyn Store>, ranges: ServiceRanges) -> Self {
        ServiceAllocator {
            store,
            ranges,
            leaks: Default::default(),
        }
    }

    fn key(kind: Kind) -> &'static str {
        match kind {
            Kind::Ip => SERVICE_IPS_KEY,
            Kind::Port => NODE_PORTS_KEY,
        }
    }

    fn size(&self, kind: Kind) -> usize {
        match kind {
            Kind::Ip => self.ranges.ip_count(),
            Kind::Port => self.ranges.port_count(),
        }
    }

    fn range_text(&self, kind: Kind) -> String {
        match kind {
            Kind::Ip => self.ranges.cidr(),
            Kind::Port => self.ranges.node_port_range(),
        }
    }

    fn decode(&self, kind: Kind, raw: &[u8]) -> Bitmap {
        let mut bm = Bitmap::new(self.size(kind));
        let v: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
        // A range stored for another CIDR (the flag changed) is rebuilt by repair.
        if v.get("range").and_then(Value::as_str) == Some(self.range_text(kind).as_str()) {
            if let Some(bytes) = v
                .get("data")
                .and_then(Value::as_str)
                .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
            {
                let n = bytes.len().min(bm.bits.len());
                bm.bits[..n].copy_from_slice(&bytes[..n]);
            }
        }
        bm
    }

    fn encode(&self, kind: Kind, bm: &Bitmap) -> Vec<u8> {
        let name = match kind {
            Kind::Ip => "serviceips",
            Kind::Port => "servicenodeports",
        };
        serde_json::to_vec(&json!({
            "apiVersion": "v1",
            "kind": "RangeAllocation",
            "metadata": {"name": name},
            "range": self.range_text(kind),
            "data": base64::engine::general_purpose::STANDARD.encode(&bm.bits),
        }))
        .unwrap_or_default()
    }

    /// Applies `f` to the range's bitmap and writes it back, retrying on conflicts.
    async fn modify<T>(
        &self,
        kind: Kind,
        mut f: impl FnMut(&mut Bitmap) -> Result<T, ApiError>,
    ) -> ApiResult<T> {
        let key = Self::key(kind);
        for _ in 0..128 {
            let current = self.store.get(key).await?;
            let mut bm = match &current {
                Some(kv) => self.decode(kind, &kv.value),
                None => Bitmap::new(self.size(kind)),
            };
            let before = bm.bits.clone();
            let out = f(&mut bm)?;
            if bm.bits == before && current.is_some() {
                return Ok(out);
            }
            let outcome = match &current {
                Some(kv) => {
                    self.store
                        .update(key, self.encode(kind, &bm), kv.mod_revision)
                        .await?
                }
                None => self.store.create(key, self.encode(kind, &bm)).await?,
            };
            if let WriteOutcome::Done(_) = outcome {
                return Ok(out);
            }
        }
        Err(ApiError::unavailable(format!(
            "too many concurrent allocations in {key}"
        )))
    }

    /// Allocates what `req` asks in one write: every specific offset (or a 422 naming
    /// its field) and `any` free ones, returned in order.
    async fn allocate(
        &self,
        kind: Kind,
        obj: &Value,
        req: Request,
    ) -> ApiResult<(Vec<usize>, Vec<usize>)> {
        if req.specific.is_empty() && req.any == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        let size = self.size(kind);
        let start = rand::rng().random_range(0..size.max(1));
        self.modify(kind, |bm| {
            let mut specific = Vec::new();
            for (off, err) in &req.specific {
                if bm.get(*off) {
                    return Err(ApiError::invalid(
                        "",
                        "Service",
                        service_name(obj),
                        std::slice::from_ref(err),
                    ));
                }
                bm.set(*off, true);
                specific.push(*off);
            }
            let mut any = Vec::new();
            for _ in 0..req.any {
                let Some(off) = bm.next_free(start) else {
                    return Err(ApiError::internal(match kind {
                        Kind::Ip => format!(
                            "failed to allocate a serviceIP: range is full ({})",
                            self.ranges.cidr()
                        ),
                        Kind::Port => format!(
                            "failed to allocate a nodePort: range is full ({})",
                            self.ranges.node_port_range()
                        ),
                    }));
                };
                bm.set(off, true);
                any.push(off);
            }
            Ok((specific, any))
        })
        .await
    }

    /// Frees what an allocation holds (a failed write's, or a deleted Service's).
    pub async fn release(&self, a: &Allocation) {
        for (kind, set) in [(Kind::Ip, &a.ips), (Kind::Port, &a.ports)] {
            if set.is_empty() {
                continue;
            }
            let r = self
                .modify(kind, |bm| {
                    for &off in set {
                        bm.set(off, false);
                    }
                    Ok(())
                })
                .await;
            if let Err(e) = r {
                // Repair frees it later.
                warn!(error = %e.message, "releasing service allocations failed");
            }
        }
    }

    /// What a stored Service holds.
    pub fn held_by(&self, obj: &Value) -> Allocation {
        let mut a = Allocation::default();
        let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
        if let Some(ip) = requested_ip(&spec).and_then(|s| s.parse::<Ipv4Addr>().ok()) {
            if let Some(off) = self.ranges.ip_offset(ip) {
                a.ips.insert(off);
            }
        }
        for p in spec
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(off) = p
                .get("nodePort")
                .and_then(Value::as_i64)
                .and_then(|n| self.ranges.port_offset(n))
            {
                a.ports.insert(off);
            }
        }
        a
    }

    /// The ClusterIP request of `spec`: a specific address (checked against the range)
    /// or any.
    fn ip_request(&self, spec: &Value) -> ApiResult<Request> {
        let mut req = Request {
            specific: Vec::new(),
            any: 0,
        };
        if !needs_cluster_ip(spec) {
            return Ok(req);
        }
        match requested_ip(spec) {
            None => req.any = 1,
            Some(text) => {
                let fail = |detail: String| {
                    FieldError::invalid(
                        "spec.clusterIPs",
                        &json!([text]),
                        &format!("failed to allocate IP {text}: {detail}"),
                    )
                };
                let ip: Ipv4Addr = text.parse().map_err(|_| {
                    ApiError::invalid(
                        "",
                        "Service",
                        "",
                        &[FieldError::invalid(
                            "spec.clusterIPs[0]",
                            &json!(text),
                            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                        )],
                    )
                })?;
                let Some(off) = self.ranges.ip_offset(ip) else {
                    return Err(ApiError::invalid(
                        "",
                        "Service",
                        "",
                        &[fail(format!(
                            "the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
                            self.ranges.cidr()
                        ))],
                    ));
                };
                req.specific
                    .push((off, fail("provided IP is already allocated".into())));
            }
        }
        Ok(req)
    }

    /// The NodePort request of `spec`: each port's given nodePort (checked against the
    /// range; one port may serve several protocols) and how many ports need one.
    fn port_request(&self, spec: &Value, already: &BTreeSet<usize>) -> ApiResult<Request> {
        let mut req = Request {
            specific: Vec::new(),
            any: 0,
        };
        if !needs_node_ports(spec) {
            return Ok(req);
        }
        let mut seen = BTreeSet::new();
        for (i, p) in spec
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            match p.get("nodePort").and_then(Value::as_i64).unwrap_or(0) {
                0 => req.any += 1,
                n => {
                    let field = format!("spec.ports[{i}].nodePort");
                    let Some(off) = self.ranges.port_offset(n) else {
                        return Err(ApiError::invalid(
                            "",
                            "Service",
                            "",
                            &[FieldError::invalid(
                                field,
                                &json!(n),
                                &format!(
                                    "provided port is not in the valid range. The range of valid ports is {}",
                                    self.ranges.node_port_range()
                                ),
                            )],
                        ));
                    };
                    if already.contains(&off) || !seen.insert(off) {
                        continue;
                    }
                    req.specific.push((
                        off,
                        FieldError::invalid(field, &json!(n), "provided port is already allocated"),
                    ));
                }
            }
        }
        Ok(req)
    }

    /// Fills the zero nodePorts of `spec` with `ports` in order.
    fn fill_node_ports(&self, spec: &mut Value, ports: &[usize]) {
        let mut next = ports.iter();
        if let Some(list) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for p in list.iter_mut().filter_map(Value::as_object_mut) {
                if p.get("nodePort").and_then(Value::as_i64).unwrap_or(0) == 0 {
                    if let Some(off) = next.next() {
                        p.insert(
                            "nodePort".into(),
                            json!(self.ranges.node_port_first as usize + off),
                        );
                    }
                }
            }
        }
    }

    fn set_cluster_ip(&self, spec: &mut Value, off: usize) {
        let ip = self.ranges.ip_at(off).to_string();
        if let Some(s) = spec.as_object_mut() {
            s.insert("clusterIP".into(), json!(ip));
            s.insert("clusterIPs".into(), json!([ip]));
        }
    }

    /// Allocates a new Service's ClusterIP and node ports into `obj` (a validated
    /// object about to be stored). Under dry run, checks requests without allocating.
    pub async fn allocate_create(&self, obj: &mut Value, dry_run: bool) -> ApiResult<Allocation> {
        let name = service_name(obj).to_string();
        let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
        let named = |e: ApiError| rename(e, &name);
        let ip_req = self.ip_request(&spec).map_err(named)?;
        let port_req = self.port_request(&spec, &BTreeSet::new()).map_err(named)?;
        if dry_run {
            return Ok(Allocation::default());
        }
        if spec.get("clusterIP").and_then(Value::as_str) == Some("None") {
            if let Some(s) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                s.insert("clusterIPs".into(), json!(["None"]));
            }
        }
        let (ips, any_ip) = self.allocate(Kind::Ip, obj, ip_req).await.map_err(named)?;
        let mut held = Allocation {
            ips: ips.iter().chain(&any_ip).copied().collect(),
            ports: BTreeSet::new(),
        };
        let ports = match self.allocate(Kind::Port, obj, port_req).await {
            Ok(p) => p,
            Err(e) => {
                self.release(&held).await;
                return Err(named(e));
            }
        };
        held.ports = ports.0.iter().chain(&ports.1).copied().collect();
        let spec = obj
            .get_mut("spec")
            .ok_or_else(|| ApiError::internal("service without spec"))?;
        if let Some(&off) = ips.first().or(any_ip.first()) {
            self.set_cluster_ip(spec, off);
        } else if requested_ip(spec).is_some() && needs_cluster_ip(spec) {
            // Unreachable: a requested IP is either allocated or an error above.
        }
        self.fill_node_ports(spec, &ports.1);
        Ok(held)
    }

    /// For an update: carries the allocated values the client left out over from the
    /// stored object (upstream's patchAllocatedValues) and drops the type-dependent
    /// fields a type change makes meaningless. Runs before validation.
    pub fn patch_allocated(old: &Value, new: &mut Value) {
        let old_spec = old.get("spec").cloned().unwrap_or(Value::Null);
        let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        let new_type = spec
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        let as_value = Value::Object(spec.clone());
        if needs_cluster_ip(&as_value) && requested_ip(&as_value).is_none() {
            if let Some(ip) = requested_ip(&old_spec).filter(|ip| ip != "None") {
                spec.insert("clusterIP".into(), json!(ip));
                spec.insert(
                    "clusterIPs".into(),
                    old_spec.get("clusterIPs").cloned().unwrap_or(json!([ip])),
                );
            }
        }
        if new_type == "ExternalName" {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        }
        let old_ports: Vec<Value> = old_spec
            .get("ports")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let keeps_node_ports = matches!(new_type.as_str(), "NodePort" | "LoadBalancer");
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                let np = p.get("nodePort").and_then(Value::as_i64).unwrap_or(0);
                let same = |o: &&Value| {
                    o.get("port") == p.get("port")
                        && o.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                            == p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                };
                let old_np = old_ports
                    .iter()
                    .find(same)
                    .and_then(|o| o.get("nodePort").and_then(Value::as_i64));
                if keeps_node_ports && np == 0 {
                    if let Some(o) = old_np {
                        p.insert("nodePort".into(), json!(o));
                    }
                } else if !keeps_node_ports && np != 0 && old_np == Some(np) {
                    p.remove("nodePort");
                }
            }
        }
    }

    /// Allocates what an updated Service newly needs. Returns the new allocation (to
    /// release if the write fails) and what the old object held that the new one no
    /// longer does (to release once the write succeeded).
    pub async fn allocate_update(
        &self,
        old: &Value,
        new: &mut Value,
        dry_run: bool,
    ) -> ApiResult<(Allocation, Allocation)> {
        let name = service_name(new).to_string();
        let held = self.held_by(old);
        let spec = new.get("spec").cloned().unwrap_or(Value::Null);
        let want_ip = needs_cluster_ip(&spec);
        let ip_req = if want_ip {
            match requested_ip(&spec)
                .and_then(|s| s.parse::<Ipv4Addr>().ok())
                .and_then(|ip| self.ranges.ip_offset(ip))
            {
                Some(off) if held.ips.contains(&off) => Request {
                    specific: Vec::new(),
                    any: 0,
                },
                _ => self.ip_request(&spec).map_err(|e| rename(e, &name))?,
            }
        } else {
            Request {
                specific: Vec::new(),
                any: 0,
            }
        };
        let port_req = self
            .port_request(&spec, &held.ports)
            .map_err(|e| rename(e, &name))?;
        if dry_run {
            return Ok((Allocation::default(), Allocation::default()));
        }
        let (ips, any_ip) = self
            .allocate(Kind::Ip, new, ip_req)
            .await
            .map_err(|e| rename(e, &name))?;
        let mut fresh = Allocation {
            ips: ips.iter().chain(&any_ip).copied().collect(),
            ports: BTreeSet::new(),
        };
        let ports = match self.allocate(Kind::Port, new, port_req).await {
            Ok(p) => p,
            Err(e) => {
                self.release(&fresh).await;
                return Err(rename(e, &name));
            }
        };
        fresh.ports = ports.0.iter().chain(&ports.1).copied().collect();
        if let Some(spec) = new.get_mut("spec") {
            if let Some(&off) = ips.first().or(any_ip.first()) {
                self.set_cluster_ip(spec, off);
            }
            self.fill_node_ports(spec, &ports.1);
        }
        let now = self.held_by(new);
        let stale = Allocation {
            ips: held.ips.difference(&now.ips).copied().collect(),
            ports: held.ports.difference(&now.ports).copied().collect(),
        };
        Ok((fresh, stale))
    }

    /// Reconciles the bitmaps with the stored Services: marks what they hold, and frees
    /// bits no Service has held for [`LEAK_PASSES`] passes in a row.
    pub async fn repair(&self, services: &[Value]) -> ApiResult<()> {
        let mut used = Allocation::default();
        for s in services {
            let a = self.held_by(s);
            used.ips.extend(a.ips);
            used.ports.extend(a.ports);
        }
        for (kind, set) in [(Kind::Ip, &used.ips), (Kind::Port, &used.ports)] {
            let mut freed = 0usize;
            self.modify(kind, |bm| {
                let mut leaks = self.leaks.lock().unwrap_or_else(|p| p.into_inner());
                leaks.retain(|(k, off), _| *k != kind || (bm.get(*off) && !set.contains(off)));
                for &off in set {
                    bm.set(off, true);
                }
                freed = 0;
                for off in 0..bm.size {
                    if bm.get(off) && !set.contains(&off) {
                        let n = leaks.entry((kind, off)).or_insert(0);
                        *n += 1;
                        if *n >= LEAK_PASSES {
                            bm.set(off, false);
                            leaks.remove(&(kind, off));
                            freed += 1;
                        }
                    }
                }
                Ok(())
            })
            .await?;
            if freed > 0 {
                info!(range = %self.range_text(kind), freed, "repaired leaked service allocations");
            }
        }
        Ok(())
    }
}

/// Puts the Service's name into a 422 built before it was known.
fn rename(mut e: ApiError, name: &str) -> ApiError {
    if e.code == 422 && !name.is_empty() {
        if let Some(details) = e.details.as_mut().and_then(Value::as_object_mut) {
            details.insert("name".into(), json!(name));
        }
        e.message = e.message.replacen(
            "Service \"\" is invalid",
            &format!("Service \"{name}\" is invalid"),
            1,
        );
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_map_offsets() {
        let r = ServiceRanges::parse("10.96.0.5/24", "30000-30002").unwrap();
        assert_eq!(r.cidr(), "10.96.0.0/24");
        assert_eq!(r.ip_count(), 254);
        assert_eq!(r.first_ip(), Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(r.ip_offset(Ipv4Addr::new(10, 96, 0, 0)), None);
        assert_eq!(r.ip_offset(Ipv4Addr::new(10, 96, 0, 255)), None);
        assert_eq!(r.ip_offset(Ipv4Addr::new(10, 96, 0, 254)), Some(253));
        assert_eq!(r.port_count(), 3);
        assert_eq!(r.port_offset(29999), None);
        assert_eq!(r.port_offset(30002), Some(2));
        assert!(ServiceRanges::parse("10.0.0.0", "1-2").is_err());
        assert!(ServiceRanges::parse("10.0.0.0/31", "1-2").is_err());
        assert!(ServiceRanges::parse("10.0.0.0/24", "5-1").is_err());
    }

    #[test]
    fn bitmap_scans_from_a_start_and_wraps() {
        let mut bm = Bitmap::new(5);
        for i in [1, 2, 3] {
            bm.set(i, true);
        }
        assert_eq!(bm.next_free(2), Some(4));
        bm.set(4, true);
        assert_eq!(bm.next_free(2), Some(0));
        bm.set(0, true);
        assert_eq!(bm.next_free(0), None);
        assert!(!bm.get(17));
    }

    #[test]
    fn updates_keep_allocated_values_and_drop_them_on_type_changes() {
        let old = json!({"spec": {"type": "NodePort", "clusterIP": "10.43.0.9", "clusterIPs": ["10.43.0.9"],
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}});
        let mut new =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}]}});
        ServiceAllocator::patch_allocated(&old, &mut new);
        assert_eq!(new.pointer("/spec/clusterIP"), Some(&json!("10.43.0.9")));
        assert_eq!(new.pointer("/spec/ports/0/nodePort"), Some(&json!(30080)));

        let mut to_cluster_ip = json!({"spec": {"type": "ClusterIP", "clusterIP": "10.43.0.9",
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}});
        ServiceAllocator::patch_allocated(&old, &mut to_cluster_ip);
        assert_eq!(to_cluster_ip.pointer("/spec/ports/0/nodePort"), None);

        let mut external = json!({"spec": {"type": "ExternalName", "externalName": "x.example", "clusterIP": "10.43.0.9"}});
        ServiceAllocator::patch_allocated(&old, &mut external);
        assert_eq!(external.pointer("/spec/clusterIP"), None);
    }
}
