//! A long-running workload: prints an incrementing line once a second, forever.

use std::time::Duration;

fn main() {
    let mut n: u64 = 0;
    loop {
        println!("count {n}");
        n += 1;
        std::thread::sleep(Duration::from_secs(1));
    }
}
