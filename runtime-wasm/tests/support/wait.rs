//! Waiting on a condition in tests: the condition is re-checked every [`POLL`] until
//! it holds or the time is up (the caller then fails, saying what it waited for).
//! Shared by the runtime's tests, the CRI transport test and `tests/runtime_cri.rs`
//! through `#[path]`.

#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is re-checked.
pub const POLL: Duration = Duration::from_millis(20);

/// A bound on a wait whose condition needs `&mut` state (an async closure cannot
/// lend it): `loop { check; if !deadline.tick().await { fail } }`.
pub struct Deadline(Instant);

impl Deadline {
    pub fn after(timeout: Duration) -> Self {
        Deadline(Instant::now() + timeout)
    }

    /// Waits one poll interval; false once the time is up.
    pub async fn tick(&self) -> bool {
        if Instant::now() >= self.0 {
            return false;
        }
        tokio::time::sleep(POLL).await;
        true
    }
}

/// Polls the async `cond` until it holds (true) or `timeout` passes (false).
pub async fn until<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`until`] for a blocking caller and a plain condition.
pub fn until_blocking(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}
