//! Client libraries against Kelp: kube-rs 5 (typed CRUD, server-side apply, raw watch and
//! `kube::runtime::watcher`) and the official Python `kubernetes` client
//! (tests/python/crud_watch.py).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::runtime::watcher;
use serde_json::json;

use common::{Backend, Cluster};

const TIMEOUT: Duration = Duration::from_secs(30);

fn cm(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(
                "team".to_string(),
                "kube-rs".to_string(),
            )])),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    }
}

fn data(c: &ConfigMap) -> BTreeMap<String, String> {
    c.data.clone().unwrap_or_default()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What the `kube::runtime::watcher` reported, simplified.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Applied(String, BTreeMap<String, String>),
    Deleted(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_crud_and_watch() {
    let c = Cluster::start(Backend::Sqlite);
    let client = c.kube_client().await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    // kube::runtime::watcher, started first; wait for its initial list to finish.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut events = watcher(
        api.clone(),
        watcher::Config::default().labels("team=kube-rs"),
    )
    .boxed();
    let watcher_task = tokio::spawn(async move {
        loop {
            match events.try_next().await {
                Ok(Some(ev)) => {
                    if tx.send(Ok(ev)).is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                }
            }
        }
    });
    loop {
        match tokio::time::timeout(TIMEOUT, rx.recv()).await {
            Ok(Some(Ok(watcher::Event::InitDone))) => break,
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => panic!("watcher error during the initial list: {e}"),
            Ok(None) => panic!("watcher ended"),
            Err(_) => panic!("watcher did not finish its initial list in {TIMEOUT:?}"),
        }
    }
    // A raw watch from the current list's resourceVersion, for exact event types.
    let list = api
        .list(&ListParams::default().labels("team=kube-rs"))
        .await
        .expect("list");
    assert!(list.items.is_empty(), "{:?}", list.items);
    let rv = list
        .metadata
        .resource_version
        .clone()
        .expect("list resourceVersion");
    let mut raw = api
        .watch(
            &WatchParams::default().labels("team=kube-rs").timeout(60),
            &rv,
        )
        .await
        .expect("watch")
        .boxed();

    // create / get / list
    let created = api
        .create(&PostParams::default(), &cm("from-kube-rs", &[("k", "1")]))
        .await
        .expect("create");
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.namespace.as_deref(), Some("default"));
    let got = api.get("from-kube-rs").await.expect("get");
    assert_eq!(data(&got), map(&[("k", "1")]));
    assert_eq!(
        got.metadata.resource_version,
        created.metadata.resource_version
    );
    assert!(api.get_opt("absent").await.expect("get_opt").is_none());
    let list = api
        .list(&ListParams::default().labels("team=kube-rs"))
        .await
        .expect("list");
    assert_eq!(
        list.items
            .iter()
            .map(|i| i.metadata.name.clone().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["from-kube-rs"]
    );
    let by_field = api
        .list(&ListParams::default().fields("metadata.name=from-kube-rs"))
        .await
        .expect("list by field");
    assert_eq!(by_field.items.len(), 1);

    // replace, and a stale replace
    let mut next = got.clone();
    next.data = Some(map(&[("k", "2")]));
    let replaced = api
        .replace("from-kube-rs", &PostParams::default(), &next)
        .await
        .expect("replace");
    assert_eq!(data(&replaced), map(&[("k", "2")]));
    assert_ne!(
        replaced.metadata.resource_version,
        got.metadata.resource_version
    );
    match api
        .replace("from-kube-rs", &PostParams::default(), &got)
        .await
    {
        Err(kube::Error::Api(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"), "{e:?}")
        }
        other => panic!("a stale replace must be a 409 Conflict, got {other:?}"),
    }

    // patch: merge, then server-side apply (create and update)
    let merged = api
        .patch(
            "from-kube-rs",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"m": "merged"}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(data(&merged), map(&[("k", "2"), ("m", "merged")]));
    let applied = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "applied-kube-rs", "labels": {"team": "kube-rs"}},
        "data": {"a": "1", "b": "2"}
    });
    let pp = PatchParams::apply("kelp-e2e");
    let a = api
        .patch("applied-kube-rs", &pp, &Patch::Apply(&applied))
        .await
        .expect("apply creates");
    assert_eq!(data(&a), map(&[("a", "1"), ("b", "2")]));
    let mf = a.metadata.managed_fields.clone().unwrap_or_default();
    assert_eq!(mf.len(), 1, "{mf:?}");
    assert_eq!(mf[0].manager.as_deref(), Some("kelp-e2e"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    let applied2 = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "applied-kube-rs", "labels": {"team": "kube-rs"}},
        "data": {"a": "1"}
    });
    let a = api
        .patch("applied-kube-rs", &pp, &Patch::Apply(&applied2))
        .await
        .expect("apply updates");
    assert_eq!(
        data(&a),
        map(&[("a", "1")]),
        "an applied field dropped is removed"
    );

    // delete
    api.delete("from-kube-rs", &DeleteParams::default())
        .await
        .expect("delete");
    match api.get("from-kube-rs").await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 404, "{e:?}"),
        other => panic!("get after delete must be 404, got {other:?}"),
    }
    api.delete("applied-kube-rs", &DeleteParams::default())
        .await
        .expect("delete");

    // The raw watch saw exactly these changes, in order.
    let want = vec![
        ("ADDED", "from-kube-rs", map(&[("k", "1")])),
        ("MODIFIED", "from-kube-rs", map(&[("k", "2")])),
        (
            "MODIFIED",
            "from-kube-rs",
            map(&[("k", "2"), ("m", "merged")]),
        ),
        ("ADDED", "applied-kube-rs", map(&[("a", "1"), ("b", "2")])),
        ("MODIFIED", "applied-kube-rs", map(&[("a", "1")])),
        (
            "DELETED",
            "from-kube-rs",
            map(&[("k", "2"), ("m", "merged")]),
        ),
        ("DELETED", "applied-kube-rs", map(&[("a", "1")])),
    ];
    let mut got_raw = Vec::new();
    while got_raw.len() < want.len() {
        let ev = tokio::time::timeout(TIMEOUT, raw.try_next())
            .await
            .unwrap_or_else(|_| panic!("raw watch: only {got_raw:?} within {TIMEOUT:?}"))
            .expect("raw watch error")
            .unwrap_or_else(|| panic!("raw watch ended after {got_raw:?}"));
        let (t, o) = match ev {
            WatchEvent::Added(o) => ("ADDED", o),
            WatchEvent::Modified(o) => ("MODIFIED", o),
            WatchEvent::Deleted(o) => ("DELETED", o),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => panic!("watch ERROR event: {e:?}"),
        };
        got_raw.push((t, o.metadata.name.clone().unwrap_or_default(), data(&o)));
    }
    let got_cmp: Vec<(&str, &str, BTreeMap<String, String>)> = got_raw
        .iter()
        .map(|(t, n, d)| (*t, n.as_str(), d.clone()))
        .collect();
    assert_eq!(got_cmp, want, "raw watch events");

    // And the runtime watcher saw every change (Added and Modified are both "Apply").
    let want_seen = vec![
        Seen::Applied("from-kube-rs".into(), map(&[("k", "1")])),
        Seen::Applied("from-kube-rs".into(), map(&[("k", "2")])),
        Seen::Applied("from-kube-rs".into(), map(&[("k", "2"), ("m", "merged")])),
        Seen::Applied("applied-kube-rs".into(), map(&[("a", "1"), ("b", "2")])),
        Seen::Applied("applied-kube-rs".into(), map(&[("a", "1")])),
        Seen::Deleted("from-kube-rs".into()),
        Seen::Deleted("applied-kube-rs".into()),
    ];
    let mut seen = Vec::new();
    while seen.len() < want_seen.len() {
        let ev = tokio::time::timeout(TIMEOUT, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("watcher: only {seen:?} within {TIMEOUT:?}"))
            .unwrap_or_else(|| panic!("watcher ended after {seen:?}"));
        match ev {
            Ok(watcher::Event::Apply(o)) => seen.push(Seen::Applied(
                o.metadata.name.clone().unwrap_or_default(),
                data(&o),
            )),
            Ok(watcher::Event::Delete(o)) => {
                seen.push(Seen::Deleted(o.metadata.name.clone().unwrap_or_default()))
            }
            Ok(other) => panic!("watcher re-listed unexpectedly: {other:?} after {seen:?}"),
            Err(e) => panic!("watcher error after {seen:?}: {e}"),
        }
    }
    assert_eq!(seen, want_seen, "kube::runtime::watcher events");
    watcher_task.abort();

    // A typed Deployment round trip, and its scale subresource.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "kube-rs-dep"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "kr"}},
            "template": {"metadata": {"labels": {"app": "kr"}},
                         "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}
        }
    }))
    .expect("deployment");
    let d = deployments
        .create(&PostParams::default(), &d)
        .await
        .expect("create deployment");
    assert_eq!(d.metadata.generation, Some(1));
    let scale = deployments
        .patch_scale(
            "kube-rs-dep",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .expect("patch scale");
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(3));
    let d = deployments
        .get("kube-rs-dep")
        .await
        .expect("get deployment");
    assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(3));
    assert_eq!(d.metadata.generation, Some(2));
    deployments
        .delete("kube-rs-dep", &DeleteParams::background())
        .await
        .expect("delete deployment");
}

