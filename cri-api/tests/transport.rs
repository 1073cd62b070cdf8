//! Transport test: a toy runtime served with `serve_unix`, called through `connect`.
//! Only the gRPC plumbing is under test; the real runtime is tested elsewhere.

#[path = "../../runtime-wasm/tests/support/wait.rs"]
mod wait;

use std::os::unix::fs::PermissionsExt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kelp_cri_api::tonic::{self, Code, Request, Response, Status};
use kelp_cri_api::v1::image_service_server::ImageService;
use kelp_cri_api::v1::runtime_service_server::RuntimeService;
use kelp_cri_api::v1::*;
use kelp_cri_api::{connect, serve_unix, CriError};
use tokio::sync::oneshot;

/// `#[tonic::async_trait] impl $trait for $ty { body }`, plus the listed RPCs answering
/// `Unimplemented`. (The methods are expanded before `async_trait` runs, which a macro
/// called inside the impl would not be.)
macro_rules! cri_impl {
    (
        impl $trait:ident for $ty:ty;
        unimplemented { $($name:ident($req:ty) -> $resp:ty;)* }
        $($body:tt)*
    ) => {
        #[tonic::async_trait]
        impl $trait for $ty {
            $($body)*
            $(
                async fn $name(&self, _: Request<$req>) -> Result<Response<$resp>, Status> {
                    Err(Status::unimplemented(stringify!($name)))
                }
            )*
        }
    };
}

struct FakeRuntime;

cri_impl! {
    impl RuntimeService for FakeRuntime;
    unimplemented {
        run_pod_sandbox(RunPodSandboxRequest) -> RunPodSandboxResponse;
        stop_pod_sandbox(StopPodSandboxRequest) -> StopPodSandboxResponse;
        remove_pod_sandbox(RemovePodSandboxRequest) -> RemovePodSandboxResponse;
        pod_sandbox_status(PodSandboxStatusRequest) -> PodSandboxStatusResponse;
        list_pod_sandbox(ListPodSandboxRequest) -> ListPodSandboxResponse;
        create_container(CreateContainerRequest) -> CreateContainerResponse;
        start_container(StartContainerRequest) -> StartContainerResponse;
        stop_container(StopContainerRequest) -> StopContainerResponse;
        remove_container(RemoveContainerRequest) -> RemoveContainerResponse;
        list_containers(ListContainersRequest) -> ListContainersResponse;
        update_container_resources(UpdateContainerResourcesRequest) -> UpdateContainerResourcesResponse;
        reopen_container_log(ReopenContainerLogRequest) -> ReopenContainerLogResponse;
        exec_sync(ExecSyncRequest) -> ExecSyncResponse;
        exec(ExecRequest) -> ExecResponse;
        attach(AttachRequest) -> AttachResponse;
        port_forward(PortForwardRequest) -> PortForwardResponse;
        container_stats(ContainerStatsRequest) -> ContainerStatsResponse;
        list_container_stats(ListContainerStatsRequest) -> ListContainerStatsResponse;
        pod_sandbox_stats(PodSandboxStatsRequest) -> PodSandboxStatsResponse;
        list_pod_sandbox_stats(ListPodSandboxStatsRequest) -> ListPodSandboxStatsResponse;
        update_runtime_config(UpdateRuntimeConfigRequest) -> UpdateRuntimeConfigResponse;
        status(StatusRequest) -> StatusResponse;
        checkpoint_container(CheckpointContainerRequest) -> CheckpointContainerResponse;
        list_metric_descriptors(ListMetricDescriptorsRequest) -> ListMetricDescriptorsResponse;
        list_pod_sandbox_metrics(ListPodSandboxMetricsRequest) -> ListPodSandboxMetricsResponse;
        runtime_config(RuntimeConfigRequest) -> RuntimeConfigResponse;
    }

    async fn version(
        &self,
        request: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        assert_eq!(request.get_ref().version, "v1");
        Ok(Response::new(VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "kelp-test".into(),
            runtime_version: "0.0.1".into(),
            runtime_api_version: "v1".into(),
        }))
    }

    async fn container_status(
        &self,
        request: Request<ContainerStatusRequest>,
    ) -> Result<Response<ContainerStatusResponse>, Status> {
        Err(Status::not_found(format!(
            "container {:?} not found",
            request.get_ref().container_id
        )))
    }

    type GetContainerEventsStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<ContainerEventResponse, Status>> + Send>>;

    async fn get_container_events(
        &self,
        _: Request<GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Err(Status::unimplemented("get_container_events"))
    }
}

