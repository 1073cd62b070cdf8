//! RuntimeClass: a pod naming a RuntimeClass lands only on nodes whose kubelet reports
//! the class's handler in `status.runtimeHandlers`, and that match the class's
//! `scheduling.nodeSelector` (its tolerations are merged into the pod's, see
//! `PodInfo`). A pod naming a RuntimeClass that does not exist fits nowhere until the
//! class is created.
//!
//! A pod naming no RuntimeClass lands only on nodes serving the handlers its images
//! need (`PodInfo::image_handlers`: Linux images need the Linux handler).

use crate::cache::{Cache, NodeInfo};
use crate::framework::{FilterPlugin, PreFilter, Rejection, State};
use crate::plugins::node_affinity::ERR_NODE_AFFINITY;
use crate::pod_info::PodInfo;

pub struct RuntimeClassFilter;

impl FilterPlugin for RuntimeClassFilter {
    fn name(&self) -> &'static str {
        "RuntimeClass"
    }
    fn pre_filter(&self, pod: &PodInfo, _: &Cache) -> PreFilter {
        match &pod.runtime_class {
            None if pod.image_handlers.is_empty() => PreFilter::Skip,
            None => PreFilter::run(),
            Some(Ok(_)) => PreFilter::run(),
            Some(Err(name)) => PreFilter::Reject(Rejection::unresolvable(format!(
                "pod rejected: RuntimeClass \"{name}\" not found"
            ))),
        }
    }
    fn filter(&self, pod: &PodInfo, _: &State, node: &NodeInfo) -> Option<Rejection> {
        let Some(Ok(rc)) = &pod.runtime_class else {
            let missing = pod
                .image_handlers
                .iter()
                .find(|h| !node.runtime_handlers.contains(h))?;
            return Some(Rejection::unresolvable(format!(
                "node(s) didn't have the runtime handler \"{missing}\" its images need (the pod names no RuntimeClass)"
            )));
        };
        if !node.runtime_handlers.contains(&rc.handler) {
            return Some(Rejection::unresolvable(format!(
                "node(s) didn't have the runtime handler \"{}\" of RuntimeClass \"{}\"",
                rc.handler, rc.name
            )));
        }
        let labels = node.labels();
        let selected = rc
            .node_selector
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v));
        (!selected).then(|| Rejection::unresolvable(ERR_NODE_AFFINITY))
    }
}
