//! `kelp runtime` end to end: the real binary serving CRI on a unix socket, a real
//! OCI registry (Debian's docker-registry) holding modules pushed with `kelp push`,
//! and a CRI client on the same generated bindings driving the whole sandbox,
//! container and image lifecycle.

#[path = "../runtime-wasm/tests/support/registry.rs"]
mod registry;

use registry::wait;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kelp_cri_api::tonic::transport::Channel;
use kelp_cri_api::tonic::Code;
use kelp_cri_api::v1 as cri;
use kelp_cri_api::v1::image_service_client::ImageServiceClient;
use kelp_cri_api::v1::runtime_service_client::RuntimeServiceClient;

fn example(target: &str, name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/wasm/target")
        .join(target)
        .join("release")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-wasm-examples.sh",
        p.display()
    );
    p
}

fn kelp() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kelp"))
}

/// `kelp runtime` on a socket in a temp dir, killed by pid on drop.
struct RuntimeProcess {
    child: Child,
    socket: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
}

impl RuntimeProcess {
    fn start(dir: &Path) -> RuntimeProcess {
        let socket = dir.join("cri.sock");
        let data_dir = dir.join("node");
        let log = dir.join("runtime.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = kelp()
            .arg("runtime")
            .arg("--listen")
            .arg(format!("unix://{}", socket.display()))
            .arg("--data-dir")
            .arg(&data_dir)
            .env("KELP_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawning kelp runtime");
        RuntimeProcess {
            child,
            socket,
            data_dir,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn connect(&mut self) -> (RuntimeServiceClient<Channel>, ImageServiceClient<Channel>) {
        let endpoint = format!("unix://{}", self.socket.display());
        let deadline = wait::Deadline::after(Duration::from_secs(60));
        loop {
            if self.socket.exists() {
                if let Ok(c) = kelp_cri_api::connect(&endpoint).await {
                    return c;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("kelp runtime exited with {status}:\n{}", self.log());
            }
            assert!(
                deadline.tick().await,
                "kelp runtime did not serve {endpoint}:\n{}",
                self.log()
            );
        }
    }
}

impl Drop for RuntimeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn push(file: &Path, reference: &str) {
    let out = kelp()
        .arg("push")
        .arg(file)
        .arg(reference)
        .output()
        .expect("running kelp push");
    assert!(
        out.status.success(),
        "kelp push {reference} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn status_of(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> cri::ContainerStatus {
    rt.container_status(cri::ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .expect("ContainerStatus")
    .into_inner()
    .status
    .expect("a status")
}

/// Polls ContainerStatus until `cond` holds (bounded).
async fn wait_status(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
    what: &str,
    cond: impl Fn(&cri::ContainerStatus) -> bool,
) -> cri::ContainerStatus {
    let deadline = wait::Deadline::after(Duration::from_secs(30));
    loop {
        let st = status_of(rt, id).await;
        if cond(&st) {
            return st;
        }
        assert!(deadline.tick().await, "container never {what}: {st:?}");
    }
}

fn sandbox_config(name: &str, logs: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.display().to_string(),
        labels: HashMap::from([("app".into(), name.into())]),
        ..Default::default()
    }
}

fn container_config(name: &str, image: &str, args: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        args: args.iter().map(|s| s.to_string()).collect(),
        envs: vec![cri::KeyValue {
            key: "GREETING".into(),
            value: "hi".into(),
        }],
        log_path: format!("{name}/0.log"),
        labels: HashMap::from([("container".into(), name.into())]),
        ..Default::default()
    }
}

fn image_spec(r: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: r.into(),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_lifecycle_over_grpc_against_a_real_registry() {
    let dir = tempfile::tempdir().unwrap();
    let reg = registry::Registry::start();
    let hello_ref = format!("{}/kelp/hello:v1", reg.addr);
    let counter_ref = format!("{}/kelp/counter:v1", reg.addr);
    push(&example("wasm32-wasip1", "hello"), &hello_ref);
    push(&example("wasm32-wasip1", "counter"), &counter_ref);

    let mut proc = RuntimeProcess::start(dir.path());
    let (mut rt, mut img) = proc.connect().await;

    // Version and Status: the runtime names itself and serves the wasm handler.
    let v = rt
        .version(cri::VersionRequest {
            version: "v1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_api_version, "v1");
    assert_eq!(v.runtime_name, "kelp-wasm");
    let st = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert!(st.runtime_handlers.iter().any(|h| h.name == "wasm"));
    assert!(st
        .status
        .unwrap()
        .conditions
        .iter()
        .any(|c| c.r#type == "RuntimeReady" && c.status));

    // Images: pull, list, status; a missing image is NotFound.
    for r in [&hello_ref, &counter_ref] {
        let pulled = img
            .pull_image(cri::PullImageRequest {
                image: image_spec(r),
                auth: None,
                sandbox_config: None,
            })
            .await
            .unwrap_or_else(|e| panic!("pull {r}: {e}\n{}", proc.log()))
            .into_inner();
        assert!(pulled.image_ref.starts_with("sha256:"), "{pulled:?}");
    }
    let listed = img
        .list_images(cri::ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().any(|i| i.repo_tags.contains(&hello_ref)));
    let status = img
        .image_status(cri::ImageStatusRequest {
            image: image_spec(&hello_ref),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    let hello_image = status.image.expect("hello is present");
    assert!(hello_image.size > 0);
    let missing = img
        .pull_image(cri::PullImageRequest {
            image: image_spec(&format!("{}/kelp/nope:v1", reg.addr)),
            auth: None,
            sandbox_config: None,
        })
        .await
        .expect_err("pulling an image that is not there");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    // A sandbox and a command container that runs to completion.
    let logs = dir.path().join("pods/hello");
    let sandbox_id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox_config("hello", &logs)),
            runtime_handler: "wasm".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let sb = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: sandbox_id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(sb.state, cri::PodSandboxState::SandboxReady as i32);
    assert!(!sb.network.unwrap().ip.is_empty());

    let hello_id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.clone(),
            config: Some(container_config("hello", &hello_ref, &["--stderr"])),
            sandbox_config: Some(sandbox_config("hello", &logs)),
        })
        .await
        .unwrap_or_else(|e| panic!("create hello: {e}\n{}", proc.log()))
        .into_inner()
        .container_id;
    let created = status_of(&mut rt, &hello_id).await;
    assert_eq!(created.state, cri::ContainerState::ContainerCreated as i32);
    rt.start_container(cri::StartContainerRequest {
        container_id: hello_id.clone(),
    })
    .await
    .unwrap();
    let done = wait_status(&mut rt, &hello_id, "exited", |s| {
        s.state == cri::ContainerState::ContainerExited as i32
    })
    .await;
    assert_eq!(done.exit_code, 0, "{done:?}");
    assert_eq!(done.reason, "Completed");
    assert!(done.started_at > 0 && done.finished_at >= done.started_at);
    assert_eq!(done.image_id, hello_image.id);
    let log = std::fs::read_to_string(logs.join("hello/0.log")).expect("the CRI log file");
    assert!(log.contains(" stdout F Hello from Kelp"), "{log}");
    assert!(log.contains(" stdout F HOSTNAME=hello"), "{log}");
    assert!(log.contains(" stdout F args: hello --stderr"), "{log}");
    assert!(log.contains(" stderr F hello on stderr"), "{log}");

    // A long-running container: logs grow, exec runs a command in its context,
    // stats count its CPU, a graceful stop ends it with 143.
    let counter_id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.clone(),
            config: Some(container_config("counter", &counter_ref, &[])),
            sandbox_config: None,
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: counter_id.clone(),
    })
    .await
    .unwrap();
    let counter_log = logs.join("counter/0.log");
    let counted = wait::until(Duration::from_secs(30), || {
        std::future::ready(
            std::fs::read_to_string(&counter_log)
                .unwrap_or_default()
                .contains("count 1"),
        )
    })
    .await;
    assert!(counted, "counter never logged twice");
    let running = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(
        running.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        vec![counter_id.as_str()]
    );
    let exec = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: counter_id.clone(),
            cmd: vec!["counter".into(), "--once".into()],
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exec.exit_code, 0);
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "count 0\n");
    let timed_out = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: counter_id.clone(),
            cmd: vec!["counter".into()],
            timeout: 1,
        })
        .await
        .expect_err("a command that outlives its timeout");
    assert_eq!(timed_out.code(), Code::DeadlineExceeded);
    let stats = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: counter_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert!(stats.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);
    assert!(stats.memory.unwrap().working_set_bytes.unwrap().value > 0);
    rt.stop_container(cri::StopContainerRequest {
        container_id: counter_id.clone(),
        timeout: 30,
    })
    .await
    .unwrap();
    let stopped = status_of(&mut rt, &counter_id).await;
    assert_eq!(stopped.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(stopped.exit_code, 143, "{stopped:?}");

    // Errors carry CRI codes.
    let err = rt
        .start_container(cri::StartContainerRequest {
            container_id: "nope".into(),
        })
        .await
        .expect_err("starting an unknown container");
    assert_eq!(err.code(), Code::NotFound);
    let err = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.clone(),
            config: Some(container_config("x", "127.0.0.1:1/absent:v1", &[])),
            sandbox_config: None,
        })
        .await
        .expect_err("creating from an image that was never pulled");
    assert_eq!(err.code(), Code::NotFound);

    // Teardown: containers, sandbox, image.
    for id in [&hello_id, &counter_id] {
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: id.to_string(),
        })
        .await
        .unwrap();
    }
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: sandbox_id.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: sandbox_id.clone(),
    })
    .await
    .unwrap();
    let left = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(left.is_empty(), "{left:?}");
    img.remove_image(cri::RemoveImageRequest {
        image: image_spec(&hello_ref),
    })
    .await
    .unwrap();
    let gone = img
        .image_status(cri::ImageStatusRequest {
            image: image_spec(&hello_ref),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(gone.image.is_none());
    let fs = img
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(fs.image_filesystems[0].used_bytes.as_ref().unwrap().value > 0);
    assert!(proc.data_dir.join("runtime/images").exists());
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_and_exec_urls_come_from_the_runtimes_streaming_server() {
    use kelp_node_agent::CriRuntime;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let reg = registry::Registry::start();
    let web_ref = format!("{}/kelp/http-hello:v1", reg.addr);
    push(&example("wasm32-wasip2", "http_hello"), &web_ref);
    let mut proc = RuntimeProcess::start(dir.path());
    let (_, mut img) = proc.connect().await;
    img.pull_image(cri::PullImageRequest {
        image: image_spec(&web_ref),
        auth: None,
        sandbox_config: None,
    })
    .await
    .expect("PullImage");
    let endpoint = format!("unix://{}", proc.socket.display());
    let rt = kelp_node_agent::RemoteRuntime::connect(&endpoint)
        .await
        .expect("connect");

    let port = free_port();
    let mut sandbox = sandbox_config("web", &dir.path().join("logs"));
    sandbox.annotations.insert(
        kelp_runtime_wasm::service::POD_IP_ANNOTATION.into(),
        "127.0.0.1".into(),
    );
    let sandbox_id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            runtime_handler: "wasm".into(),
        })
        .await
        .expect("RunPodSandbox")
        .pod_sandbox_id;
    let mut web = container_config("web", &web_ref, &[]);
    web.annotations.insert(
        kelp_runtime_wasm::service::CONTAINER_PORTS_ANNOTATION.into(),
        format!(r#"[{{"containerPort":{port},"protocol":"TCP"}}]"#),
    );
    let web_id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.clone(),
            config: Some(web),
            sandbox_config: Some(sandbox),
        })
        .await
        .expect("CreateContainer")
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: web_id.clone(),
    })
    .await
    .expect("StartContainer");

    // Port-forward as the kubelet relays it for a runtime in another process: CRI
    // PortForward gives a URL, a SPDY session there carries the connection.
    let dial = kelp_node_agent::server::relay::cri_port_dialer(
        std::sync::Arc::new(rt.clone()),
        sandbox_id.clone(),
        "default/web".into(),
        "uid-web".into(),
    );
    let deadline = wait::Deadline::after(Duration::from_secs(30));
    let body = loop {
        let mut conn = dial(port).await.expect("port-forward session");
        conn.write_all(b"GET /through-the-runtime HTTP/1.0\r\nHost: web\r\n\r\n")
            .await
            .unwrap();
        let mut body = Vec::new();
        let _ = conn.read_to_end(&mut body).await;
        let body = String::from_utf8_lossy(&body).to_string();
        // The component may still be binding its port.
        if body.contains("Hello from Kelp") || !deadline.tick().await {
            break body;
        }
    };
    assert!(
        body.contains("Hello from Kelp over wasi:http") && body.contains("/through-the-runtime"),
        "{body:?}\n{}",
        proc.log()
    );

    // An exec URL needs the SPDY upgrade, and serves once.
    let url = rt
        .exec(cri::ExecRequest {
            container_id: web_id.clone(),
            cmd: vec!["x".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .expect("Exec")
        .url;
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_once('/').unwrap();
    let status_of_request = |upgrade: bool| {
        let (host, path) = (host.to_string(), path.to_string());
        async move {
            let mut s = tokio::net::TcpStream::connect(&host).await.unwrap();
            let extra = if upgrade {
                "Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n"
            } else {
                ""
            };
            let req = format!(
                "POST /{path} HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: 0\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await.unwrap();
            let mut buf = [0u8; 12];
            s.read_exact(&mut buf).await.unwrap();
            String::from_utf8_lossy(&buf[9..12]).to_string()
        }
    };
    assert_eq!(status_of_request(false).await, "400");
    assert_eq!(status_of_request(true).await, "101");
    assert_eq!(status_of_request(true).await, "404");
    let err = rt
        .exec(cri::ExecRequest {
            container_id: "nope".into(),
            cmd: vec!["x".into()],
            ..Default::default()
        })
        .await
        .expect_err("exec in an unknown container");
    assert_eq!(err.code(), Code::NotFound);
    let err = rt
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: "nope".into(),
            port: vec![80],
        })
        .await
        .expect_err("port-forward to an unknown sandbox");
    assert_eq!(err.code(), Code::NotFound);
}
