//! A container's resources as the pod cache keeps them: of the requests and limits, the CPU
//! and memory, all that a judgement compares (whether a container runs what its spec asks,
//! after an in-place resize). A `ResourceRequirements` keeps each of its two maps in a
//! B-tree leaf of some 540 bytes: a pod that requests and limits resources paid 2.2 kB for
//! them in its spec and its container status, more than the rest of the cached pod.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::{Deserialize, Deserializer};

/// The resources read, in the order they are kept.
const READ: [&str; 2] = ["cpu", "memory"];

/// The CPU and memory requested and limited, as the quantities' text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CachedResources {
    requests: [Option<Box<str>>; 2],
    limits: [Option<Box<str>>; 2],
}

impl CachedResources {
    pub fn of(resources: ResourceRequirements) -> Self {
        let read = |map: Option<BTreeMap<String, Quantity>>| {
            let mut map = map.unwrap_or_default();
            READ.map(|name| map.remove(name).map(|q| q.0.into_boxed_str()))
        };
        Self {
            requests: read(resources.requests),
            limits: read(resources.limits),
        }
    }

    /// As a `ResourceRequirements`, with the CPU and memory alone.
    pub fn to_requirements(&self) -> ResourceRequirements {
        let map = |kept: &[Option<Box<str>>; 2]| {
            let map: BTreeMap<String, Quantity> = (READ.iter().zip(kept))
                .filter_map(|(name, q)| Some((name.to_string(), Quantity(q.as_deref()?.into()))))
                .collect();
            (!map.is_empty()).then_some(map)
        };
        ResourceRequirements {
            requests: map(&self.requests),
            limits: map(&self.limits),
            ..Default::default()
        }
    }
}

impl<'de> Deserialize<'de> for CachedResources {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        ResourceRequirements::deserialize(deserializer).map(Self::of)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(value: serde_json::Value) -> ResourceRequirements {
        serde_json::from_value::<CachedResources>(value)
            .unwrap()
            .to_requirements()
    }

    #[test]
    fn cpu_and_memory_are_kept_as_requested_and_limited_and_nothing_else() {
        let kept = decoded(serde_json::json!({
            "requests": {"cpu": "100m", "memory": "128Mi", "ephemeral-storage": "1Gi"},
            "limits": {"memory": "256Mi", "example.com/gpu": "1"},
            "claims": [{"name": "gpu"}]
        }));
        let expected: ResourceRequirements = serde_json::from_value(serde_json::json!({
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "256Mi"}
        }))
        .unwrap();
        assert_eq!(kept, expected);
    }

    #[test]
    fn resources_without_cpu_or_memory_are_kept_as_none_asked() {
        assert_eq!(
            decoded(serde_json::json!({})),
            ResourceRequirements::default()
        );
        assert_eq!(
            decoded(serde_json::json!({"requests": {"ephemeral-storage": "1Gi"}})),
            ResourceRequirements::default()
        );
    }
}
