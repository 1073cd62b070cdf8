//! The scheduler's view of the cluster, kept incrementally from informer events:
//! every node with the pods on it and what they request, plus pods the scheduler has
//! *assumed* onto a node (binding in flight) until the informer confirms them —
//! upstream's `internal/cache`. One task owns it, so plugins read it without locks.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::api::node::v1::RuntimeClass;

use crate::labels::{labels_of, Labels};
use crate::pod_info::{HostPort, PodInfo};
use crate::resources::Resource;

/// One node and what is placed on it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    /// `None` while pods name a node the informer has not delivered (or deleted).
    pub node: Option<Arc<Node>>,
    pub allocatable: Resource,
    pub requested: Resource,
    pub non_zero_requested: Resource,
    pub pods: Vec<Arc<PodInfo>>,
    /// Pods here with any (anti-)affinity term, and with required anti-affinity.
    pub pods_with_affinity: usize,
    pub pods_with_required_anti_affinity: usize,
    pub used_ports: Vec<HostPort>,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub runtime_handlers: Vec<String>,
    /// Image name (normalized, every name of an image) → size in bytes.
    pub images: HashMap<String, i64>,
}

impl NodeInfo {
    fn empty(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.to_string(),
            node: None,
            allocatable: Resource::default(),
            requested: Resource::default(),
            non_zero_requested: Resource::default(),
            pods: Vec::new(),
            pods_with_affinity: 0,
            pods_with_required_anti_affinity: 0,
            used_ports: Vec::new(),
            taints: Vec::new(),
            unschedulable: false,
            runtime_handlers: Vec::new(),
            images: HashMap::new(),
        }
    }

    /// A node built from its object alone (tests, and the cache on add).
    pub fn new(node: Node) -> NodeInfo {
        let mut n = NodeInfo::empty(node.metadata.name.as_deref().unwrap_or(""));
        n.set_node(Arc::new(node));
        n
    }

    fn set_node(&mut self, node: Arc<Node>) {
        let status = node.status.as_ref();
        self.allocatable =
            Resource::from_map(status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref())));
        let spec = node.spec.as_ref();
        self.taints = spec.and_then(|s| s.taints.clone()).unwrap_or_default();
        self.unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        self.runtime_handlers = status
            .and_then(|s| s.runtime_handlers.as_ref())
            .into_iter()
            .flatten()
            .map(|h| h.name.clone().unwrap_or_default())
            .collect();
        self.images.clear();
        for img in status.and_then(|s| s.images.as_ref()).into_iter().flatten() {
            for n in img.names.iter().flatten() {
                self.images
                    .insert(normalized_image_name(n), img.size_bytes.unwrap_or(0));
            }
        }
        self.node = Some(node);
    }

    pub fn labels(&self) -> &Labels {
        labels_of(self.node.as_ref().and_then(|n| n.metadata.labels.as_ref()))
    }

    /// Adds a pod (used by the cache and by tests building nodes by hand).
    pub fn add_pod(&mut self, p: Arc<PodInfo>) {
        self.requested.add(&p.requests.requested);
        self.non_zero_requested.add(&p.requests.non_zero);
        if p.has_affinity() {
            self.pods_with_affinity += 1;
        }
        if !p.required_anti_affinity.is_empty() {
            self.pods_with_required_anti_affinity += 1;
        }
        self.used_ports.extend(p.host_ports.iter().cloned());
        self.pods.push(p);
    }

    fn remove_pod(&mut self, uid: &str) -> Option<Arc<PodInfo>> {
        let i = self.pods.iter().position(|p| p.uid == uid)?;
        let p = self.pods.swap_remove(i);
        self.requested.sub(&p.requests.requested);
        self.non_zero_requested.sub(&p.requests.non_zero);
        if p.has_affinity() {
            self.pods_with_affinity -= 1;
        }
        if !p.required_anti_affinity.is_empty() {
            self.pods_with_required_anti_affinity -= 1;
        }
        for hp in &p.host_ports {
            if let Some(j) = self.used_ports.iter().position(|u| u == hp) {
                self.used_ports.swap_remove(j);
            }
        }
        Some(p)
    }
}

