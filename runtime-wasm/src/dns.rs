//! A pod's name resolution: the sandbox's DNS config (CRI `dns_config`: servers,
//! searches, options) applied as a resolv.conf stub resolver would, for the
//! container's outgoing requests.
//!
//! - Search order as glibc: a name with a final dot is tried as it is; one with at
//!   least `ndots` dots is tried as it is first, then with each search domain;
//!   others with each search domain first.
//! - Per candidate, A then (when the name has no A records) AAAA, asking the
//!   servers in order (`timeout:N`, `attempts:N` honoured; TCP when the UDP answer is
//!   truncated). NXDOMAIN and "no data" move on to the next candidate; CNAMEs without
//!   addresses (ExternalName Services) are followed.
//! - A name the servers do not know falls back to the system resolver — unless it
//!   lies under one of the pod's search domains (`…svc.cluster.local`): those names
//!   belong to the cluster, and a miss there is an answer ("no such host"), not a
//!   reason to ask elsewhere.
//!
//! Servers are IP addresses (port 53) or `ADDR:PORT` (Kelp's kubelet passes a port
//! when the node's cluster DNS could not have port 53).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use kelp_cri_api::v1 as cri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// glibc's defaults.
const DEFAULT_NDOTS: usize = 1;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_ATTEMPTS: usize = 2;
/// CNAME chains longer than this are broken off.
const MAX_CNAMES: usize = 8;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LookupError {
    /// The pod's DNS says the name does not exist.
    #[error("{0}: no such host (NXDOMAIN from the pod's DNS)")]
    NotFound(String),
    /// A cluster name no server answered for.
    #[error("{0}: the pod's DNS servers did not answer")]
    Unavailable(String),
    #[error("{0}: not a valid host name")]
    BadName(String),
}

/// How a pod resolves names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodResolver {
    pub servers: Vec<SocketAddr>,
    /// Search domains, without the final dot.
    pub searches: Vec<String>,
    pub ndots: usize,
    pub timeout: Duration,
    pub attempts: usize,
}

/// What one name's query found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Found(Vec<IpAddr>),
    /// The name is an alias of this one (and the answer held no addresses).
    Alias(String),
    /// NXDOMAIN, or the name exists without addresses.
    Missing,
    /// No server answered usefully (timeout, REFUSED, SERVFAIL, unreachable).
    Unanswered,
}

/// A server string from CRI: `IP`, `IP:PORT` or `[IPv6]:PORT`.
pub fn parse_server(s: &str) -> Option<SocketAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    s.parse().ok()
}

impl PodResolver {
    /// The resolver of a sandbox; None when the config names no usable server (the
    /// container then uses the system resolver, as before).
    pub fn from_cri(cfg: &cri::DnsConfig) -> Option<Self> {
        let servers: Vec<SocketAddr> = cfg.servers.iter().filter_map(|s| parse_server(s)).collect();
        if servers.is_empty() {
            return None;
        }
        let mut r = PodResolver {
            servers,
            searches: cfg
                .searches
                .iter()
                .map(|s| s.trim_end_matches('.').to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect(),
            ndots: DEFAULT_NDOTS,
            timeout: DEFAULT_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
        };
        for o in &cfg.options {
            let (name, value) = o.split_once(':').unwrap_or((o, ""));
            let n = value.parse::<usize>().ok();
            match (name, n) {
                // glibc caps these: ndots at 15, timeout at 30 s, attempts at 5.
                ("ndots", Some(n)) => r.ndots = n.min(15),
                ("timeout", Some(n)) => r.timeout = Duration::from_secs(n.clamp(1, 30) as u64),
                ("attempts", Some(n)) => r.attempts = n.clamp(1, 5),
                _ => {}
            }
        }
        Some(r)
    }

    /// The names tried for `host`, in order (pure; see the module docs).
    pub fn candidates(&self, host: &str) -> Vec<String> {
        if let Some(abs) = host.strip_suffix('.') {
            return vec![abs.to_string()];
        }
        let searched = self.searches.iter().map(|d| format!("{host}.{d}"));
        if host.matches('.').count() >= self.ndots {
            std::iter::once(host.to_string()).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(host.to_string())).collect()
        }
    }

    /// Whether `name` (absolute, without the final dot) lies under a search domain.
    fn is_cluster_name(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.searches
            .iter()
            .any(|d| name == *d || name.ends_with(&format!(".{d}")))
    }

