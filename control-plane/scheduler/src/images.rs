//! Pods that name no RuntimeClass run on the runtime their images need — Wasm images on
//! the Wasm handler, Linux images on the Linux one — as the kubelet routes them. On a
//! cluster where some node lacks one of the two handlers (an edge node without
//! containerd), the scheduler must know which kind each image is before it picks a
//! node. An [`ImageInspector`] (given by the binary, which has the registry client)
//! answers from the image's manifest and config; answers are kept per image
//! reference. The scheduling cycle never waits on a registry: a pod whose images are
//! not known yet is set aside, the registry is asked in the background, and the pod
//! goes back to the queue when the answers arrive.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use crate::cache::Cache;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Wasm,
    Linux,
}

/// Tells Wasm images from Linux images.
#[async_trait::async_trait]
pub trait ImageInspector: Send + Sync {
    /// `pod` is the pod naming `image` (its namespace and imagePullSecrets, read
    /// through `client`, give the registry credentials). `Err`: the registry could not
    /// be asked or refused.
    async fn kind(
        &self,
        client: &kube::Client,
        image: &str,
        pod: &Pod,
    ) -> Result<ImageKind, String>;
}

/// How pods naming no RuntimeClass are matched to nodes' runtime handlers.
#[derive(Clone)]
pub struct ImageRouting {
    pub inspector: Arc<dyn ImageInspector>,
    /// The handler running Wasm images (the kubelet's default).
    pub wasm_handler: String,
    /// The handler running Linux images.
    pub linux_handler: String,
}

impl ImageRouting {
    pub fn new(inspector: Arc<dyn ImageInspector>) -> ImageRouting {
        ImageRouting {
            inspector,
            wasm_handler: "wasm".into(),
            linux_handler: "runc".into(),
        }
    }

    /// Whether image kinds can change where a pod fits: some node lacks a handler.
    pub fn matters(&self, cache: &Cache) -> bool {
        cache.nodes().iter().any(|n| {
            n.node.is_some()
                && !(n.runtime_handlers.contains(&self.wasm_handler)
                    && n.runtime_handlers.contains(&self.linux_handler))
        })
    }

    fn handler(&self, kind: ImageKind) -> &str {
        match kind {
            ImageKind::Wasm => &self.wasm_handler,
            ImageKind::Linux => &self.linux_handler,
        }
    }
}

impl std::fmt::Debug for ImageRouting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageRouting")
            .field("wasm_handler", &self.wasm_handler)
            .field("linux_handler", &self.linux_handler)
            .finish_non_exhaustive()
    }
}

/// A failed answer is asked again after this long; meanwhile pods naming the image
/// are scheduled as if it did not matter (the kubelet reports the pull error).
const RETRY_FAILED: Duration = Duration::from_secs(10);

enum Known {
    Kind(ImageKind),
    Failed(Instant),
}

/// What the scheduler knows of a pod's images.
#[derive(Debug, PartialEq, Eq)]
pub enum Needs {
    /// The runtime handlers its images need (empty: unknown, no constraint).
    Handlers(Vec<String>),
    /// Not known yet: these images are to be asked about.
    Ask(Vec<String>),
    /// Not known yet, being asked.
    Wait,
}

/// Image kinds known, images being asked about, and pods waiting for answers.
#[derive(Default)]
pub struct ImageKinds {
    known: HashMap<String, Known>,
    asking: HashSet<String>,
    waiting: HashMap<String, Arc<Pod>>,
}

pub fn pod_images(pod: &Pod) -> impl Iterator<Item = &str> {
    pod.spec.iter().flat_map(|s| {
        s.init_containers
            .iter()
            .flatten()
            .chain(s.containers.iter())
            .filter_map(|c| c.image.as_deref())
    })
}

impl ImageKinds {
    pub fn needs(&mut self, pod: &Pod, routing: &ImageRouting, now: Instant) -> Needs {
        let mut handlers = Vec::new();
        let mut ask = Vec::new();
        let mut wait = false;
        for image in pod_images(pod) {
            match self.known.get(image) {
                Some(Known::Kind(k)) => {
                    let h = routing.handler(*k).to_string();
                    if !handlers.contains(&h) {
                        handlers.push(h);
                    }
                }
                Some(Known::Failed(at)) if now.duration_since(*at) < RETRY_FAILED => {}
                _ if self.asking.contains(image) => wait = true,
                _ => {
                    if !ask.iter().any(|a| a == image) {
                        ask.push(image.to_string());
                    }
                }
            }
        }
        if !ask.is_empty() {
            self.asking.extend(ask.iter().cloned());
            Needs::Ask(ask)
        } else if wait {
            Needs::Wait
        } else {
            handlers.sort();
            Needs::Handlers(handlers)
        }
    }

