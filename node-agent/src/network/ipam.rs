//! Pod IP allocation within one node's range: a pure allocator ([`Allocations`]) and
//! its on-disk record ([`AllocationFile`]), so an agent restart keeps every running
//! pod's address and never hands one out twice.
//!
//! Allocation is next-fit (the search starts after the last address handed out, as
//! CNI's host-local does): an address released by a deleted pod is not reused at once,
//! so connections and endpoint lists still naming it drain before it comes back.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no free address left in {0}")]
    Exhausted(Ipv4Net),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Which pod holds which address, within `range`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocations {
    /// Where new addresses come from.
    pub range: Ipv4Net,
    /// The address handed out last (next-fit starts after it).
    #[serde(default)]
    pub last: Option<Ipv4Addr>,
    /// Pod UID → address. An address outside `range` (the range changed) stays valid
    /// for its pod until released.
    #[serde(default)]
    pub pods: BTreeMap<String, Ipv4Addr>,
}

impl Allocations {
    pub fn new(range: Ipv4Net) -> Self {
        Allocations {
            range,
            last: None,
            pods: BTreeMap::new(),
        }
    }

    /// The first usable address: the network address and the gateway (`.1`, reserved
    /// as upstream bridges do) are skipped, and so is the broadcast address.
    fn bounds(&self) -> (u32, u32) {
        let net = u32::from(self.range.network());
        let bcast = u32::from(self.range.broadcast());
        if self.range.prefix_len() >= 31 {
            return (net, bcast);
        }
        (net + 2, bcast - 1)
    }

    /// The address of pod `uid`: the one it holds, or a free one.
    pub fn allocate(&mut self, uid: &str) -> Result<Ipv4Addr, IpamError> {
        if let Some(ip) = self.pods.get(uid) {
            return Ok(*ip);
        }
        let ip = self.next_free().ok_or(IpamError::Exhausted(self.range))?;
        self.pods.insert(uid.to_string(), ip);
        self.last = Some(ip);
        Ok(ip)
    }

    /// The address the next `allocate` of a new pod hands out (None: none is free).
    pub fn next_free(&self) -> Option<Ipv4Addr> {
        let (lo, hi) = self.bounds();
        if lo > hi {
            return None;
        }
        let taken: std::collections::HashSet<Ipv4Addr> = self.pods.values().copied().collect();
        let size = hi - lo + 1;
        let start = match self.last.map(u32::from) {
            Some(l) if (lo..=hi).contains(&l) => l - lo + 1,
            _ => 0,
        };
        (0..size)
            .map(|i| Ipv4Addr::from(lo + (start + i) % size))
            .find(|ip| !taken.contains(ip))
    }

    /// Frees pod `uid`'s address (None if it held none).
    pub fn release(&mut self, uid: &str) -> Option<Ipv4Addr> {
        self.pods.remove(uid)
    }

    /// Frees the address of every pod `keep` refuses; returns the freed addresses.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) -> Vec<Ipv4Addr> {
        let mut freed = vec![];
        self.pods.retain(|uid, ip| {
            let k = keep(uid);
            if !k {
                freed.push(*ip);
            }
            k
        });
        freed
    }

    /// Moves new allocations to `range`; pods keep what they hold.
    pub fn set_range(&mut self, range: Ipv4Net) {
        if self.range != range {
            self.range = range;
            self.last = None;
        }
    }
}

/// The allocations on disk: a JSON snapshot (replaced atomically, write + rename)
/// and a journal of the changes since (`<path>.log`, one JSON change per line,
/// appended). A pod start appends one line instead of replacing the snapshot: the
/// rename of a file over another made ext4 flush it, ~1 ms of every pod start. Like
/// the snapshot, the journal is written without fsync: it survives a crash of the
/// agent, not of the machine (whose pods are gone then anyway). The journal is folded
/// into a new snapshot when it grows long or the range changes.
#[derive(Debug)]
pub struct AllocationFile {
    path: PathBuf,
    journal: std::sync::Mutex<Journal>,
}

#[derive(Debug, Default)]
struct Journal {
    /// What the snapshot and the journal hold together (None: not known yet).
    persisted: Option<Allocations>,
    lines: usize,
}

/// One journal line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Change {
    Set { uid: String, ip: Ipv4Addr },
    Del { uid: String },
    Last { ip: Option<Ipv4Addr> },
}

