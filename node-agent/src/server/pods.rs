//! The pods the kubelet runs, as its watch last saw them (spec and the status the
//! workers wrote), and the pure decisions the server makes from them: which container
//! instance a log request reads, which one an exec enters.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

/// The kubelet's pods by `namespace/name`, shared by the pod watch (writer) and the
/// server (readers). Clones share the map.
#[derive(Clone, Default)]
pub struct PodStore(Arc<RwLock<HashMap<String, Arc<Pod>>>>);

fn key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

impl PodStore {
    pub fn apply(&self, pod: &Pod) {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or("");
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key(ns, name), Arc::new(pod.clone()));
    }

    pub fn remove(&self, pod: &Pod) {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or("");
        let mut m = self.0.write().unwrap_or_else(|e| e.into_inner());
        // Only the same pod (a new pod of the same name may already be there).
        if m.get(&key(ns, name)).map(|p| &p.metadata.uid) == Some(&pod.metadata.uid) {
            m.remove(&key(ns, name));
        }
    }

    /// Drops pods whose uid is not in `uids` (after a relist).
    pub fn retain_uids(&self, uids: &std::collections::HashSet<String>) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, p| p.metadata.uid.as_ref().is_some_and(|u| uids.contains(u)));
    }

    pub fn get(&self, ns: &str, name: &str) -> Option<Arc<Pod>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key(ns, name))
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<Pod>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// Why a request about a container cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainerError {
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 400: the container exists but is not in a state the request can use.
    #[error("{0}")]
    BadRequest(String),
}

fn statuses(pod: &Pod) -> impl Iterator<Item = &ContainerStatus> {
    pod.status.iter().flat_map(|s| {
        s.container_statuses
            .iter()
            .flatten()
            .chain(s.init_container_statuses.iter().flatten())
            .chain(s.ephemeral_container_statuses.iter().flatten())
    })
}

fn has_container(pod: &Pod, name: &str) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.containers.iter().any(|c| c.name == name)
            || s.init_containers.iter().flatten().any(|c| c.name == name)
    })
}

/// The container id (`scheme://id`) whose log a request reads: upstream's
/// `validateContainerLogStatus`, with its messages.
pub fn log_container_id(
    pod: &Pod,
    container: &str,
    previous: bool,
) -> Result<String, ContainerError> {
    let pod_name = pod.metadata.name.as_deref().unwrap_or("");
    let Some(cs) = statuses(pod).find(|c| c.name == container) else {
        return Err(if has_container(pod, container) {
            ContainerError::BadRequest(format!(
                "container {container:?} in pod {pod_name:?} is waiting to start: ContainerCreating"
            ))
        } else {
            ContainerError::BadRequest(format!(
                "container {container:?} in pod {pod_name:?} is not available"
            ))
        });
    };
    let last = cs
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .and_then(|t| t.container_id.clone())
        .filter(|id| !id.is_empty());
    let state = cs.state.as_ref();
    let (waiting, running, terminated) = (
        state.and_then(|s| s.waiting.as_ref()),
        state.and_then(|s| s.running.as_ref()),
        state.and_then(|s| s.terminated.as_ref()),
    );
    let terminated_msg = || {
        ContainerError::BadRequest(format!(
            "container {container:?} in pod {pod_name:?} is terminated"
        ))
    };
    if previous {
        return last.ok_or_else(|| {
            ContainerError::BadRequest(format!(
                "previous terminated container {container:?} in pod {pod_name:?} not found"
            ))
        });
    }
    if running.is_some() {
        return cs
            .container_id
            .clone()
            .filter(|id| !id.is_empty())
            .ok_or_else(terminated_msg);
    }
    if let Some(t) = terminated {
        return match t.container_id.clone().filter(|id| !id.is_empty()) {
            Some(id) => Ok(id),
            None => last.ok_or_else(terminated_msg),
        };
    }
    if let Some(id) = last {
        return Ok(id);
    }
    Err(ContainerError::BadRequest(match waiting {
        Some(w) => match w.reason.as_deref().unwrap_or("") {
            "ErrImagePull" => format!(
                "container {container:?} in pod {pod_name:?} is waiting to start: image can't be pulled"
            ),
            "ImagePullBackOff" => format!(
                "container {container:?} in pod {pod_name:?} is waiting to start: trying and failing to pull image"
            ),
            r => format!("container {container:?} in pod {pod_name:?} is waiting to start: {r}"),
        },
        None => format!(
            "container {container:?} in pod {pod_name:?} is waiting to start - no logs yet"
        ),
    }))
}

/// The running container an exec or attach enters (upstream: the container's id
/// in the runtime's pod, which must be running).
pub fn running_container_id(pod: &Pod, container: &str) -> Result<String, ContainerError> {
    let pod_name = pod.metadata.name.as_deref().unwrap_or("");
    let cs = statuses(pod).find(|c| c.name == container).ok_or_else(|| {
        ContainerError::NotFound(format!(
            "container not found ({container:?}) in pod {pod_name:?}"
        ))
    })?;
    let running = cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some();
    match cs.container_id.clone().filter(|id| !id.is_empty()) {
        Some(id) if running => Ok(id),
        _ => Err(ContainerError::BadRequest(format!(
            "container {container:?} in pod {pod_name:?} is not running"
        ))),
    }
}

/// `scheme://id` → `id`.
pub fn strip_scheme(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, rest)| rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u"},
            "spec": {"containers": [{"name": "c"}]},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn log_container_choice_follows_upstream() {
        let running = pod(json!({"containerStatuses": [{
            "name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": 1,
            "containerID": "wasm://new",
            "state": {"running": {}},
            "lastState": {"terminated": {"exitCode": 1, "containerID": "wasm://old"}},
        }]}));
        assert_eq!(
            log_container_id(&running, "c", false).unwrap(),
            "wasm://new"
        );
        assert_eq!(log_container_id(&running, "c", true).unwrap(), "wasm://old");
        assert_eq!(strip_scheme("wasm://new"), "new");
        assert_eq!(running_container_id(&running, "c").unwrap(), "wasm://new");

        let first = pod(json!({"containerStatuses": [{
            "name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
            "containerID": "wasm://a", "state": {"running": {}},
        }]}));
        assert_eq!(
            log_container_id(&first, "c", true).unwrap_err(),
            ContainerError::BadRequest(
                "previous terminated container \"c\" in pod \"p\" not found".into()
            )
        );

        let waiting = pod(json!({"containerStatuses": [{
            "name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ErrImagePull"}},
        }]}));
        assert_eq!(
            log_container_id(&waiting, "c", false)
                .unwrap_err()
                .to_string(),
            "container \"c\" in pod \"p\" is waiting to start: image can't be pulled"
        );
        assert!(running_container_id(&waiting, "c").is_err());

        let done = pod(json!({"containerStatuses": [{
            "name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "containerID": "wasm://d", "state": {"terminated": {"exitCode": 0, "containerID": "wasm://d"}},
        }]}));
        assert_eq!(log_container_id(&done, "c", false).unwrap(), "wasm://d");
        assert!(matches!(
            running_container_id(&done, "x"),
            Err(ContainerError::NotFound(_))
        ));
        let none = pod(json!({}));
        assert!(log_container_id(&none, "c", false)
            .unwrap_err()
            .to_string()
            .contains("ContainerCreating"));
    }
}