    /// Sets `pod` aside until its images are known.
    pub fn wait(&mut self, uid: String, pod: Arc<Pod>) {
        self.waiting.insert(uid, pod);
    }

    /// The pod was deleted, bound, or changed: it is no longer waiting here.
    pub fn forget_pod(&mut self, uid: &str) -> Option<Arc<Pod>> {
        self.waiting.remove(uid)
    }

    /// Records an answer; returns the waiting pods it may release (all of them: each
    /// goes through [`ImageKinds::needs`] again).
    pub fn answered(
        &mut self,
        image: String,
        kind: Result<ImageKind, String>,
        now: Instant,
    ) -> Vec<Arc<Pod>> {
        self.asking.remove(&image);
        let known = match kind {
            Ok(k) => Known::Kind(k),
            Err(_) => Known::Failed(now),
        };
        self.known.insert(image.clone(), known);
        let released: Vec<String> = self
            .waiting
            .iter()
            .filter(|(_, p)| pod_images(p).any(|i| i == image))
            .map(|(uid, _)| uid.clone())
            .collect();
        released
            .iter()
            .filter_map(|uid| self.waiting.remove(uid))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Never;
    #[async_trait::async_trait]
    impl ImageInspector for Never {
        async fn kind(&self, _: &kube::Client, _: &str, _: &Pod) -> Result<ImageKind, String> {
            unreachable!("the table tests never ask")
        }
    }

    fn pod(uid: &str, images: &[&str]) -> Pod {
        let containers: Vec<_> = images
            .iter()
            .enumerate()
            .map(|(i, im)| json!({"name": format!("c{i}"), "image": im}))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": uid, "namespace": "default", "uid": uid},
            "spec": {"containers": containers},
        }))
        .unwrap()
    }

    #[test]
    fn asks_once_waits_then_knows() {
        let routing = ImageRouting::new(Arc::new(Never));
        let mut k = ImageKinds::default();
        let now = Instant::now();
        let a = pod("a", &["reg/hello:1", "reg/db:1"]);
        let b = pod("b", &["reg/hello:1"]);
        assert_eq!(
            k.needs(&a, &routing, now),
            Needs::Ask(vec!["reg/hello:1".into(), "reg/db:1".into()])
        );
        k.wait("a".into(), Arc::new(a.clone()));
        assert_eq!(k.needs(&b, &routing, now), Needs::Wait);
        k.wait("b".into(), Arc::new(b.clone()));
        let released = k.answered("reg/hello:1".into(), Ok(ImageKind::Wasm), now);
        assert_eq!(released.len(), 2);
        assert_eq!(
            k.needs(&b, &routing, now),
            Needs::Handlers(vec!["wasm".into()])
        );
        assert_eq!(k.needs(&a, &routing, now), Needs::Wait);
        k.answered("reg/db:1".into(), Ok(ImageKind::Linux), now);
        assert_eq!(
            k.needs(&a, &routing, now),
            Needs::Handlers(vec!["runc".into(), "wasm".into()])
        );
    }

    #[test]
    fn a_failed_answer_sets_no_constraint_until_asked_again() {
        let routing = ImageRouting::new(Arc::new(Never));
        let mut k = ImageKinds::default();
        let now = Instant::now();
        let a = pod("a", &["reg/missing:1"]);
        assert!(matches!(k.needs(&a, &routing, now), Needs::Ask(_)));
        k.answered("reg/missing:1".into(), Err("not found".into()), now);
        assert_eq!(k.needs(&a, &routing, now), Needs::Handlers(vec![]));
        assert!(matches!(
            k.needs(&a, &routing, now + RETRY_FAILED),
            Needs::Ask(_)
        ));
    }

    #[test]
    fn forgotten_pods_are_not_released() {
        let routing = ImageRouting::new(Arc::new(Never));
        let mut k = ImageKinds::default();
        let now = Instant::now();
        let a = pod("a", &["reg/x:1"]);
        k.needs(&a, &routing, now);
        k.wait("a".into(), Arc::new(a));
        assert!(k.forget_pod("a").is_some());
        assert!(k
            .answered("reg/x:1".into(), Ok(ImageKind::Wasm), now)
            .is_empty());
    }
}
