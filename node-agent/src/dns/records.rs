//! The answer logic of cluster DNS, pure: a decoded query and a [`Catalog`] of
//! Services and EndpointSlices in, a response (or "forward this") out. It follows
//! the records of the Kubernetes DNS specification as CoreDNS serves them:
//!
//! | name (under the cluster domain `D`) | answer |
//! | --- | --- |
//! | `SVC.NS.svc.D` A/AAAA, ClusterIP Service | its ClusterIPs of that family |
//! | `SVC.NS.svc.D` A/AAAA, headless Service | the ready endpoint addresses |
//! | `SVC.NS.svc.D`, ExternalName Service | a CNAME to `spec.externalName` |
//! | `HOST.SVC.NS.svc.D` A/AAAA, headless | the endpoint whose hostname (or dashed IP) is HOST |
//! | `_PORT._PROTO.SVC.NS.svc.D` SRV | the named port: the Service name (ClusterIP) or each ready endpoint (headless) |
//! | `A-B-C-D.NS.pod.D` A | `A.B.C.D` (CoreDNS's `pods insecure`) |
//! | `D`, `svc.D`, `NS.svc.D`, `pod.D`, `NS.pod.D` | no records (NOERROR) |
//! | `D.C.B.A.in-addr.arpa` / `….ip6.arpa` PTR, a ClusterIP | `SVC.NS.svc.D` |
//! | the same, a ready endpoint's address | `HOST.SVC.NS.svc.D` for each Service listing it |
//! | anything else under `D` | NXDOMAIN, with the zone's SOA so resolvers cache the miss |
//! | names outside `D`, and reverse names of no cluster address | [`Outcome::Forward`] (the server relays them to the host's resolvers) |
//!
//! Every record has a TTL of [`TTL`] seconds (CoreDNS's default for the kubernetes
//! plugin), short enough that a changed ClusterIP or endpoint set is seen quickly.

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// Seconds every answer may be cached.
pub const TTL: u32 = 5;

/// The EndpointSlice label naming the Service a slice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Where the answers come from: Services and their EndpointSlices.
pub trait Catalog {
    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>>;
    /// The EndpointSlices of Service `namespace/service`.
    fn endpoint_slices(&self, namespace: &str, service: &str) -> Vec<Arc<EndpointSlice>>;
    /// The Services one of whose ClusterIPs is `ip` (reverse lookups).
    fn services_with_cluster_ip(&self, ip: IpAddr) -> Vec<Arc<Service>>;
    /// The EndpointSlices listing `ip` among their endpoints' addresses.
    fn slices_with_address(&self, ip: IpAddr) -> Vec<Arc<EndpointSlice>>;
}

/// Whether `service` has `ip` among its ClusterIPs.
pub fn has_cluster_ip(service: &Service, ip: IpAddr) -> bool {
    let Some(spec) = service.spec.as_ref() else {
        return false;
    };
    spec.cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .any(|s| s.parse::<IpAddr>().ok() == Some(ip))
}

/// Whether `slice` lists `ip` as an address of one of its endpoints.
pub fn lists_address(slice: &EndpointSlice, ip: IpAddr) -> bool {
    slice
        .endpoints
        .iter()
        .flat_map(|e| e.addresses.iter())
        .any(|a| a.parse::<IpAddr>().ok() == Some(ip))
}

/// What to do with a query.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Send this response.
    Answer(Message),
    /// The name is outside the cluster domain: relay the query as it is.
    Forward,
}

/// A response to `request` with code `code` and no records.
pub fn error_response(request: &Message, code: ResponseCode) -> Message {
    let mut m = Message::response(request.metadata.id, request.metadata.op_code);
    m.metadata.recursion_desired = request.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.response_code = code;
    m.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        m.set_edns(Edns::new());
    }
    m
}

