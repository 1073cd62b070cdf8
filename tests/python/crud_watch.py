"""CRUD and watch through the official Python `kubernetes` client against Kelp."""
import sys
import threading

from kubernetes import client, config, watch

config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
apps = client.AppsV1Api()
ns = "default"

v1.create_namespaced_config_map(ns, {"metadata": {"name": "py-cm", "labels": {"from": "python"}}, "data": {"a": "1"}})
got = v1.read_namespaced_config_map("py-cm", ns)
assert got.data == {"a": "1"}, got.data
listed = v1.list_namespaced_config_map(ns, label_selector="from=python")
assert [i.metadata.name for i in listed.items] == ["py-cm"], listed.items
v1.patch_namespaced_config_map("py-cm", ns, {"data": {"b": "2"}})  # strategic merge patch
assert v1.read_namespaced_config_map("py-cm", ns).data == {"a": "1", "b": "2"}

dep = {
    "metadata": {"name": "py-dep"},
    "spec": {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "py"}},
        "template": {"metadata": {"labels": {"app": "py"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}},
    },
}
apps.create_namespaced_deployment(ns, dep)
apps.patch_namespaced_deployment_scale("py-dep", ns, {"spec": {"replicas": 3}})
assert apps.read_namespaced_deployment("py-dep", ns).spec.replicas == 3
apps.delete_namespaced_deployment("py-dep", ns, propagation_policy="Background")

seen = []
added = threading.Event()


def changes():
    w = watch.Watch()
    for ev in w.stream(v1.list_namespaced_config_map, ns, label_selector="from=python-watch", timeout_seconds=20):
        seen.append((ev["type"], ev["object"].metadata.name))
        if ev["type"] == "ADDED":
            added.set()
        if ev["type"] == "DELETED":
            w.stop()


# A watch without a resourceVersion first replays current objects as ADDED: create,
# start watching, and delete once the watch has shown the object.
v1.create_namespaced_config_map(ns, {"metadata": {"name": "py-watched", "labels": {"from": "python-watch"}}})
t = threading.Thread(target=changes)
t.start()
assert added.wait(20), "the watch never showed the object"
v1.delete_namespaced_config_map("py-watched", ns)
t.join(30)
assert ("ADDED", "py-watched") in seen and ("DELETED", "py-watched") in seen, seen
v1.delete_namespaced_config_map("py-cm", ns)
print("python client: ok")
