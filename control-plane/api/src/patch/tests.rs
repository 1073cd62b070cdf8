use serde_json::{json, Value};

use super::*;
use crate::registry::GroupVersionKind;

fn gvk(g: &str, v: &str, k: &str) -> GroupVersionKind {
    GroupVersionKind::new(g, v, k)
}

fn deploy() -> GroupVersionKind {
    gvk("apps", "v1", "Deployment")
}

// ---------------------------------------------------------------------------------
// JSON patch and merge patch.
// ---------------------------------------------------------------------------------

#[test]
fn json_patch_table() {
    let doc = json!({"metadata": {"name": "x", "annotations": {"a": "1"}}, "spec": {"template": {"x": 1}, "list": [1, 2]}});
    let cases: Vec<(&str, Value, Result<Value, u16>)> = vec![
        (
            "replace",
            json!([{"op": "replace", "path": "/spec/template", "value": {"y": 2}}]),
            Ok(
                json!({"metadata": {"name": "x", "annotations": {"a": "1"}}, "spec": {"template": {"y": 2}, "list": [1, 2]}}),
            ),
        ),
        (
            "rollout undo",
            json!([{"op": "replace", "path": "/spec/template", "value": {"z": 3}},
                   {"op": "replace", "path": "/metadata/annotations", "value": {"b": "2"}}]),
            Ok(
                json!({"metadata": {"name": "x", "annotations": {"b": "2"}}, "spec": {"template": {"z": 3}, "list": [1, 2]}}),
            ),
        ),
        (
            "add remove",
            json!([{"op": "add", "path": "/spec/list/-", "value": 3}, {"op": "remove", "path": "/metadata/annotations/a"}]),
            Ok(
                json!({"metadata": {"name": "x", "annotations": {}}, "spec": {"template": {"x": 1}, "list": [1, 2, 3]}}),
            ),
        ),
        (
            "move copy test",
            json!([{"op": "test", "path": "/metadata/name", "value": "x"},
                   {"op": "copy", "from": "/metadata/name", "path": "/spec/name"},
                   {"op": "move", "from": "/spec/list", "path": "/spec/moved"}]),
            Ok(
                json!({"metadata": {"name": "x", "annotations": {"a": "1"}}, "spec": {"template": {"x": 1}, "name": "x", "moved": [1, 2]}}),
            ),
        ),
        (
            "test fails",
            json!([{"op": "test", "path": "/metadata/name", "value": "y"}]),
            Err(422),
        ),
        (
            "missing path",
            json!([{"op": "remove", "path": "/nope"}]),
            Err(422),
        ),
        ("bad op", json!([{"op": "frob", "path": "/a"}]), Err(400)),
        ("not a list", json!({"op": "add"}), Err(400)),
    ];
    for (name, patch, want) in cases {
        let got = json_patch(&doc, &patch).map_err(|e| e.code());
        assert_eq!(got, want, "{name}");
    }
    // Bytes work too, and bad JSON is a 400.
    let bytes = br#"[{"op":"replace","path":"/metadata/name","value":"z"}]"#;
    assert_eq!(
        json_patch(&doc, &bytes[..]).unwrap()["metadata"]["name"],
        "z"
    );
    assert_eq!(json_patch(&doc, "[{").unwrap_err().code(), 400);
}

