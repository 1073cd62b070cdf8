//! kube-rs and the Python `kubernetes` client against Kelp: CRUD and watch.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Client, Config};

use crate::common::{Backend, Cluster};

fn cm(name: &str, v: &str) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some([("k".to_string(), v.to_string())].into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_crud_and_watcher() {
    let c = Cluster::start(Backend::Sqlite);
    let kc = Kubeconfig::read_from(c.kubeconfig()).expect("kubeconfig");
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    let client = Client::try_from(cfg).expect("client");
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    // The watcher runs first, and must see every change made below.
    let mut events = watcher(
        api.clone(),
        watcher::Config::default().labels("team=kube-rs"),
    )
    .boxed();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(ev)) = events.try_next().await {
            if tx.send(ev).is_err() {
                return;
            }
        }
    });
    // Wait for the initial list to finish.
    loop {
        match tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("watcher init")
        {
            Some(watcher::Event::InitDone) => break,
            Some(_) => {}
            None => panic!("watcher ended"),
        }
    }

    let mut obj = cm("from-kube-rs", "1");
    obj.metadata.labels = Some([("team".to_string(), "kube-rs".to_string())].into());
    let created = api
        .create(&PostParams::default(), &obj)
        .await
        .expect("create");
    assert!(created.metadata.uid.is_some());
    assert_eq!(
        api.get("from-kube-rs").await.expect("get").data.unwrap()["k"],
        "1"
    );
    let list = api
        .list(&ListParams::default().labels("team=kube-rs"))
        .await
        .expect("list");
    assert_eq!(list.items.len(), 1);
    let mut replaced = created.clone();
    replaced.data = Some([("k".to_string(), "2".to_string())].into());
    let replaced = api
        .replace("from-kube-rs", &PostParams::default(), &replaced)
        .await
        .expect("replace");
    // A replace with the old resourceVersion is a conflict.
    match api
        .replace("from-kube-rs", &PostParams::default(), &created)
        .await
    {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 409),
        other => panic!("stale replace must be 409, got {other:?}"),
    }
    api.patch(
        "from-kube-rs",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"m": "merged"}})),
    )
    .await
    .expect("merge patch");
    let applied = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied-kube-rs", "labels": {"team": "kube-rs"}}, "data": {"a": "1"}});
    let a = api
        .patch(
            "applied-kube-rs",
            &PatchParams::apply("kelp-test"),
            &Patch::Apply(&applied),
        )
        .await
        .expect("apply creates");
    assert_eq!(a.data.unwrap()["a"], "1");
    assert!(replaced.metadata.resource_version.is_some());
    api.delete("from-kube-rs", &DeleteParams::default())
        .await
        .expect("delete");

    let mut seen = (false, false, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen != (true, true, true) {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("watch events in time")
            .expect("watcher alive");
        match ev {
            watcher::Event::Apply(o) if o.metadata.name.as_deref() == Some("from-kube-rs") => {
                if o.data.as_ref().and_then(|d| d.get("m")).is_some() {
                    seen.1 = true;
                } else {
                    seen.0 = true;
                }
            }
            watcher::Event::Delete(o) if o.metadata.name.as_deref() == Some("from-kube-rs") => {
                seen.2 = true
            }
            _ => {}
        }
    }
}

#[test]
fn python_client_crud_and_watch() {
    let c = Cluster::start(Backend::Sqlite);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/crud_watch.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(c.kubeconfig())
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client test failed (scripts/test.sh installs the `kubernetes` package):\n{stdout}\n{stderr}\n--- server ---\n{}",
        c.log_tail()
    );
    assert!(stdout.contains("python client: ok"), "{stdout}");
}
