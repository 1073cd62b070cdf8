//! The node's runtime boundary: the CRI calls the kubelet makes, behind one small trait,
//! and the routing of pods to runtimes by RuntimeClass handler.
//!
//! [`CriRuntime`] is implemented twice and nowhere else:
//! - for any `Arc<T>` where `T` implements the CRI server traits (`RuntimeService` +
//!   `ImageService`): the in-process path, one function call per CRI call, no gRPC hop
//!   (how `kelp agent` runs the Wasm runtime);
//! - for [`RemoteRuntime`], the tonic clients over a unix socket or TCP (containerd,
//!   CRI-O, `kelp runtime`).
//!
//! Every method takes and returns the `kelp_cri_api::v1` messages unchanged; failures are
//! the runtime's `tonic::Status` (the kubelet reads `code()` only to tell "not found"
//! from everything else, and shows `message()` to users).

use std::collections::BTreeMap;
use std::sync::Arc;

pub use kelp_cri_api::streaming::{StreamIo, StreamingRuntime};
use kelp_cri_api::tonic::transport::Channel;
use kelp_cri_api::tonic::{Request, Status};
use kelp_cri_api::v1 as cri;
use kelp_cri_api::v1::image_service_client::ImageServiceClient;
use kelp_cri_api::v1::image_service_server::ImageService;
use kelp_cri_api::v1::runtime_service_client::RuntimeServiceClient;
use kelp_cri_api::v1::runtime_service_server::RuntimeService;

/// The CRI calls the kubelet needs (a subset of `RuntimeService` + `ImageService`).
///
/// Contract: each call is one CRI call with the CRI semantics (idempotent stop/remove,
/// `image_status` answering `image: None` for an absent image, `NotFound` for unknown
/// ids). Implementations never retry; the pod worker's next sync is the retry.
#[async_trait::async_trait]
pub trait CriRuntime: Send + Sync {
    async fn version(&self, req: cri::VersionRequest) -> Result<cri::VersionResponse, Status>;
    async fn status(&self, req: cri::StatusRequest) -> Result<cri::StatusResponse, Status>;
    async fn run_pod_sandbox(
        &self,
        req: cri::RunPodSandboxRequest,
    ) -> Result<cri::RunPodSandboxResponse, Status>;
    async fn stop_pod_sandbox(
        &self,
        req: cri::StopPodSandboxRequest,
    ) -> Result<cri::StopPodSandboxResponse, Status>;
    async fn remove_pod_sandbox(
        &self,
        req: cri::RemovePodSandboxRequest,
    ) -> Result<cri::RemovePodSandboxResponse, Status>;
    async fn pod_sandbox_status(
        &self,
        req: cri::PodSandboxStatusRequest,
    ) -> Result<cri::PodSandboxStatusResponse, Status>;
    async fn list_pod_sandbox(
        &self,
        req: cri::ListPodSandboxRequest,
    ) -> Result<cri::ListPodSandboxResponse, Status>;
    async fn create_container(
        &self,
        req: cri::CreateContainerRequest,
    ) -> Result<cri::CreateContainerResponse, Status>;
    async fn start_container(
        &self,
        req: cri::StartContainerRequest,
    ) -> Result<cri::StartContainerResponse, Status>;
    async fn stop_container(
        &self,
        req: cri::StopContainerRequest,
    ) -> Result<cri::StopContainerResponse, Status>;
    async fn remove_container(
        &self,
        req: cri::RemoveContainerRequest,
    ) -> Result<cri::RemoveContainerResponse, Status>;
    async fn list_containers(
        &self,
        req: cri::ListContainersRequest,
    ) -> Result<cri::ListContainersResponse, Status>;
    async fn container_status(
        &self,
        req: cri::ContainerStatusRequest,
    ) -> Result<cri::ContainerStatusResponse, Status>;
    /// Runs a command in a running container and waits for it (exec probes).
    async fn exec_sync(&self, req: cri::ExecSyncRequest) -> Result<cri::ExecSyncResponse, Status>;
    async fn pull_image(
        &self,
        req: cri::PullImageRequest,
    ) -> Result<cri::PullImageResponse, Status>;
    async fn image_status(
        &self,
        req: cri::ImageStatusRequest,
    ) -> Result<cri::ImageStatusResponse, Status>;

    async fn list_pod_sandbox_stats(
        &self,
        req: cri::ListPodSandboxStatsRequest,
    ) -> Result<cri::ListPodSandboxStatsResponse, Status>;

    /// In-process streaming exec (the Wasm runtime). `None`: the runtime streams the
    /// upstream way, through the URL CRI `Exec` returns (remote runtimes).
    fn streaming(&self) -> Option<&dyn StreamingRuntime> {
        None
    }

