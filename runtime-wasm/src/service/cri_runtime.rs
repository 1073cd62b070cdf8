//! CRI `RuntimeService` on [`WasmRuntime`]: the translation between CRI messages and
//! the runtime's own types. The kubelet calls these methods in-process; `kelp runtime`
//! serves the same implementation over gRPC.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use kelp_cri_api::v1 as cri;
use kelp_cri_api::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

use super::containers::{ContainerConfig, ContainerPhase};
use super::sandboxes::{PortMapping, SandboxConfig};
use super::{now_nanos, Container, Sandbox, ServiceError, WasmRuntime, HANDLER};
use crate::container::Mount;

/// The CRI API version this runtime speaks.
const CRI_VERSION: &str = "v1";

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        use crate::image::ImageError;
        match &e {
            ServiceError::NotFound { .. } => Status::not_found(e.to_string()),
            ServiceError::InvalidArgument(_) => Status::invalid_argument(e.to_string()),
            ServiceError::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
            ServiceError::Timeout(_) => Status::deadline_exceeded(e.to_string()),
            ServiceError::Image(ie) => match ie {
                ImageError::NotFound { .. } => Status::not_found(e.to_string()),
                ImageError::Unauthorized { .. } => Status::permission_denied(e.to_string()),
                ImageError::InvalidReference { .. } => Status::invalid_argument(e.to_string()),
                ImageError::Io { .. } | ImageError::CorruptIndex { .. } => {
                    Status::internal(e.to_string())
                }
                ImageError::Unreachable { .. } => Status::unavailable(e.to_string()),
                _ => Status::failed_precondition(e.to_string()),
            },
            ServiceError::Runtime(crate::RuntimeError::InvalidModule(_)) => {
                Status::invalid_argument(e.to_string())
            }
            _ => Status::internal(e.to_string()),
        }
    }
}

fn sandbox_config(c: cri::PodSandboxConfig) -> SandboxConfig {
    let md = c.metadata.unwrap_or_default();
    SandboxConfig {
        name: md.name,
        uid: md.uid,
        namespace: md.namespace,
        attempt: md.attempt,
        hostname: c.hostname,
        dns: c
            .dns_config
            .as_ref()
            .and_then(crate::dns::PodResolver::from_cri)
            .map(std::sync::Arc::new),
        log_directory: Some(c.log_directory)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from),
        port_mappings: c
            .port_mappings
            .iter()
            .filter_map(|p| {
                Some(PortMapping {
                    container_port: u16::try_from(p.container_port).ok()?,
                    protocol: match cri::Protocol::try_from(p.protocol) {
                        Ok(cri::Protocol::Udp) => "UDP",
                        Ok(cri::Protocol::Sctp) => "SCTP",
                        _ => "TCP",
                    },
                })
            })
            .collect(),
        labels: c.labels,
        annotations: c.annotations,
    }
}

fn container_config(c: cri::ContainerConfig) -> ContainerConfig {
    let md = c.metadata.unwrap_or_default();
    let resources = c.linux.as_ref().and_then(|l| l.resources.as_ref());
    let memory_limit = resources
        .map(|r| r.memory_limit_in_bytes)
        .filter(|m| *m > 0)
        .map(|m| m as u64);
    let cpu_limit_millis = resources
        .filter(|r| r.cpu_quota > 0 && r.cpu_period > 0)
        .map(|r| u32::try_from(r.cpu_quota * 1000 / r.cpu_period).unwrap_or(u32::MAX));
    ContainerConfig {
        name: md.name,
        attempt: md.attempt,
        image: c.image.map(|i| i.image).unwrap_or_default(),
        command: c.command,
        args: c.args,
        working_dir: Some(c.working_dir).filter(|w| !w.is_empty()),
        envs: c.envs.into_iter().map(|kv| (kv.key, kv.value)).collect(),
        mounts: c
            .mounts
            .into_iter()
            .map(|m| Mount {
                host_path: PathBuf::from(m.host_path),
                guest_path: m.container_path,
                read_only: m.readonly,
            })
            .collect(),
        labels: c.labels,
        annotations: c.annotations,
        log_path: Some(c.log_path).filter(|p| !p.is_empty()),
        stdin: c.stdin,
        memory_limit,
        cpu_limit_millis,
    }
}

fn sandbox_state(sb: &Sandbox) -> i32 {
    if sb.is_ready() {
        cri::PodSandboxState::SandboxReady as i32
    } else {
        cri::PodSandboxState::SandboxNotready as i32
    }
}

fn sandbox_metadata(sb: &Sandbox) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata {
        name: sb.config.name.clone(),
        uid: sb.config.uid.clone(),
        namespace: sb.config.namespace.clone(),
        attempt: sb.config.attempt,
    }
}