/// Answers `request` for the cluster domain `zone` (e.g. `cluster.local.`) from
/// `catalog`.
pub fn answer(catalog: &dyn Catalog, zone: &Name, request: &Message) -> Outcome {
    if request.metadata.message_type != MessageType::Query {
        return Outcome::Answer(error_response(request, ResponseCode::FormErr));
    }
    if request.metadata.op_code != OpCode::Query {
        return Outcome::Answer(error_response(request, ResponseCode::NotImp));
    }
    // Every resolver in use sends one question per message; several are undefined.
    let [query] = request.queries.as_slice() else {
        return Outcome::Answer(error_response(request, ResponseCode::FormErr));
    };
    let name = query.name().to_lowercase();
    let mut fqdn = name.clone();
    fqdn.set_fqdn(true);
    if query.query_type() == RecordType::PTR {
        if let Some(m) = reverse(catalog, zone, request, &fqdn) {
            return Outcome::Answer(m);
        }
    }
    if !zone.zone_of(&fqdn) {
        return Outcome::Forward;
    }
    if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) {
        return Outcome::Answer(error_response(request, ResponseCode::Refused));
    }
    // The labels in front of the zone, outermost first: `hello.default.svc` →
    // ["svc", "default", "hello"].
    let relative: Vec<String> = fqdn
        .iter()
        .take(fqdn.num_labels().saturating_sub(zone.num_labels()) as usize)
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .rev()
        .collect();
    let rel: Vec<&str> = relative.iter().map(String::as_str).collect();
    let ctx = Ctx {
        catalog,
        zone,
        qname: query.name().clone(),
        qtype: query.query_type(),
    };
    let found = match rel.as_slice() {
        [] | ["svc"] | ["pod"] | ["svc", _] | ["pod", _] => Found::Records(vec![]),
        ["svc", ns, svc] => ctx.service(ns, svc),
        ["svc", ns, svc, host] => ctx.endpoint_host(ns, svc, host),
        ["svc", ns, svc, proto, port] => ctx.srv(ns, svc, proto, port),
        ["pod", _, dashed] => ctx.pod(dashed),
        _ => Found::NxDomain,
    };
    let mut m = error_response(request, ResponseCode::NoError);
    m.metadata.authoritative = true;
    match found {
        Found::Records(records) if !records.is_empty() => {
            let (answers, additionals): (Vec<Record>, Vec<Record>) =
                records.into_iter().partition(|r| {
                    r.name == ctx.qname
                        || matches!(r.data, RData::CNAME(_))
                        || ctx.qtype == RecordType::SRV && matches!(r.data, RData::SRV(_))
                });
            m.insert_answers(answers);
            m.insert_additionals(additionals);
        }
        Found::Records(_) => {
            // The name exists, with no records of this type (NODATA).
            if ctx.qtype == RecordType::SOA && rel.is_empty() {
                m.add_answer(soa(zone));
            } else {
                m.add_authority(soa(zone));
            }
        }
        Found::NxDomain => {
            m.metadata.response_code = ResponseCode::NXDomain;
            m.add_authority(soa(zone));
        }
    }
    Outcome::Answer(m)
}

/// A PTR answer for a reverse name (`….in-addr.arpa.`, `….ip6.arpa.`) of a whole
/// address that is a ClusterIP or a ready endpoint's address, as CoreDNS's kubernetes
/// plugin gives (ClusterIPs first; else one name per Service listing the endpoint).
/// None: not a cluster address; the host's resolvers answer it.
fn reverse(catalog: &dyn Catalog, zone: &Name, request: &Message, fqdn: &Name) -> Option<Message> {
    let net = fqdn.parse_arpa_name().ok()?;
    let ip = net.addr();
    if u32::from(net.prefix_len()) != if ip.is_ipv4() { 32 } else { 128 } {
        return None;
    }
    let mut targets: Vec<Name> = catalog
        .services_with_cluster_ip(ip)
        .iter()
        .filter_map(|s| {
            let (ns, name) = (
                s.metadata.namespace.as_deref()?,
                s.metadata.name.as_deref()?,
            );
            zone_name(zone, &[name, ns, "svc"])
        })
        .take(1)
        .collect();
    if targets.is_empty() {
        for slice in catalog.slices_with_address(ip) {
            let (Some(ns), Some(svc)) = (
                slice.metadata.namespace.as_deref(),
                slice
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL)),
            ) else {
                continue;
            };
            for e in slice_endpoints(&slice, false).iter().filter(|e| e.ip == ip) {
                targets.extend(zone_name(zone, &[&e.host, svc, ns, "svc"]));
            }
        }
        targets.sort();
        targets.dedup();
    }
    if targets.is_empty() {
        return None;
    }
    let qname = request.queries[0].name().clone();
    let mut m = error_response(request, ResponseCode::NoError);
    m.metadata.authoritative = true;
    m.insert_answers(
        targets
            .into_iter()
            .map(|t| Record::from_rdata(qname.clone(), TTL, RData::PTR(PTR(t))))
            .collect(),
    );
    Some(m)
}

