//! A long-running workload: prints an incrementing line once a second, forever.
//! `counter --once` prints one line and exits (what `kubectl exec` runs in tests).

use std::time::Duration;

fn main() {
    let mut n: u64 = 0;
    if std::env::args().any(|a| a == "--once") {
        println!("count {n}");
        return;
    }
    loop {
        println!("count {n}");
        n += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
}
