//! Objects as the caches hold them, for the tests of the assessment's steps.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;

use crate::api::ResilientService;

pub const NOW: i64 = 1_800_000_000;

pub fn at(s: i64) -> Timestamp {
    Timestamp::from_second(s).unwrap()
}

pub fn svc() -> ResilientService {
    serde_json::from_value(json!({
        "apiVersion": "perennial.dev/v1alpha1", "kind": "ResilientService",
        "metadata": {"name": "web", "namespace": "ns", "uid": "u1"},
        "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "app", "image": "a:1"}]}}}
    }))
    .unwrap()
}

/// A Ready pod of slot `slot` at revision `rev`, bound to `node`.
pub fn pod(name: &str, slot: Option<&str>, rev: Option<&str>, node: Option<&str>) -> Arc<Pod> {
    let mut labels = serde_json::Map::new();
    if let Some(s) = slot {
        labels.insert("perennial.dev/slot".into(), s.into());
    }
    if let Some(r) = rev {
        labels.insert("perennial.dev/revision".into(), r.into());
    }
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "labels": labels},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True",
                "lastTransitionTime": at(NOW - 100).to_string()}]}
        }))
        .unwrap(),
    )
}

/// A node Ready since long ago, labelled with `zone`.
pub fn node(name: &str, zone: &str) -> Arc<Node> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
            "status": {"conditions": [{"type": "Ready", "status": "True",
                "lastTransitionTime": at(NOW - 1000).to_string()}]}
        }))
        .unwrap(),
    )
}

pub fn lease(node: &str, renewed: i64) -> Arc<Lease> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": node, "namespace": "kube-node-lease"},
            "spec": {"renewTime": at(renewed).to_string()}
        }))
        .unwrap(),
    )
}

/// The node facts of `nodes` and `leases`, each known by its name; no heartbeat heard.
pub fn facts(
    nodes: impl IntoIterator<Item = Arc<Node>>,
    leases: impl IntoIterator<Item = Arc<Lease>>,
) -> Arc<crate::observe::NodeFacts> {
    use kube::ResourceExt;
    Arc::new(crate::observe::NodeFacts::new(
        nodes.into_iter().map(|n| (n.name_any(), n)).collect(),
        leases.into_iter().map(|l| (l.name_any(), l)).collect(),
        Default::default(),
    ))
}
