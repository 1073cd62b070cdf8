//! The API server application: shared state, the router, and request dispatch.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tracing::info;

use kelp_api::builtin;
use kelp_api::openapi::OpenApiDocs;
use kelp_api::registry::ResourceInfo;
use kelp_storage::{Store, StoreError};

use crate::authn::UserInfo;
use crate::authz::{Authorizer, Decision, RequestAttributes};
use crate::discovery;
use crate::error::{ApiError, ApiResult};
use crate::objects::Registry;
use crate::request::{parse_path, PathKind, Query, Target, MAX_BODY};
use crate::rest::{self, json_response};
use crate::service_alloc::{ServiceAllocator, ServiceRanges};
use crate::subresources;
use crate::watch;
use crate::watch_cache::WatchCache;

/// Everything a request handler needs.
pub struct App {
    pub store: Arc<dyn Store>,
    pub cache: Arc<WatchCache>,
    pub registry: Arc<Registry>,
    pub authz: Arc<dyn Authorizer>,
    pub openapi: std::sync::RwLock<Arc<OpenApiDocs>>,
    /// `host:port` clients use to reach this server (for `/api`).
    pub server_address: String,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// ClusterIP and NodePort allocation for Services.
    pub services: ServiceAllocator,
    /// How pod logs, exec, attach and port-forward reach kubelets (set once at
    /// start-up; unset, those subresources answer 500).
    pub kubelet: std::sync::OnceLock<crate::node_proxy::KubeletDialer>,
    /// Kubelet summaries scraped for `metrics.k8s.io`.
    pub summaries: crate::metrics_api::SummaryCache,
}

impl App {
    /// Loads the watch cache from `store` and prepares the served API.
    pub async fn new(
        store: Arc<dyn Store>,
        authz: Arc<dyn Authorizer>,
        server_address: String,
    ) -> Result<Arc<Self>, StoreError> {
        Self::with_service_ranges(store, authz, server_address, ServiceRanges::default()).await
    }

    /// [`App::new`] with the Service ClusterIP and NodePort ranges to allocate from.
    pub async fn with_service_ranges(
        store: Arc<dyn Store>,
        authz: Arc<dyn Authorizer>,
        server_address: String,
        service_ranges: ServiceRanges,
    ) -> Result<Arc<Self>, StoreError> {
        let cache = WatchCache::start(store.clone()).await?;
        let registry = Arc::new(Registry::with_builtins());
        let infos: Vec<ResourceInfo> = registry.all().iter().map(|i| (**i).clone()).collect();
        let openapi = OpenApiDocs::build(&infos);
        Ok(Arc::new(App {
            store: store.clone(),
            cache,
            registry,
            authz,
            openapi: std::sync::RwLock::new(Arc::new(openapi)),
            server_address,
            metrics: Arc::new(crate::metrics::Metrics::default()),
            services: ServiceAllocator::new(store, service_ranges),
            kubelet: std::sync::OnceLock::new(),
            summaries: Default::default(),
        }))
    }

    /// The HTTP routes; authentication happens before (in [`crate::serve`]).
    pub fn router(self: &Arc<Self>) -> Router {
        let app = self.clone();
        Router::new()
            .route(
                "/version",
                get(|| async { json_response(StatusCode::OK, &discovery::version()) }),
            )
            .route(
                "/version/",
                get(|| async { json_response(StatusCode::OK, &discovery::version()) }),
            )
            .route("/api", get(api_root))
            .route("/api/", get(api_root))
            .route("/apis", get(apis_root))
            .route("/apis/", get(apis_root))
            .route("/api/{*rest}", axum::routing::any(dispatch))
            .route("/apis/{*rest}", axum::routing::any(dispatch))
            .route("/openapi/v3", get(openapi_root))
            .route("/openapi/v3/{*rest}", get(openapi_gv))
            .route("/livez", get(health))
            .route("/readyz", get(health))
            .route("/healthz", get(health))
            .route("/metrics", get(metrics))
            .fallback(|| async { ApiError::not_found_path().into_response() })
            .layer(axum::middleware::from_fn_with_state(
                self.metrics.clone(),
                crate::metrics::metrics_layer,
            ))
            .layer(DefaultBodyLimit::disable())
            .with_state(app)
    }

