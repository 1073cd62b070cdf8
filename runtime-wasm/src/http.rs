//! Serving wasi:http components (the serverless path): a component exporting
//! `wasi:http/incoming-handler` is served over HTTP/1.1 on the sandbox IP and the
//! container port, with a fresh store and instance per request from one
//! pre-instantiated [`ProxyPre`]. Each request gets the container's memory limit
//! and a deadline of its own; a trap, the memory limit or the deadline answer that
//! request with 500 and the server carries on. Guest output and failed requests go
//! to the container's CRI log.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, warn};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::Store;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::container::{
    configure_store, open_log, wasi_builder, Artifact, ContainerSpec, ExitStatus, Limited,
    MemoryLimit, StopHandle,
};
use crate::dns::PodResolver;
use crate::engine::{WasmEngine, EPOCH_TICK};
use crate::logs::{CriLog, Stream};
use crate::outbound::Outbound;
use crate::RuntimeError;

/// How long one request may run when the spec sets no `request_timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long open connections get to finish their current response after a stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How long a stopping server waits for connections it accepted but that have not
/// sent their first request yet (a proxy or client that connected just before the
/// stop): without it, graceful shutdown closes them as idle and the request that was
/// on its way fails.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Connections accepted that have not started a request (nor ended) yet.
#[derive(Default)]
struct FreshConnections {
    count: std::sync::atomic::AtomicUsize,
    changed: tokio::sync::Notify,
}

impl FreshConnections {
    fn opened(self: &Arc<Self>) -> FreshGuard {
        self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        FreshGuard {
            conns: self.clone(),
            done: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Until every fresh connection has started a request or ended.
    async fn settled(&self) {
        loop {
            let changed = self.changed.notified();
            if self.count.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            changed.await;
        }
    }
}

/// One connection's place among the fresh ones, given up on its first request or
/// when it ends.
struct FreshGuard {
    conns: Arc<FreshConnections>,
    done: std::sync::atomic::AtomicBool,
}

impl FreshGuard {
    fn started(&self) {
        if !self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.conns
                .count
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            self.conns.changed.notify_waiters();
        }
    }
}

impl Drop for FreshGuard {
    fn drop(&mut self) {
        self.started();
    }
}

/// Whether `component` exports `wasi:http/incoming-handler` (any version), i.e. is
/// served with [`serve`] rather than run as a command.
pub fn exports_http_handler(component: &Component, engine: &WasmEngine) -> bool {
    component
        .component_type()
        .exports(engine.engine())
        .any(|(name, _)| name.starts_with("wasi:http/incoming-handler@"))
}

/// The store data of one request.
pub struct Host {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    hooks: Hooks,
    limits: MemoryLimit,
    deferred_binds: crate::pod_sockets::DeferredBinds,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl crate::name_lookup::PodNames for Host {
    fn pod_names(&self) -> (bool, Option<Arc<PodResolver>>) {
        (
            self.hooks.allow_network,
            self.hooks.outbound.resolver.clone(),
        )
    }
}

impl crate::pod_sockets::PodAddress for Host {
    fn origin(&self) -> Option<crate::outbound::Origin> {
        self.hooks.outbound.origin.clone()
    }