/// Journal lines before it is folded into the snapshot.
const JOURNAL_MAX: usize = 4096;

impl AllocationFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        AllocationFile {
            path: path.into(),
            journal: Default::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn journal_path(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".log");
        PathBuf::from(p)
    }

    fn io(&self) -> impl Fn(std::io::Error) -> IpamError + '_ {
        move |source| IpamError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// What the files hold, or None when there is no snapshot yet.
    pub fn load(&self) -> Result<Option<Allocations>, IpamError> {
        let mut a: Allocations = match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| IpamError::Corrupt {
                path: self.path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io()(e)),
        };
        let mut lines = 0;
        match std::fs::read_to_string(self.journal_path()) {
            Ok(text) => {
                for line in text.lines() {
                    // A torn last line (the agent died mid-append) is skipped.
                    let Ok(change) = serde_json::from_str::<Change>(line) else {
                        continue;
                    };
                    lines += 1;
                    match change {
                        Change::Set { uid, ip } => {
                            a.pods.insert(uid, ip);
                        }
                        Change::Del { uid } => {
                            a.pods.remove(&uid);
                        }
                        Change::Last { ip } => a.last = ip,
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io()(e)),
        }
        let mut j = self.journal.lock().expect("journal lock");
        j.persisted = Some(a.clone());
        j.lines = lines;
        Ok(Some(a))
    }

    /// Records `a`: the changes since the last save appended to the journal, or a new
    /// snapshot.
    pub fn save(&self, a: &Allocations) -> Result<(), IpamError> {
        let mut j = self.journal.lock().expect("journal lock");
        let changes = match &j.persisted {
            Some(old) if old.range == a.range && j.lines < JOURNAL_MAX => Some(diff(old, a)),
            _ => None,
        };
        match changes {
            Some(changes) if changes.is_empty() => {}
            Some(changes) => {
                use std::io::Write;
                let mut body = Vec::new();
                for c in &changes {
                    serde_json::to_writer(&mut body, c).expect("change serializes");
                    body.push(b'\n');
                }
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.journal_path())
                    .map_err(self.io())?;
                f.write_all(&body).map_err(self.io())?;
                j.lines += changes.len();
            }
            None => {
                if let Some(dir) = self.path.parent() {
                    std::fs::create_dir_all(dir).map_err(self.io())?;
                }
                let tmp = self.path.with_extension("json.tmp");
                let body = serde_json::to_vec_pretty(a).expect("allocations serialize");
                std::fs::write(&tmp, body).map_err(self.io())?;
                std::fs::rename(&tmp, &self.path).map_err(self.io())?;
                // Replaying the old journal over the new snapshot would be harmless
                // (it only repeats what the snapshot holds), but it is emptied.
                match std::fs::remove_file(self.journal_path()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(self.io()(e)),
                }
                j.lines = 0;
            }
        }
        j.persisted = Some(a.clone());
        Ok(())
    }
}