    /// CRI `Exec`: the URL of the runtime's streaming server for this exec.
    async fn exec(&self, _req: cri::ExecRequest) -> Result<cri::ExecResponse, Status> {
        Err(Status::unimplemented("Exec"))
    }

    /// CRI `PortForward`: the URL of the runtime's streaming server for a sandbox's
    /// ports.
    async fn port_forward(
        &self,
        _req: cri::PortForwardRequest,
    ) -> Result<cri::PortForwardResponse, Status> {
        Err(Status::unimplemented("PortForward"))
    }
}

/// Forwards each listed method to the in-process CRI service trait `$svc`.
macro_rules! in_process {
    ($($svc:ident :: $m:ident($req:ty) -> $resp:ty;)*) => {
        #[async_trait::async_trait]
        impl<T> CriRuntime for Arc<T>
        where
            T: RuntimeService + ImageService + StreamingRuntime,
        {
            fn streaming(&self) -> Option<&dyn StreamingRuntime> {
                Some(&**self)
            }

            $(
                async fn $m(&self, req: $req) -> Result<$resp, Status> {
                    $svc::$m(&**self, Request::new(req))
                        .await
                        .map(|r| r.into_inner())
                }
            )*
        }
    };
}

in_process! {
    RuntimeService::version(cri::VersionRequest) -> cri::VersionResponse;
    RuntimeService::status(cri::StatusRequest) -> cri::StatusResponse;
    RuntimeService::run_pod_sandbox(cri::RunPodSandboxRequest) -> cri::RunPodSandboxResponse;
    RuntimeService::stop_pod_sandbox(cri::StopPodSandboxRequest) -> cri::StopPodSandboxResponse;
    RuntimeService::remove_pod_sandbox(cri::RemovePodSandboxRequest) -> cri::RemovePodSandboxResponse;
    RuntimeService::pod_sandbox_status(cri::PodSandboxStatusRequest) -> cri::PodSandboxStatusResponse;
    RuntimeService::list_pod_sandbox(cri::ListPodSandboxRequest) -> cri::ListPodSandboxResponse;
    RuntimeService::create_container(cri::CreateContainerRequest) -> cri::CreateContainerResponse;
    RuntimeService::start_container(cri::StartContainerRequest) -> cri::StartContainerResponse;
    RuntimeService::stop_container(cri::StopContainerRequest) -> cri::StopContainerResponse;
    RuntimeService::remove_container(cri::RemoveContainerRequest) -> cri::RemoveContainerResponse;
    RuntimeService::list_containers(cri::ListContainersRequest) -> cri::ListContainersResponse;
    RuntimeService::container_status(cri::ContainerStatusRequest) -> cri::ContainerStatusResponse;
    RuntimeService::exec_sync(cri::ExecSyncRequest) -> cri::ExecSyncResponse;
    RuntimeService::list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest) -> cri::ListPodSandboxStatsResponse;
    ImageService::pull_image(cri::PullImageRequest) -> cri::PullImageResponse;
    ImageService::image_status(cri::ImageStatusRequest) -> cri::ImageStatusResponse;
}

/// A runtime reached over CRI gRPC (`unix:///run/containerd/containerd.sock`, …).
#[derive(Clone)]
pub struct RemoteRuntime {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl RemoteRuntime {
    /// Dials `endpoint` (`unix:///path` or `http://host:port`) eagerly.
    pub async fn connect(endpoint: &str) -> Result<Self, kelp_cri_api::CriError> {
        let (runtime, images) = kelp_cri_api::connect(endpoint).await?;
        Ok(RemoteRuntime { runtime, images })
    }
}

/// Forwards each listed method to a clone of the named tonic client (clones share the
/// connection; calls need `&mut`).
macro_rules! remote {
    ($($client:ident . $m:ident($req:ty) -> $resp:ty;)*) => {
        #[async_trait::async_trait]
        impl CriRuntime for RemoteRuntime {
            $(
                async fn $m(&self, req: $req) -> Result<$resp, Status> {
                    self.$client.clone().$m(req).await.map(|r| r.into_inner())
                }
            )*
        }
    };
}

remote! {
    runtime.version(cri::VersionRequest) -> cri::VersionResponse;
    runtime.status(cri::StatusRequest) -> cri::StatusResponse;
    runtime.run_pod_sandbox(cri::RunPodSandboxRequest) -> cri::RunPodSandboxResponse;
    runtime.stop_pod_sandbox(cri::StopPodSandboxRequest) -> cri::StopPodSandboxResponse;
    runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest) -> cri::RemovePodSandboxResponse;
    runtime.pod_sandbox_status(cri::PodSandboxStatusRequest) -> cri::PodSandboxStatusResponse;
    runtime.list_pod_sandbox(cri::ListPodSandboxRequest) -> cri::ListPodSandboxResponse;
    runtime.create_container(cri::CreateContainerRequest) -> cri::CreateContainerResponse;
    runtime.start_container(cri::StartContainerRequest) -> cri::StartContainerResponse;
    runtime.stop_container(cri::StopContainerRequest) -> cri::StopContainerResponse;
    runtime.remove_container(cri::RemoveContainerRequest) -> cri::RemoveContainerResponse;
    runtime.list_containers(cri::ListContainersRequest) -> cri::ListContainersResponse;
    runtime.container_status(cri::ContainerStatusRequest) -> cri::ContainerStatusResponse;
    runtime.exec_sync(cri::ExecSyncRequest) -> cri::ExecSyncResponse;
    runtime.exec(cri::ExecRequest) -> cri::ExecResponse;
    runtime.port_forward(cri::PortForwardRequest) -> cri::PortForwardResponse;
    runtime.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest) -> cri::ListPodSandboxStatsResponse;
    images.pull_image(cri::PullImageRequest) -> cri::PullImageResponse;
    images.image_status(cri::ImageStatusRequest) -> cri::ImageStatusResponse;
}