enum Found {
    /// The name exists; these records (possibly none) answer the query.
    Records(Vec<Record>),
    NxDomain,
}

struct Ctx<'a> {
    catalog: &'a dyn Catalog,
    zone: &'a Name,
    /// As asked (answers repeat the client's spelling).
    qname: Name,
    qtype: RecordType,
}

fn wants(qtype: RecordType, ip: &IpAddr) -> bool {
    match qtype {
        RecordType::A => ip.is_ipv4(),
        RecordType::AAAA => ip.is_ipv6(),
        RecordType::ANY => true,
        _ => false,
    }
}

fn address(name: Name, ip: IpAddr) -> Record {
    let data = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    Record::from_rdata(name, TTL, data)
}

/// The zone's SOA, as CoreDNS builds it (`ns.dns.ZONE`, `hostmaster.ZONE`).
fn soa(zone: &Name) -> Record {
    let under = |l: &str| {
        Name::from_ascii(l)
            .and_then(|n| n.append_domain(zone))
            .unwrap_or_else(|_| zone.clone())
    };
    let data = SOA::new(
        under("ns.dns"),
        under("hostmaster"),
        1,
        7200,
        1800,
        86400,
        TTL,
    );
    Record::from_rdata(zone.clone(), TTL, RData::SOA(data))
}

/// A name under the zone from labels, innermost first (`["hello", "default", "svc"]`).
fn zone_name(zone: &Name, labels: &[&str]) -> Option<Name> {
    Name::from_ascii(labels.join("."))
        .ok()?
        .append_domain(zone)
        .ok()
}

/// A ready endpoint of a headless Service.
struct Endpoint {
    ip: IpAddr,
    /// `hostname`, else the address with `-` for `.` and `:` (CoreDNS's naming).
    host: String,
    /// The slice's ports: (name, protocol, port).
    ports: Vec<(String, String, u16)>,
}

fn dashed(ip: &IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// The endpoints of `slice` (ready ones only unless `all`), one per address.
fn slice_endpoints(slice: &EndpointSlice, all: bool) -> Vec<Endpoint> {
    let ports: Vec<(String, String, u16)> = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p.name.clone().unwrap_or_default(),
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                u16::try_from(p.port?).ok()?,
            ))
        })
        .collect();
    let mut out = vec![];
    for ep in &slice.endpoints {
        // An absent `ready` means ready (the EndpointSlice API's rule).
        let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
        if !ready && !all {
            continue;
        }
        for a in &ep.addresses {
            let Ok(ip) = a.parse::<IpAddr>() else {
                continue;
            };
            let host = ep
                .hostname
                .clone()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| dashed(&ip));
            out.push(Endpoint {
                ip,
                host,
                ports: ports.clone(),
            });
        }
    }
    out
}