/// The journal lines that turn `old` into `new` (same range).
fn diff(old: &Allocations, new: &Allocations) -> Vec<Change> {
    let mut out = Vec::new();
    for (uid, ip) in &new.pods {
        if old.pods.get(uid) != Some(ip) {
            out.push(Change::Set {
                uid: uid.clone(),
                ip: *ip,
            });
        }
    }
    for uid in old.pods.keys() {
        if !new.pods.contains_key(uid) {
            out.push(Change::Del { uid: uid.clone() });
        }
    }
    if old.last != new.last {
        out.push(Change::Last { ip: new.last });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn skips_network_gateway_and_broadcast() {
        let mut a = Allocations::new(net("10.42.3.0/30"));
        // /30: .0 network, .1 gateway, .3 broadcast → only .2.
        assert_eq!(a.allocate("a").unwrap(), Ipv4Addr::new(10, 42, 3, 2));
        assert!(matches!(a.allocate("b"), Err(IpamError::Exhausted(_))));
    }

    #[test]
    fn same_pod_same_address_and_no_double_allocation() {
        let mut a = Allocations::new(net("10.42.3.0/24"));
        let x = a.allocate("x").unwrap();
        let y = a.allocate("y").unwrap();
        assert_ne!(x, y);
        assert_eq!(a.allocate("x").unwrap(), x);
        assert_eq!(x, Ipv4Addr::new(10, 42, 3, 2));
        assert_eq!(y, Ipv4Addr::new(10, 42, 3, 3));
    }

    #[test]
    fn next_fit_does_not_reuse_a_released_address_at_once() {
        let mut a = Allocations::new(net("10.42.3.0/24"));
        let x = a.allocate("x").unwrap();
        assert_eq!(a.release("x"), Some(x));
        assert_eq!(a.release("x"), None);
        let y = a.allocate("y").unwrap();
        assert_ne!(x, y);
    }

    #[test]
    fn next_free_is_what_the_next_allocation_hands_out() {
        let mut a = Allocations::new(net("10.0.0.0/29")); // .2 ..= .6
        for p in ["a", "b", "c", "d", "e"] {
            let next = a.next_free();
            assert_eq!(next, Some(a.allocate(p).unwrap()));
        }
        assert_eq!(a.next_free(), None);
        let c = a.pods["c"];
        a.release("c");
        assert_eq!(a.next_free(), Some(c));
        // Asking does not hand it out.
        assert_eq!(a.next_free(), Some(c));
        assert!(!a.pods.values().any(|ip| *ip == c));
    }

    #[test]
    fn wraps_around_and_fills_holes() {
        let mut a = Allocations::new(net("10.0.0.0/29")); // .2 ..= .6
        for p in ["a", "b", "c", "d", "e"] {
            a.allocate(p).unwrap();
        }
        assert!(a.allocate("f").is_err());
        let c = a.pods["c"];
        a.release("c");
        assert_eq!(a.allocate("f").unwrap(), c);
    }

    #[test]
    fn retain_frees_unknown_pods() {
        let mut a = Allocations::new(net("10.42.0.0/24"));
        a.allocate("keep").unwrap();
        let gone = a.allocate("gone").unwrap();
        assert_eq!(a.retain(|u| u == "keep"), vec![gone]);
        assert_eq!(a.pods.len(), 1);
    }

    #[test]
    fn range_change_keeps_held_addresses() {
        let mut a = Allocations::new(net("10.42.200.0/24"));
        let old = a.allocate("old").unwrap();
        a.set_range(net("10.42.1.0/24"));
        assert_eq!(a.allocate("old").unwrap(), old);
        assert_eq!(a.allocate("new").unwrap(), Ipv4Addr::new(10, 42, 1, 2));
    }

    #[test]
    fn journal_replays_changes_and_skips_a_torn_line() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("pod-ips.json");
        let f = AllocationFile::new(&path);
        let mut a = Allocations::new(net("10.42.0.0/24"));
        f.save(&a).unwrap();
        for uid in ["a", "b", "c"] {
            a.allocate(uid).unwrap();
            f.save(&a).unwrap();
        }
        a.release("b");
        f.save(&a).unwrap();
        // Appends, not snapshots.
        let journal = std::fs::read_to_string(f.journal_path()).unwrap();
        assert_eq!(journal.lines().count(), 7, "{journal}");
        // A torn last line (the agent killed mid-write) is ignored.
        let mut j = std::fs::OpenOptions::new()
            .append(true)
            .open(f.journal_path())
            .unwrap();
        std::io::Write::write_all(&mut j, b"{\"set\":{\"uid\":\"x\",\"ip").unwrap();
        let again = AllocationFile::new(&path).load().unwrap().unwrap();
        assert_eq!(again, a);
        // The next allocation continues after the last one handed out.
        let mut b = again.clone();
        assert_eq!(
            b.allocate("d").unwrap(),
            "10.42.0.5".parse::<Ipv4Addr>().unwrap()
        );
        // A new range folds the journal into a snapshot.
        let f2 = AllocationFile::new(&path);
        f2.load().unwrap();
        b.set_range(net("10.42.1.0/24"));
        f2.save(&b).unwrap();
        assert!(!f2.journal_path().exists());
        assert_eq!(AllocationFile::new(&path).load().unwrap(), Some(b));
    }

    #[test]
    fn file_round_trip() {
        let dir = std::env::temp_dir().join(format!("kelp-ipam-{}", std::process::id()));
        let f = AllocationFile::new(dir.join("pod-ips.json"));
        assert_eq!(f.load().unwrap(), None);
        let mut a = Allocations::new(net("10.42.7.0/24"));
        a.allocate("p").unwrap();
        f.save(&a).unwrap();
        assert_eq!(f.load().unwrap(), Some(a));
        std::fs::write(f.path(), b"{not json").unwrap();
        assert!(matches!(f.load(), Err(IpamError::Corrupt { .. })));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
