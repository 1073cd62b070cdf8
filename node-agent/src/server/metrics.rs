//! `/metrics`: the kubelet's Prometheus text — pods and containers the runtimes run
//! now (CRI `ListPodSandbox`/`ListContainers`), the server's requests by endpoint,
//! and the start time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use kelp_cri_api::v1 as cri;

use super::ServerState;

/// Requests served, by (method, endpoint).
#[derive(Default)]
pub struct RequestCounts(Mutex<BTreeMap<(String, String), u64>>);

impl RequestCounts {
    /// Counts a request to `path` (by its first segment, as upstream labels them).
    pub fn count(&self, method: &str, path: &str) {
        let endpoint = path.trim_start_matches('/').split('/').next().unwrap_or("");
        let endpoint = match endpoint {
            "containerLogs" | "exec" | "attach" | "portForward" | "stats" | "metrics"
            | "healthz" => endpoint,
            _ => "other",
        };
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((method.to_string(), endpoint.to_string()))
            .or_default() += 1;
    }
}

fn state_name(s: i32) -> &'static str {
    match cri::ContainerState::try_from(s) {
        Ok(cri::ContainerState::ContainerCreated) => "created",
        Ok(cri::ContainerState::ContainerRunning) => "running",
        Ok(cri::ContainerState::ContainerExited) => "exited",
        _ => "unknown",
    }
}

/// The metrics text now.
pub async fn render(state: &ServerState) -> String {
    let mut running_pods = 0u64;
    let mut containers: BTreeMap<&'static str, u64> = BTreeMap::new();
    for routed in state.router.runtimes() {
        if let Ok(l) = routed
            .runtime
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
        {
            running_pods += l
                .items
                .iter()
                .filter(|s| s.state == cri::PodSandboxState::SandboxReady as i32)
                .count() as u64;
        }
        if let Ok(l) = routed
            .runtime
            .list_containers(cri::ListContainersRequest { filter: None })
            .await
        {
            for c in l.containers {
                *containers.entry(state_name(c.state)).or_default() += 1;
            }
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP kubelet_running_pods Number of pods that have a running pod sandbox"
    );
    let _ = writeln!(out, "# TYPE kubelet_running_pods gauge");
    let _ = writeln!(out, "kubelet_running_pods {running_pods}");
    let _ = writeln!(
        out,
        "# HELP kubelet_running_containers Number of containers currently running"
    );
    let _ = writeln!(out, "# TYPE kubelet_running_containers gauge");
    for (s, n) in &containers {
        let _ = writeln!(
            out,
            "kubelet_running_containers{{container_state=\"{s}\"}} {n}"
        );
    }
    let _ = writeln!(out, "# HELP kubelet_http_requests_total Number of the http requests received since the server started");
    let _ = writeln!(out, "# TYPE kubelet_http_requests_total counter");
    for ((m, p), n) in state
        .requests
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        let _ = writeln!(
            out,
            "kubelet_http_requests_total{{method=\"{m}\",path=\"{p}\",server_type=\"https\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP kubelet_node_name The node's name. The count is always 1."
    );
    let _ = writeln!(out, "# TYPE kubelet_node_name gauge");
    let _ = writeln!(out, "kubelet_node_name{{node=\"{}\"}} 1", state.node_name);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_endpoint() {
        let c = RequestCounts::default();
        c.count("GET", "/containerLogs/ns/p/c");
        c.count("GET", "/containerLogs/ns/q/c");
        c.count("POST", "/whatever");
        let m = c.0.lock().unwrap();
        assert_eq!(m[&("GET".to_string(), "containerLogs".to_string())], 2);
        assert_eq!(m[&("POST".to_string(), "other".to_string())], 1);
    }
}
