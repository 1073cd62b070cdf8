//! Controller expectations (upstream `pkg/controller/controller_utils.go`): after an
//! owner creates or deletes pods it must not act again on a cache that has not yet
//! seen those writes, or it would create twice. Each owner records the names it
//! created and deleted; a sync proceeds only once the cache reflects all of them (or
//! the expectations are old enough that a lost event must be assumed).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upstream's `ExpectationsTimeout`: 5 minutes.
const EXPIRY: Duration = Duration::from_secs(300);

#[derive(Default)]
struct Pending {
    adds: HashSet<String>,
    dels: HashSet<String>,
    since: Option<Instant>,
}

#[derive(Default)]
pub struct Expectations {
    map: Mutex<HashMap<String, Pending>>,
}

/// What the cache says about one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Absent,
    Present,
    /// Present with a deletionTimestamp: a deletion has been observed.
    Terminating,
}

impl Expectations {
    pub fn expect_create(&self, owner: &str, name: &str) {
        let mut m = self.map.lock().expect("expectations lock");
        let p = m.entry(owner.to_string()).or_default();
        p.adds.insert(name.to_string());
        p.since.get_or_insert_with(Instant::now);
    }

    pub fn expect_delete(&self, owner: &str, name: &str) {
        let mut m = self.map.lock().expect("expectations lock");
        let p = m.entry(owner.to_string()).or_default();
        p.dels.insert(name.to_string());
        p.since.get_or_insert_with(Instant::now);
    }

    /// A write that failed will never be observed.
    pub fn forget(&self, owner: &str, name: &str) {
        let mut m = self.map.lock().expect("expectations lock");
        if let Some(p) = m.get_mut(owner) {
            p.adds.remove(name);
            p.dels.remove(name);
        }
    }

    /// Whether every recorded write is visible through `seen`; clears what is.
    pub fn satisfied(&self, owner: &str, seen: impl Fn(&str) -> Seen) -> bool {
        let mut m = self.map.lock().expect("expectations lock");
        let Some(p) = m.get_mut(owner) else {
            return true;
        };
        p.adds.retain(|n| seen(n) == Seen::Absent);
        p.dels.retain(|n| seen(n) == Seen::Present);
        let expired = p.since.is_some_and(|s| s.elapsed() > EXPIRY);
        if (p.adds.is_empty() && p.dels.is_empty()) || expired {
            m.remove(owner);
            return true;
        }
        false
    }

    pub fn clear(&self, owner: &str) {
        self.map.lock().expect("expectations lock").remove(owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_creates_and_deletes_to_be_observed() {
        let e = Expectations::default();
        assert!(e.satisfied("ns/j", |_| Seen::Absent));
        e.expect_create("ns/j", "a");
        e.expect_delete("ns/j", "b");
        // Nothing observed yet: the create is not visible, the pod still there.
        assert!(!e.satisfied("ns/j", |n| if n == "a" {
            Seen::Absent
        } else {
            Seen::Present
        }));
        // a appeared; b still present.
        assert!(!e.satisfied("ns/j", |_| Seen::Present));
        // b is now terminating: all observed.
        assert!(e.satisfied("ns/j", |_| Seen::Terminating));
        e.expect_create("ns/j", "c");
        e.forget("ns/j", "c");
        assert!(e.satisfied("ns/j", |_| Seen::Absent));
    }
}
