//! The ResilientService as the service cache keeps it: its metadata, and its spec and status
//! as JSON text, decoded again for each pass (`decode`). A `ResilientService` struct is
//! 2.8 kB and its container 2.1 kB before any field is set, and each slot of the ledger
//! some 400 bytes with its strings: 8.8 kB a ten-replica service kept decoded, a quarter
//! of that kept as text. A pass decodes its one service, a few microseconds; what is read
//! of every service at once (by node events and the heartbeat watch) is kept decoded.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Deserializer, Serialize};

use super::trim_service;
use crate::api::{ResilientService, ResilientServiceSpec, ResilientServiceStatus};

/// A ResilientService with its metadata trimmed (`trim_service`) and the rest as text.
#[derive(Clone, Debug, Resource)]
#[resource(inherit = ResilientService)]
pub struct CachedService {
    pub metadata: ObjectMeta,
    /// The spec and the status, as `Body` writes them.
    body: Box<str>,
    /// The nodes a slot of the service keeps off (status.replicaStatuses[].avoidNode).
    kept_off: Box<[Box<str>]>,
    /// spec.repair.nodeLostAfterSeconds.
    node_lost_after_seconds: i32,
}

#[derive(Serialize)]
struct Body<'a> {
    spec: &'a ResilientServiceSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a ResilientServiceStatus>,
}

#[derive(Deserialize)]
struct OwnedBody {
    spec: ResilientServiceSpec,
    status: Option<ResilientServiceStatus>,
}

impl CachedService {
    /// The service as the cache keeps it, trimmed.
    pub fn new(mut svc: ResilientService) -> Result<Self, serde_json::Error> {
        trim_service(&mut svc);
        let body = serde_json::to_string(&Body {
            spec: &svc.spec,
            status: svc.status.as_ref(),
        })?;
        let mut kept_off: Vec<Box<str>> = (svc.status.iter())
            .flat_map(|s| s.replica_statuses.iter())
            .filter_map(|r| r.avoid_node.as_deref().map(Box::from))
            .collect();
        kept_off.sort();
        kept_off.dedup();
        Ok(Self {
            metadata: svc.metadata,
            body: body.into_boxed_str(),
            kept_off: kept_off.into_boxed_slice(),
            node_lost_after_seconds: svc.spec.repair.node_lost_after_seconds,
        })
    }

    /// The whole service, as the API server sent it but for what the trim dropped.
    pub fn decode(&self) -> Result<ResilientService, serde_json::Error> {
        let OwnedBody { spec, status } = serde_json::from_str(&self.body)?;
        Ok(ResilientService {
            metadata: self.metadata.clone(),
            spec,
            status,
        })
    }

    /// Whether a slot of the service keeps off `node`.
    pub fn keeps_off(&self, node: &str) -> bool {
        self.kept_off.iter().any(|n| &**n == node)
    }

    /// After how long without a heartbeat the service takes a node for lost.
    pub fn node_lost_after_seconds(&self) -> i32 {
        self.node_lost_after_seconds
    }
}

impl<'de> Deserialize<'de> for CachedService {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let svc = ResilientService::deserialize(deserializer)?;
        Self::new(svc).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "perennial.dev/v1alpha1", "kind": "ResilientService",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "resourceVersion": "7",
                "generation": 2, "labels": {"team": "a"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "note": "kept"},
                "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
            "spec": {"replicas": 3, "repair": {"nodeLostAfterSeconds": 55},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "app", "image": "example/app:1",
                        "resources": {"requests": {"cpu": "100m"}}}]}}},
            "status": {"observedGeneration": 2, "replicas": 3,
                "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                    "message": "3 of 3", "lastTransitionTime": "2026-12-05T10:00:00Z"}],
                "replicaStatuses": [
                    {"ordinal": 0, "state": "Ready", "pod": "web-0-a"},
                    {"ordinal": 1, "state": "Ready", "avoidNode": "n2",
                        "lastFailure": {"reason": "OOMKilled", "message": "exit 137", "at": "2026-12-05T09:00:00Z"}},
                    {"ordinal": 2, "state": "Ready", "avoidNode": "n2"}]}
        })
    }

    #[test]
    fn a_cached_service_decodes_to_the_service_sent_but_for_what_the_trim_drops() {
        let sent: ResilientService = serde_json::from_value(service()).unwrap();
        let cached: CachedService = serde_json::from_value(service()).unwrap();
        let mut expected = sent.clone();
        trim_service(&mut expected);
        let decoded = cached.decode().unwrap();
        assert_eq!(decoded.metadata, expected.metadata);
        assert_eq!(decoded.spec, sent.spec);
        assert_eq!(decoded.status, sent.status);
        assert_eq!(decoded.metadata.managed_fields, None);
        assert_eq!(
            decoded
                .metadata
                .annotations
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            ["note"]
        );
    }

    #[test]
    fn what_node_events_read_of_every_service_is_kept_decoded() {
        let cached: CachedService = serde_json::from_value(service()).unwrap();
        assert!(cached.keeps_off("n2"));
        assert!(!cached.keeps_off("n1"));
        assert_eq!(cached.kept_off.len(), 1, "one entry a node");
        assert_eq!(cached.node_lost_after_seconds(), 55);
    }

    #[test]
    fn a_service_without_a_status_is_cached_and_decoded_without_one() {
        let mut value = service();
        value.as_object_mut().unwrap().remove("status");
        let cached: CachedService = serde_json::from_value(value).unwrap();
        assert_eq!(cached.decode().unwrap().status, None);
        assert!(!cached.keeps_off("n2"));
    }
}