impl Ctx<'_> {
    fn headless_endpoints(&self, ns: &str, svc: &str, all: bool) -> Vec<Endpoint> {
        let mut out: Vec<Endpoint> = self
            .catalog
            .endpoint_slices(ns, svc)
            .iter()
            .flat_map(|slice| slice_endpoints(slice, all))
            .collect();
        out.sort_by_key(|e| e.ip);
        out.dedup_by_key(|e| e.ip);
        out
    }

    fn kind(svc: &Service) -> Kind {
        let spec = svc.spec.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") {
            return match spec.external_name.as_deref().map(Name::from_ascii) {
                Some(Ok(mut n)) => {
                    n.set_fqdn(true);
                    Kind::External(n)
                }
                _ => Kind::External(Name::root()),
            };
        }
        let ips: Vec<IpAddr> = spec
            .cluster_ips
            .clone()
            .filter(|v| !v.is_empty())
            .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
            .unwrap_or_default()
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        if ips.is_empty() {
            Kind::Headless {
                publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
            }
        } else {
            Kind::ClusterIp(ips)
        }
    }

    fn service(&self, ns: &str, name: &str) -> Found {
        let Some(svc) = self.catalog.service(ns, name) else {
            return Found::NxDomain;
        };
        match Self::kind(&svc) {
            Kind::External(target) => {
                if target.is_root() {
                    return Found::NxDomain;
                }
                let data = RData::CNAME(CNAME(target));
                Found::Records(vec![Record::from_rdata(self.qname.clone(), TTL, data)])
            }
            Kind::ClusterIp(ips) => Found::Records(
                ips.into_iter()
                    .filter(|ip| wants(self.qtype, ip))
                    .map(|ip| address(self.qname.clone(), ip))
                    .collect(),
            ),
            Kind::Headless { publish_not_ready } => {
                let eps = self.headless_endpoints(ns, name, publish_not_ready);
                // CoreDNS: a headless Service without endpoints does not exist.
                if eps.is_empty() {
                    return Found::NxDomain;
                }
                Found::Records(
                    eps.into_iter()
                        .filter(|e| wants(self.qtype, &e.ip))
                        .map(|e| address(self.qname.clone(), e.ip))
                        .collect(),
                )
            }
        }
    }

    fn endpoint_host(&self, ns: &str, svc: &str, host: &str) -> Found {
        let Some(s) = self.catalog.service(ns, svc) else {
            return Found::NxDomain;
        };
        let Kind::Headless { publish_not_ready } = Self::kind(&s) else {
            return Found::NxDomain;
        };
        let eps: Vec<Endpoint> = self
            .headless_endpoints(ns, svc, publish_not_ready)
            .into_iter()
            .filter(|e| e.host.eq_ignore_ascii_case(host))
            .collect();
        if eps.is_empty() {
            return Found::NxDomain;
        }
        Found::Records(
            eps.into_iter()
                .filter(|e| wants(self.qtype, &e.ip))
                .map(|e| address(self.qname.clone(), e.ip))
                .collect(),
        )
    }

    /// `_PORT._PROTO.SVC.NS.svc.ZONE`.
    fn srv(&self, ns: &str, svc: &str, proto: &str, port: &str) -> Found {
        let (Some(proto), Some(port)) = (proto.strip_prefix('_'), port.strip_prefix('_')) else {
            return Found::NxDomain;
        };
        let Some(s) = self.catalog.service(ns, svc) else {
            return Found::NxDomain;
        };
        let matches = |name: &str, protocol: &str| {
            name.eq_ignore_ascii_case(port) && protocol.eq_ignore_ascii_case(proto)
        };
        let wants_srv = matches!(self.qtype, RecordType::SRV | RecordType::ANY);
        let srv = |target: Name, p: u16| {
            Record::from_rdata(
                self.qname.clone(),
                TTL,
                RData::SRV(SRV::new(0, 100, p, target)),
            )
        };
        match Self::kind(&s) {
            Kind::External(_) => Found::NxDomain,
            Kind::ClusterIp(ips) => {
                let ports = s
                    .spec
                    .as_ref()
                    .and_then(|s| s.ports.clone())
                    .unwrap_or_default();
                let Some(p) = ports.iter().find(|p| {
                    matches(
                        p.name.as_deref().unwrap_or(""),
                        p.protocol.as_deref().unwrap_or("TCP"),
                    )
                }) else {
                    return Found::NxDomain;
                };
                let (Some(target), Ok(port)) = (
                    zone_name(self.zone, &[svc, ns, "svc"]),
                    u16::try_from(p.port),
                ) else {
                    return Found::NxDomain;
                };
                if !wants_srv {
                    return Found::Records(vec![]);
                }
                let mut out = vec![srv(target.clone(), port)];
                out.extend(ips.into_iter().map(|ip| address(target.clone(), ip)));
                Found::Records(out)
            }
            Kind::Headless { publish_not_ready } => {
                let mut out = vec![];
                let mut exists = false;
                for e in self.headless_endpoints(ns, svc, publish_not_ready) {
                    let Some(&(_, _, p)) = e.ports.iter().find(|(n, pr, _)| matches(n, pr)) else {
                        continue;
                    };
                    let Some(target) = zone_name(self.zone, &[&e.host, svc, ns, "svc"]) else {
                        continue;
                    };
                    exists = true;
                    if wants_srv {
                        out.push(srv(target.clone(), p));
                        out.push(address(target, e.ip));
                    }
                }
                if exists {
                    Found::Records(out)
                } else {
                    Found::NxDomain
                }
            }
        }
    }

    /// `A-B-C-D.NS.pod.ZONE` → `A.B.C.D` (and dashed IPv6).
    fn pod(&self, dashed: &str) -> Found {
        let v4 = dashed.replace('-', ".");
        let ip = IpAddr::from_str(&v4)
            .ok()
            .filter(IpAddr::is_ipv4)
            .or_else(|| IpAddr::from_str(&dashed.replace('-', ":")).ok());
        match ip {
            Some(ip) => Found::Records(
                [ip].into_iter()
                    .filter(|ip| wants(self.qtype, ip))
                    .map(|ip| address(self.qname.clone(), ip))
                    .collect(),
            ),
            None => Found::NxDomain,
        }
    }
}