    /// Resolves `host`: Ok(Some(addresses)) from the pod's DNS, Ok(None) when the
    /// system resolver should be asked instead.
    pub async fn lookup(&self, host: &str) -> Result<Option<Vec<IpAddr>>, LookupError> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.parse::<IpAddr>().is_ok() || host.eq_ignore_ascii_case("localhost") {
            return Ok(None);
        }
        if host.is_empty() || Name::from_ascii(host).is_err() {
            return Err(LookupError::BadName(host.to_string()));
        }
        let mut candidates = self.candidates(host);
        let mut unanswered = false;
        let mut aliases = 0;
        while !candidates.is_empty() {
            let name = candidates.remove(0);
            match self.query_addresses(&name).await {
                Answer::Found(ips) => return Ok(Some(ips)),
                Answer::Alias(target) if aliases < MAX_CNAMES => {
                    aliases += 1;
                    // The alias is absolute; it replaces the remaining candidates.
                    candidates = vec![target];
                }
                Answer::Alias(_) | Answer::Missing => {}
                Answer::Unanswered => unanswered = true,
            }
        }
        let absolute = host.trim_end_matches('.');
        if !self.is_cluster_name(absolute) {
            return Ok(None);
        }
        Err(if unanswered {
            LookupError::Unavailable(absolute.to_string())
        } else {
            LookupError::NotFound(absolute.to_string())
        })
    }

    /// A then AAAA for one absolute name.
    async fn query_addresses(&self, name: &str) -> Answer {
        match self.query(name, RecordType::A).await {
            Answer::Missing => match self.query(name, RecordType::AAAA).await {
                // NXDOMAIN for AAAA after a NODATA A: still missing.
                Answer::Unanswered => Answer::Missing,
                other => other,
            },
            other => other,
        }
    }

    async fn query(&self, name: &str, rtype: RecordType) -> Answer {
        let Ok(mut qname) = Name::from_ascii(name) else {
            return Answer::Missing;
        };
        qname.set_fqdn(true);
        let mut req = Message::query();
        req.metadata.recursion_desired = true;
        req.add_query(Query::query(qname, rtype));
        let Ok(wire) = req.to_vec() else {
            return Answer::Missing;
        };
        for _ in 0..self.attempts {
            for &server in &self.servers {
                let Ok(Ok(resp)) =
                    tokio::time::timeout(self.timeout, exchange(&wire, server)).await
                else {
                    continue;
                };
                if resp.metadata.id != req.metadata.id
                    || resp.metadata.message_type != MessageType::Response
                {
                    continue;
                }
                match interpret(&resp) {
                    Answer::Unanswered => continue,
                    a => return a,
                }
            }
        }
        Answer::Unanswered
    }
}

/// What a response says about the name asked.
fn interpret(resp: &Message) -> Answer {
    match resp.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return Answer::Missing,
        _ => return Answer::Unanswered,
    }
    let ips: Vec<IpAddr> = resp
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    if !ips.is_empty() {
        return Answer::Found(ips);
    }
    let cname = resp.answers.iter().find_map(|r| match &r.data {
        RData::CNAME(c) => Some(c.0.to_ascii().trim_end_matches('.').to_string() + "."),
        _ => None,
    });
    match cname {
        Some(target) => Answer::Alias(target),
        None => Answer::Missing,
    }
}

