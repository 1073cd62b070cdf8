//! Small helpers every controller shares: time, owner references, label selectors,
//! conditions and pod state predicates (upstream `pkg/controller` and
//! `pkg/api/v1/pod` helpers).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use rand::Rng;

pub fn now() -> Time {
    Time(Timestamp::now())
}

/// Seconds from `t` to now (negative when `t` is in the future).
pub fn seconds_since(t: &Time, now: Timestamp) -> f64 {
    (now.as_millisecond() - t.0.as_millisecond()) as f64 / 1000.0
}

/// The controller reference an owner puts on what it creates.
pub fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    let meta = owner.meta();
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The owner reference with `controller: true`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// Whether `meta`'s controller is the object with `uid`.
pub fn is_controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    controller_of(meta).is_some_and(|r| r.uid == uid)
}

/// Whether `labels` satisfy a `LabelSelector` (matchLabels AND matchExpressions). An
/// empty selector matches everything; callers that must treat it as "nothing" check
/// that first, as upstream does per kind.
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    if let Some(ml) = &sel.match_labels {
        if ml.iter().any(|(k, v)| labels.get(k) != Some(v)) {
            return false;
        }
    }
    for req in sel.match_expressions.iter().flatten() {
        let values = req.values.as_deref().unwrap_or_default();
        let val = labels.get(&req.key);
        let ok = match req.operator.as_str() {
            "In" => val.is_some_and(|v| values.contains(v)),
            "NotIn" => val.is_none_or(|v| !values.contains(v)),
            "Exists" => val.is_some(),
            "DoesNotExist" => val.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

pub fn selector_is_empty(sel: &LabelSelector) -> bool {
    sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && sel.match_expressions.as_ref().is_none_or(|e| e.is_empty())
}

/// Whether a map selector (a Service's `spec.selector`) matches `labels`.
pub fn map_selector_matches(
    sel: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

pub fn labels_of(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

/// `len` lowercase alphanumerics, as the API server's generateName uses.
pub fn random_suffix(len: usize) -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Neither finished nor being deleted (upstream `IsPodActive`).
pub fn is_pod_active(pod: &Pod) -> bool {
    !matches!(phase(pod), "Succeeded" | "Failed") && !is_terminating(pod)
}

fn pod_condition<'a>(
    pod: &'a Pod,
    ty: &str,
) -> Option<&'a k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == ty)
}

/// The pod's `Ready` condition is True (upstream `IsPodReady`).
pub fn is_pod_ready(pod: &Pod) -> bool {
    pod_condition(pod, "Ready").is_some_and(|c| c.status == "True")
}

/// Ready for at least `min_ready_seconds` at `now` (upstream `IsPodAvailable`).
pub fn is_pod_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    let Some(c) = pod_condition(pod, "Ready").filter(|c| c.status == "True") else {
        return false;
    };
    if min_ready_seconds <= 0 {
        return true;
    }
    c.last_transition_time
        .as_ref()
        .is_some_and(|t| seconds_since(t, now) >= min_ready_seconds as f64)
}

pub fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// `namespace/name` of an object, for logs and expectations.
pub fn key_of(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or("")
    )
}

/// A hash of JSON, rendered as upstream's `ComputeHash` renders (safe-encoded), used
/// for `controller-revision-hash` labels.
pub fn hash_value(v: &serde_json::Value, collisions: Option<i32>) -> String {
    // FNV-1a 32 as upstream: stable across builds, unlike std's SipHash keys.
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u32::from(*b);
            h = h.wrapping_mul(0x0100_0193);
        }
    };
    feed(v.to_string().as_bytes());
    if let Some(c) = collisions {
        feed(&c.to_le_bytes());
    }
    safe_encode(h)
}

/// Upstream `rand.SafeEncodeString`: digits and consonants only, so a hash never
/// spells words.
fn safe_encode(mut n: u32) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut out = String::new();
    loop {
        out.push(ALPHANUMS[(n % ALPHANUMS.len() as u32) as usize] as char);
        n /= ALPHANUMS.len() as u32;
        if n == 0 {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selectors() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "a")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["db".into()]),
            }]),
        };
        assert!(selector_matches(&sel, &labels(&[("app", "a")])));
        assert!(selector_matches(
            &sel,
            &labels(&[("app", "a"), ("tier", "web")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[("app", "a"), ("tier", "db")])
        ));
        assert!(!selector_matches(&sel, &labels(&[("app", "b")])));
        assert!(selector_matches(&LabelSelector::default(), &labels(&[])));
        assert!(selector_is_empty(&LabelSelector::default()));
    }

    #[test]
    fn hashes_are_stable_and_safe() {
        let a = hash_value(&serde_json::json!({"x": 1}), None);
        assert_eq!(a, hash_value(&serde_json::json!({"x": 1}), None));
        assert_ne!(a, hash_value(&serde_json::json!({"x": 1}), Some(1)));
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