#[test]
fn merge_patch_table() {
    let cases = vec![
        (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
        (
            json!({"a": "b"}),
            json!({"b": "c"}),
            json!({"a": "b", "b": "c"}),
        ),
        (json!({"a": "b"}), json!({"a": null}), json!({})),
        (
            json!({"a": "b", "b": "c"}),
            json!({"a": null}),
            json!({"b": "c"}),
        ),
        (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
        (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
        (
            json!({"a": {"b": "c"}}),
            json!({"a": {"b": "d", "c": null}}),
            json!({"a": {"b": "d"}}),
        ),
        (
            json!({"a": [{"b": "c"}]}),
            json!({"a": [1]}),
            json!({"a": [1]}),
        ),
        (
            json!({"e": null}),
            json!({"a": 1}),
            json!({"e": null, "a": 1}),
        ),
        (
            json!({}),
            json!({"a": {"bb": {"ccc": null}}}),
            json!({"a": {"bb": {}}}),
        ),
        (
            json!({"spec": {"replicas": 1, "x": 2}}),
            json!({"spec": {"replicas": 3}}),
            json!({"spec": {"replicas": 3, "x": 2}}),
        ),
        (
            json!({"metadata": {"labels": {"a": "1"}}}),
            json!({"metadata": {"labels": {"b": "2"}}}),
            json!({"metadata": {"labels": {"a": "1", "b": "2"}}}),
        ),
    ];
    for (orig, patch, want) in cases {
        assert_eq!(
            merge_patch(&orig, &patch).unwrap(),
            want,
            "{orig} + {patch}"
        );
    }
    // Key order of the target is kept when a key is deleted.
    let out = merge_patch(&json!({"a": 1, "b": 2, "c": 3}), &json!({"a": null})).unwrap();
    assert_eq!(
        out.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["b", "c"]
    );
    assert_eq!(
        merge_patch(&json!({}), &json!([1])).unwrap_err().code(),
        400
    );
    assert_eq!(
        merge_patch(&json!({}), b"nope".as_slice())
            .unwrap_err()
            .code(),
        400
    );
}

// ---------------------------------------------------------------------------------
// Strategic merge patch.
// ---------------------------------------------------------------------------------

fn smp(orig: Value, patch: Value, g: &GroupVersionKind) -> Value {
    strategic_merge_patch(&orig, &patch, g).unwrap_or_else(|e| panic!("{patch}: {e}"))
}

fn tmpl_spec(spec: Value) -> Value {
    json!({"spec": {"template": {"spec": spec}}})
}

#[test]
fn smp_what_kubectl_sends() {
    let orig = tmpl_spec(json!({"containers": [
        {"name": "web", "image": "nginx:1", "ports": [{"containerPort": 80, "protocol": "TCP"}]},
        {"name": "side", "image": "busybox"}]}));
    // kubectl set image / apply: $setElementOrder with an image change.
    let out = smp(
        orig.clone(),
        tmpl_spec(
            json!({"$setElementOrder/containers": [{"name": "web"}, {"name": "side"}],
                         "containers": [{"image": "nginx:2", "name": "web"}]}),
        ),
        &deploy(),
    );
    assert_eq!(
        out,
        tmpl_spec(json!({"containers": [
            {"name": "web", "image": "nginx:2", "ports": [{"containerPort": 80, "protocol": "TCP"}]},
            {"name": "side", "image": "busybox"}]}))
    );
    // The order directive reorders.
    let out = smp(
        orig.clone(),
        tmpl_spec(json!({"$setElementOrder/containers": [{"name": "side"}, {"name": "web"}]})),
        &deploy(),
    );
    let names: Vec<&str> = out["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["side", "web"]);
    // $patch: delete of a container.
    let out = smp(
        orig.clone(),
        tmpl_spec(json!({"containers": [{"name": "side", "$patch": "delete"}]})),
        &deploy(),
    );
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Port merge by containerPort.
    let out = smp(
        orig.clone(),
        tmpl_spec(json!({"containers": [{"name": "web", "ports": [
            {"containerPort": 80, "name": "http"}, {"containerPort": 443}]}]})),
        &deploy(),
    );
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"][0]["ports"],
        json!([{"containerPort": 80, "protocol": "TCP", "name": "http"}, {"containerPort": 443}])
    );
    // Rollout restart annotation.
    let out = smp(
        json!({"spec": {"template": {"metadata": {"labels": {"app": "web"}}}}}),
        json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"}}}}}),
        &deploy(),
    );
    assert_eq!(
        out,
        json!({"spec": {"template": {"metadata": {"labels": {"app": "web"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-01-01T00:00:00Z"}}}}})
    );
    // cordon / uncordon.
    let node = gvk("", "v1", "Node");
    let cordoned = smp(
        json!({"spec": {"podCIDR": "10.0.0.0/24"}}),
        json!({"spec": {"unschedulable": true}}),
        &node,
    );
    assert_eq!(
        cordoned,
        json!({"spec": {"podCIDR": "10.0.0.0/24", "unschedulable": true}})
    );
    let out = smp(cordoned, json!({"spec": {"unschedulable": null}}), &node);
    assert_eq!(out, json!({"spec": {"podCIDR": "10.0.0.0/24"}}));
    // Pause.
    let out = smp(
        json!({"spec": {"replicas": 2}}),
        json!({"spec": {"paused": true}}),
        &deploy(),
    );
    assert_eq!(out, json!({"spec": {"replicas": 2, "paused": true}}));
}

#[test]
fn smp_env_merge_by_name() {
    let orig = tmpl_spec(json!({"containers": [{"name": "a", "env": [
        {"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]}]}));
    let out = smp(
        orig,
        tmpl_spec(json!({"containers": [{"name": "a", "env": [
            {"name": "Y", "value": "3"}, {"name": "Z", "value": "4"}, {"name": "X", "$patch": "delete"}]}]})),
        &deploy(),
    );
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"][0]["env"],
        json!([{"name": "Y", "value": "3"}, {"name": "Z", "value": "4"}])
    );
}

#[test]
fn smp_same_rules_in_every_pod_template() {
    let cases = [
        (gvk("", "v1", "Pod"), "/spec/containers"),
        (
            gvk("apps", "v1", "Deployment"),
            "/spec/template/spec/containers",
        ),
        (
            gvk("apps", "v1", "ReplicaSet"),
            "/spec/template/spec/containers",
        ),
        (
            gvk("apps", "v1", "DaemonSet"),
            "/spec/template/spec/containers",
        ),
        (
            gvk("apps", "v1", "StatefulSet"),
            "/spec/template/spec/containers",
        ),
        (gvk("batch", "v1", "Job"), "/spec/template/spec/containers"),
        (
            gvk("batch", "v1", "CronJob"),
            "/spec/jobTemplate/spec/template/spec/containers",
        ),
        (
            gvk("", "v1", "ReplicationController"),
            "/spec/template/spec/containers",
        ),
        (gvk("", "v1", "PodTemplate"), "/template/spec/containers"),
    ];
    for (g, ptr) in cases {
        let build = |containers: Value| {
            let mut v = json!({});
            let parts: Vec<&str> = ptr.trim_start_matches('/').split('/').collect();
            let mut cur = &mut v;
            for (i, p) in parts.iter().enumerate() {
                cur[*p] = if i + 1 == parts.len() {
                    containers.clone()
                } else {
                    json!({})
                };
                cur = &mut cur[*p];
            }
            v
        };
        let orig = build(
            json!([{"name": "a", "image": "x", "volumeMounts": [{"mountPath": "/d", "name": "v"}]},
                                {"name": "b", "image": "y"}]),
        );
        let patch = build(
            json!([{"name": "b", "image": "z", "volumeMounts": [{"mountPath": "/e", "name": "w"}]}]),
        );
        let out = smp(orig, patch, &g);
        assert_eq!(
            out.pointer(ptr).unwrap(),
            &json!([{"name": "a", "image": "x", "volumeMounts": [{"mountPath": "/d", "name": "v"}]},
                    {"name": "b", "image": "z", "volumeMounts": [{"mountPath": "/e", "name": "w"}]}]),
            "{}",
            g.kind
        );
    }
}

#[test]
fn smp_keys_by_path() {
    let pod = gvk("", "v1", "Pod");
    let svc = gvk("", "v1", "Service");
    let node = gvk("", "v1", "Node");
    let cases: Vec<(&str, GroupVersionKind, Value, Value, Value)> = vec![
        (
            "service ports merge on port",
            svc.clone(),
            json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]}}),
            json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}}),
            json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}, {"port": 443}]}}),
        ),
        (
            "volumes merge on name",
            pod.clone(),
            json!({"spec": {"volumes": [{"name": "a", "emptyDir": {}}]}}),
            json!({"spec": {"volumes": [{"name": "b", "configMap": {"name": "c"}}]}}),
            json!({"spec": {"volumes": [{"name": "a", "emptyDir": {}}, {"name": "b", "configMap": {"name": "c"}}]}}),
        ),
        (
            "volumes retainKeys switch source",
            pod.clone(),
            json!({"spec": {"volumes": [{"name": "a", "emptyDir": {}}]}}),
            json!({"spec": {"volumes": [{"name": "a", "$retainKeys": ["hostPath", "name"], "hostPath": {"path": "/x"}}]}}),
            json!({"spec": {"volumes": [{"name": "a", "hostPath": {"path": "/x"}}]}}),
        ),
        (
            "tolerations replace",
            pod.clone(),
            json!({"spec": {"tolerations": [{"key": "a", "operator": "Exists"}]}}),
            json!({"spec": {"tolerations": [{"key": "b", "operator": "Exists"}]}}),
            json!({"spec": {"tolerations": [{"key": "b", "operator": "Exists"}]}}),
        ),
        (
            "args replace",
            pod.clone(),
            json!({"spec": {"containers": [{"name": "a", "args": ["1", "2"]}]}}),
            json!({"spec": {"containers": [{"name": "a", "args": ["3"]}]}}),
            json!({"spec": {"containers": [{"name": "a", "args": ["3"]}]}}),
        ),
        (
            "envFrom atomic",
            pod.clone(),
            json!({"spec": {"containers": [{"name": "a", "envFrom": [{"configMapRef": {"name": "x"}}]}]}}),
            json!({"spec": {"containers": [{"name": "a", "envFrom": [{"secretRef": {"name": "y"}}]}]}}),
            json!({"spec": {"containers": [{"name": "a", "envFrom": [{"secretRef": {"name": "y"}}]}]}}),
        ),
        (
            "conditions merge on type",
            pod.clone(),
            json!({"status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "Initialized", "status": "True"}]}}),
            json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
            json!({"status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Initialized", "status": "True"}]}}),
        ),
        (
            "hostAliases merge on ip",
            pod.clone(),
            json!({"spec": {"hostAliases": [{"ip": "1.1.1.1", "hostnames": ["a"]}]}}),
            json!({"spec": {"hostAliases": [{"ip": "2.2.2.2", "hostnames": ["b"]}]}}),
            json!({"spec": {"hostAliases": [{"ip": "1.1.1.1", "hostnames": ["a"]}, {"ip": "2.2.2.2", "hostnames": ["b"]}]}}),
        ),
        (
            "volumeDevices merge on devicePath",
            pod.clone(),
            json!({"spec": {"containers": [{"name": "a", "volumeDevices": [{"devicePath": "/dev/a", "name": "x"}]}]}}),
            json!({"spec": {"containers": [{"name": "a", "volumeDevices": [{"devicePath": "/dev/a", "name": "y"}]}]}}),
            json!({"spec": {"containers": [{"name": "a", "volumeDevices": [{"devicePath": "/dev/a", "name": "y"}]}]}}),
        ),
        (
            "ownerReferences merge on uid",
            pod.clone(),
            json!({"metadata": {"ownerReferences": [{"uid": "1", "kind": "ReplicaSet", "name": "a"}]}}),
            json!({"metadata": {"ownerReferences": [{"uid": "2", "kind": "ReplicaSet", "name": "b"}]}}),
            json!({"metadata": {"ownerReferences": [{"uid": "1", "kind": "ReplicaSet", "name": "a"}, {"uid": "2", "kind": "ReplicaSet", "name": "b"}]}}),
        ),
        (
            "finalizers merge as a set",
            pod.clone(),
            json!({"metadata": {"finalizers": ["a", "b"]}}),
            json!({"metadata": {"finalizers": ["b", "c"]}}),
            json!({"metadata": {"finalizers": ["a", "b", "c"]}}),
        ),
        (
            "deleteFromPrimitiveList",
            pod.clone(),
            json!({"metadata": {"finalizers": ["a", "b", "c"]}}),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["b"], "finalizers": ["d"]}}),
            json!({"metadata": {"finalizers": ["a", "c", "d"]}}),
        ),
        (
            "setElementOrder on a primitive list",
            pod.clone(),
            json!({"metadata": {"finalizers": ["a", "b"]}}),
            json!({"metadata": {"$setElementOrder/finalizers": ["b", "a", "c"], "finalizers": ["c"]}}),
            json!({"metadata": {"finalizers": ["b", "a", "c"]}}),
        ),
        (
            "taints are atomic upstream",
            node.clone(),
            json!({"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}, {"key": "b", "effect": "NoSchedule"}]}}),
            json!({"spec": {"taints": [{"key": "a", "effect": "NoExecute"}]}}),
            json!({"spec": {"taints": [{"key": "a", "effect": "NoExecute"}]}}),
        ),
        (
            "topologySpreadConstraints merge on topologyKey",
            pod.clone(),
            json!({"spec": {"topologySpreadConstraints": [{"topologyKey": "zone", "maxSkew": 1}]}}),
            json!({"spec": {"topologySpreadConstraints": [{"topologyKey": "zone", "maxSkew": 2}, {"topologyKey": "host", "maxSkew": 1}]}}),
            json!({"spec": {"topologySpreadConstraints": [{"topologyKey": "zone", "maxSkew": 2}, {"topologyKey": "host", "maxSkew": 1}]}}),
        ),
        (
            "imagePullSecrets merge on name",
            pod.clone(),
            json!({"spec": {"imagePullSecrets": [{"name": "a"}]}}),
            json!({"spec": {"imagePullSecrets": [{"name": "b"}]}}),
            json!({"spec": {"imagePullSecrets": [{"name": "a"}, {"name": "b"}]}}),
        ),
        (
            "replace a whole keyed list",
            pod.clone(),
            json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}}),
            json!({"spec": {"containers": [{"$patch": "replace"}, {"name": "c"}]}}),
            json!({"spec": {"containers": [{"name": "c"}]}}),
        ),
        (
            "replace one item",
            pod.clone(),
            json!({"spec": {"containers": [{"name": "a", "image": "x", "tty": true}]}}),
            json!({"spec": {"containers": [{"name": "a", "image": "y", "$patch": "replace"}]}}),
            json!({"spec": {"containers": [{"name": "a", "image": "y"}]}}),
        ),
        (
            "replace a map",
            pod.clone(),
            json!({"metadata": {"labels": {"a": "1", "b": "2"}}}),
            json!({"metadata": {"labels": {"$patch": "replace", "c": "3"}}}),
            json!({"metadata": {"labels": {"c": "3"}}}),
        ),
        (
            "delete a map",
            pod.clone(),
            json!({"metadata": {"labels": {"a": "1"}, "name": "p"}}),
            json!({"metadata": {"labels": {"$patch": "delete"}}}),
            json!({"metadata": {"name": "p"}}),
        ),
        (
            "merge directive is a no-op",
            pod.clone(),
            json!({"metadata": {"labels": {"a": "1"}}}),
            json!({"metadata": {"labels": {"$patch": "merge", "b": "2"}}}),
            json!({"metadata": {"labels": {"a": "1", "b": "2"}}}),
        ),
        (
            "nulls in new items vanish",
            pod.clone(),
            json!({"spec": {}}),
            json!({"spec": {"containers": [{"name": "a", "image": null, "env": [{"name": "X", "value": "1"}]}]}}),
            json!({"spec": {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}]}]}}),
        ),
        (
            "custom kinds: lists replace",
            gvk("example.com", "v1", "Widget"),
            json!({"spec": {"containers": [{"name": "a"}]}, "metadata": {"finalizers": ["x"]}}),
            json!({"spec": {"containers": [{"name": "b"}]}, "metadata": {"finalizers": ["y"]}}),
            json!({"spec": {"containers": [{"name": "b"}]}, "metadata": {"finalizers": ["x", "y"]}}),
        ),
        (
            "last-applied annotation and replicas",
            deploy(),
            json!({"metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}}, "spec": {"replicas": 1}}),
            json!({"metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"a\":1}"}}, "spec": {"replicas": 3}}),
            json!({"metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"a\":1}"}}, "spec": {"replicas": 3}}),
        ),
    ];
    for (name, g, orig, patch, want) in cases {
        assert_eq!(smp(orig, patch, &g), want, "{name}");
    }
}