/// One query over UDP, repeated over TCP when the answer was truncated.
async fn exchange(wire: &[u8], server: SocketAddr) -> std::io::Result<Message> {
    let any: IpAddr = if server.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let sock = UdpSocket::bind((any, 0)).await?;
    sock.connect(server).await?;
    sock.send(wire).await?;
    let mut buf = vec![0u8; 4096];
    let resp = loop {
        let n = sock.recv(&mut buf).await?;
        // Strays (another id) are skipped, undecodable answers too.
        if n >= 2 && buf[..2] == wire[..2] {
            if let Ok(m) = Message::from_vec(&buf[..n]) {
                break m;
            }
        }
    };
    if !resp.metadata.truncation {
        return Ok(resp);
    }
    let mut s = TcpStream::connect(server).await?;
    let len = u16::try_from(wire.len()).map_err(std::io::Error::other)?;
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(wire);
    s.write_all(&out).await?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut buf).await?;
    Message::from_vec(&buf).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver(servers: &[&str], searches: &[&str], options: &[&str]) -> Option<PodResolver> {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        PodResolver::from_cri(&cri::DnsConfig {
            servers: v(servers),
            searches: v(searches),
            options: v(options),
        })
    }

    const CLUSTER: [&str; 3] = [
        "default.svc.cluster.local",
        "svc.cluster.local",
        "cluster.local",
    ];

    #[test]
    fn config_from_cri() {
        assert_eq!(resolver(&[], &CLUSTER, &[]), None);
        assert_eq!(resolver(&["bogus"], &CLUSTER, &[]), None);
        let r = resolver(
            &["169.254.20.10", "127.0.0.10:5353", "[::1]:5300", "junk"],
            &["a.example.", ""],
            &["ndots:5", "timeout:99", "attempts:0", "rotate", "ndots:x"],
        )
        .unwrap();
        assert_eq!(
            r.servers,
            ["169.254.20.10:53", "127.0.0.10:5353", "[::1]:5300"]
                .map(|s| s.parse::<SocketAddr>().unwrap())
        );
        assert_eq!(r.searches, vec!["a.example"]);
        assert_eq!(
            (r.ndots, r.timeout, r.attempts),
            (5, Duration::from_secs(30), 1)
        );
    }

    #[test]
    fn search_order_follows_ndots() {
        let r = resolver(&["127.0.0.1"], &CLUSTER, &["ndots:5"]).unwrap();
        let table: Vec<(&str, Vec<&str>)> = vec![
            (
                "hello",
                vec![
                    "hello.default.svc.cluster.local",
                    "hello.svc.cluster.local",
                    "hello.cluster.local",
                    "hello",
                ],
            ),
            (
                "hello.default.svc.cluster.local",
                vec![
                    "hello.default.svc.cluster.local.default.svc.cluster.local",
                    "hello.default.svc.cluster.local.svc.cluster.local",
                    "hello.default.svc.cluster.local.cluster.local",
                    "hello.default.svc.cluster.local",
                ],
            ),
            (
                "hello.default.svc.cluster.local.",
                vec!["hello.default.svc.cluster.local"],
            ),
            (
                "a.b.c.d.e.f",
                vec![
                    "a.b.c.d.e.f",
                    "a.b.c.d.e.f.default.svc.cluster.local",
                    "a.b.c.d.e.f.svc.cluster.local",
                    "a.b.c.d.e.f.cluster.local",
                ],
            ),
        ];
        for (host, want) in table {
            assert_eq!(r.candidates(host), want, "{host}");
        }
        let one = resolver(&["127.0.0.1"], &["x.example"], &[]).unwrap();
        assert_eq!(
            one.candidates("example.com"),
            vec!["example.com", "example.com.x.example"]
        );
        assert_eq!(one.candidates("db"), vec!["db.x.example", "db"]);
    }

    #[test]
    fn cluster_names_are_those_under_a_search_domain() {
        let r = resolver(&["127.0.0.1"], &CLUSTER, &[]).unwrap();
        assert!(r.is_cluster_name("nope.default.svc.cluster.local"));
        assert!(r.is_cluster_name("Cluster.Local"));
        assert!(!r.is_cluster_name("example.com"));
        assert!(!r.is_cluster_name("notcluster.local"));
    }

    /// A fake DNS server on UDP: `answer` maps a query to the response it gets.
    async fn fake_server(answer: fn(&Message) -> Option<Message>) -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
                let Ok(req) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                if let Some(resp) = answer(&req) {
                    let _ = sock.send_to(&resp.to_vec().unwrap(), peer).await;
                }
            }
        });
        addr
    }

    fn reply(req: &Message) -> Option<Message> {
        use hickory_proto::rr::rdata::{A, CNAME};
        use hickory_proto::rr::Record;
        let q = req.queries.first()?;
        let name = q.name().to_ascii();
        let mut m = Message::response(req.metadata.id, req.metadata.op_code);
        m.add_query(q.clone());
        let a =
            |ip: &str| Record::from_rdata(q.name().clone(), 5, RData::A(A(ip.parse().unwrap())));
        match (name.as_str(), q.query_type()) {
            ("hello.default.svc.cluster.local.", RecordType::A) => {
                m.add_answer(a("10.43.0.20"));
            }
            ("hello.default.svc.cluster.local.", _) => {}
            ("ext.default.svc.cluster.local.", _) => {
                m.add_answer(Record::from_rdata(
                    q.name().clone(),
                    5,
                    RData::CNAME(CNAME(Name::from_ascii("target.example.").unwrap())),
                ));
            }
            ("target.example.", RecordType::A) => {
                m.add_answer(a("192.0.2.7"));
            }
            ("silent.default.svc.cluster.local.", _) => return None,
            (n, _) if n.ends_with("cluster.local.") => {
                m.metadata.response_code = ResponseCode::NXDomain;
            }
            _ => m.metadata.response_code = ResponseCode::Refused,
        }
        Some(m)
    }

    #[tokio::test]
    async fn lookups_against_a_server() {
        let addr = fake_server(reply).await;
        let r = resolver(
            &[&addr.to_string()],
            &CLUSTER,
            &["ndots:5", "timeout:1", "attempts:1"],
        )
        .unwrap();
        let ip = |s: &str| vec![s.parse::<IpAddr>().unwrap()];
        assert_eq!(r.lookup("hello").await, Ok(Some(ip("10.43.0.20"))));
        assert_eq!(
            r.lookup("hello.default.svc.cluster.local").await,
            Ok(Some(ip("10.43.0.20")))
        );
        assert_eq!(
            r.lookup("hello.default.svc.cluster.local.").await,
            Ok(Some(ip("10.43.0.20")))
        );
        assert_eq!(r.lookup("ext").await, Ok(Some(ip("192.0.2.7"))));
        assert_eq!(
            r.lookup("nope.default.svc.cluster.local").await,
            Err(LookupError::NotFound(
                "nope.default.svc.cluster.local".into()
            ))
        );
        // Outside the cluster: REFUSED → the system resolver's turn.
        assert_eq!(r.lookup("example.com").await, Ok(None));
        assert_eq!(r.lookup("nope").await, Ok(None));
        assert_eq!(r.lookup("10.0.0.1").await, Ok(None));
        assert_eq!(r.lookup("[::1]").await, Ok(None));
        assert_eq!(
            r.lookup("a..b").await,
            Err(LookupError::BadName("a..b".into()))
        );
        assert_eq!(
            r.lookup("silent.default.svc.cluster.local.").await,
            Err(LookupError::Unavailable(
                "silent.default.svc.cluster.local".into()
            ))
        );
    }
}
