//! WASI preview 2 command components (and the preview 1 build of the same program):
//! args, env, HOSTNAME, exit codes, stdin, the network policy, the working
//! directory, limits and stop — on the `hello` and `counter` examples
//! (scripts/build-wasm-examples.sh builds them).

#[path = "support/dns.rs"]
mod dns;
#[path = "support/wait.rs"]
mod wait;
mod wasm_examples;

use std::time::Duration;

use kelp_runtime_wasm::container::run;
use kelp_runtime_wasm::http::exports_http_handler;
use kelp_runtime_wasm::{Artifact, ContainerSpec, ExitReason, StopHandle, WasmEngine};

const P1: &str = "wasm32-wasip1";
const P2: &str = "wasm32-wasip2";

fn spec(dir: &std::path::Path, name: &str, args: &[&str]) -> ContainerSpec {
    let mut argv = vec![name.to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    ContainerSpec {
        args: argv,
        log_path: dir.join(format!("{name}.log")),
        ..Default::default()
    }
}

/// `STREAM TAG MESSAGE` of each CRI log record.
fn log_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.splitn(4, ' ').collect::<Vec<_>>())
        .filter(|p| p.len() == 4)
        .map(|p| format!("{} {} {}", p[1], p[2], p[3]))
        .collect()
}