    /// Creates what every cluster has: the system namespaces, the `kubernetes`
    /// Service and the `wasm` and `runc` RuntimeClasses.
    pub async fn bootstrap(self: &Arc<Self>) -> ApiResult<()> {
        let ns = self
            .registry
            .get("", "v1", "namespaces")
            .ok_or_else(|| ApiError::internal("namespaces not served"))?;
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            match rest::create_object(self, &ns, None, obj, &Query::default(), "kelp", "Update")
                .await
            {
                Ok(_) => info!(namespace = name, "created system namespace"),
                Err(e) if e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        // The two runtimes a Kelp node can serve: Wasm in-process, Linux containers
        // through containerd's default runc runtime. Created once; users may edit or
        // delete them.
        if let Some(rc) = self.registry.get("node.k8s.io", "v1", "runtimeclasses") {
            for handler in ["wasm", "runc"] {
                let obj = json!({"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
                    "metadata": {"name": handler}, "handler": handler});
                match rest::create_object(self, &rc, None, obj, &Query::default(), "kelp", "Update")
                    .await
                {
                    Ok(_) => info!(runtime_class = handler, "created RuntimeClass"),
                    Err(e) if e.code == 409 => {}
                    Err(e) => return Err(e),
                }
            }
        }
        crate::kubernetes_service::reconcile(self).await?;
        crate::kubernetes_service::spawn_maintenance(self, std::time::Duration::from_secs(180));
        Ok(())
    }

    /// Is any object owned by `obj` (by uid)?
    pub async fn has_dependents(&self, _info: &ResourceInfo, obj: &Value) -> bool {
        let Some(uid) = obj.pointer("/metadata/uid").and_then(Value::as_str) else {
            return false;
        };
        let (all, _) = self.cache.list(crate::watch_cache::ROOT).await;
        all.iter().any(|o| {
            o.value
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|refs| {
                    refs.iter()
                        .any(|r| r.get("uid").and_then(Value::as_str) == Some(uid))
                })
        })
    }
}

async fn health() -> &'static str {
    "ok"
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let text = app.metrics.render();
    (
        StatusCode::OK,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
        .into_response()
}

async fn api_root(State(app): State<Arc<App>>) -> Response {
    json_response(
        StatusCode::OK,
        &discovery::api_versions(&app.server_address),
    )
}

async fn apis_root(State(app): State<Arc<App>>) -> Response {
    json_response(StatusCode::OK, &discovery::api_group_list(&app.registry))
}

async fn openapi_root(State(app): State<Arc<App>>) -> Response {
    let docs = app
        .openapi
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        docs.root(),
    )
        .into_response()
}

async fn openapi_gv(State(app): State<Arc<App>>, req: Request) -> Response {
    let docs = app
        .openapi
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let path = req
        .uri()
        .path()
        .trim_start_matches("/openapi/v3/")
        .to_string();
    match docs.group_version(&path) {
        Some(body) => (
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        None => ApiError::not_found_path().into_response(),
    }
}

async fn read_body(body: Body) -> ApiResult<Bytes> {
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::too_large())
        }
        Err(e) => Err(ApiError::bad_request(format!(
            "reading the request body: {e}"
        ))),
    }
}

