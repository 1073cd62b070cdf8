"""CRUD and watch through the official Python `kubernetes` client against Kelp.

Usage: crud_watch.py KUBECONFIG. Exits non-zero (with a traceback) on the first failed
check; prints "python client: ok" at the end. Run by tests/clients.rs.
"""
import sys
import threading

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
apps = client.AppsV1Api()
NS = "default"


def expect_status(code, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ApiException as e:
        assert e.status == code, (e.status, e.body)
        return e
    raise AssertionError(f"expected HTTP {code} from {fn.__name__}")


# --- ConfigMap: create / read / list / patch / replace / delete ---------------------
created = v1.create_namespaced_config_map(
    NS, {"metadata": {"name": "py-cm", "labels": {"from": "python"}}, "data": {"a": "1"}}
)
assert created.metadata.uid and created.metadata.resource_version, created.metadata
got = v1.read_namespaced_config_map("py-cm", NS)
assert got.data == {"a": "1"}, got.data
listed = v1.list_namespaced_config_map(NS, label_selector="from=python")
assert [i.metadata.name for i in listed.items] == ["py-cm"], listed.items
everywhere = v1.list_config_map_for_all_namespaces(label_selector="from=python")
assert [(i.metadata.namespace, i.metadata.name) for i in everywhere.items] == [(NS, "py-cm")]
# A dict body is sent as a strategic merge patch.
patched = v1.patch_namespaced_config_map("py-cm", NS, {"data": {"b": "2"}})
assert patched.data == {"a": "1", "b": "2"}, patched.data
# A list body is sent as a JSON patch.
patched = v1.patch_namespaced_config_map("py-cm", NS, [{"op": "remove", "path": "/data/a"}])
assert patched.data == {"b": "2"}, patched.data
patched.data["c"] = "3"
replaced = v1.replace_namespaced_config_map("py-cm", NS, patched)
assert replaced.data == {"b": "2", "c": "3"}, replaced.data
err = expect_status(409, v1.create_namespaced_config_map, NS, {"metadata": {"name": "py-cm"}})
assert '"reason":"AlreadyExists"' in err.body.replace(" ", ""), err.body
v1.delete_namespaced_config_map("py-cm", NS)
expect_status(404, v1.read_namespaced_config_map, "py-cm", NS)

# --- Paging with limit / _continue ---------------------------------------------------
for i in range(5):
    v1.create_namespaced_config_map(NS, {"metadata": {"name": f"py-page-{i}", "labels": {"from": "python-page"}}})
names, token, pages = [], None, 0
while True:
    page = v1.list_namespaced_config_map(NS, label_selector="from=python-page", limit=2, _continue=token)
    pages += 1
    names += [i.metadata.name for i in page.items]
    token = page.metadata._continue
    if not token:
        break
    assert pages < 10, "paging does not end"
assert sorted(names) == [f"py-page-{i}" for i in range(5)] and pages == 3, (names, pages)

# --- The dynamic client (uses the legacy discovery documents) ------------------------
from kubernetes import dynamic  # noqa: E402

dyn = dynamic.DynamicClient(client.ApiClient())
dcm = dyn.resources.get(api_version="v1", kind="ConfigMap")
listed = dcm.get(namespace=NS, label_selector="from=python-page")
assert len(listed.items) == 5, listed
ddep = dyn.resources.get(api_version="apps/v1", kind="Deployment")
assert ddep.namespaced and ddep.name == "deployments", ddep
v1.delete_collection_namespaced_config_map(NS, label_selector="from=python-page")
assert v1.list_namespaced_config_map(NS, label_selector="from=python-page").items == []

# --- Deployment: create / read / list / patch / scale / delete ------------------------
dep = {
    "metadata": {"name": "py-dep", "labels": {"from": "python"}},
    "spec": {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "py"}},
        "template": {
            "metadata": {"labels": {"app": "py"}},
            "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}, {"name": "d", "image": "busybox:1.36"}]},
        },
    },
}
d = apps.create_namespaced_deployment(NS, dep)
assert d.metadata.generation == 1, d.metadata
d = apps.read_namespaced_deployment("py-dep", NS)
assert d.spec.template.spec.containers[0].image == "busybox:1.36"
assert [i.metadata.name for i in apps.list_namespaced_deployment(NS, label_selector="from=python").items] == ["py-dep"]
# Strategic merge: the container list merges by name.
d = apps.patch_namespaced_deployment(
    "py-dep", NS, {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "busybox:1.37"}]}}}}
)
assert [(c.name, c.image) for c in d.spec.template.spec.containers] == [("c", "busybox:1.37"), ("d", "busybox:1.36")], d.spec
assert d.metadata.generation == 2, d.metadata
apps.patch_namespaced_deployment_scale("py-dep", NS, {"spec": {"replicas": 3}})
assert apps.read_namespaced_deployment_scale("py-dep", NS).spec.replicas == 3
assert apps.read_namespaced_deployment("py-dep", NS).spec.replicas == 3
apps.delete_namespaced_deployment("py-dep", NS, propagation_policy="Background")
expect_status(404, apps.read_namespaced_deployment, "py-dep", NS)

# --- Watch: ADDED and DELETED for an object created from another thread --------------
# A watch without a resourceVersion first replays the current objects as ADDED. A
# sentinel created before the watch tells us the watch is established; only then
# does the other thread create and delete the watched object.
SEL = "from=python-watch"
v1.create_namespaced_config_map(NS, {"metadata": {"name": "py-sentinel", "labels": {"from": "python-watch"}}})
errors = []


def create_then_delete():
    try:
        v1.create_namespaced_config_map(
            NS, {"metadata": {"name": "py-watched", "labels": {"from": "python-watch"}}, "data": {"v": "1"}}
        )
        v1.delete_namespaced_config_map("py-watched", NS)
    except Exception as e:  # reported by the main thread
        errors.append(e)


seen = []
worker = None
w = watch.Watch()
for ev in w.stream(v1.list_namespaced_config_map, NS, label_selector=SEL, timeout_seconds=30):
    seen.append((ev["type"], ev["object"].metadata.name))
    if seen[-1] == ("ADDED", "py-sentinel") and worker is None:
        worker = threading.Thread(target=create_then_delete)
        worker.start()
    if seen[-1] == ("DELETED", "py-watched"):
        w.stop()
assert worker is not None, f"the watch never showed the sentinel: {seen}"
worker.join(30)
assert not errors, errors
assert seen == [("ADDED", "py-sentinel"), ("ADDED", "py-watched"), ("DELETED", "py-watched")], seen
v1.delete_namespaced_config_map("py-sentinel", NS)

print("python client: ok")