fn sandbox_status(sb: &Sandbox) -> cri::PodSandboxStatus {
    cri::PodSandboxStatus {
        id: sb.id.clone(),
        metadata: Some(sandbox_metadata(sb)),
        state: sandbox_state(sb),
        created_at: sb.created_at,
        network: Some(cri::PodSandboxNetworkStatus {
            ip: sb.ip.to_string(),
            additional_ips: vec![],
        }),
        linux: None,
        labels: sb.config.labels.clone(),
        annotations: sb.config.annotations.clone(),
        runtime_handler: HANDLER.to_string(),
    }
}

fn container_state(c: &Container) -> i32 {
    match c.state().phase {
        ContainerPhase::Created => cri::ContainerState::ContainerCreated as i32,
        ContainerPhase::Running => cri::ContainerState::ContainerRunning as i32,
        ContainerPhase::Exited => cri::ContainerState::ContainerExited as i32,
    }
}

fn container_metadata(c: &Container) -> cri::ContainerMetadata {
    cri::ContainerMetadata {
        name: c.config.name.clone(),
        attempt: c.config.attempt,
    }
}

fn image_spec(c: &Container) -> cri::ImageSpec {
    cri::ImageSpec {
        image: c.config.image.clone(),
        ..Default::default()
    }
}

fn image_ref(c: &Container) -> String {
    c.image
        .repo_digests
        .first()
        .cloned()
        .unwrap_or_else(|| c.image.id.clone())
}

fn container_status(c: &Container) -> cri::ContainerStatus {
    let st = c.state();
    let (exit_code, reason, message) = match &st.exit {
        Some(e) => (e.code, e.reason.as_str().to_string(), e.message.clone()),
        None => (0, String::new(), String::new()),
    };
    cri::ContainerStatus {
        id: c.id.clone(),
        metadata: Some(container_metadata(c)),
        state: container_state(c),
        created_at: c.created_at,
        started_at: st.started_at,
        finished_at: st.finished_at,
        exit_code,
        image: Some(image_spec(c)),
        image_ref: image_ref(c),
        reason,
        message,
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        mounts: c
            .spec
            .mounts
            .iter()
            .map(|m| cri::Mount {
                container_path: m.guest_path.clone(),
                host_path: m.host_path.display().to_string(),
                readonly: m.read_only,
                ..Default::default()
            })
            .collect(),
        log_path: c.log_path.display().to_string(),
        resources: c.config.memory_limit.map(|m| cri::ContainerResources {
            linux: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: m as i64,
                ..Default::default()
            }),
            windows: None,
        }),
        image_id: c.image.id.clone(),
        user: None,
    }
}

fn labels_match(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn container_stats(c: &Container) -> cri::ContainerStats {
    let now = now_nanos();
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: c.id.clone(),
            metadata: Some(container_metadata(c)),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
        }),
        cpu: Some(cri::CpuUsage {
            timestamp: now,
            usage_core_nano_seconds: Some(cri::UInt64Value {
                value: c.cpu_usage_nanos(),
            }),
            usage_nano_cores: None,
        }),
        memory: Some(cri::MemoryUsage {
            timestamp: now,
            working_set_bytes: Some(cri::UInt64Value {
                value: c.memory_usage_bytes(),
            }),
            usage_bytes: Some(cri::UInt64Value {
                value: c.memory_usage_bytes(),
            }),
            ..Default::default()
        }),
        writable_layer: Some(cri::FilesystemUsage {
            timestamp: now,
            fs_id: None,
            used_bytes: Some(cri::UInt64Value { value: 0 }),
            inodes_used: Some(cri::UInt64Value { value: 0 }),
        }),
        swap: None,
    }
}

fn required(id: &str, what: &str) -> Result<(), Status> {
    if id.is_empty() {
        Err(Status::invalid_argument(format!("{what} is required")))
    } else {
        Ok(())
    }
}