/// Image references as the kubelet reports them: a name without tag or digest
/// means `:latest` (upstream's `normalizedImageName`).
pub fn normalized_image_name(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if name.contains('@') || last.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

struct CachedPod {
    node: String,
    assumed: bool,
}

/// Nodes in a stable order (new nodes append; a removed node's slot is taken by the
/// last one), pods by UID, and the small objects plugins consult.
#[derive(Default)]
pub struct Cache {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    pods: HashMap<String, CachedPod>,
    /// How many nodes hold each image (ImageLocality's spread).
    image_nodes: HashMap<String, usize>,
    /// Nodes that have a Node object.
    node_count: usize,
    pub runtime_classes: BTreeMap<String, RuntimeClass>,
    pub namespace_labels: BTreeMap<String, Labels>,
    /// Pods with required anti-affinity anywhere (InterPodAffinity skips work at 0).
    pub pods_with_required_anti_affinity: usize,
}

impl Cache {
    pub fn new() -> Cache {
        Cache::default()
    }

    /// Every slot, including placeholders without a Node (check `node`).
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    pub fn node_count(&self) -> usize {
        self.node_count
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index
            .get(name)
            .map(|&i| &self.nodes[i])
            .filter(|n| n.node.is_some())
    }

    pub fn image_node_count(&self, image: &str) -> usize {
        self.image_nodes.get(image).copied().unwrap_or(0)
    }

    fn slot(&mut self, name: &str) -> &mut NodeInfo {
        let i = match self.index.get(name) {
            Some(&i) => i,
            None => {
                self.nodes.push(NodeInfo::empty(name));
                self.index.insert(name.to_string(), self.nodes.len() - 1);
                self.nodes.len() - 1
            }
        };
        &mut self.nodes[i]
    }

    fn drop_slot_if_unused(&mut self, name: &str) {
        let Some(&i) = self.index.get(name) else {
            return;
        };
        if self.nodes[i].node.is_some() || !self.nodes[i].pods.is_empty() {
            return;
        }
        self.index.remove(name);
        self.nodes.swap_remove(i);
        if i < self.nodes.len() {
            let moved = self.nodes[i].name.clone();
            self.index.insert(moved, i);
        }
    }

    fn count_images(&mut self, n: &NodeInfo, delta: isize) {
        for img in n.images.keys() {
            let e = self.image_nodes.entry(img.clone()).or_default();
            *e = e.saturating_add_signed(delta);
            if *e == 0 {
                self.image_nodes.remove(img);
            }
        }
    }

    /// Node added or updated.
    pub fn upsert_node(&mut self, node: Node) {
        let Some(name) = node.metadata.name.clone() else {
            return;
        };
        let old = self.slot(&name).clone_shallow();
        if old.node.is_some() {
            self.count_images(&old, -1);
        } else {
            self.node_count += 1;
        }
        let slot = self.slot(&name);
        slot.set_node(Arc::new(node));
        let images = slot.images.keys().cloned().collect::<Vec<_>>();
        for img in images {
            *self.image_nodes.entry(img).or_default() += 1;
        }
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(&i) = self.index.get(name) else {
            return;
        };
        if self.nodes[i].node.is_none() {
            return;
        }
        let old = self.nodes[i].clone_shallow();
        self.count_images(&old, -1);
        self.node_count -= 1;
        let n = &mut self.nodes[i];
        n.node = None;
        n.images.clear();
        self.drop_slot_if_unused(name);
    }

    /// Node names the informer did not list after a relist are gone.
    pub fn retain_nodes(&mut self, keep: &std::collections::HashSet<String>) {
        let gone: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.node.is_some() && !keep.contains(&n.name))
            .map(|n| n.name.clone())
            .collect();
        for g in gone {
            self.remove_node(&g);
        }
    }

    pub fn is_assumed(&self, uid: &str) -> bool {
        self.pods.get(uid).is_some_and(|p| p.assumed)
    }

    pub fn has_pod(&self, uid: &str) -> bool {
        self.pods.contains_key(uid)
    }

    fn place(&mut self, info: Arc<PodInfo>, node: &str, assumed: bool) {
        if !info.required_anti_affinity.is_empty() {
            self.pods_with_required_anti_affinity += 1;
        }
        self.pods.insert(
            info.uid.clone(),
            CachedPod {
                node: node.to_string(),
                assumed,
            },
        );
        self.slot(node).add_pod(info);
    }

    fn unplace(&mut self, uid: &str) -> Option<Arc<PodInfo>> {
        let cp = self.pods.remove(uid)?;
        let i = *self.index.get(&cp.node)?;
        let p = self.nodes[i].remove_pod(uid);
        if let Some(p) = &p {
            if !p.required_anti_affinity.is_empty() {
                self.pods_with_required_anti_affinity -= 1;
            }
        }
        self.drop_slot_if_unused(&cp.node);
        p
    }

    /// The scheduler placed `info` on `node`; count it there until the informer
    /// confirms the binding (or [`Cache::forget`] undoes it).
    pub fn assume(&mut self, info: Arc<PodInfo>, node: &str) {
        self.unplace(&info.uid);
        self.place(info, node, true);
    }

    /// The binding failed.
    pub fn forget(&mut self, uid: &str) {
        if self.is_assumed(uid) {
            self.unplace(uid);
        }
    }

    /// An assigned, non-terminal pod from the informer (add or update); confirms an
    /// assumed pod.
    pub fn upsert_assigned_pod(&mut self, pod: Arc<Pod>) {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let info = Arc::new(PodInfo::new(pod, None));
        self.unplace(&info.uid);
        self.place(info, &node, false);
    }

    pub fn remove_pod(&mut self, uid: &str) {
        self.unplace(uid);
    }

    /// After a relist: confirmed pods not listed are gone (assumed ones stay until
    /// their binding resolves).
    pub fn retain_pods(&mut self, keep: &std::collections::HashSet<String>) {
        let gone: Vec<String> = self
            .pods
            .iter()
            .filter(|(uid, p)| !p.assumed && !keep.contains(*uid))
            .map(|(uid, _)| uid.clone())
            .collect();
        for g in gone {
            self.unplace(&g);
        }
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }
}