/// Remembers pulled images, lists them back.
#[derive(Default)]
struct FakeImages {
    pulled: Mutex<Vec<String>>,
}

cri_impl! {
    impl ImageService for FakeImages;
    unimplemented {
        image_status(ImageStatusRequest) -> ImageStatusResponse;
        remove_image(RemoveImageRequest) -> RemoveImageResponse;
        image_fs_info(ImageFsInfoRequest) -> ImageFsInfoResponse;
    }

    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let image = request
            .into_inner()
            .image
            .ok_or_else(|| Status::invalid_argument("image is required"))?
            .image;
        self.pulled.lock().unwrap().push(image.clone());
        Ok(Response::new(PullImageResponse {
            image_ref: format!("sha256:{}", image.len()),
        }))
    }

    async fn list_images(
        &self,
        _: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let images = self
            .pulled
            .lock()
            .unwrap()
            .iter()
            .map(|name| Image {
                id: format!("sha256:{}", name.len()),
                repo_tags: vec![name.clone()],
                ..Default::default()
            })
            .collect();
        Ok(Response::new(ListImagesResponse { images }))
    }
}

#[tokio::test]
async fn unix_socket_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/cri.sock");
    // A stale file where the socket goes must not stop the server.
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    std::fs::write(&socket, b"stale").unwrap();

    let images = Arc::new(FakeImages::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn({
        let socket = socket.clone();
        let images = images.clone();
        async move {
            serve_unix(&socket, Arc::new(FakeRuntime), images, async {
                let _ = stopped.await;
            })
            .await
        }
    });

    // The socket appears once the server has bound it.
    let endpoint = format!("unix://{}", socket.display());
    let deadline = wait::Deadline::after(Duration::from_secs(10));
    let (mut runtime, mut image_client) = loop {
        match connect(&endpoint).await {
            Ok(clients) => break clients,
            Err(e) => assert!(deadline.tick().await, "connect: {e:?}"),
        }
    };
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);

    let version = runtime
        .version(VersionRequest {
            version: "v1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(version.runtime_name, "kelp-test");
    assert_eq!(version.runtime_api_version, "v1");

    for name in ["docker.io/library/hello:wasm", "localhost:5000/app:v2"] {
        let pulled = image_client
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: name.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(pulled.image_ref, format!("sha256:{}", name.len()));
    }
    let listed = image_client
        .list_images(ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let tags: Vec<_> = listed
        .images
        .iter()
        .map(|i| i.repo_tags[0].as_str())
        .collect();
    assert_eq!(
        tags,
        ["docker.io/library/hello:wasm", "localhost:5000/app:v2"]
    );
    assert_eq!(images.pulled.lock().unwrap().len(), 2);

    // Errors cross the wire with their code and message.
    let err = runtime
        .container_status(ContainerStatusRequest {
            container_id: "nope".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "container \"nope\" not found");
    let err = image_client
        .pull_image(PullImageRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = runtime.status(StatusRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);

    // A message above tonic's 4 MiB default but under 16 MiB goes through.
    let big = "x".repeat(6 << 20);
    image_client
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: big,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let listed = image_client
        .list_images(ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.images.len(), 3);

    // Shutdown: the server returns Ok once the clients are gone, and the socket is removed.
    drop((runtime, image_client));
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
    assert!(!socket.exists(), "socket removed on exit");
}

#[tokio::test]
async fn bad_endpoints() {
    for endpoint in [
        "",
        "/run/cri.sock",
        "unix://relative.sock",
        "tcp://1.2.3.4:5",
    ] {
        assert!(
            matches!(connect(endpoint).await, Err(CriError::InvalidEndpoint(_))),
            "{endpoint:?}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("unix://{}", dir.path().join("none.sock").display());
    assert!(matches!(
        connect(&missing).await,
        Err(CriError::Connect { .. })
    ));
}
