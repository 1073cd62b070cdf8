//! The `default/kubernetes` Service and its Endpoints/EndpointSlice, which the API
//! server keeps itself (upstream's endpoint reconciler): in-cluster clients reach the
//! API at the first address of the service range, port 443.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tracing::warn;

use crate::app::App;
use crate::error::{ApiError, ApiResult};
use crate::request::Query;
use crate::rest;

/// Creates what is missing and corrects what drifted (the API server's address).
pub async fn reconcile(app: &Arc<App>) -> ApiResult<()> {
    let Some((host, port)) = app.server_address.rsplit_once(':') else {
        return Ok(());
    };
    let port: i64 = port.parse().unwrap_or(443);
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": app.services.ranges.first_ip().to_string(),
                 "sessionAffinity": "None",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]},
    });
    ensure(app, "", "v1", "services", service, |_| None).await?;

    // Endpoints only name addresses, so a server bound to a hostname has none.
    let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() else {
        return Ok(());
    };
    let ip = ip.to_string();
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": ip}],
                     "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
    });
    ensure(app, "", "v1", "endpoints", endpoints.clone(), |cur| {
        (cur.get("subsets") != endpoints.get("subsets")).then(|| {
            let mut next = cur.clone();
            next["subsets"] = endpoints["subsets"].clone();
            next
        })
    })
    .await?;
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "kubernetes",
                                "endpointslice.kubernetes.io/managed-by": "kube-apiserver"}},
        "addressType": if ip.contains(':') { "IPv6" } else { "IPv4" },
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    });
    ensure(
        app,
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        slice.clone(),
        |cur| {
            (cur.get("endpoints") != slice.get("endpoints")
                || cur.get("ports") != slice.get("ports"))
            .then(|| {
                let mut next = cur.clone();
                next["endpoints"] = slice["endpoints"].clone();
                next["ports"] = slice["ports"].clone();
                next
            })
        },
    )
    .await
}

/// Creates `obj`, or when it exists applies `fix` (None: leave it as it is).
async fn ensure(
    app: &Arc<App>,
    group: &str,
    version: &str,
    plural: &str,
    obj: Value,
    fix: impl Fn(&Value) -> Option<Value> + Send + Sync,
) -> ApiResult<()> {
    let info = app
        .registry
        .get(group, version, plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} not served")))?;
    let q = Query::default();
    // Read first: creating an existing Service would fail on its address, not with 409.
    if rest::read(app, &info, Some("default"), "kubernetes")
        .await
        .is_err()
    {
        match rest::create_object(
            app,
            &info,
            Some("default"),
            obj,
            &q,
            "kube-apiserver",
            "Update",
        )
        .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    let mut mutate = |cur: &Value| Ok(fix(cur).unwrap_or_else(|| cur.clone()));
    rest::guaranteed_update(
        app,
        &info,
        Some("default"),
        "kubernetes",
        None,
        &q,
        Some("kube-apiserver"),
        &mut mutate,
    )
    .await
    .map(|_| ())
}

/// Re-checks the `kubernetes` Service and endpoints, and repairs the Service
/// allocation bitmaps, every `every` (upstream: 10 s and 3 min).
pub fn spawn_maintenance(app: &Arc<App>, every: Duration) {
    let app = app.clone();
    tokio::spawn(async move {
        loop {
            if let Err(e) = reconcile(&app).await {
                warn!(error = %e.message, "reconciling the kubernetes service");
            }
            let services: Vec<Value> = app
                .cache
                .list(crate::service_alloc::SERVICES_PREFIX)
                .await
                .0
                .into_iter()
                .map(|o| o.value.clone())
                .collect();
            if let Err(e) = app.services.repair(&services).await {
                warn!(error = %e.message, "repairing service allocations");
            }
            tokio::time::sleep(every).await;
        }
    });
}