#[test]
fn smp_set_element_order_interleaves_server_only_items() {
    // Server has [a, b, c]; the client orders [c, a, d] and adds d. Upstream's
    // mergeSortedSlice puts the server-only b before c (b precedes c on the server).
    let orig = tmpl_spec(json!({"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}));
    let out = smp(
        orig,
        tmpl_spec(
            json!({"$setElementOrder/containers": [{"name": "c"}, {"name": "a"}, {"name": "d"}],
                         "containers": [{"name": "d"}]}),
        ),
        &deploy(),
    );
    let names: Vec<&str> = out["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b", "c", "a", "d"]);
}

#[test]
fn smp_errors() {
    let pod = gvk("", "v1", "Pod");
    let cases = vec![
        json!([1]),
        json!({"spec": {"containers": [{"image": "x"}]}}),
        json!({"spec": {"containers": ["x"]}}),
        json!({"metadata": {"$patch": "frob"}}),
        json!({"metadata": {"finalizers": [{"a": 1}]}}),
        json!({"metadata": {"$setElementOrder/finalizers": "x"}}),
    ];
    for patch in cases {
        let err = strategic_merge_patch(&json!({"spec": {}}), &patch, &pod).unwrap_err();
        assert_eq!(err.code(), 400, "{patch}: {err}");
    }
    let err = strategic_merge_patch(
        &json!({}),
        &json!({"spec": {"containers": [{"image": "x"}]}}),
        &pod,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "map: {\"image\":\"x\"} does not contain declared merge key: name"
    );
    assert!(strategic_merge_patch(&json!({}), b"{".as_slice(), &pod).is_err());
}

#[test]
fn smp_supported_kinds() {
    assert!(supports_strategic(&deploy()));
    assert!(supports_strategic(&gvk("", "v1", "Pod")));
    assert!(!supports_strategic(&gvk("example.com", "v1", "WasmApp")));
}

// ---------------------------------------------------------------------------------
// Server-side apply.
// ---------------------------------------------------------------------------------

fn cm(data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "default"}, "data": data})
}