async fn dispatch(State(app): State<Arc<App>>, req: Request) -> Response {
    match handle(app, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn handle(app: Arc<App>, req: Request) -> ApiResult<Response> {
    let (parts, body) = req.into_parts();
    let user = parts
        .extensions
        .get::<UserInfo>()
        .cloned()
        .unwrap_or_else(|| UserInfo {
            username: "system:anonymous".into(),
            uid: String::new(),
            groups: vec!["system:unauthenticated".into()],
        });
    let path = parts.uri.path().to_string();
    let q = Query::parse(parts.uri.query());
    let headers = parts.headers.clone();
    let method = parts.method.clone();

    let mut attrs = RequestAttributes::from_request(&method, &path, &q.0, user.clone());
    // Streams that can run commands or reach ports need `create` whatever the HTTP
    // method (upstream's AuthorizePodWebsocketUpgradeCreatePermission, on by default).
    if attrs.resource == "pods"
        && matches!(
            attrs.subresource.as_str(),
            "exec" | "attach" | "portforward"
        )
    {
        attrs.verb = "create".into();
    }
    let denied = match app.authz.authorize(&attrs) {
        Decision::Allow => None,
        Decision::Deny(reason) => Some(reason),
        Decision::NoOpinion => Some("no authorizer allowed the request".to_string()),
    };
    if let Some(reason) = denied {
        return Err(ApiError::forbidden(format!(
            "{} \"{}\" is forbidden: User \"{}\" cannot {} resource \"{}\": {reason}",
            attrs.resource, attrs.name, user.username, attrs.verb, attrs.resource
        )));
    }

    let kind = parse_path(&app.registry, &path)?;
    let t: Target = match kind {
        PathKind::GroupVersion { group, version } => {
            return if method == Method::GET {
                Ok(json_response(
                    StatusCode::OK,
                    &discovery::resource_list(&app.registry, &group, &version),
                ))
            } else {
                Err(ApiError::method_not_allowed(
                    "only GET is allowed on discovery",
                ))
            };
        }
        PathKind::Group(g) => {
            return discovery::api_group(&app.registry, &g)
                .map(|v| json_response(StatusCode::OK, &v))
                .ok_or_else(ApiError::not_found_path);
        }
        PathKind::Resource(t) => t,
    };
    if crate::node_proxy::is_node_subresource(&t) {
        drop(body);
        return crate::node_proxy::serve(app, &t, parts, &q).await;
    }
    if crate::metrics_api::is_metrics(&t) {
        return crate::metrics_api::serve(&app, &t, &method, &q).await;
    }
    let body = read_body(body).await?;
    route(app, &t, &method, &q, &headers, &body, &user).await
}

async fn route(
    app: Arc<App>,
    t: &Target,
    method: &Method,
    q: &Query,
    headers: &HeaderMap,
    body: &Bytes,
    user: &UserInfo,
) -> ApiResult<Response> {
    let is_watch = q.flag("watch");
    let virt = builtin::is_virtual(&t.info);
    if virt && !(*method == Method::POST && t.name.is_none()) {
        return Err(ApiError::method_not_allowed(format!(
            "{} only supports create",
            t.info.plural
        )));
    }
    match (method.clone(), t.name.is_some(), t.subresource.as_deref()) {
        (Method::GET, false, None) if is_watch => watch::watch(app.clone(), t, q, headers).await,
        (Method::GET, false, None) => rest::list(&app, t, q, headers).await,
        (Method::POST, false, None) => rest::create(&app, t, q, headers, body, user).await,
        (Method::DELETE, false, None) => rest::delete_collection(&app, t, q, headers, body).await,
        (Method::GET, true, None) if is_watch => watch::watch(app.clone(), t, q, headers).await,
        (Method::GET, true, None | Some("status")) => rest::get(&app, t, q, headers).await,
        (Method::PUT, true, None | Some("status")) => rest::update(&app, t, q, headers, body).await,
        (Method::PATCH, true, None | Some("status")) => {
            rest::patch(&app, t, q, headers, body).await
        }
        (Method::DELETE, true, None) => rest::delete(&app, t, q, headers, body).await,
        (Method::GET, true, Some("scale")) => subresources::get_scale(&app, t).await,
        (Method::PUT, true, Some("scale")) => {
            subresources::write_scale(&app, t, q, headers, body, false).await
        }
        (Method::PATCH, true, Some("scale")) => {
            subresources::write_scale(&app, t, q, headers, body, true).await
        }
        (Method::POST, true, Some("binding")) => {
            subresources::bind(&app, t, q, headers, body).await
        }
        (Method::POST, true, Some("eviction")) if t.info.gvk.kind == "Pod" => {
            crate::eviction::evict(&app, t, q, headers, body).await
        }
        (Method::PUT, true, Some("finalize")) => {
            subresources::finalize(&app, t, q, headers, body).await
        }
        (m, _, sub) => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({m} {}{})",
            t.info.plural,
            sub.map(|s| format!("/{s}")).unwrap_or_default()
        ))),
    }
}