enum Kind {
    ClusterIp(Vec<IpAddr>),
    Headless { publish_not_ready: bool },
    External(Name),
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use serde_json::json;

    #[derive(Default)]
    struct Fake {
        services: Vec<Arc<Service>>,
        slices: Vec<Arc<EndpointSlice>>,
    }

    impl Catalog for Fake {
        fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
            self.services
                .iter()
                .find(|s| {
                    s.metadata.namespace.as_deref() == Some(namespace)
                        && s.metadata.name.as_deref() == Some(name)
                })
                .cloned()
        }
        fn endpoint_slices(&self, namespace: &str, service: &str) -> Vec<Arc<EndpointSlice>> {
            matching(&self.slices, |s| {
                s.metadata.namespace.as_deref() == Some(namespace)
                    && s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(SERVICE_NAME_LABEL))
                        .is_some_and(|n| n == service)
            })
        }
        fn services_with_cluster_ip(&self, ip: IpAddr) -> Vec<Arc<Service>> {
            matching(&self.services, |s| has_cluster_ip(s, ip))
        }
        fn slices_with_address(&self, ip: IpAddr) -> Vec<Arc<EndpointSlice>> {
            matching(&self.slices, |s| lists_address(s, ip))
        }
    }

    fn matching<T>(items: &[Arc<T>], keep: impl Fn(&T) -> bool) -> Vec<Arc<T>> {
        items.iter().filter(|i| keep(i)).cloned().collect()
    }

    fn fake() -> Fake {
        let svc = |v: serde_json::Value| Arc::new(serde_json::from_value::<Service>(v).unwrap());
        let slice =
            |v: serde_json::Value| Arc::new(serde_json::from_value::<EndpointSlice>(v).unwrap());
        Fake {
            services: vec![
                svc(
                    json!({"metadata": {"name": "hello", "namespace": "default"},
                    "spec": {"clusterIP": "10.43.0.20", "clusterIPs": ["10.43.0.20"],
                             "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
                ),
                svc(json!({"metadata": {"name": "dual", "namespace": "apps"},
                    "spec": {"clusterIP": "10.43.0.21", "clusterIPs": ["10.43.0.21", "fd00::21"],
                             "ports": [{"port": 53, "protocol": "UDP", "name": "dns"}]}})),
                svc(json!({"metadata": {"name": "db", "namespace": "default"},
                    "spec": {"clusterIP": "None",
                             "ports": [{"name": "pg", "port": 5432}]}})),
                svc(
                    json!({"metadata": {"name": "empty", "namespace": "default"},
                    "spec": {"clusterIP": "None"}}),
                ),
                svc(json!({"metadata": {"name": "ext", "namespace": "default"},
                    "spec": {"type": "ExternalName", "externalName": "example.com"}})),
            ],
            slices: vec![slice(json!({
            "metadata": {"name": "db-abc", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.42.0.7"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.42.0.8"], "conditions": {}},
                {"addresses": ["10.42.0.9"], "hostname": "db-2", "conditions": {"ready": false}}
            ]}))],
        }
    }

    fn ask(catalog: &Fake, name: &str, qtype: RecordType) -> Outcome {
        let mut req = Message::query();
        req.metadata.recursion_desired = true;
        req.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        answer(catalog, &Name::from_ascii("cluster.local.").unwrap(), &req)
    }

    /// (rcode, answers as text "TYPE DATA" in order).
    fn summary(o: &Outcome) -> (ResponseCode, Vec<String>) {
        let Outcome::Answer(m) = o else {
            return (ResponseCode::Refused, vec!["FORWARD".into()]);
        };
        let answers = m
            .answers
            .iter()
            .map(|r| format!("{} {}", r.record_type(), r.data))
            .collect();
        (m.metadata.response_code, answers)
    }

    #[test]
    fn answers_follow_the_kubernetes_dns_spec() {
        use RecordType::*;
        let c = fake();
        let nx = ResponseCode::NXDomain;
        let ok = ResponseCode::NoError;
        let table: Vec<(&str, RecordType, ResponseCode, Vec<&str>)> = vec![
            (
                "hello.default.svc.cluster.local.",
                A,
                ok,
                vec!["A 10.43.0.20"],
            ),
            // Case-insensitive, and a name without the final dot is the same name.
            (
                "HeLLo.Default.SVC.cluster.local",
                A,
                ok,
                vec!["A 10.43.0.20"],
            ),
            ("hello.default.svc.cluster.local.", AAAA, ok, vec![]),
            (
                "hello.default.svc.cluster.local.",
                ANY,
                ok,
                vec!["A 10.43.0.20"],
            ),
            (
                "dual.apps.svc.cluster.local.",
                AAAA,
                ok,
                vec!["AAAA fd00::21"],
            ),
            ("dual.apps.svc.cluster.local.", A, ok, vec!["A 10.43.0.21"]),
            ("nope.default.svc.cluster.local.", A, nx, vec![]),
            ("hello.other.svc.cluster.local.", A, nx, vec![]),
            // Headless: ready endpoints only (absent `ready` is ready).
            (
                "db.default.svc.cluster.local.",
                A,
                ok,
                vec!["A 10.42.0.7", "A 10.42.0.8"],
            ),
            (
                "db-0.db.default.svc.cluster.local.",
                A,
                ok,
                vec!["A 10.42.0.7"],
            ),
            (
                "10-42-0-8.db.default.svc.cluster.local.",
                A,
                ok,
                vec!["A 10.42.0.8"],
            ),
            ("db-2.db.default.svc.cluster.local.", A, nx, vec![]),
            ("x.hello.default.svc.cluster.local.", A, nx, vec![]),
            ("empty.default.svc.cluster.local.", A, nx, vec![]),
            (
                "ext.default.svc.cluster.local.",
                A,
                ok,
                vec!["CNAME example.com."],
            ),
            // SRV.
            (
                "_http._tcp.hello.default.svc.cluster.local.",
                SRV,
                ok,
                vec!["SRV 0 100 80 hello.default.svc.cluster.local."],
            ),
            (
                "_dns._udp.dual.apps.svc.cluster.local.",
                SRV,
                ok,
                vec!["SRV 0 100 53 dual.apps.svc.cluster.local."],
            ),
            (
                "_http._udp.hello.default.svc.cluster.local.",
                SRV,
                nx,
                vec![],
            ),
            ("_http._tcp.hello.default.svc.cluster.local.", A, ok, vec![]),
            (
                "_pg._tcp.db.default.svc.cluster.local.",
                SRV,
                ok,
                vec![
                    "SRV 0 100 5432 db-0.db.default.svc.cluster.local.",
                    "SRV 0 100 5432 10-42-0-8.db.default.svc.cluster.local.",
                ],
            ),
            // Pods, zone structure, junk.
            (
                "10-42-0-5.default.pod.cluster.local.",
                A,
                ok,
                vec!["A 10.42.0.5"],
            ),
            ("10-42-0.default.pod.cluster.local.", A, nx, vec![]),
            ("cluster.local.", A, ok, vec![]),
            ("svc.cluster.local.", A, ok, vec![]),
            ("default.svc.cluster.local.", A, ok, vec![]),
            ("a.b.c.d.e.f.svc.cluster.local.", A, nx, vec![]),
            ("hello.default.cluster.local.", A, nx, vec![]),
        ];
        for (name, qtype, code, want) in table {
            let got = summary(&ask(&c, name, qtype));
            assert_eq!(
                got,
                (code, want.iter().map(|s| s.to_string()).collect()),
                "{name} {qtype}"
            );
        }
    }

    #[test]
    fn reverse_names_of_cluster_addresses_answer_ptr() {
        use RecordType::*;
        let c = fake();
        let ok = ResponseCode::NoError;
        let table: Vec<(&str, RecordType, ResponseCode, Vec<&str>)> = vec![
            (
                "20.0.43.10.in-addr.arpa.",
                PTR,
                ok,
                vec!["PTR hello.default.svc.cluster.local."],
            ),
            (
                "20.0.43.10.IN-ADDR.ARPA",
                PTR,
                ok,
                vec!["PTR hello.default.svc.cluster.local."],
            ),
            // The second family of a dual-stack Service.
            (
                "1.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
                PTR,
                ok,
                vec!["PTR dual.apps.svc.cluster.local."],
            ),
            // Ready endpoints: hostname, else the dashed address.
            (
                "7.0.42.10.in-addr.arpa.",
                PTR,
                ok,
                vec!["PTR db-0.db.default.svc.cluster.local."],
            ),
            (
                "8.0.42.10.in-addr.arpa.",
                PTR,
                ok,
                vec!["PTR 10-42-0-8.db.default.svc.cluster.local."],
            ),
        ];
        for (name, qtype, code, want) in table {
            let got = summary(&ask(&c, name, qtype));
            assert_eq!(
                got,
                (code, want.iter().map(|s| s.to_string()).collect()),
                "{name} {qtype}"
            );
        }
        // Not ready, unknown, partial names and other types: the host's resolvers.
        for (name, qtype) in [
            ("9.0.42.10.in-addr.arpa.", PTR),
            ("1.1.168.192.in-addr.arpa.", PTR),
            ("0.42.10.in-addr.arpa.", PTR),
            ("20.0.43.10.in-addr.arpa.", A),
        ] {
            assert_eq!(ask(&c, name, qtype), Outcome::Forward, "{name} {qtype}");
        }
    }

    #[test]
    fn names_outside_the_zone_are_forwarded() {
        let c = fake();
        for name in [
            "example.com.",
            "hello.",
            "local.",
            "cluster.local.example.com.",
        ] {
            assert_eq!(ask(&c, name, RecordType::A), Outcome::Forward, "{name}");
        }
    }

    #[test]
    fn responses_echo_the_query_and_carry_an_soa_on_misses() {
        let c = fake();
        let Outcome::Answer(m) = ask(&c, "nope.default.svc.cluster.local.", RecordType::A) else {
            panic!("answered locally");
        };
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert!(m.metadata.authoritative && m.metadata.recursion_desired);
        assert_eq!(m.queries.len(), 1);
        assert_eq!(m.authorities.len(), 1);
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
        // The whole message encodes and decodes.
        let wire = m.to_vec().unwrap();
        assert_eq!(Message::from_vec(&wire).unwrap().metadata.id, m.metadata.id);
    }

    #[test]
    fn malformed_requests_get_errors_not_panics() {
        let c = fake();
        let zone = Name::from_ascii("cluster.local.").unwrap();
        let mut none = Message::query();
        none.metadata.id = 7;
        let Outcome::Answer(m) = answer(&c, &zone, &none) else {
            panic!()
        };
        assert_eq!(
            (m.metadata.id, m.metadata.response_code),
            (7, ResponseCode::FormErr)
        );
        let mut update = Message::new(1, MessageType::Query, OpCode::Update);
        update.add_query(Query::query(
            Name::from_ascii("a.cluster.local.").unwrap(),
            RecordType::A,
        ));
        let Outcome::Answer(m) = answer(&c, &zone, &update) else {
            panic!()
        };
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
        let mut two = Message::query();
        for n in ["a.cluster.local.", "b.cluster.local."] {
            two.add_query(Query::query(Name::from_ascii(n).unwrap(), RecordType::A));
        }
        let Outcome::Answer(m) = answer(&c, &zone, &two) else {
            panic!()
        };
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    }
}