#[tonic::async_trait]
impl RuntimeService for WasmRuntime {
    async fn version(
        &self,
        _: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: super::RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: CRI_VERSION.into(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let req = req.into_inner();
        if !req.runtime_handler.is_empty() && req.runtime_handler != HANDLER {
            return Err(Status::invalid_argument(format!(
                "runtime handler {:?} is not served here (this runtime serves {HANDLER:?})",
                req.runtime_handler
            )));
        }
        let cfg = req
            .config
            .ok_or_else(|| Status::invalid_argument("sandbox config is required"))?;
        let sb = self.run_sandbox(sandbox_config(cfg))?;
        Ok(Response::new(cri::RunPodSandboxResponse {
            pod_sandbox_id: sb.id.clone(),
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        let id = req.into_inner().pod_sandbox_id;
        required(&id, "pod_sandbox_id")?;
        self.stop_sandbox(&id).await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        let id = req.into_inner().pod_sandbox_id;
        required(&id, "pod_sandbox_id")?;
        self.remove_sandbox(&id).await?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let req = req.into_inner();
        let sb = self.sandbox_status(&req.pod_sandbox_id)?;
        let containers_statuses = self
            .list_containers()
            .iter()
            .filter(|c| c.sandbox_id == sb.id)
            .map(|c| container_status(c))
            .collect();
        Ok(Response::new(cri::PodSandboxStatusResponse {
            status: Some(sandbox_status(&sb)),
            info: HashMap::new(),
            containers_statuses,
            timestamp: now_nanos(),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let filter = req.into_inner().filter.unwrap_or_default();
        let items = self
            .list_sandboxes()
            .iter()
            .filter(|sb| filter.id.is_empty() || sb.id == filter.id)
            .filter(|sb| {
                filter
                    .state
                    .as_ref()
                    .is_none_or(|s| s.state == sandbox_state(sb))
            })
            .filter(|sb| labels_match(&sb.config.labels, &filter.label_selector))
            .map(|sb| cri::PodSandbox {
                id: sb.id.clone(),
                metadata: Some(sandbox_metadata(sb)),
                state: sandbox_state(sb),
                created_at: sb.created_at,
                labels: sb.config.labels.clone(),
                annotations: sb.config.annotations.clone(),
                runtime_handler: HANDLER.into(),
            })
            .collect();
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        req: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let req = req.into_inner();
        required(&req.pod_sandbox_id, "pod_sandbox_id")?;
        let cfg = req
            .config
            .ok_or_else(|| Status::invalid_argument("container config is required"))?;
        let c =
            WasmRuntime::create_container(self, &req.pod_sandbox_id, container_config(cfg)).await?;
        Ok(Response::new(cri::CreateContainerResponse {
            container_id: c.id.clone(),
        }))
    }

    async fn start_container(
        &self,
        req: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        WasmRuntime::start_container(self, &req.into_inner().container_id)?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        req: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let req = req.into_inner();
        WasmRuntime::stop_container(self, &req.container_id, req.timeout).await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        WasmRuntime::remove_container(self, &req.into_inner().container_id).await?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let filter = req.into_inner().filter.unwrap_or_default();
        let containers = WasmRuntime::list_containers(self)
            .iter()
            .filter(|c| filter.id.is_empty() || c.id == filter.id)
            .filter(|c| filter.pod_sandbox_id.is_empty() || c.sandbox_id == filter.pod_sandbox_id)
            .filter(|c| {
                filter
                    .state
                    .as_ref()
                    .is_none_or(|s| s.state == container_state(c))
            })
            .filter(|c| labels_match(&c.config.labels, &filter.label_selector))
            .map(|c| cri::Container {
                id: c.id.clone(),
                pod_sandbox_id: c.sandbox_id.clone(),
                metadata: Some(container_metadata(c)),
                image: Some(image_spec(c)),
                image_ref: image_ref(c),
                state: container_state(c),
                created_at: c.created_at,
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
                image_id: c.image.id.clone(),
            })
            .collect();
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        req: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let c = WasmRuntime::container_status(self, &req.into_inner().container_id)?;
        Ok(Response::new(cri::ContainerStatusResponse {
            status: Some(container_status(&c)),
            info: HashMap::new(),
        }))
    }

    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let req = req.into_inner();
        let limit = req
            .linux
            .map(|l| l.memory_limit_in_bytes)
            .filter(|m| *m > 0)
            .map(|m| m as u64);
        self.update_memory_limit(&req.container_id, limit)?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        self.reopen_log(&req.into_inner().container_id)?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(
        &self,
        req: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let req = req.into_inner();
        let timeout = u64::try_from(req.timeout).ok().map(Duration::from_secs);
        let out = WasmRuntime::exec_sync(self, &req.container_id, &req.cmd, timeout).await?;
        Ok(Response::new(cri::ExecSyncResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
        }))
    }

    async fn exec(
        &self,
        req: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        let req = req.into_inner();
        let Some(urls) = &self.config().stream_urls else {
            return Err(Status::unimplemented(
                "streaming exec for Wasm containers is served by the kubelet, not this runtime",
            ));
        };
        if req.cmd.is_empty() {
            return Err(Status::invalid_argument("cmd must not be empty"));
        }
        let c = WasmRuntime::container_status(self, &req.container_id)?;
        if c.state().phase != ContainerPhase::Running {
            return Err(Status::failed_precondition(format!(
                "container {:?} is not running",
                req.container_id
            )));
        }
        let url = urls.exec_url(req)?;
        Ok(Response::new(cri::ExecResponse { url }))
    }

    async fn attach(
        &self,
        _: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        Err(Status::unimplemented(
            "attach for Wasm containers is served by the kubelet, not this runtime",
        ))
    }

    async fn port_forward(
        &self,
        req: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let req = req.into_inner();
        let Some(urls) = &self.config().stream_urls else {
            return Err(Status::unimplemented(
                "port-forward to Wasm pods is served by the kubelet, not this runtime",
            ));
        };
        let sb = self.sandbox_status(&req.pod_sandbox_id)?;
        if !sb.is_ready() {
            return Err(Status::failed_precondition(format!(
                "pod sandbox {:?} is not ready",
                req.pod_sandbox_id
            )));
        }
        let url = urls.port_forward_url(req)?;
        Ok(Response::new(cri::PortForwardResponse { url }))
    }

    async fn container_stats(
        &self,
        req: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let c = WasmRuntime::container_status(self, &req.into_inner().container_id)?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(container_stats(&c)),
        }))
    }

    async fn list_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let filter = req.into_inner().filter.unwrap_or_default();
        let stats = WasmRuntime::list_containers(self)
            .iter()
            .filter(|c| filter.id.is_empty() || c.id == filter.id)
            .filter(|c| filter.pod_sandbox_id.is_empty() || c.sandbox_id == filter.pod_sandbox_id)
            .filter(|c| labels_match(&c.config.labels, &filter.label_selector))
            .map(|c| container_stats(c))
            .collect();
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let sb = self.sandbox_status(&req.into_inner().pod_sandbox_id)?;
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(self.sandbox_stats(&sb)),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let filter = req.into_inner().filter.unwrap_or_default();
        let stats = self
            .list_sandboxes()
            .iter()
            .filter(|sb| filter.id.is_empty() || sb.id == filter.id)
            .filter(|sb| labels_match(&sb.config.labels, &filter.label_selector))
            .map(|sb| self.sandbox_stats(sb))
            .collect();
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }

    async fn update_runtime_config(
        &self,
        _: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        // The pod CIDR goes to the node's network module, not to this runtime.
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn status(
        &self,
        _: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        let cond = |t: &str| cri::RuntimeCondition {
            r#type: t.into(),
            status: true,
            reason: String::new(),
            message: String::new(),
        };
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![cond("RuntimeReady"), cond("NetworkReady")],
            }),
            info: HashMap::new(),
            runtime_handlers: vec![cri::RuntimeHandler {
                name: HANDLER.into(),
                features: Some(cri::RuntimeHandlerFeatures {
                    recursive_read_only_mounts: false,
                    user_namespaces: false,
                }),
            }],
            features: None,
        }))
    }

    async fn checkpoint_container(
        &self,
        _: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        Err(Status::unimplemented(
            "checkpointing Wasm containers is not supported",
        ))
    }

    type GetContainerEventsStream =
        tokio_stream::wrappers::ReceiverStream<Result<cri::ContainerEventResponse, Status>>;

    async fn get_container_events(
        &self,
        _: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Err(Status::unimplemented(
            "container events are not streamed; the kubelet relists (generic PLEG)",
        ))
    }

    async fn list_metric_descriptors(
        &self,
        _: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse {
            descriptors: vec![],
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        Ok(Response::new(cri::ListPodSandboxMetricsResponse {
            pod_metrics: vec![],
        }))
    }

    async fn runtime_config(
        &self,
        _: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        Ok(Response::new(cri::RuntimeConfigResponse { linux: None }))
    }
}

