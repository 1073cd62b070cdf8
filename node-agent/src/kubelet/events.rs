//! core/v1 Events about pods (Pulling, Pulled, Created, Started, Killing, BackOff,
//! Failed), sent from a background task so a pod worker never waits on them. A repeat
//! of the same event (object, field path, reason, message) bumps `count` and
//! `lastTimestamp` on the existing Event, as upstream's correlator does.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tracing::debug;

/// `Normal` or `Warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

struct Record {
    object: ObjectReference,
    kind: EventType,
    reason: String,
    message: String,
    /// When it happened (the event's timestamps, and when it may be written).
    at: tokio::time::Instant,
    time: Timestamp,
}

/// Records events; cheap to clone. Sending never blocks: when the queue is full the
/// event is dropped (events are best effort, as upstream's).
#[derive(Clone)]
pub struct EventRecorder {
    tx: mpsc::Sender<Record>,
}

/// How many events may wait to be written.
const QUEUE: usize = 1024;
/// How long an event waits before it is written. A pod's start produces its events
/// (Pulled, Created, Started) just before its Running status; written at once, their
/// commits queue in the store ahead of the status's and delay what users wait for by
/// one or two durable writes. Events are informational; the status is not.
const WRITE_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

impl EventRecorder {
    /// Starts the writer task; `host` is the node name put in `source.host`.
    pub fn start(client: Client, host: String) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(writer(client, host, rx));
        EventRecorder { tx }
    }

    /// An event about `pod` (or, with `container`, about `spec.containers{NAME}`).
    pub fn pod(
        &self,
        pod: &Pod,
        container: Option<&str>,
        kind: EventType,
        reason: &str,
        message: impl Into<String>,
    ) {
        let object = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            field_path: container.map(|c| format!("spec.containers{{{c}}}")),
        };
        let _ = self.tx.try_send(Record {
            object,
            kind,
            reason: reason.to_string(),
            message: message.into(),
            at: tokio::time::Instant::now(),
            time: Timestamp::now(),
        });
    }
}

type Key = (String, String, String, String);

async fn writer(client: Client, host: String, mut rx: mpsc::Receiver<Record>) {
    // Key → (event name, count). Bounded: cleared when it grows past a limit.
    let mut seen: HashMap<Key, (String, i32)> = HashMap::new();
    let mut serial: u64 = 0;
    while let Some(r) = rx.recv().await {
        tokio::time::sleep_until(r.at + WRITE_DELAY).await;
        let ns = r
            .object
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(client.clone(), &ns);
        let key: Key = (
            r.object.uid.clone().unwrap_or_default(),
            r.object.field_path.clone().unwrap_or_default(),
            r.reason.clone(),
            r.message.clone(),
        );
        let now = Time(r.time);
        if let Some((name, count)) = seen.get_mut(&key) {
            *count += 1;
            let patch = serde_json::json!({"count": *count, "lastTimestamp": now});
            match api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => continue,
                Err(e) => {
                    debug!(error = %e, event = %name, "event count update failed; recreating")
                }
            }
        }
        serial += 1;
        let name = format!(
            "{}.{:x}{:04x}",
            r.object.name.clone().unwrap_or_default(),
            Timestamp::now().as_nanosecond(),
            serial & 0xffff
        );
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: r.object,
            reason: Some(r.reason),
            message: Some(r.message),
            type_: Some(r.kind.as_str().into()),
            source: Some(EventSource {
                component: Some("kubelet".into()),
                host: Some(host.clone()),
            }),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(host.clone()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &ev).await {
            Ok(_) => {
                if seen.len() > 4096 {
                    seen.clear();
                }
                seen.insert(key, (name, 1));
            }
            Err(e) => debug!(error = %e, "event not recorded"),
        }
    }
}
