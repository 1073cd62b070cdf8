//! The executable's resident pages. The binary holds the whole control plane, the Wasm
//! runtime and the node; start-up (the dynamic loader reading relocations, argument
//! parsing, TLS, engine and informer set-up) maps pages of it that a running node
//! never touches again, and the kernel's fault-around maps 64 KiB around each of them:
//! an idle agent kept 21 MiB of code resident. Once a node has started, those mappings
//! are dropped (`MADV_DONTNEED` on the executable's clean, read-only file mappings:
//! the pages stay in the page cache and whatever is still used maps again on its next
//! access), so what stays resident is what the node uses.

/// The executable's read-only file mappings that hold no private (written) pages:
/// code and constant data, never the relocated `.data.rel.ro`.
fn clean_exe_mappings() -> Vec<(usize, usize)> {
    use std::io::BufRead;
    let (Ok(smaps), Ok(exe)) = (
        std::fs::File::open("/proc/self/smaps"),
        std::fs::read_link("/proc/self/exe"),
    ) else {
        return Vec::new();
    };
    let exe = exe.to_string_lossy();
    // Line by line: the whole file is megabytes (every mapping of the Wasm engines),
    // which the allocator would keep.
    let mut smaps = std::io::BufReader::with_capacity(16 * 1024, smaps);
    let mut line = String::new();
    let mut out = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    loop {
        line.clear();
        match smaps.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let mut f = line.split_whitespace();
        let Some(first) = f.next() else { continue };
        if first == "Anonymous:" {
            let kb = f.next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(1);
            if let Some(m) = current.take() {
                if kb == 0 {
                    out.push(m);
                }
            }
            continue;
        }
        // A mapping's header: start-end perms offset dev inode path.
        let Some((lo, hi)) = first.split_once('-') else {
            continue;
        };
        let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        else {
            continue;
        };
        let perms = f.next().unwrap_or("");
        let ours = f.nth(3) == Some(exe.as_ref());
        current = (ours && perms.starts_with('r') && !perms.contains('w')).then_some((lo, hi));
    }
    out
}

// madvise takes a raw address range; this is the one unsafe call of the binary.
#[allow(unsafe_code)]
fn advise(advice: rustix::mm::Advice) {
    let mappings = clean_exe_mappings();
    let bytes: usize = mappings.iter().map(|(lo, hi)| hi - lo).sum();
    tracing::debug!(
        mappings = mappings.len(),
        bytes,
        ?advice,
        "advising the executable's clean mappings"
    );
    for (lo, hi) in mappings {
        // SAFETY: the range is a read-only file mapping of this executable without
        // private pages: dropping its pages loses nothing, they are read again.
        let r = unsafe { rustix::mm::madvise(lo as *mut _, hi - lo, advice) };
        if let Err(e) = r {
            tracing::debug!(error = %e, ?advice, "madvise refused");
        }
    }
}

/// Unmaps what start-up mapped of the executable's code and constants; pages still
/// in use come back on their next access.
pub fn release_startup_pages() {
    advise(rustix::mm::Advice::LinuxDontNeed);
}

/// Releases the start-up pages once node `name` reports Ready (the kubelet, proxy and
/// DNS have started and synced by then).
pub async fn release_when_ready(client: kelp_node_agent::kube::Client, name: String) {
    use kelp_node_agent::k8s_openapi::api::core::v1::Node;
    let nodes: kelp_node_agent::kube::Api<Node> = kelp_node_agent::kube::Api::all(client);
    let ready = |n: Option<&Node>| {
        n.and_then(|n| n.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    match kelp_node_agent::kube::runtime::wait::await_condition(nodes, &name, ready).await {
        Ok(_) => release_startup_pages(),
        Err(e) => tracing::debug!(error = %e, "start-up pages kept: the node's Ready was not seen"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// References need relocating in a position-independent executable: this table
    /// lives in `.data.rel.ro`, written by the loader, which must never be dropped.
    static TABLE: [&str; 2] = ["first", "second"];

    #[test]
    fn only_clean_read_only_mappings_of_the_executable_are_released() {
        let mappings = clean_exe_mappings();
        let holds = |addr: usize| mappings.iter().any(|(lo, hi)| (*lo..*hi).contains(&addr));
        let code = only_clean_read_only_mappings_of_the_executable_are_released as fn();
        assert!(
            holds(code as usize),
            "this test's code is in a released mapping"
        );
        let table = std::hint::black_box(&TABLE) as *const _ as usize;
        assert!(!holds(table), "the relocated table is never released");
        release_startup_pages();
        assert_eq!(std::hint::black_box(&TABLE)[1], "second");
        assert_eq!(format!("{}", 40 + 2), "42");
    }
}