impl WasmRuntime {
    fn sandbox_stats(&self, sb: &Sandbox) -> cri::PodSandboxStats {
        let members: Vec<_> = self
            .list_containers()
            .into_iter()
            .filter(|c| c.sandbox_id == sb.id)
            .collect();
        let now = now_nanos();
        let cpu: u64 = members.iter().map(|c| c.cpu_usage_nanos()).sum();
        let mem: u64 = members.iter().map(|c| c.memory_usage_bytes()).sum();
        cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: sb.id.clone(),
                metadata: Some(sandbox_metadata(sb)),
                labels: sb.config.labels.clone(),
                annotations: sb.config.annotations.clone(),
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: Some(cri::CpuUsage {
                    timestamp: now,
                    usage_core_nano_seconds: Some(cri::UInt64Value { value: cpu }),
                    usage_nano_cores: None,
                }),
                memory: Some(cri::MemoryUsage {
                    timestamp: now,
                    working_set_bytes: Some(cri::UInt64Value { value: mem }),
                    usage_bytes: Some(cri::UInt64Value { value: mem }),
                    ..Default::default()
                }),
                network: None,
                process: Some(cri::ProcessUsage {
                    timestamp: now,
                    process_count: Some(cri::UInt64Value {
                        value: members
                            .iter()
                            .filter(|c| c.state().phase == ContainerPhase::Running)
                            .count() as u64,
                    }),
                }),
                containers: members.iter().map(|c| container_stats(c)).collect(),
            }),
            windows: None,
        }
    }
}
