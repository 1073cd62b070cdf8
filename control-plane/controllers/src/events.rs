//! Core/v1 Events about the objects a controller manages (what `kubectl describe`
//! shows). Recording is fire-and-forget: a lost event never fails a reconcile.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::{Client, Resource};

/// Events written at once per recorder; more wait, and past [`MAX_PENDING`] waiting
/// ones are dropped (as client-go's broadcaster drops when its queue is full).
const MAX_IN_FLIGHT: usize = 4;
const MAX_PENDING: usize = 1000;

#[derive(Clone)]
pub struct Recorder {
    client: Client,
    component: &'static str,
    slots: Arc<tokio::sync::Semaphore>,
    pending: Arc<AtomicUsize>,
}

impl Recorder {
    pub fn new(client: Client, component: &'static str) -> Self {
        Recorder {
            client,
            component,
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
            pending: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Records a `Normal` (or `Warning`) event about `obj`.
    pub fn record<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: &str,
        message: String,
    ) {
        let m = obj.meta();
        let ns = m.namespace.clone().unwrap_or_else(|| "default".into());
        let involved = ObjectReference {
            api_version: Some(K::api_version(&()).into_owned()),
            kind: Some(K::kind(&()).into_owned()),
            name: m.name.clone(),
            namespace: m.namespace.clone(),
            uid: m.uid.clone(),
            resource_version: m.resource_version.clone(),
            ..Default::default()
        };
        let now = Time(Timestamp::now());
        let ev = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", m.name.as_deref().unwrap_or("object"))),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: involved,
            reason: Some(reason.to_string()),
            message: Some(message),
            type_: Some(if warning { "Warning" } else { "Normal" }.into()),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            source: Some(EventSource {
                component: Some(self.component.to_string()),
                host: None,
            }),
            reporting_component: Some(self.component.to_string()),
            ..Default::default()
        };
        if self.pending.fetch_add(1, Ordering::Relaxed) >= MAX_PENDING {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!(reason, "event queue full; dropping an event");
            return;
        }
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let (slots, pending) = (self.slots.clone(), self.pending.clone());
        tokio::spawn(async move {
            let _slot = slots.acquire().await;
            if let Err(e) = api.create(&PostParams::default(), &ev).await {
                tracing::debug!(error = %e, "recording an event failed");
            }
            pending.fetch_sub(1, Ordering::Relaxed);
        });
    }
}