fn stdout(path: &std::path::Path) -> Vec<String> {
    log_lines(path)
        .into_iter()
        .filter_map(|l| l.strip_prefix("stdout F ").map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_runs_as_module_and_component() {
    let dir = tempfile::tempdir().unwrap();
    let engine = WasmEngine::new(None).unwrap();
    for target in [P1, P2] {
        let artifact = engine
            .compile(&wasm_examples::bytes(target, "hello"))
            .unwrap();
        assert_eq!(artifact.is_component(), target == P2);
        let mut s = spec(dir.path(), &format!("hello-{target}"), &["a", "b c"]);
        s.hostname = Some("pod-1".into());
        s.env = vec![("GREETING".into(), "hi".into())];
        let st = run(&engine, &artifact, &s, &StopHandle::default())
            .await
            .unwrap();
        assert_eq!((st.code, st.reason), (0, ExitReason::Completed), "{st:?}");
        assert_eq!(
            stdout(&s.log_path),
            vec![
                "Hello from Kelp".to_string(),
                format!("args: hello-{target} a b c"),
                "HOSTNAME=pod-1".into()
            ],
            "{target}"
        );

        // The env's own HOSTNAME wins; EXIT_CODE makes it exit non-zero.
        let mut s = spec(dir.path(), &format!("exit-{target}"), &["--stderr"]);
        s.hostname = Some("pod-1".into());
        s.env = vec![
            ("HOSTNAME".into(), "from-env".into()),
            ("EXIT_CODE".into(), "3".into()),
        ];
        let st = run(&engine, &artifact, &s, &StopHandle::default())
            .await
            .unwrap();
        // Rust's std for wasip2 reports a non-zero exit through `wasi:cli/exit.exit(err)`,
        // which only says "failed": exit code 1. (Guests calling `exit-with-code`, which
        // is linked, get their code through.)
        let expected = if target == P1 { 3 } else { 1 };
        assert_eq!(
            (st.code, st.reason),
            (expected, ExitReason::Error),
            "{target}: {st:?}"
        );
        let lines = log_lines(&s.log_path);
        assert!(
            lines.contains(&"stdout F HOSTNAME=from-env".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"stderr F hello on stderr".to_string()),
            "{lines:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_is_closed_unless_given() {
    let dir = tempfile::tempdir().unwrap();
    let engine = WasmEngine::new(None).unwrap();
    for target in [P1, P2] {
        let artifact = engine
            .compile(&wasm_examples::bytes(target, "hello"))
            .unwrap();
        let s = spec(dir.path(), &format!("closed-{target}"), &["--stdin"]);
        let st = run(&engine, &artifact, &s, &StopHandle::default())
            .await
            .unwrap();
        assert_eq!(st.code, 0, "{st:?}");
        assert!(
            stdout(&s.log_path)
                .iter()
                .any(|l| l.trim_end() == "stdin: 0 bytes:"),
            "{target}: {:?}",
            stdout(&s.log_path)
        );

        let mut s = spec(dir.path(), &format!("given-{target}"), &["--stdin"]);
        s.stdin = Some(b"some input\n".to_vec());
        let st = run(&engine, &artifact, &s, &StopHandle::default())
            .await
            .unwrap();
        assert_eq!(st.code, 0, "{st:?}");
        assert!(
            stdout(&s.log_path).contains(&"stdin: 11 bytes: some input".to_string()),
            "{target}: {:?}",
            stdout(&s.log_path)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_are_denied_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let engine = WasmEngine::new(None).unwrap();
    let artifact = engine.compile(&wasm_examples::bytes(P2, "hello")).unwrap();

    let s = spec(dir.path(), "denied", &["--net"]);
    let st = run(&engine, &artifact, &s, &StopHandle::default())
        .await
        .unwrap();
    assert_eq!(st.code, 0, "{st:?}");
    let denied = stdout(&s.log_path);
    assert!(
        denied
            .iter()
            .any(|l| l.starts_with("net: PermissionDenied")),
        "{denied:?}"
    );

    // Allowed, the same connection gets as far as the host's network: port 9 on
    // loopback has no listener, so it is refused rather than denied.
    let mut s = spec(dir.path(), "allowed", &["--net"]);
    s.allow_network = true;
    let st = run(&engine, &artifact, &s, &StopHandle::default())
        .await
        .unwrap();
    assert_eq!(st.code, 0, "{st:?}");
    let allowed = stdout(&s.log_path);
    let line = allowed.iter().find(|l| l.starts_with("net: ")).unwrap();
    assert!(!line.starts_with("net: PermissionDenied"), "{allowed:?}");
}

/// A pod address on loopback (what a node without CAP_NET_ADMIN hands out), so the
/// test needs no interface of its own.
fn pod_origin(ip: &str) -> kelp_runtime_wasm::outbound::Origin {
    kelp_runtime_wasm::outbound::Origin {
        ip: ip.parse().unwrap(),
        cluster: std::sync::Arc::from(vec!["10.42.0.0/16".parse::<ipnet::IpNet>().unwrap()]),
    }
}

/// Runs `hello ARGS` with network access and pod address `origin` to a 0 exit;
/// its stdout.
async fn run_networked(
    engine: &WasmEngine,
    artifact: &Artifact,
    dir: &std::path::Path,
    name: &str,
    args: &[&str],
    origin: Option<kelp_runtime_wasm::outbound::Origin>,
) -> Vec<String> {
    let mut s = spec(dir, name, args);
    s.allow_network = true;
    s.origin = origin;
    let st = run(engine, artifact, &s, &StopHandle::default())
        .await
        .unwrap();
    assert_eq!(st.code, 0, "{name}: {st:?}");
    stdout(&s.log_path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_connect_from_and_serve_on_the_pods_address() {
    let dir = tempfile::tempdir().unwrap();
    let engine = WasmEngine::new(None).unwrap();
    let artifact = engine.compile(&wasm_examples::bytes(P2, "hello")).unwrap();
    let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = peer.local_addr().unwrap().to_string();

    // Connects leave from the pod's address; without one, from the node's.
    for (name, origin, from) in [
        ("pod", Some(pod_origin("127.0.0.77")), "127.0.0.77"),
        ("node", None, "127.0.0.1"),
    ] {
        let out = run_networked(
            &engine,
            &artifact,
            dir.path(),
            name,
            &["--connect", &target],
            origin,
        )
        .await;
        let (_conn, seen) = peer.accept().unwrap();
        assert_eq!(seen.ip().to_string(), from, "{name}");
        let want = format!("connect {target}: from {seen}");
        assert!(out.contains(&want), "{name}: {out:?}");
    }

    // UDP from a socket bound to 0.0.0.0:0: a connected one sends from the pod's
    // address to a destination on this node; an unconnected one (sendto), whose
    // destinations may vary, from the node's, as without a pod address.
    let udp_peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp_peer
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let udp_target = udp_peer.local_addr().unwrap().to_string();
    for (name, flag, origin, from) in [
        (
            "udp-pod",
            "--udp",
            Some(pod_origin("127.0.0.79")),
            "127.0.0.79",
        ),
        ("udp-node", "--udp", None, "127.0.0.1"),
        (
            "udp-sendto",
            "--udp-sendto",
            Some(pod_origin("127.0.0.79")),
            "0.0.0.0",
        ),
    ] {
        let out = run_networked(
            &engine,
            &artifact,
            dir.path(),
            name,
            &[flag, &udp_target],
            origin,
        )
        .await;
        let mut buf = [0u8; 64];
        let (n, seen) = udp_peer.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"datagram from Kelp", "{name}");
        let want_ip = if from == "0.0.0.0" { "127.0.0.1" } else { from };
        assert_eq!(seen.ip().to_string(), want_ip, "{name}: {out:?}");
        let want = format!("udp {udp_target}: from {from}:{}", seen.port());
        assert!(out.contains(&want), "{name}: {out:?} lacks {want:?}");
    }

    // A server on 0.0.0.0:PORT listens on the pod's address only, so another pod (or
    // the node) can serve the same port on its own address.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.78:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let on_node = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let mut s = spec(
        dir.path(),
        "serve",
        &["--serve", &format!("0.0.0.0:{port}")],
    );
    s.allow_network = true;
    s.origin = Some(pod_origin("127.0.0.78"));
    let server = {
        let (engine, artifact, s) = (engine.clone(), artifact.clone(), s.clone());
        tokio::spawn(async move { run(&engine, &artifact, &s, &StopHandle::default()).await })
    };
    let pod_addr = std::net::SocketAddr::from(([127, 0, 0, 78], port));
    let answered = wait::until(Duration::from_secs(30), || async move {
        let Ok(mut c) = tokio::net::TcpStream::connect(pod_addr).await else {
            return false;
        };
        let mut line = String::new();
        let read = tokio::io::AsyncReadExt::read_to_string(&mut c, &mut line).await;
        read.is_ok() && line == "served by Kelp\n"
    })
    .await;
    assert!(
        answered,
        "the pod answers on {pod_addr}: {:?}",
        stdout(&s.log_path)
    );
    let st = server.await.unwrap().unwrap();
    assert_eq!(st.code, 0, "{st:?}");
    let out = stdout(&s.log_path);
    assert!(
        out.contains(&format!("serve 0.0.0.0:{port}: bound {pod_addr}")),
        "{out:?}"
    );
    drop(on_node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn working_dir_is_the_initial_cwd() {
    let dir = tempfile::tempdir().unwrap();
    let engine = WasmEngine::new(None).unwrap();
    let artifact = engine.compile(&wasm_examples::bytes(P2, "hello")).unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut s = spec(dir.path(), "cwd", &["--cwd"]);
    s.mounts = vec![kelp_runtime_wasm::Mount {
        host_path: data.path().into(),
        guest_path: "/work".into(),
        read_only: true,
    }];
    s.working_dir = Some("/work".into());
    let st = run(&engine, &artifact, &s, &StopHandle::default())
        .await
        .unwrap();
    assert_eq!(st.code, 0, "{st:?}");
    let out = stdout(&s.log_path);
    assert!(
        out.iter()
            .any(|l| l.starts_with("cwd: ") && l.ends_with("PWD=/work")),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_limits_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let engine = WasmEngine::new(None).unwrap();
    let hello = engine.compile(&wasm_examples::bytes(P2, "hello")).unwrap();

    // Far too little memory for the component's instances together.
    let mut s = spec(dir.path(), "oom", &[]);
    s.memory_limit = Some(64 * 1024);
    let st = run(&engine, &hello, &s, &StopHandle::default())
        .await
        .unwrap();
    assert_eq!((st.code, st.reason), (137, ExitReason::OomKilled), "{st:?}");

    // A CPU limit throttles but does not break a run.
    let mut s = spec(dir.path(), "cpu", &[]);
    s.cpu_limit_millis = Some(100);
    let st = run(&engine, &hello, &s, &StopHandle::default())
        .await
        .unwrap();
    assert_eq!(st.code, 0, "{st:?}");

    // The counter runs until stopped.
    let counter = engine
        .compile(&wasm_examples::bytes(P2, "counter"))
        .unwrap();
    let s = spec(dir.path(), "counter", &[]);
    let stop = StopHandle::default();
    let task = {
        let (engine, s, stop) = (engine.clone(), s.clone(), stop.clone());
        tokio::spawn(async move { run(&engine, &counter, &s, &stop).await })
    };
    let counted = wait::until(Duration::from_secs(30), || {
        std::future::ready(stdout(&s.log_path).contains(&"count 1".to_string()))
    })
    .await;
    assert!(counted, "the counter never counted");
    stop.stop();
    let st = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("stopped")
        .unwrap()
        .unwrap();
    assert_eq!((st.code, st.reason), (137, ExitReason::Killed), "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_components_are_told_apart_and_not_run_as_commands() {
    let dir = tempfile::tempdir().unwrap();
    let engine = WasmEngine::new(None).unwrap();
    let Artifact::Component(http) = engine
        .compile(&wasm_examples::bytes(P2, "http_hello"))
        .unwrap()
    else {
        panic!("http_hello is a component")
    };
    let Artifact::Component(hello) = engine.compile(&wasm_examples::bytes(P2, "hello")).unwrap()
    else {
        panic!("hello for wasip2 is a component")
    };
    assert!(exports_http_handler(&http, &engine));
    assert!(!exports_http_handler(&hello, &engine));
    let err = run(
        &engine,
        &Artifact::Component(http),
        &spec(dir.path(), "http-as-command", &[]),
        &StopHandle::default(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("serve"), "{err}");
}

#[test]
fn component_compile_cache_is_reused() {
    let cache = tempfile::tempdir().unwrap();
    let bytes = wasm_examples::bytes(P2, "hello");
    let engine = WasmEngine::new(Some(cache.path())).unwrap();
    assert!(engine.compile(&bytes).unwrap().is_component());
    let files: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one cached compilation: {files:?}");
    let modified = std::fs::metadata(&files[0]).unwrap().modified().unwrap();
    // A new engine (a restarted node) loads it instead of compiling.
    let engine = WasmEngine::new(Some(cache.path())).unwrap();
    assert!(engine.compile(&bytes).unwrap().is_component());
    assert_eq!(
        modified,
        std::fs::metadata(&files[0]).unwrap().modified().unwrap()
    );
}

/// A DNS server on 127.0.0.1 answering `web.shop.svc.cluster.local` A 10.1.2.3 and
/// NXDOMAIN for everything else; its address.
fn cluster_dns() -> std::net::SocketAddr {
    dns::server(vec![(
        "web.shop.svc.cluster.local.",
        std::net::Ipv4Addr::new(10, 1, 2, 3),
    )])
}

/// wasi-sockets name lookups follow the pod's DNS config: a Service name, short or
/// full, resolves through cluster DNS (the host's resolver knows nothing of it); a
/// missing cluster name is unresolvable; without network access lookups are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_lookups_use_the_pods_dns() {
    let dir = tempfile::tempdir().unwrap();
    let engine = WasmEngine::new(None).unwrap();
    let artifact = engine.compile(&wasm_examples::bytes(P2, "hello")).unwrap();
    let dns = kelp_cri_api::v1::DnsConfig {
        servers: vec![cluster_dns().to_string()],
        searches: vec![
            "shop.svc.cluster.local".into(),
            "svc.cluster.local".into(),
            "cluster.local".into(),
        ],
        options: vec!["ndots:5".into()],
    };
    let names = [
        "web",
        "web.shop.svc.cluster.local",
        "gone.shop.svc.cluster.local",
    ];
    let args: Vec<&str> = names.iter().flat_map(|n| ["--resolve", n]).collect();
    let mut s = spec(dir.path(), "lookups", &args);
    s.allow_network = true;
    s.resolver = kelp_runtime_wasm::dns::PodResolver::from_cri(&dns).map(std::sync::Arc::new);
    let st = run(&engine, &artifact, &s, &StopHandle::default())
        .await
        .unwrap();
    assert_eq!(st.code, 0, "{st:?}");
    let out = stdout(&s.log_path);
    for want in [
        "resolve web: 10.1.2.3",
        "resolve web.shop.svc.cluster.local: 10.1.2.3",
    ] {
        assert!(out.iter().any(|l| l == want), "{want:?} in {out:?}");
    }
    let gone = out.iter().find(|l| l.starts_with("resolve gone.")).unwrap();
    assert!(!gone.contains("10."), "{out:?}");

    let mut s = spec(dir.path(), "no-network", &["--resolve", "web"]);
    s.resolver = kelp_runtime_wasm::dns::PodResolver::from_cri(&dns).map(std::sync::Arc::new);
    run(&engine, &artifact, &s, &StopHandle::default())
        .await
        .unwrap();
    let out = stdout(&s.log_path);
    assert!(
        out.iter()
            .any(|l| l.starts_with("resolve web: ") && !l.contains("10.1.2.3")),
        "{out:?}"
    );
}
