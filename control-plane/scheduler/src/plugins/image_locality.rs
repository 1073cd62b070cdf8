//! ImageLocality: favour nodes that already hold the pod's images (for Wasm modules:
//! the module is in the node's content store), weighted by how widely the image is
//! spread so one node does not attract everything (upstream's formula).

use crate::cache::{normalized_image_name, Cache, NodeInfo};
use crate::framework::{PreScore, ScorePlugin, State, MAX_NODE_SCORE};
use crate::pod_info::PodInfo;

const MB: i64 = 1024 * 1024;
const MIN_THRESHOLD: i64 = 23 * MB;
const MAX_CONTAINER_THRESHOLD: i64 = 1000 * MB;

pub struct ImageLocality;

/// Per pod: each image's normalized name and the share of nodes holding it.
struct Images {
    images: Vec<(String, f64)>,
    containers: i64,
}

impl ScorePlugin for ImageLocality {
    fn name(&self) -> &'static str {
        "ImageLocality"
    }
    fn pre_score(&self, pod: &PodInfo, cache: &Cache, _: &[&NodeInfo]) -> PreScore {
        let spec = pod.pod.spec.as_ref();
        let containers: Vec<_> = spec
            .into_iter()
            .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
            .collect();
        let total = cache.node_count().max(1) as f64;
        let images: Vec<(String, f64)> = containers
            .iter()
            .filter_map(|c| c.image.as_deref())
            .map(normalized_image_name)
            .filter_map(|n| {
                let have = cache.image_node_count(&n);
                (have > 0).then(|| {
                    let spread = have as f64 / total;
                    (n, spread)
                })
            })
            .collect();
        if images.is_empty() {
            return PreScore::Skip;
        }
        PreScore::Run(Some(Box::new(Images {
            images,
            containers: containers.len() as i64,
        })))
    }
    fn score(&self, _: &PodInfo, state: &State, node: &NodeInfo) -> i64 {
        let Some(st) = crate::framework::state::<Images>(state) else {
            return 0;
        };
        let sum: i64 = st
            .images
            .iter()
            .filter_map(|(n, spread)| {
                node.images
                    .get(n)
                    .map(|size| (*size as f64 * spread) as i64)
            })
            .sum();
        let max = MAX_CONTAINER_THRESHOLD * st.containers.max(1);
        let sum = sum.clamp(MIN_THRESHOLD, max);
        MAX_NODE_SCORE * (sum - MIN_THRESHOLD) / (max - MIN_THRESHOLD)
    }
}