fn dep(replicas: i64, image: &str, labels: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": "web", "labels": labels},
           "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}},
                                 "spec": {"containers": [{"name": "web", "image": image,
                                                          "ports": [{"containerPort": 80}]}]}}}})
}

#[test]
fn apply_create_from_nothing() {
    let out = apply_at(
        None,
        &dep(2, "nginx:1", json!({"app": "web"})),
        "kubectl",
        false,
        "2026-01-01T00:00:00Z",
    )
    .unwrap();
    assert!(out.created);
    let obj = &out.object;
    assert_eq!(obj["spec"]["replicas"], 2);
    let mf = &obj["metadata"]["managedFields"];
    assert_eq!(mf.as_array().unwrap().len(), 1);
    assert_eq!(mf[0]["manager"], "kubectl");
    assert_eq!(mf[0]["operation"], "Apply");
    assert_eq!(mf[0]["apiVersion"], "apps/v1");
    assert_eq!(mf[0]["time"], "2026-01-01T00:00:00Z");
    assert_eq!(mf[0]["fieldsType"], "FieldsV1");
    let f = &mf[0]["fieldsV1"];
    assert_eq!(f["f:metadata"]["f:labels"], json!({"f:app": {}}));
    assert!(f["f:metadata"].get("f:name").is_none());
    assert!(f.get("f:apiVersion").is_none());
    assert_eq!(f["f:spec"]["f:replicas"], json!({}));
    let web = &f["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"];
    assert_eq!(web["."], json!({}));
    assert_eq!(web["f:image"], json!({}));
    assert_eq!(web["f:name"], json!({}));
    assert_eq!(web["f:ports"]["k:{\"containerPort\":80}"]["."], json!({}));
    // The real clock variant stamps a time.
    let out = apply(None, &cm(json!({"a": "1"})), "kubectl", false).unwrap();
    assert!(out.object["metadata"]["managedFields"][0]["time"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
}

#[test]
fn apply_reapply_drops_removed_fields() {
    let first = apply_at(
        None,
        &dep(2, "nginx:1", json!({"app": "web", "tier": "fe"})),
        "kubectl",
        false,
        "t",
    )
    .unwrap()
    .object;
    let second = apply_at(
        Some(&first),
        &dep(2, "nginx:1", json!({"app": "web"})),
        "kubectl",
        false,
        "t",
    )
    .unwrap();
    assert!(!second.created);
    assert_eq!(second.object["metadata"]["labels"], json!({"app": "web"}));
    // Dropping every label removes the map too.
    let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"a": "1"}}, "data": {"k": "v"}});
    let one = apply_at(None, &cfg, "m", false, "t").unwrap().object;
    let cfg2 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}});
    let two = apply_at(Some(&one), &cfg2, "m", false, "t").unwrap().object;
    assert!(two["metadata"].get("labels").is_none(), "{two}");
    // Dropping a container removes the item.
    let mut two_containers = dep(1, "nginx:1", json!({}));
    two_containers["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "side", "image": "busybox"}));
    let a = apply_at(None, &two_containers, "kubectl", false, "t")
        .unwrap()
        .object;
    let b = apply_at(
        Some(&a),
        &dep(1, "nginx:1", json!({})),
        "kubectl",
        false,
        "t",
    )
    .unwrap()
    .object;
    assert_eq!(
        b["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn apply_keeps_fields_other_managers_own() {
    let one = apply_at(None, &cm(json!({"a": "1", "b": "2"})), "first", false, "t")
        .unwrap()
        .object;
    // A second applier sets b to the same value: shared ownership, no conflict.
    let two = apply_at(Some(&one), &cm(json!({"b": "2"})), "second", false, "t")
        .unwrap()
        .object;
    // The first applier drops b: the second still owns it, so it stays.
    let three = apply_at(Some(&two), &cm(json!({"a": "1"})), "first", false, "t")
        .unwrap()
        .object;
    assert_eq!(three["data"], json!({"a": "1", "b": "2"}));
    assert_eq!(owned_fields(&three, "second", "Apply"), [".data.b"]);
}

#[test]
fn apply_conflicts_and_force() {
    let created = dep(1, "nginx:1", json!({"app": "web"}));
    let mut live = created.clone();
    record_update(None, &mut live, "kubectl-client-side-apply", "Update", "t");
    // A server-side apply changing replicas and the image conflicts twice.
    let err = apply_at(
        Some(&live),
        &dep(3, "nginx:2", json!({"app": "web"})),
        "kubectl",
        false,
        "t",
    )
    .unwrap_err();
    let ApplyError::Conflict(conflicts) = &err else {
        panic!("{err}");
    };
    let fields: Vec<&str> = conflicts.iter().map(|c| c.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            ".spec.replicas",
            ".spec.template.spec.containers[name=\"web\"].image"
        ]
    );
    assert_eq!(
        conflicts[0].cause(),
        json!({"type": "FieldManagerConflict",
               "message": "conflict with \"kubectl-client-side-apply\" using apps/v1",
               "field": ".spec.replicas"})
    );
    assert_eq!(
        err.to_string(),
        "Apply failed with 2 conflicts: conflicts with \"kubectl-client-side-apply\" using apps/v1:\n- .spec.replicas\n- .spec.template.spec.containers[name=\"web\"].image"
    );
    // Same values: no conflict, fields are shared.
    let same = apply_at(Some(&live), &created, "kubectl", false, "t")
        .unwrap()
        .object;
    assert_eq!(
        managers(&same),
        [
            (
                "kubectl-client-side-apply".to_string(),
                "Update".to_string()
            ),
            ("kubectl".to_string(), "Apply".to_string())
        ]
    );
    // Force moves ownership of the conflicting fields only.
    let forced = apply_at(
        Some(&live),
        &dep(3, "nginx:1", json!({"app": "web"})),
        "kubectl",
        true,
        "t",
    )
    .unwrap();
    assert_eq!(forced.forced.len(), 1);
    assert_eq!(forced.object["spec"]["replicas"], 3);
    let csa = owned_fields(&forced.object, "kubectl-client-side-apply", "Update");
    assert!(!csa.contains(&".spec.replicas".to_string()), "{csa:?}");
    assert!(csa.contains(&".metadata.labels.app".to_string()), "{csa:?}");
    assert!(
        owned_fields(&forced.object, "kubectl", "Apply").contains(&".spec.replicas".to_string())
    );
    // Afterwards the previous owner no longer conflicts for replicas.
    let again = apply_at(
        Some(&forced.object),
        &dep(4, "nginx:1", json!({"app": "web"})),
        "kubectl",
        false,
        "t",
    );
    assert!(again.is_ok());
}

#[test]
fn apply_conflict_between_appliers() {
    let one = apply_at(None, &cm(json!({"a": "1"})), "kubectl", false, "t")
        .unwrap()
        .object;
    let err = apply_at(Some(&one), &cm(json!({"a": "2"})), "other", false, "t").unwrap_err();
    assert_eq!(
        err,
        ApplyError::Conflict(vec![Conflict {
            manager: "kubectl".into(),
            operation: "Apply".into(),
            api_version: "v1".into(),
            field: ".data.a".into(),
        }])
    );
    assert_eq!(
        err.to_string(),
        "Apply failed with 1 conflict: conflict with \"kubectl\": .data.a"
    );
    let forced = apply_at(Some(&one), &cm(json!({"a": "2"})), "other", true, "t")
        .unwrap()
        .object;
    assert_eq!(forced["data"]["a"], "2");
    // kubectl owns nothing left, so its entry disappears.
    assert_eq!(
        managers(&forced),
        [("other".to_string(), "Apply".to_string())]
    );
}

#[test]
fn apply_objects_without_managed_fields_belong_to_before_first_apply() {
    let live = cm(json!({"a": "1"}));
    let err = apply_at(Some(&live), &cm(json!({"a": "2"})), "kubectl", false, "t").unwrap_err();
    assert!(matches!(&err, ApplyError::Conflict(c) if c[0].manager == BEFORE_FIRST_APPLY));
}

#[test]
fn apply_merges_keyed_lists_and_sets() {
    let mut live = dep(1, "nginx:1", json!({}));
    live["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "side", "image": "busybox"}));
    record_update(None, &mut live, "kubectl-create", "Update", "t");
    // An applier adding env to one container keeps the other container.
    let applied = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "finalizers": ["x"]},
        "spec": {"template": {"spec": {"containers": [{"name": "web", "env": [{"name": "A", "value": "1"}]}]}}}});
    let out = apply_at(Some(&live), &applied, "envsetter", false, "t")
        .unwrap()
        .object;
    let cs = out["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(cs.len(), 2);
    assert_eq!(cs[0]["image"], "nginx:1");
    assert_eq!(cs[0]["env"], json!([{"name": "A", "value": "1"}]));
    assert_eq!(out["metadata"]["finalizers"], json!(["x"]));
    let owned = owned_fields(&out, "envsetter", "Apply");
    assert!(
        owned.contains(&".metadata.finalizers[=\"x\"]".to_string()),
        "{owned:?}"
    );
    assert!(
        owned.contains(
            &".spec.template.spec.containers[name=\"web\"].env[name=\"A\"].value".to_string()
        ),
        "{owned:?}"
    );
    let fv1 = &out["metadata"]["managedFields"][1]["fieldsV1"];
    assert_eq!(fv1["f:metadata"]["f:finalizers"], json!({"v:\"x\"": {}}));
}