/// The handler a pod that names no RuntimeClass runs on.
pub const DEFAULT_HANDLER: &str = "wasm";

/// One runtime the router can pick.
#[derive(Clone)]
pub struct RoutedRuntime {
    /// The CRI runtime handler (what a RuntimeClass's `handler` names).
    pub handler: String,
    /// Scheme of container ids in pod status (`wasm://<id>`, `containerd://<id>`).
    pub id_scheme: String,
    pub runtime: Arc<dyn CriRuntime>,
    /// Whether the kubelet gives this runtime's pods their addresses (from the node's
    /// pod network, passed in the sandbox config); `false`: the runtime networks its
    /// sandboxes itself (containerd through CNI) and reports the address.
    pub kubelet_network: bool,
}

/// What kind of image a container names, for pods that name no RuntimeClass on a node
/// serving both Wasm and Linux containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Wasm,
    Linux,
}

/// Tells Wasm images from Linux ones (by their manifest and config, without pulling
/// layers). Implemented by the binary with the Wasm runtime's registry client; the
/// kubelet never looks into images itself.
#[async_trait::async_trait]
pub trait ImageClassifier: Send + Sync {
    /// `Err`: the image could not be looked at (registry down, not found, refused) —
    /// a message for the pod's events; the kubelet tries again later.
    async fn classify(
        &self,
        image: &str,
        auth: Option<cri::AuthConfig>,
    ) -> Result<ImageKind, String>;

    /// What this classifier already told about `image`, without asking anything.
    fn known(&self, _image: &str) -> Option<ImageKind> {
        None
    }
}

/// A pod's RuntimeClass handler is served by none of the node's runtimes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("runtime handler {handler:?} is not served by this node (it serves {served:?})")]
pub struct UnknownHandler {
    pub handler: String,
    pub served: Vec<String>,
}

/// Maps RuntimeClass handlers to runtimes. Pods naming no RuntimeClass go to the
/// default handler ([`DEFAULT_HANDLER`] unless changed).
#[derive(Clone)]
pub struct RuntimeRouter {
    default_handler: String,
    runtimes: BTreeMap<String, RoutedRuntime>,
    /// Pods naming no RuntimeClass whose images are Linux images go to this handler
    /// (`None`: every such pod goes to the default handler).
    linux_handler: Option<(String, Arc<dyn ImageClassifier>)>,
}

impl Default for RuntimeRouter {
    fn default() -> Self {
        RuntimeRouter {
            default_handler: DEFAULT_HANDLER.to_string(),
            runtimes: BTreeMap::new(),
            linux_handler: None,
        }
    }
}

