//! `/stats/summary`: upstream's Summary API (`stats/v1alpha1.Summary`), the shape
//! metrics-server reads: node CPU and memory from the host (`/proc/stat`,
//! `/proc/meminfo`), pods and containers from CRI `ListPodSandboxStats`.
//! `usageNanoCores` is the rate between this sample and the previous one of the same
//! object (as the kubelet's CRI stats provider computes it); the first sample has
//! none.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, SecondsFormat, Utc};
use kelp_cri_api::v1 as cri;
use serde_json::{json, Map, Value};

use super::ServerState;

/// Cumulative CPU samples by object, for rates.
#[derive(Default)]
pub struct CpuRates(Mutex<HashMap<String, (i64, u64)>>);

impl CpuRates {
    /// Nanocores used since the last sample of `key` (`None` on the first one).
    pub fn rate(&self, key: &str, at_nanos: i64, core_nanos: u64) -> Option<u64> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let prev = m.insert(key.to_string(), (at_nanos, core_nanos));
        let (t0, c0) = prev?;
        let dt = at_nanos.checked_sub(t0).filter(|d| *d > 0)? as u128;
        let dc = core_nanos.checked_sub(c0)? as u128;
        Some((dc * 1_000_000_000 / dt) as u64)
    }
}

fn rfc3339(nanos: i64) -> String {
    DateTime::<Utc>::from_timestamp_nanos(nanos).to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn now_nanos() -> i64 {
    Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

/// Host CPU time in use (all CPUs, nanoseconds) from a `/proc/stat` text: user,
/// nice, system, irq, softirq and steal, in USER_HZ (100/s) ticks.
pub fn host_cpu_nanos(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7).unwrap_or(&0);
    Some(busy * 10_000_000)
}

fn meminfo(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

fn cpu_json(rates: &CpuRates, key: &str, cpu: Option<&cri::CpuUsage>) -> Option<Value> {
    let cpu = cpu?;
    let total = cpu.usage_core_nano_seconds.as_ref()?.value;
    let mut v = json!({"time": rfc3339(cpu.timestamp), "usageCoreNanoSeconds": total});
    let rate = cpu
        .usage_nano_cores
        .as_ref()
        .map(|r| r.value)
        .or_else(|| rates.rate(key, cpu.timestamp, total));
    if let Some(r) = rate {
        v["usageNanoCores"] = json!(r);
    }
    Some(v)
}

fn memory_json(m: Option<&cri::MemoryUsage>) -> Option<Value> {
    let m = m?;
    let mut v = json!({"time": rfc3339(m.timestamp)});
    let set = |v: &mut Value, k: &str, x: &Option<cri::UInt64Value>| {
        if let Some(x) = x {
            v[k] = json!(x.value);
        }
    };
    set(&mut v, "workingSetBytes", &m.working_set_bytes);
    set(&mut v, "usageBytes", &m.usage_bytes);
    set(&mut v, "availableBytes", &m.available_bytes);
    set(&mut v, "rssBytes", &m.rss_bytes);
    set(&mut v, "pageFaults", &m.page_faults);
    set(&mut v, "majorPageFaults", &m.major_page_faults);
    Some(v)
}

/// The Summary of the node now.
pub async fn summary(state: &ServerState) -> Value {
    let now = now_nanos();
    let mut node = json!({"nodeName": state.node_name, "startTime": state.started});
    if let Some(c) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| host_cpu_nanos(&s))
    {
        let mut cpu = json!({"time": rfc3339(now), "usageCoreNanoSeconds": c});
        if let Some(r) = state.cpu_rates.rate("node", now, c) {
            cpu["usageNanoCores"] = json!(r);
        }
        node["cpu"] = cpu;
    }
    if let Ok(mi) = std::fs::read_to_string("/proc/meminfo") {
        if let (Some(total), Some(avail), Some(free)) = (
            meminfo(&mi, "MemTotal:"),
            meminfo(&mi, "MemAvailable:"),
            meminfo(&mi, "MemFree:"),
        ) {
            node["memory"] = json!({
                "time": rfc3339(now),
                "availableBytes": avail,
                "usageBytes": total - free,
                "workingSetBytes": total - avail,
            });
        }
    }

    let mut pods = Vec::new();
    for routed in state.router.runtimes() {
        let Ok(list) = routed
            .runtime
            .list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest { filter: None })
            .await
        else {
            continue;
        };
        for sb in list.stats {
            let Some(meta) = sb.attributes.as_ref().and_then(|a| a.metadata.as_ref()) else {
                continue;
            };
            let pod = state.pods.get(&meta.namespace, &meta.name);
            // Stats of a sandbox whose pod the node no longer runs are not reported.
            if pod.as_ref().and_then(|p| p.metadata.uid.as_deref()) != Some(meta.uid.as_str()) {
                continue;
            }
            let start = pod
                .as_ref()
                .and_then(|p| p.status.as_ref())
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0.to_string());
            let linux = sb.linux.unwrap_or_default();
            // The newest attempt of each container.
            let mut newest: HashMap<String, &cri::ContainerStats> = HashMap::new();
            for c in &linux.containers {
                let Some(m) = c.attributes.as_ref().and_then(|a| a.metadata.as_ref()) else {
                    continue;
                };
                let newer = newest
                    .get(&m.name)
                    .and_then(|o| o.attributes.as_ref()?.metadata.as_ref())
                    .is_none_or(|o| o.attempt <= m.attempt);
                if newer {
                    newest.insert(m.name.clone(), c);
                }
            }
            let mut names: Vec<&String> = newest.keys().collect();
            names.sort();
            let containers: Vec<Value> = names
                .into_iter()
                .map(|name| {
                    let c = newest[name];
                    let id = c
                        .attributes
                        .as_ref()
                        .map(|a| a.id.clone())
                        .unwrap_or_default();
                    let mut v = Map::new();
                    v.insert("name".into(), json!(name));
                    if let Some(s) = &start {
                        v.insert("startTime".into(), json!(s));
                    }
                    if let Some(cpu) = cpu_json(&state.cpu_rates, &id, c.cpu.as_ref()) {
                        v.insert("cpu".into(), cpu);
                    }
                    if let Some(m) = memory_json(c.memory.as_ref()) {
                        v.insert("memory".into(), m);
                    }
                    Value::Object(v)
                })
                .collect();
            let sandbox_id = sb
                .attributes
                .as_ref()
                .map(|a| a.id.clone())
                .unwrap_or_default();
            let mut p = json!({
                "podRef": {"name": meta.name, "namespace": meta.namespace, "uid": meta.uid},
                "containers": containers,
            });
            if let Some(s) = &start {
                p["startTime"] = json!(s);
            }
            if let Some(cpu) = cpu_json(&state.cpu_rates, &sandbox_id, linux.cpu.as_ref()) {
                p["cpu"] = cpu;
            }
            if let Some(m) = memory_json(linux.memory.as_ref()) {
                p["memory"] = m;
            }
            pods.push(p);
        }
    }
    json!({"node": node, "pods": pods})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_rates_and_host_figures() {
        let r = CpuRates::default();
        assert_eq!(r.rate("a", 1_000_000_000, 100), None);
        // 0.25 s of CPU over 1 s: 250 millicores.
        assert_eq!(r.rate("a", 2_000_000_000, 250_000_100), Some(250_000_000));
        assert_eq!(
            host_cpu_nanos("cpu  10 1 5 100 3 2 1 4 0 0\ncpu0 1 2 3\n"),
            Some((10 + 1 + 5 + 2 + 1 + 4) * 10_000_000)
        );
        assert_eq!(
            meminfo("MemTotal:  2048 kB\n", "MemTotal:"),
            Some(2048 * 1024)
        );
    }
}
