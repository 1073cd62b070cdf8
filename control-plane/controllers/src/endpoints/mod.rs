//! The EndpointSlice and Endpoints controllers: a Service with a selector gets
//! EndpointSlices (managed-by `endpointslice-controller.k8s.io`, at most 100
//! endpoints each, owned by the Service) and an Endpoints object of the same name,
//! both following the selected pods' addresses and readiness.

pub mod decide;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::ResourceExt;

use crate::informer::reflect;
use crate::ops::{error_policy, is_status};
use crate::util::{controller_ref, is_controlled_by};
use crate::{Context, ControllerError, ControllerFuture};

use decide::{desired, slices, subsets, MANAGED_BY, SERVICE_NAME, SLICE_CONTROLLER};

struct SliceController {
    client: kube::Client,
    pods: Store<Pod>,
    slices: Store<EndpointSlice>,
}

struct EndpointsController {
    client: kube::Client,
    pods: Store<Pod>,
    endpoints: Store<Endpoints>,
}

/// Pod events wake every service of the pod's namespace: a label change may have
/// taken the pod out of a selector the new labels no longer show.
fn services_of_namespace(services: &Store<Service>, pod: &Pod) -> Vec<ObjectRef<Service>> {
    let ns = pod.metadata.namespace.clone();
    services
        .state()
        .iter()
        .filter(|s| s.metadata.namespace == ns)
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

pub fn run_slices(ctx: Context) -> ControllerFuture {
    Box::pin(async move {
        let client = ctx.client.clone();
        let (services, svc_events) = reflect(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        );
        let (pods, pod_events) = ctx.pods.reflect();
        let (slice_store, slice_events) = reflect(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default().labels(&format!("{MANAGED_BY}={SLICE_CONTROLLER}")),
        );
        let state = Arc::new(SliceController {
            client,
            pods,
            slices: slice_store,
        });
        let svcs = services.clone();
        Controller::for_stream(svc_events, services)
            .owns_stream(slice_events)
            .watches_stream(pod_events, move |p: Pod| services_of_namespace(&svcs, &p))
            .run(reconcile_slices, error_policy, state)
            .for_each(|_| async {})
            .await;
        Ok(())
    })
}

pub fn run_endpoints(ctx: Context) -> ControllerFuture {
    Box::pin(async move {
        let client = ctx.client.clone();
        let (services, svc_events) = reflect(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        );
        let (pods, pod_events) = ctx.pods.reflect();
        let (endpoints, ep_events) = reflect(
            Api::<Endpoints>::all(client.clone()),
            watcher::Config::default(),
        );
        let state = Arc::new(EndpointsController {
            client: client.clone(),
            pods,
            endpoints,
        });
        // A deleted Service takes its Endpoints with it (they carry no owner).
        let svcs = services.clone();
        let del_client = client.clone();
        let svc_events = svc_events.then(move |ev| {
            let (svcs, client) = (svcs.clone(), del_client.clone());
            async move {
                if let Ok(svc) = &ev {
                    // The store lags the initial list (and relists), so "not in the
                    // store" is only a hint: the Service must really be gone.
                    let ns = svc.namespace().unwrap_or_default();
                    let gone = svcs.get(&ObjectRef::from_obj(svc)).is_none()
                        && matches!(
                            Api::<Service>::namespaced(client.clone(), &ns)
                                .get_opt(&svc.name_any())
                                .await,
                            Ok(None)
                        );
                    if gone {
                        let api: Api<Endpoints> = Api::namespaced(client, &ns);
                        match api.delete(&svc.name_any(), &DeleteParams::default()).await {
                            Ok(_) => {}
                            Err(e) if is_status(&e, 404) => {}
                            Err(e) => tracing::debug!(error = %e, "deleting endpoints of a deleted service"),
                        }
                    }
                }
                ev
            }
        });
        let svcs = services.clone();
        Controller::for_stream(svc_events, services)
            .watches_stream(pod_events, move |p: Pod| services_of_namespace(&svcs, &p))
            .watches_stream(ep_events, |e: Endpoints| {
                Some(
                    ObjectRef::<Service>::new(&e.name_any())
                        .within(&e.namespace().unwrap_or_default()),
                )
            })
            .run(reconcile_endpoints, error_policy, state)
            .for_each(|_| async {})
            .await;
        Ok(())
    })
}

fn namespace_pods(pods: &Store<Pod>, ns: &str) -> Vec<Arc<Pod>> {
    pods.state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
        .collect()
}

async fn reconcile_slices(
    svc: Arc<Service>,
    st: Arc<SliceController>,
) -> Result<Action, ControllerError> {
    for ready in [
        st.pods.wait_until_ready().await,
        st.slices.wait_until_ready().await,
    ] {
        ready.map_err(|e| ControllerError::Other(e.to_string()))?;
    }
    if svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let uid = svc.uid().unwrap_or_default();
    let pods = namespace_pods(&st.pods, &ns);
    let refs: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
    let want = desired(&svc, &refs).map(|g| slices(&g)).unwrap_or_default();
    let mut have: Vec<Arc<EndpointSlice>> = st
        .slices
        .state()
        .into_iter()
        .filter(|s| {
            s.metadata.namespace.as_deref() == Some(ns.as_str())
                && s.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME)) == Some(&name)
                && is_controlled_by(&s.metadata, &uid)
        })
        .collect();
    have.sort_by_key(|s| s.name_any());
    let api: Api<EndpointSlice> = Api::namespaced(st.client.clone(), &ns);
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    labels.insert(SERVICE_NAME.into(), name.clone());
    labels.insert(MANAGED_BY.into(), SLICE_CONTROLLER.into());
    for (i, (ports, endpoints)) in want.iter().enumerate() {
        let ports = (!ports.is_empty()).then(|| ports.clone());
        match have.get(i) {
            Some(existing) => {
                if existing.endpoints != *endpoints
                    || existing.ports != ports
                    || existing.metadata.labels.as_ref() != Some(&labels)
                {
                    let mut next = (**existing).clone();
                    next.endpoints = endpoints.clone();
                    next.ports = ports;
                    next.metadata.labels = Some(labels.clone());
                    api.replace(&existing.name_any(), &PostParams::default(), &next)
                        .await?;
                }
            }
            None => {
                let slice = EndpointSlice {
                    metadata: ObjectMeta {
                        generate_name: Some(format!("{name}-")),
                        namespace: Some(ns.clone()),
                        labels: Some(labels.clone()),
                        owner_references: Some(vec![controller_ref(svc.as_ref())]),
                        ..Default::default()
                    },
                    address_type: "IPv4".into(),
                    endpoints: endpoints.clone(),
                    ports,
                };
                api.create(&PostParams::default(), &slice).await?;
            }
        }
    }
    for extra in have.iter().skip(want.len()) {
        match api
            .delete(&extra.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // A created slice shows up through the owned watch; nothing else to wait for.
    Ok(Action::requeue(Duration::from_secs(300)))
}

async fn reconcile_endpoints(
    svc: Arc<Service>,
    st: Arc<EndpointsController>,
) -> Result<Action, ControllerError> {
    for ready in [
        st.pods.wait_until_ready().await,
        st.endpoints.wait_until_ready().await,
    ] {
        ready.map_err(|e| ControllerError::Other(e.to_string()))?;
    }
    if svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let pods = namespace_pods(&st.pods, &ns);
    let refs: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
    let Some(groups) = desired(&svc, &refs) else {
        // Selector-less services' Endpoints belong to whoever writes them.
        return Ok(Action::await_change());
    };
    let subs = subsets(&svc, &groups);
    let subs = (!subs.is_empty()).then_some(subs);
    let labels = svc.metadata.labels.clone().filter(|l| !l.is_empty());
    let api: Api<Endpoints> = Api::namespaced(st.client.clone(), &ns);
    match st.endpoints.get(&ObjectRef::new(&name).within(&ns)) {
        Some(existing) => {
            if existing.subsets != subs || existing.metadata.labels != labels {
                let mut next = (*existing).clone();
                next.subsets = subs;
                next.metadata.labels = labels;
                api.replace(&name, &PostParams::default(), &next).await?;
            }
        }
        None => {
            let ep = Endpoints {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    labels,
                    ..Default::default()
                },
                subsets: subs,
            };
            match api.create(&PostParams::default(), &ep).await {
                Ok(_) => {}
                // Created meanwhile: the watch brings it and we come back.
                Err(e) if is_status(&e, 409) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}
