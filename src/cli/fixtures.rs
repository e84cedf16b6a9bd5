//! A service with three slots, three revisions and a lost node, for the plugin's tests.

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde_json::{json, Value};

use super::Snapshot;
use crate::api::{ResilientService, ANNOTATION_BAD_REVISION};
use crate::build;

pub const NOW: &str = "2026-01-01T12:00:00Z";

pub fn service(image: &str) -> ResilientService {
    serde_json::from_value(json!({
        "apiVersion": "perennial.dev/v1alpha1", "kind": "ResilientService",
        "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "generation": 3,
                     "resourceVersion": "42"},
        "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "app", "image": image}]}}}
    }))
    .unwrap()
}

/// The revision a service of `image` records, numbered `number`, marked failed with `failed`.
pub fn revision(image: &str, number: i64, failed: Option<&str>) -> ControllerRevision {
    let mut r = build::desired_revision(&service(image), number);
    if let Some(why) = failed {
        r.annotations_mut()
            .insert(ANNOTATION_BAD_REVISION.into(), why.into());
    }
    r
}

pub fn pod(name: &str, slot: i32, revision: &str, extra: Value) -> Pod {
    let mut p = json!({
        "metadata": {"name": name, "namespace": "shop",
                     "labels": {"perennial.dev/service": "web", "perennial.dev/slot": slot.to_string(),
                                "perennial.dev/revision": revision},
                     "ownerReferences": [{"apiVersion": "perennial.dev/v1alpha1", "kind": "ResilientService",
                                          "name": "web", "uid": "u1", "controller": true}]},
        "spec": {"containers": [{"name": "app", "image": "x"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    });
    merge(&mut p, extra);
    serde_json::from_value(p).unwrap()
}

fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

/// web:3 serves every slot; slot 1's node is lost and its replacement starts elsewhere, and
/// web:2 failed before.
pub fn node_loss() -> Snapshot {
    let mut svc = service("web:3");
    let current = build::revision_name(&svc);
    let cond = |t: &str, s: &str, r: &str, m: &str| json!({"type": t, "status": s, "reason": r, "message": m, "lastTransitionTime": "2026-01-01T11:59:00Z"});
    svc.status = serde_json::from_value(json!({
        "observedGeneration": 3, "replicas": 3, "readyReplicas": 2, "availableReplicas": 2,
        "updatedReplicas": 3, "currentRevision": current, "updateRevision": current,
        "domains": {"zone-a": 1, "zone-c": 1},
        "reason": "NodeLost",
        "conditions": [
            cond("Available", "True", "MinimumReplicasAvailable", "2 of 3 available"),
            cond("Progressing", "True", "RolloutComplete", "done"),
            cond("Degraded", "True", "NodeLost", "slot 1 (pod web-1-b, node kwok-2): NodeLost: node kwok-2 lost"),
            cond("RolledBack", "False", "NoRollback", format!("running revision {current}").as_str()),
        ],
        "replicaStatuses": [
            {"ordinal": 0, "pod": "web-0-a", "node": "kwok-1", "state": "Ready", "revision": current,
             "restartsInWindow": 0},
            {"ordinal": 1, "pod": "web-1-c", "node": "kwok-3", "state": "Repairing", "revision": current,
             "restartsInWindow": 1, "repairs": ["2026-01-01T11:59:30Z"], "escalation": "Reschedule",
             "avoidNode": "kwok-2", "avoidNodeReason": "NodeLost",
             "waitingFor": "pod web-1-c to be Ready",
             "lastFailure": {"reason": "NodeLost", "message": "node kwok-2 stopped renewing its lease 41 s ago",
                             "at": "2026-01-01T11:59:18Z"}},
            {"ordinal": 2, "pod": "web-2-a", "node": "kwok-5", "state": "Ready", "revision": current,
             "restartsInWindow": 0,
             "lastFailure": {"reason": "CrashLoopBackOff", "message": "app exited 1", "at": "2026-01-01T11:40:00Z",
                             "recoveredAt": "2026-01-01T11:50:00Z"}}
        ]
    }))
    .unwrap();
    let pods = vec![
        pod(
            "web-0-a",
            0,
            &current,
            json!({"spec": {"nodeName": "kwok-1"}}),
        ),
        pod(
            "web-1-b",
            1,
            &current,
            json!({"spec": {"nodeName": "kwok-2"},
            "metadata": {"deletionTimestamp": "2026-01-01T11:59:40Z"}}),
        ),
        pod(
            "web-1-c",
            1,
            &current,
            json!({"spec": {"nodeName": "kwok-3"},
            "status": {"phase": "Pending", "conditions": []}}),
        ),
        pod(
            "web-2-a",
            2,
            &current,
            json!({"spec": {"nodeName": "kwok-5"}}),
        ),
    ];
    let revisions = vec![
        revision("web:1", 1, None),
        revision(
            "web:2",
            2,
            Some("CrashLoopBackOff: app exited 1 (4 restarts)"),
        ),
        revision("web:3", 3, None),
    ];
    let zones = [
        ("kwok-1", "zone-a"),
        ("kwok-3", "zone-b"),
        ("kwok-5", "zone-c"),
    ]
    .map(|(n, z)| (n.to_string(), z.to_string()))
    .into();
    Snapshot::new(svc, pods, revisions, zones, vec![])
}