    fn deferred_binds(&mut self) -> &mut crate::pod_sockets::DeferredBinds {
        &mut self.deferred_binds
    }
}

impl Limited for Host {
    fn limits(&mut self) -> &mut MemoryLimit {
        &mut self.limits
    }
}

/// Outgoing requests only when the container may use the network, sent as the pod
/// sends them ([`crate::outbound`]).
struct Hooks {
    allow_network: bool,
    outbound: Outbound,
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<wasmtime_wasi_http::WasiBody>,
    Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn std::future::Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn std::future::Future<Output = SendResult> + Send> {
        drop(fut);
        if !self.allow_network {
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let outbound = self.outbound.clone();
        Box::new(async move {
            let (res, io) = outbound.send(request, options).await?;
            Ok((res.map(BodyExt::boxed_unsync), io))
        })
    }
}

pub(crate) fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<Host>> {
    let mut linker: Linker<Host> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    crate::name_lookup::add_to_linker(&mut linker)?;
    crate::pod_sockets::add_to_linker(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    Ok(linker)
}

/// Binds `addr` and serves `component` there until `stop` fires; see [`serve_on`].
pub async fn serve(
    engine: &WasmEngine,
    component: Component,
    addr: SocketAddr,
    spec: &ContainerSpec,
    stop: StopHandle,
) -> Result<ExitStatus, RuntimeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| RuntimeError::Setup(format!("binding {addr}: {e}")))?;
    serve_on(engine, component, listener, spec, stop).await
}

/// Serves `component` on an already bound listener until `stop` fires: stops
/// accepting at once, lets open connections finish their current response within
/// the shutdown grace (guests still running after it are interrupted at the next
/// epoch tick), and returns exit code 0.
pub async fn serve_on(
    engine: &WasmEngine,
    component: Component,
    listener: TcpListener,
    spec: &ContainerSpec,
    stop: StopHandle,
) -> Result<ExitStatus, RuntimeError> {
    // Resolved once per compiled component (cached with it by the engine): the pods
    // of one Deployment share it, as they share the component's code.
    let artifact = Artifact::Component(component);
    let pre = engine.prepared(
        &artifact,
        |p| &p.proxy,
        || {
            let Artifact::Component(component) = &artifact else {
                unreachable!()
            };
            engine
                .linkers()
                .http
                .instantiate_pre(component)
                .and_then(ProxyPre::new)
                .map_err(|e| {
                    RuntimeError::Setup(format!(
                        "not a wasi:http proxy component (it must export wasi:http/incoming-handler): {e:#}"
                    ))
                })
        },
    )?;
    drop(artifact);
    let log = open_log(spec)?;
    let timeout = spec.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT);
    // Guests are interrupted by this handle, not by `stop`: a stop lets the requests
    // in flight (and those of connections accepted just before it) finish; the
    // interrupt comes when the grace is over, or when this future is dropped (a
    // forced stop aborts it).
    let interrupt = StopHandle::default();
    let _interrupt_on_exit = InterruptOnDrop(interrupt.clone());
    let server = Arc::new(Server {
        pre,
        spec: spec.clone(),
        log: log.clone(),
        stop: interrupt.clone(),
        timeout,
        deadline_ticks: (timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64,
    });
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let fresh = Arc::new(FreshConnections::default());
    let serve = |sock: tokio::net::TcpStream, peer: SocketAddr| {
        let _ = sock.set_nodelay(true);
        let server = server.clone();
        let guard = Arc::new(fresh.opened());
        let first = guard.clone();
        let conn = http1::Builder::new().keep_alive(true).serve_connection(
            TokioIo::new(sock),
            hyper::service::service_fn(move |req| {
                first.started();
                server.clone().handle(req)
            }),
        );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "wasi:http connection ended with an error");
            }
            drop(guard);
        });
    };
    loop {
        tokio::select! {
            _ = stop.stopped() => break,
            accepted = listener.accept() => match accepted {
                Ok((sock, peer)) => serve(sock, peer),
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    warn!(error = %e, "accepting a wasi:http connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    // Connections the kernel completed before the stop are served, not reset with
    // the listener: clients (the service proxy) saw them connect.
    // (Accepted with the non-blocking syscall itself: the reactor may not have seen
    // their readiness yet.)
    if let Ok(std_listener) = listener.into_std() {
        while let Ok((sock, peer)) = std_listener.accept() {
            match sock
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpStream::from_std(sock))
            {
                Ok(sock) => serve(sock, peer),
                Err(e) => debug!(%peer, error = %e, "a connection accepted at stop"),
            }
        }
    }
    let _ = tokio::time::timeout(FIRST_REQUEST_GRACE, fresh.settled()).await;
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        debug!("wasi:http connections still open after the shutdown grace period");
    }
    interrupt.stop();
    let _ = log.finish();
    Ok(ExitStatus::completed())
}

/// Interrupts a server's guests when its serving future ends, however it ends.
struct InterruptOnDrop(StopHandle);

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

struct Server {
    pre: ProxyPre<Host>,
    spec: ContainerSpec,
    log: CriLog,
    stop: StopHandle,
    timeout: Duration,
    deadline_ticks: u64,
}

fn plain(status: u16, text: String) -> hyper::Response<HyperOutgoingBody> {
    let mut resp = hyper::Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never: Infallible| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

impl Server {
    fn new_store(&self) -> Result<Store<Host>, RuntimeError> {
        let host = Host {
            wasi: wasi_builder(&self.spec, &self.log)?.build(),
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            hooks: Hooks {
                allow_network: self.spec.allow_network,
                outbound: Outbound {
                    resolver: self.spec.resolver.clone(),
                    egress: self.spec.egress.clone(),
                    origin: self.spec.origin.clone(),
                },
            },
            limits: MemoryLimit::for_spec(&self.spec),
            deferred_binds: Default::default(),
        };
        let mut store = Store::new(self.pre.engine(), host);
        configure_store(
            &mut store,
            &self.spec,
            &self.stop,
            Some(self.deadline_ticks),
        );
        Ok(store)
    }

    fn log_failure(&self, what: &str, error: &str) {
        let _ = self.log.write(
            Stream::Stderr,
            format!("kelp: request {what} failed: {error}\n").as_bytes(),
        );
    }

    async fn handle(
        self: Arc<Self>,
        req: hyper::Request<Incoming>,
    ) -> Result<hyper::Response<HyperOutgoingBody>, Infallible> {
        let what = format!("{} {}", req.method(), req.uri());
        let mut store = match self.new_store() {
            Ok(s) => s,
            Err(e) => {
                self.log_failure(&what, &e.to_string());
                return Ok(plain(500, "internal server error\n".into()));
            }
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let prepared = (|| {
            let req = store
                .data_mut()
                .http()
                .new_incoming_request(Scheme::Http, req)?;
            let out = store.data_mut().http().new_response_outparam(tx)?;
            wasmtime::Result::<_>::Ok((req, out))
        })();
        let (req, out) = match prepared {
            Ok(p) => p,
            Err(e) => {
                self.log_failure(&what, &format!("{e:#}"));
                return Ok(plain(400, "bad request\n".into()));
            }
        };
        // The guest runs in its own task: it may go on writing the body after it
        // has handed over the response head.
        let server = self.clone();
        let task = tokio::spawn(async move {
            let run = async {
                let proxy = server.pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
            };
            let result = match tokio::time::timeout(server.timeout, run).await {
                Ok(r) => r,
                Err(_) => Err(wasmtime::Error::msg(format!(
                    "request ran longer than {:?}",
                    server.timeout
                ))),
            };
            result.map_err(|e| {
                if store.data().limits.exceeded() {
                    format!("OOMKilled: {e:#}")
                } else if server.stop.is_stopped() {
                    "stopped".to_string()
                } else {
                    format!("{e:#}")
                }
            })
        });
        let resp = match rx.await {
            Ok(Ok(resp)) => resp,
            Ok(Err(code)) => {
                self.log_failure(&what, &format!("the handler answered {code:?}"));
                plain(500, format!("handler error: {code:?}\n"))
            }
            Err(_) => {
                let error = match task.await {
                    Ok(Ok(())) => "the handler never set a response".to_string(),
                    Ok(Err(e)) => e,
                    Err(e) => format!("handler task: {e}"),
                };
                self.log_failure(&what, &error);
                plain(500, "internal server error\n".into())
            }
        };
        Ok(resp)
    }
}