impl NodeInfo {
    /// The parts of a node the image counts need (cheap: no pods).
    fn clone_shallow(&self) -> NodeInfo {
        NodeInfo {
            images: self.images.clone(),
            node: self.node.clone(),
            ..NodeInfo::empty(&self.name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"allocatable": {"cpu": "2", "memory": "1Gi", "pods": "10"},
                       "images": [{"names": ["reg/app:v1"], "sizeBytes": 1000}]}
        }))
        .unwrap()
    }

    fn pod(uid: &str, node: &str, cpu: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": uid, "namespace": "default", "uid": uid},
                "spec": {"nodeName": node, "containers": [{"name": "c",
                    "resources": {"requests": {"cpu": cpu}}}]}
            }))
            .unwrap(),
        )
    }

    #[test]
    fn assumed_pods_count_until_confirmed_or_forgotten() {
        let mut c = Cache::new();
        c.upsert_node(node("n1"));
        c.upsert_node(node("n2"));
        assert_eq!(c.image_node_count("reg/app:v1"), 2);
        let p = pod("u1", "", "500m");
        c.assume(Arc::new(PodInfo::new(p.clone(), None)), "n1");
        assert_eq!(c.node("n1").unwrap().requested.milli_cpu, 500);
        assert!(c.is_assumed("u1"));
        // The informer confirms the binding, on the node the API server recorded.
        c.upsert_assigned_pod(pod("u1", "n1", "500m"));
        assert!(!c.is_assumed("u1"));
        assert_eq!(c.node("n1").unwrap().requested.milli_cpu, 500);
        assert_eq!(c.node("n1").unwrap().pods.len(), 1);
        // A failed binding is undone.
        c.assume(Arc::new(PodInfo::new(pod("u2", "", "1"), None)), "n2");
        assert_eq!(c.node("n2").unwrap().requested.milli_cpu, 1000);
        c.forget("u2");
        assert_eq!(c.node("n2").unwrap().requested.milli_cpu, 0);
        // forget never drops a confirmed pod.
        c.forget("u1");
        assert_eq!(c.node("n1").unwrap().pods.len(), 1);
        c.remove_pod("u1");
        assert_eq!(c.node("n1").unwrap().requested.milli_cpu, 0);
        assert_eq!(c.node("n1").unwrap().requested.pods, 0);
    }

    #[test]
    fn pods_may_arrive_before_their_node_and_nodes_go_away() {
        let mut c = Cache::new();
        c.upsert_assigned_pod(pod("u1", "late", "1"));
        assert!(c.node("late").is_none());
        assert_eq!(c.node_count(), 0);
        c.upsert_node(node("late"));
        assert_eq!(c.node("late").unwrap().requested.milli_cpu, 1000);
        assert_eq!(c.node_count(), 1);
        c.upsert_node(node("other"));
        c.remove_node("late");
        assert!(c.node("late").is_none());
        assert_eq!(c.node_count(), 1);
        assert_eq!(c.image_node_count("reg/app:v1"), 1);
        c.remove_pod("u1");
        assert_eq!(c.nodes().len(), 1);
        assert_eq!(c.node("other").unwrap().name, "other");
    }

    #[test]
    fn image_names_are_normalized() {
        assert_eq!(normalized_image_name("nginx"), "nginx:latest");
        assert_eq!(normalized_image_name("reg:5000/app"), "reg:5000/app:latest");
        assert_eq!(normalized_image_name("reg:5000/app:v1"), "reg:5000/app:v1");
        assert_eq!(normalized_image_name("app@sha256:ab"), "app@sha256:ab");
    }
}
