//! What every loop shares about failure: provider calls are bounded in time (a hung
//! provider must not hold a worker forever), and a failing key is retried after a
//! per-key exponential back-off chosen by the loop (upstream's service controller:
//! 5 s doubling to 5 min), so a persistent error costs an Event every back-off step,
//! not a hot loop.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use crate::provider::CloudError;

/// How long one provider call may take.
pub const PROVIDER_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a provider call with [`PROVIDER_CALL_TIMEOUT`].
pub async fn bounded<T>(
    call: impl Future<Output = Result<T, CloudError>>,
) -> Result<T, CloudError> {
    bounded_by(PROVIDER_CALL_TIMEOUT, call).await
}

async fn bounded_by<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, CloudError>>,
) -> Result<T, CloudError> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r,
        Err(_) => Err(CloudError::Timeout(limit)),
    }
}

/// Per-key consecutive failures and the delay before the next attempt.
#[derive(Debug)]
pub struct Backoff<K> {
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<K, u32>>,
}

impl<K: Eq + Hash + Clone> Backoff<K> {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records a failure of `key`; returns how long to wait before retrying it.
    pub fn failed(&self, key: &K) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.clone()).or_insert(0);
        let delay = self.base.saturating_mul(1u32 << (*n).min(20)).min(self.max);
        *n += 1;
        delay
    }

    /// `key` succeeded: its next failure starts from the base delay again.
    pub fn succeeded(&self, key: &K) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_per_key_to_a_cap_and_resets() {
        let b = Backoff::new(Duration::from_secs(5), Duration::from_secs(300));
        let d: Vec<u64> = (0..8).map(|_| b.failed(&"a").as_secs()).collect();
        assert_eq!(d, [5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.failed(&"b"), Duration::from_secs(5));
        b.succeeded(&"a");
        assert_eq!(b.failed(&"a"), Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_hung_call_times_out() {
        let r: Result<(), _> = bounded_by(Duration::from_millis(10), std::future::pending()).await;
        assert!(matches!(r, Err(CloudError::Timeout(_))));
    }
}