#[test]
fn apply_invalid() {
    assert!(matches!(
        apply_at(None, &json!([1]), "m", false, "t"),
        Err(ApplyError::Invalid(_))
    ));
    assert!(matches!(
        apply_at(None, &json!({"kind": "ConfigMap"}), "m", false, "t"),
        Err(ApplyError::Invalid(_))
    ));
    assert!(matches!(
        apply_at(None, &cm(json!({})), "", false, "t"),
        Err(ApplyError::Invalid(_))
    ));
}

#[test]
fn update_takes_ownership() {
    let mut obj = cm(json!({"a": "1", "b": "1"}));
    record_update(None, &mut obj, "kubectl-create", "Update", "t1");
    assert_eq!(
        obj["metadata"]["managedFields"][0],
        json!({"manager": "kubectl-create", "operation": "Update", "apiVersion": "v1", "time": "t1",
               "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:a": {}, "f:b": {}}}})
    );
    // A server-side apply of a changed value conflicts like upstream.
    assert!(apply_at(Some(&obj), &cm(json!({"a": "2"})), "kubectl", false, "t").is_err());
    // Another writer changing a takes it; removing b removes it from everyone.
    let mut next = obj.clone();
    next["data"] = json!({"a": "3"});
    record_update(Some(&obj), &mut next, "editor", "Update", "t2");
    assert_eq!(
        managers(&next),
        [("editor".to_string(), "Update".to_string())]
    );
    assert_eq!(owned_fields(&next, "editor", "Update"), [".data.a"]);
    // An unchanged write records nothing new.
    let mut same = next.clone();
    record_update(Some(&next), &mut same, "third", "Update", "t3");
    assert_eq!(
        managers(&same),
        [("editor".to_string(), "Update".to_string())]
    );
}

#[test]
fn fields_v1_round_trip() {
    use super::apply::{from_fields_v1, to_fields_v1};
    let v = json!({"f:metadata": {"f:labels": {"f:app": {}}},
                   "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {".": {}, "f:image": {}, "f:name": {}}},
                              "f:ports": {"k:{\"protocol\":\"TCP\",\"port\":80}": {".": {}}}},
                   "f:finalizers": {"v:\"a\"": {}}});
    let set = from_fields_v1(&v);
    assert_eq!(set.len(), 6);
    let back = to_fields_v1(&set);
    // Key fields are canonicalized (sorted).
    assert!(
        back["f:spec"]["f:ports"]
            .get("k:{\"port\":80,\"protocol\":\"TCP\"}")
            .is_some(),
        "{back}"
    );
    assert_eq!(from_fields_v1(&back), set);
}