impl RuntimeRouter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `handler` with `runtime`; container ids are shown as `<handler>://<id>`.
    pub fn with_runtime(self, handler: &str, runtime: Arc<dyn CriRuntime>) -> Self {
        self.with_runtime_scheme(handler, handler, runtime)
    }

    /// Like [`RuntimeRouter::with_runtime`] with an explicit container id scheme.
    pub fn with_runtime_scheme(
        mut self,
        handler: &str,
        id_scheme: &str,
        runtime: Arc<dyn CriRuntime>,
    ) -> Self {
        self.runtimes.insert(
            handler.to_string(),
            RoutedRuntime {
                handler: handler.to_string(),
                id_scheme: id_scheme.to_string(),
                runtime,
                kubelet_network: true,
            },
        );
        self
    }

    /// Serves `handler` with a runtime that networks its own sandboxes (CNI).
    pub fn with_networked_runtime(
        mut self,
        handler: &str,
        id_scheme: &str,
        runtime: Arc<dyn CriRuntime>,
    ) -> Self {
        self = self.with_runtime_scheme(handler, id_scheme, runtime);
        if let Some(r) = self.runtimes.get_mut(handler) {
            r.kubelet_network = false;
        }
        self
    }

    /// Pods naming no RuntimeClass whose images `classifier` finds to be Linux images
    /// go to `handler` (Wasm images still go to the default handler).
    pub fn with_linux_handler(
        mut self,
        handler: &str,
        classifier: Arc<dyn ImageClassifier>,
    ) -> Self {
        self.linux_handler = Some((handler.to_string(), classifier));
        self
    }

    /// The handler for Linux images of pods naming no RuntimeClass, and how to tell
    /// them apart.
    pub fn linux_handler(&self) -> Option<(&str, &Arc<dyn ImageClassifier>)> {
        self.linux_handler.as_ref().map(|(h, c)| (h.as_str(), c))
    }

    /// Pods without a RuntimeClass go to `handler`.
    pub fn with_default_handler(mut self, handler: &str) -> Self {
        self.default_handler = handler.to_string();
        self
    }

    pub fn default_handler(&self) -> &str {
        &self.default_handler
    }

    /// The handlers served, sorted.
    pub fn handlers(&self) -> Vec<String> {
        self.runtimes.keys().cloned().collect()
    }

    /// Every runtime (for node-wide work: status, housekeeping).
    pub fn runtimes(&self) -> impl Iterator<Item = &RoutedRuntime> {
        self.runtimes.values()
    }

    /// The runtime for a RuntimeClass `handler` (`None`: the default handler).
    pub fn route(&self, handler: Option<&str>) -> Result<&RoutedRuntime, UnknownHandler> {
        let h = handler
            .filter(|h| !h.is_empty())
            .unwrap_or(&self.default_handler);
        self.runtimes.get(h).ok_or_else(|| UnknownHandler {
            handler: h.to_string(),
            served: self.handlers(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runtime that is never called: routing only looks at the table.
    struct Nothing;

    macro_rules! unreachable_impl {
        ($($m:ident($req:ty) -> $resp:ty;)*) => {
            #[async_trait::async_trait]
            impl CriRuntime for Nothing {
                $(async fn $m(&self, _: $req) -> Result<$resp, Status> {
                    Err(Status::unimplemented(stringify!($m)))
                })*
            }
        };
    }

    unreachable_impl! {
        version(cri::VersionRequest) -> cri::VersionResponse;
        status(cri::StatusRequest) -> cri::StatusResponse;
        run_pod_sandbox(cri::RunPodSandboxRequest) -> cri::RunPodSandboxResponse;
        stop_pod_sandbox(cri::StopPodSandboxRequest) -> cri::StopPodSandboxResponse;
        remove_pod_sandbox(cri::RemovePodSandboxRequest) -> cri::RemovePodSandboxResponse;
        pod_sandbox_status(cri::PodSandboxStatusRequest) -> cri::PodSandboxStatusResponse;
        list_pod_sandbox(cri::ListPodSandboxRequest) -> cri::ListPodSandboxResponse;
        create_container(cri::CreateContainerRequest) -> cri::CreateContainerResponse;
        start_container(cri::StartContainerRequest) -> cri::StartContainerResponse;
        stop_container(cri::StopContainerRequest) -> cri::StopContainerResponse;
        remove_container(cri::RemoveContainerRequest) -> cri::RemoveContainerResponse;
        list_containers(cri::ListContainersRequest) -> cri::ListContainersResponse;
        container_status(cri::ContainerStatusRequest) -> cri::ContainerStatusResponse;
        exec_sync(cri::ExecSyncRequest) -> cri::ExecSyncResponse;
        list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest) -> cri::ListPodSandboxStatsResponse;
        pull_image(cri::PullImageRequest) -> cri::PullImageResponse;
        image_status(cri::ImageStatusRequest) -> cri::ImageStatusResponse;
    }

    #[test]
    fn routes_by_handler_with_wasm_as_the_default() {
        let r = RuntimeRouter::new()
            .with_runtime("wasm", Arc::new(Nothing))
            .with_runtime_scheme("runc", "containerd", Arc::new(Nothing));
        assert_eq!(r.route(None).unwrap().handler, "wasm");
        assert_eq!(r.route(Some("")).unwrap().handler, "wasm");
        assert_eq!(r.route(Some("runc")).unwrap().id_scheme, "containerd");
        let e = r.route(Some("gvisor")).err().unwrap();
        assert_eq!(e.handler, "gvisor");
        assert_eq!(e.served, vec!["runc".to_string(), "wasm".to_string()]);
        assert!(e.to_string().contains("\"gvisor\" is not served"));
    }
}
