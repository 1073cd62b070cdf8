//! Endpoint selection for one listener: round-robin over the ready endpoints, with
//! `sessionAffinity: ClientIP`. The endpoint set is swapped whole (an `ArcSwap`) when
//! the Service or its EndpointSlices change, so the accept path reads it without a
//! lock and connections already made are never touched.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

/// What one listener forwards to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backends {
    pub addrs: Vec<SocketAddr>,
    /// `sessionAffinity: ClientIP` with this timeout.
    pub affinity: Option<Duration>,
}

#[derive(Debug, Default)]
pub struct Balancer {
    backends: ArcSwap<Backends>,
    next: AtomicUsize,
    /// Client IP → (endpoint, last used). Touched only with affinity on.
    sticky: Mutex<HashMap<IpAddr, (SocketAddr, Instant)>>,
}

impl Balancer {
    pub fn new(b: Backends) -> Self {
        Balancer {
            backends: ArcSwap::from_pointee(b),
            ..Default::default()
        }
    }

    /// Replaces the endpoint set when it changed (returns whether it did).
    pub fn update(&self, b: Backends) -> bool {
        if **self.backends.load() == b {
            return false;
        }
        if b.affinity.is_none() {
            self.sticky
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
        self.backends.store(Arc::new(b));
        true
    }

    pub fn backends(&self) -> Arc<Backends> {
        self.backends.load_full()
    }

    /// The endpoint for a new connection from `client`, skipping the `skip` first
    /// choices (a retry after a refused connection). None when there is no endpoint.
    pub fn pick(&self, client: IpAddr, skip: usize, now: Instant) -> Option<SocketAddr> {
        let b = self.backends.load();
        if b.addrs.is_empty() {
            return None;
        }
        if let (Some(timeout), 0) = (b.affinity, skip) {
            let mut sticky = self.sticky.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((addr, at)) = sticky.get_mut(&client) {
                if now.duration_since(*at) <= timeout && b.addrs.contains(addr) {
                    *at = now;
                    return Some(*addr);
                }
            }
            let addr = b.addrs[self.next.fetch_add(1, Ordering::Relaxed) % b.addrs.len()];
            if sticky.len() > 4096 {
                // Bounded: forget the expired sessions before growing further.
                sticky.retain(|_, (_, at)| now.duration_since(*at) <= timeout);
            }
            sticky.insert(client, (addr, now));
            return Some(addr);
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        Some(b.addrs[i % b.addrs.len()])
    }

    /// A connection to `failed` was refused: a sticky client moves on.
    pub fn forget(&self, client: IpAddr, failed: SocketAddr) {
        let mut sticky = self.sticky.lock().unwrap_or_else(|e| e.into_inner());
        if sticky.get(&client).is_some_and(|(a, _)| *a == failed) {
            sticky.remove(&client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([10, 42, 0, i], 8080)))
            .collect()
    }
    fn client(i: u8) -> IpAddr {
        IpAddr::from([192, 168, 0, i])
    }

    #[test]
    fn round_robin_spreads_evenly() {
        let b = Balancer::new(Backends {
            addrs: addrs(3),
            affinity: None,
        });
        let now = Instant::now();
        let mut counts = HashMap::new();
        for _ in 0..300 {
            *counts
                .entry(b.pick(client(1), 0, now).unwrap())
                .or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|&c| c == 100), "{counts:?}");
    }

    #[test]
    fn empty_set_picks_nothing() {
        let b = Balancer::new(Backends::default());
        assert_eq!(b.pick(client(1), 0, Instant::now()), None);
    }

    #[test]
    fn client_ip_affinity_sticks_until_timeout() {
        let b = Balancer::new(Backends {
            addrs: addrs(3),
            affinity: Some(Duration::from_secs(10)),
        });
        let t0 = Instant::now();
        let first = b.pick(client(1), 0, t0).unwrap();
        for s in 1..5 {
            assert_eq!(
                b.pick(client(1), 0, t0 + Duration::from_secs(s)).unwrap(),
                first
            );
        }
        // Another client is spread elsewhere.
        assert_ne!(b.pick(client(2), 0, t0).unwrap(), first);
        // Idle longer than the timeout: chosen afresh (round-robin moved on).
        let later = b.pick(client(1), 0, t0 + Duration::from_secs(30)).unwrap();
        assert_ne!(later, first);
    }

    #[test]
    fn affinity_drops_a_removed_endpoint() {
        let b = Balancer::new(Backends {
            addrs: addrs(2),
            affinity: Some(Duration::from_secs(10)),
        });
        let now = Instant::now();
        let first = b.pick(client(1), 0, now).unwrap();
        let rest: Vec<_> = addrs(2).into_iter().filter(|a| *a != first).collect();
        assert!(b.update(Backends {
            addrs: rest.clone(),
            affinity: Some(Duration::from_secs(10)),
        }));
        assert_eq!(b.pick(client(1), 0, now).unwrap(), rest[0]);
    }

    #[test]
    fn forget_moves_a_sticky_client_after_a_refusal() {
        let b = Balancer::new(Backends {
            addrs: addrs(2),
            affinity: Some(Duration::from_secs(10)),
        });
        let now = Instant::now();
        let first = b.pick(client(1), 0, now).unwrap();
        b.forget(client(1), first);
        assert_ne!(b.pick(client(1), 0, now).unwrap(), first);
    }

    #[test]
    fn retry_skips_to_another_endpoint() {
        let b = Balancer::new(Backends {
            addrs: addrs(3),
            affinity: None,
        });
        let now = Instant::now();
        let a = b.pick(client(1), 0, now).unwrap();
        let c = b.pick(client(1), 1, now).unwrap();
        assert_ne!(a, c);
    }

    #[test]
    fn unchanged_update_is_a_no_op() {
        let set = Backends {
            addrs: addrs(2),
            affinity: None,
        };
        let b = Balancer::new(set.clone());
        assert!(!b.update(set));
    }
}