#[test]
fn python_client_crud_and_watch() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import kubernetes"])
        .output()
        .unwrap_or_else(|e| panic!("python3 is needed for the Python client test: {e}"));
    assert!(
        probe.status.success(),
        "the Python `kubernetes` package is missing (scripts/test.sh installs it: \
         `python3 -m pip install kubernetes`): {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let c = Cluster::start(Backend::Sqlite);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/crud_watch.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(c.kubeconfig())
        .env("HOME", c.path())
        .env_remove("KUBECONFIG")
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tests/python/crud_watch.py failed ({}):\n{stdout}\n{stderr}\n--- server log ---\n{}",
        out.status,
        c.log_tail()
    );
    assert!(stdout.contains("python client: ok"), "{stdout}");
}

/// Many writers updating one object with read-modify-write and retry-on-409: optimistic
/// concurrency must lose no update, on both backends.
async fn concurrent_updates(backend: Backend) {
    const WRITERS: usize = 4;
    const EACH: usize = 10;
    let c = Cluster::start(backend);
    let client = c.kube_client().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &cm("counter", &[("n", "0")]))
        .await
        .expect("create counter");
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0usize;
            for _ in 0..EACH {
                loop {
                    let mut cur = api.get("counter").await.expect("get counter");
                    let n: usize = data(&cur)["n"].parse().expect("number");
                    cur.data = Some(map(&[("n", &(n + 1).to_string())]));
                    match api.replace("counter", &PostParams::default(), &cur).await {
                        Ok(_) => break,
                        Err(kube::Error::Api(e)) if e.code == 409 => conflicts += 1,
                        Err(e) => panic!("replace: {e}"),
                    }
                    assert!(conflicts < 10_000, "no progress");
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += tokio::time::timeout(TIMEOUT * 2, t)
            .await
            .expect("writers finish in time")
            .expect("writer task");
    }
    let end = api.get("counter").await.expect("get counter");
    assert_eq!(
        data(&end)["n"],
        (WRITERS * EACH).to_string(),
        "[{backend:?}] lost updates ({conflicts} conflicts were retried)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_sqlite() {
    concurrent_updates(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_etcd() {
    concurrent_updates(Backend::Etcd).await;
}

type WatcherRx = tokio::sync::mpsc::UnboundedReceiver<Result<watcher::Event<ConfigMap>, String>>;

/// Waits (bounded) until the watcher applies an object called `name`; returns the names
/// it applied and the errors it reported on the way.
async fn wait_applied(rx: &mut WatcherRx, name: &str) -> (Vec<String>, Vec<String>) {
    let (mut applied, mut errors) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ev = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => panic!("watcher ended; applied {applied:?}, errors {errors:?}"),
            Err(_) => {
                panic!("watcher never applied {name}; applied {applied:?}, errors {errors:?}")
            }
        };
        match ev {
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                let n = o.metadata.name.unwrap_or_default();
                let hit = n == name;
                applied.push(n);
                if hit {
                    return (applied, errors);
                }
            }
            Ok(_) => {}
            // Errors while the server is down are expected; the watcher retries.
            Err(e) => errors.push(e),
        }
    }
}

/// A `kube::runtime::watcher` keeps working across a server restart: it reconnects
/// (resuming, or re-listing after 410 Gone) and sees changes made after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_survives_restart() {
    use kube::runtime::WatchStreamExt;
    let mut c = Cluster::start(Backend::Sqlite);
    let api: Api<ConfigMap> = Api::namespaced(c.kube_client().await, "default");
    api.create(&PostParams::default(), &cm("before", &[("a", "1")]))
        .await
        .expect("create");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut events = watcher(
        api.clone(),
        watcher::Config::default().labels("team=kube-rs"),
    )
    .default_backoff()
    .boxed();
    let task = tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            if tx.send(ev.map_err(|e| e.to_string())).is_err() {
                return;
            }
        }
    });
    wait_applied(&mut rx, "before").await;
    tokio::task::block_in_place(|| c.restart());
    api.create(&PostParams::default(), &cm("after", &[("a", "2")]))
        .await
        .expect("create after restart");
    let (applied, errors) = wait_applied(&mut rx, "after").await;
    eprintln!("after the restart the watcher applied {applied:?}; errors on the way: {errors:?}");
    task.abort();
}
