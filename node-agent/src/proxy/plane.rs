//! The proxy's data plane: a few threads, each with a single-threaded tokio runtime
//! of its own (thread per core, as HAProxy and Envoy run), that hold the listeners
//! and the connections. The control loop (watches, listener table) stays on the
//! caller's runtime, and work scheduled there — the kubelet, Wasm pods — never
//! delays a forwarded byte.
//!
//! Optional busy polling: while traffic flows, a thread asks the kernel for events
//! without sleeping, for up to a window after its last one. On a VM whose idle vCPU
//! halts (Firecracker here), waking a sleeping thread costs tens of microseconds per
//! hop; a polling thread sees the next segment at once. It spends a CPU while
//! traffic lasts (HAProxy's `busy-polling` makes the same trade), so it is opt-in.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// How the data plane runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaneConfig {
    /// Threads (0: one per CPU).
    pub threads: usize,
    /// Busy-poll for this long after a thread's last event (None: sleep when idle).
    pub busy_poll: Option<Duration>,
    /// The congestion control a bulk stream's sending socket switches to when its
    /// peer is on this node (None: the system's). Such a hop has no network to share:
    /// BBR's pacing there (the system default on some distributions) only costs timer
    /// wake-ups — a bulk stream through the proxy moved ~15 points more of a direct
    /// stream's throughput with cubic on its local hops. One the kernel does not
    /// offer is reported once at start and left unused.
    pub local_congestion_control: Option<String>,
}

impl Default for PlaneConfig {
    fn default() -> Self {
        PlaneConfig {
            threads: 0,
            busy_poll: None,
            local_congestion_control: Some("cubic".into()),
        }
    }
}

struct PlaneThread {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<()>>,
}

/// The data plane's threads; dropping it stops them (and the connections they hold).
pub struct DataPlane {
    threads: Vec<PlaneThread>,
    next: AtomicUsize,
    forwarding: Forwarding,
}

/// What a connection's forwarding needs from the plane.
#[derive(Clone, Default)]
pub struct Forwarding {
    /// See [`PlaneConfig::local_congestion_control`] (None: the system's).
    pub local_congestion: Option<Arc<str>>,
}

impl DataPlane {
    pub fn start(cfg: PlaneConfig) -> io::Result<DataPlane> {
        let n = match cfg.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = rt.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let busy = cfg.busy_poll;
            let join = std::thread::Builder::new()
                .name(format!("kelp-proxy-{i}"))
                .spawn(move || {
                    rt.block_on(async move {
                        match busy {
                            None => {
                                let _ = stopped.await;
                            }
                            Some(window) => {
                                tokio::select! {
                                    _ = stopped => {}
                                    _ = spin(window) => {}
                                }
                            }
                        }
                    });
                    // Dropping the runtime ends the tasks it still holds.
                    rt.shutdown_background();
                })?;
            threads.push(PlaneThread {
                handle,
                stop: Some(stop),
                join: Some(join),
            });
        }
        let local_congestion = cfg
            .local_congestion_control
            .filter(|cc| congestion_control_available(cc))
            .map(Arc::from);
        Ok(DataPlane {
            threads,
            next: AtomicUsize::new(0),
            forwarding: Forwarding { local_congestion },
        })
    }

    /// Every thread's runtime (a listener per thread, with SO_REUSEPORT).
    pub fn handles(&self) -> impl Iterator<Item = &Handle> {
        self.threads.iter().map(|t| &t.handle)
    }

    /// The next thread's runtime, round-robin (for work that cannot be split).
    pub fn next(&self) -> &Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.threads.len();
        &self.threads[i].handle
    }

    /// How connections are forwarded.
    pub fn forwarding(&self) -> &Forwarding {
        &self.forwarding
    }

    pub fn len(&self) -> usize {
        self.threads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        for t in &mut self.threads {
            if let Some(s) = t.stop.take() {
                let _ = s.send(());
            }
        }
        for t in &mut self.threads {
            if let Some(j) = t.join.take() {
                let _ = j.join();
            }
        }
    }
}

