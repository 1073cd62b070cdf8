//! What the scheduler writes besides bindings: core/v1 Events (`Scheduled`,
//! `FailedScheduling`, which `kubectl describe pod` lists) and the pod's
//! `PodScheduled=False` condition. Writes go through a bounded queue and run in the
//! background, so the scheduling loop never waits on them; when the queue is full
//! events are dropped, as client-go's broadcaster does. A repeated FailedScheduling
//! with the same message bumps `count` on the existing Event (the correlator's job).

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use tokio::sync::{mpsc, Semaphore};

/// Upstream's `maxQueuedEvents`.
const QUEUE: usize = 1000;
const PARALLEL_WRITES: usize = 8;

enum Work {
    Event {
        pod: Arc<Pod>,
        type_: &'static str,
        reason: &'static str,
        action: &'static str,
        message: String,
    },
    Unschedulable {
        pod: Arc<Pod>,
        message: String,
    },
}

/// A cheap handle; clones share the queue.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Work>,
}

impl Recorder {
    /// Starts the writer on the current runtime; it ends when every handle is dropped.
    pub fn start(client: Client, component: String, instance: String) -> Recorder {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(writer(client, component, instance, rx));
        Recorder { tx }
    }

    fn send(&self, w: Work) {
        if self.tx.try_send(w).is_err() {
            tracing::debug!("event queue full; dropping an event");
        }
    }

    pub fn scheduled(&self, pod: Arc<Pod>, node: &str) {
        let message = format!(
            "Successfully assigned {}/{} to {node}",
            pod.metadata.namespace.as_deref().unwrap_or(""),
            pod.metadata.name.as_deref().unwrap_or("")
        );
        self.send(Work::Event {
            pod,
            type_: "Normal",
            reason: "Scheduled",
            action: "Binding",
            message,
        });
    }

    /// A `FailedScheduling` event and, unless the pod already says so, the
    /// `PodScheduled=False` / `Unschedulable` condition.
    pub fn failed(&self, pod: Arc<Pod>, message: String, unschedulable: bool) {
        if unschedulable && !has_condition(&pod, &message) {
            self.send(Work::Unschedulable {
                pod: pod.clone(),
                message: message.clone(),
            });
        }
        self.send(Work::Event {
            pod,
            type_: "Warning",
            reason: "FailedScheduling",
            action: "Scheduling",
            message,
        });
    }
}

fn has_condition(pod: &Pod, message: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| {
            c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
                && c.message.as_deref() == Some(message)
        })
}

/// (pod uid, reason, message) → (event name, count), to aggregate repeats.
type Seen = tokio::sync::Mutex<HashMap<(String, String, String), (String, i32)>>;

async fn writer(client: Client, component: String, instance: String, mut rx: mpsc::Receiver<Work>) {
    let limit = Arc::new(Semaphore::new(PARALLEL_WRITES));
    // (pod uid, reason, message) → (event name, count) for aggregation.
    let seen: Arc<Seen> = Default::default();
    while let Some(w) = rx.recv().await {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let client = client.clone();
        let component = component.clone();
        let instance = instance.clone();
        let seen = seen.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let r = match w {
                Work::Event {
                    pod,
                    type_,
                    reason,
                    action,
                    message,
                } => {
                    post_event(
                        &client, &component, &instance, &seen, &pod, type_, reason, action, message,
                    )
                    .await
                }
                Work::Unschedulable { pod, message } => {
                    set_unschedulable(&client, &pod, &message).await
                }
            };
            if let Err(e) = r {
                tracing::debug!(error = %e, "scheduler write failed");
            }
        });
    }
}

#[allow(clippy::too_many_arguments)]
async fn post_event(
    client: &Client,
    component: &str,
    instance: &str,
    seen: &Seen,
    pod: &Pod,
    type_: &str,
    reason: &str,
    action: &str,
    message: String,
) -> Result<(), kube::Error> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    let now = Timestamp::now();
    let key = (uid.clone(), reason.to_string(), message.clone());
    let previous = seen.lock().await.get(&key).cloned();
    if let Some((event_name, count)) = previous {
        let patch = json!({
            "count": count + 1,
            "lastTimestamp": Time(now),
        });
        if api
            .patch(&event_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .is_ok()
        {
            seen.lock().await.insert(key, (event_name, count + 1));
            return Ok(());
        }
    }
    let event_name = format!("{name}.{:x}", now.as_nanosecond());
    let ev = Event {
        metadata: ObjectMeta {
            name: Some(event_name.clone()),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name),
            namespace: Some(ns),
            uid: Some(uid),
            resource_version: pod.metadata.resource_version.clone(),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(message),
        type_: Some(type_.into()),
        action: Some(action.into()),
        source: Some(EventSource {
            component: Some(component.into()),
            host: None,
        }),
        reporting_component: Some(component.into()),
        reporting_instance: Some(instance.into()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        count: Some(1),
        ..Default::default()
    };
    api.create(&PostParams::default(), &ev).await?;
    if type_ == "Warning" {
        seen.lock().await.insert(key, (event_name, 1));
    }
    Ok(())
}

/// Strategic merge on `pods/status`: conditions merge by type, so only PodScheduled
/// changes (upstream's `updatePod` after a failed attempt).
async fn set_unschedulable(client: &Client, pod: &Pod, message: &str) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(
        client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or_default(),
    );
    let previous = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled");
    let transition = match previous {
        Some(c) if c.status == "False" => c.last_transition_time.clone(),
        _ => None,
    }
    .unwrap_or(Time(Timestamp::now()));
    let patch = json!({"status": {"conditions": [{
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": message,
        "lastProbeTime": null,
        "lastTransitionTime": transition,
    }]}});
    api.patch_status(
        pod.metadata.name.as_deref().unwrap_or_default(),
        &PatchParams::default(),
        &Patch::Strategic(&patch),
    )
    .await?;
    Ok(())
}