/// Whether sockets may use congestion control `cc` (tried on a fresh socket); warns
/// once when not, so a misspelt or unloaded algorithm is not a per-stream failure.
fn congestion_control_available(cc: &str) -> bool {
    let tried = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| Ok(rustix::net::sockopt::set_tcp_congestion(&s, cc)?));
    if let Err(e) = &tried {
        tracing::warn!(
            congestion_control = cc,
            error = %e,
            "not available (see net.ipv4.tcp_allowed_congestion_control); local hops keep the system's"
        );
    }
    tried.is_ok()
}

thread_local! {
    /// Whether this thread busy-polls (set by its poller; the data path does nothing
    /// more on other threads).
    static POLLING: Cell<bool> = const { Cell::new(false) };
    /// Events the data path handled on this thread (read by its busy poller).
    static ACTIVITY: Cell<u64> = const { Cell::new(0) };
    /// The busy poller, when it sleeps for want of traffic.
    static POLLER: RefCell<Option<Waker>> = const { RefCell::new(None) };
}

/// Called by the data path on each event it handles: keeps (or starts) this
/// thread's busy polling.
pub(crate) fn note_activity() {
    if !POLLING.with(Cell::get) {
        return;
    }
    ACTIVITY.with(|a| a.set(a.get().wrapping_add(1)));
    if let Some(w) = POLLER.with(|p| p.borrow_mut().take()) {
        w.wake();
    }
}

/// Yields to the runtime in a loop — a single-threaded runtime with a yielded task
/// polls its I/O driver with a zero timeout instead of sleeping — until `window`
/// passes with no event, then sleeps until the next one. Each turn also yields the
/// CPU to any other runnable thread (sched_yield): a poller that kept its CPU for a
/// whole time slice would delay the very client or server it waits for.
async fn spin(window: Duration) {
    POLLING.with(|p| p.set(true));
    let mut seen = ACTIVITY.with(Cell::get);
    let mut last = Instant::now();
    loop {
        let now = ACTIVITY.with(Cell::get);
        if now != seen {
            seen = now;
            last = Instant::now();
        } else if last.elapsed() >= window {
            poll_fn(|cx| {
                if ACTIVITY.with(Cell::get) != seen {
                    Poll::Ready(())
                } else {
                    POLLER.with(|p| *p.borrow_mut() = Some(cx.waker().clone()));
                    Poll::Pending
                }
            })
            .await;
            continue;
        }
        std::thread::yield_now();
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_spreads_over_the_threads_and_stops_with_the_plane() {
        for busy_poll in [None, Some(Duration::from_micros(200))] {
            let plane = DataPlane::start(PlaneConfig {
                threads: 2,
                busy_poll,
                ..PlaneConfig::default()
            })
            .unwrap();
            assert_eq!(plane.len(), 2);
            let names = Arc::new(std::sync::Mutex::new(Vec::new()));
            let (tx, rx) = std::sync::mpsc::channel();
            for _ in 0..4 {
                let (names, tx) = (names.clone(), tx.clone());
                plane.next().spawn(async move {
                    note_activity();
                    let name = std::thread::current().name().unwrap().to_string();
                    names.lock().unwrap().push(name);
                    tx.send(()).unwrap();
                });
            }
            for _ in 0..4 {
                rx.recv_timeout(Duration::from_secs(10)).unwrap();
            }
            let mut names = names.lock().unwrap().clone();
            names.sort();
            assert_eq!(
                names,
                [
                    "kelp-proxy-0",
                    "kelp-proxy-0",
                    "kelp-proxy-1",
                    "kelp-proxy-1"
                ]
            );
            // A task still pending when the plane stops is dropped with it.
            let (held_tx, held_rx) = oneshot::channel::<()>();
            plane.next().spawn(async move {
                let _keep = held_tx;
                std::future::pending::<()>().await;
            });
            drop(plane);
            assert!(held_rx.blocking_recv().is_err(), "the task was dropped");
        }
    }

    #[test]
    fn a_congestion_control_the_kernel_lacks_is_left_unused() {
        let plane = |cc: &str| {
            DataPlane::start(PlaneConfig {
                threads: 1,
                local_congestion_control: Some(cc.into()),
                ..PlaneConfig::default()
            })
            .unwrap()
        };
        assert_eq!(
            plane("reno").forwarding().local_congestion.as_deref(),
            Some("reno")
        );
        assert_eq!(
            plane("no-such-algorithm").forwarding().local_congestion,
            None
        );
    }
}
