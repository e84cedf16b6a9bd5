//! The twenty services of the soak and what "converged" means for each.

use super::*;

pub(crate) struct Profile {
    pub(crate) name: &'static str,
    pub(crate) replicas: i32,
    pub(crate) spec: Value,
    /// Runs the test application on the real nodes (real containers, real traffic)
    /// instead of fake pods on the soak's KWOK nodes.
    pub(crate) real: bool,
}

/// The stateless service on the real nodes that the soak's client sends requests to,
/// through a ClusterIP Service of the same name.
pub(crate) const SERVED: &str = "real-web";

pub(crate) fn stateful(extra: Value) -> Value {
    let mut spec = json!({"volumeClaimTemplates": [{
        "metadata": {"name": "data"},
        "spec": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": "local",
            "resources": {"requests": {"storage": "1Gi"}}
        }
    }]});
    merge(&mut spec, extra);
    spec
}

/// Twenty services on KWOK nodes covering the update and repair policies (13 stateless, 7
/// stateful), and two on the real nodes: one stateless behind the client's Service, and one
/// stateful slot whose claim lives on a real node and must never have two pods that may run.
pub(crate) fn profiles() -> Vec<Profile> {
    let p = |name, replicas, spec| Profile {
        name,
        replicas,
        spec,
        real: false,
    };
    let real = |name, replicas, spec| Profile {
        name,
        replicas,
        spec,
        real: true,
    };
    vec![
        // One pod per real node, so that a node down takes half of it, never all: with two
        // nodes there is no room for a surge pod, so a rollout replaces one pod at a time.
        real(
            SERVED,
            2,
            json!({
                "redundancy": {"onePerNode": true, "whenUnsatisfiable": "DoNotSchedule"},
                "update": {"maxSurge": 0, "maxUnavailable": 1, "minReadySeconds": 1}
            }),
        ),
        real("real-db", 1, stateful(json!({}))),
        p(
            "web-a",
            3,
            json!({"update": {"maxSurge": 1, "maxUnavailable": 0, "minReadySeconds": 1}}),
        ),
        p(
            "web-b",
            4,
            json!({"update": {"maxSurge": 2, "maxUnavailable": 1}}),
        ),
        p(
            "web-c",
            4,
            json!({"update": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
        ),
        p(
            "web-d",
            3,
            json!({"update": {"maxSurge": 0, "maxUnavailable": 1}}),
        ),
        p(
            "wide",
            5,
            json!({"update": {"maxSurge": 2, "maxUnavailable": 2, "minReadySeconds": 1}}),
        ),
        p(
            "spread",
            3,
            json!({"redundancy": {"onePerNode": true, "minDomains": 3, "whenUnsatisfiable": "DoNotSchedule"}}),
        ),
        p(
            "quorum",
            3,
            json!({"disruptionBudget": {"quorum": true}, "update": {"maxSurge": 1}}),
        ),
        p("ordered", 3, json!({"podManagementPolicy": "OrderedReady"})),
        p("partition", 3, json!({"update": {"partition": 1}})),
        p("recreate", 2, json!({"update": {"strategy": "Recreate"}})),
        p(
            "canary",
            4,
            json!({"update": {"canary": {"steps": [
                {"replicas": 1}, {"pause": {"seconds": 5}}, {"replicas": "50%"}, {"pause": {"seconds": 5}}
            ]}}}),
        ),
        p(
            "canary-manual",
            3,
            json!({"update": {"rollback": "Manual", "canary": {"steps": [
                {"replicas": 1}, {"pause": {"seconds": 8}}
            ]}}}),
        ),
        p("manual", 3, json!({"update": {"rollback": "Manual"}})),
        p(
            "db-wait",
            3,
            stateful(json!({"redundancy": {"onePerNode": true}})),
        ),
        p(
            "db-fence",
            3,
            stateful(json!({"repair": {"fencing": "TaintOutOfService"}})),
        ),
        p(
            "db-rebuild",
            3,
            stateful(json!({"redundancy": {"onePerNode": true}, "repair": {
                "fencing": "TaintOutOfService", "storage": {"onVolumeLost": "Recreate"}
            }})),
        ),
        p(
            "db-rebuild-wait",
            2,
            stateful(json!({"repair": {"storage": {"onVolumeLost": "Recreate"}}})),
        ),
        p(
            "db-quorum",
            3,
            stateful(json!({"disruptionBudget": {"quorum": true}, "repair": {
                "fencing": "TaintOutOfService", "storage": {"onVolumeLost": "Recreate"}
            }})),
        ),
        p(
            "db-manual",
            2,
            stateful(json!({"update": {"rollback": "Manual"}})),
        ),
        p(
            "db-canary",
            3,
            stateful(json!({"update": {"canary": {"steps": [
                {"replicas": 1}, {"pause": {"seconds": 5}}
            ]}}})),
        ),
    ]
}

/// Merges `extra` into `base`, objects key by key, anything else replaced.
pub(crate) fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

/// The service of `profile`, its pods placed on the soak's own nodes, or the test
/// application on the real nodes. Short deadlines, so that a bad rollout is judged (and
/// rolled back) within the soak: a crash loop after two restarts, a rollout without progress
/// after 30 s, a silent node after 10 s.
pub(crate) fn service(profile: &Profile, group: &str) -> ResilientService {
    let pod = if profile.real {
        let mut pod = on_real_nodes();
        pod["containers"] = json!([profile.real_container(TESTAPP_V1_IMAGE)]);
        pod["terminationGracePeriodSeconds"] = json!(5);
        pod
    } else {
        json!({
            "containers": [{"name": "app", "image": format!("example/{}:1", profile.name)}],
            "nodeSelector": {GROUP_LABEL: group},
            "tolerations": [{
                "key": TEST_NODE_TAINT, "operator": "Equal", "value": NODE_PREFIX,
                "effect": "NoSchedule"
            }]
        })
    };
    let mut spec = json!({
        "replicas": profile.replicas,
        "update": {"progressDeadlineSeconds": 30},
        "supervision": {"maxRestarts": 2, "periodSeconds": 60},
        "repair": {"nodeLostAfterSeconds": 10},
        "template": {
            "metadata": {"labels": {"app": profile.name}},
            "spec": pod
        }
    });
    merge(&mut spec, profile.spec.clone());
    serde_json::from_value(json!({
        "apiVersion": "perennial.dev/v1alpha1",
        "kind": "ResilientService",
        "metadata": {"name": profile.name},
        "spec": spec,
    }))
    .expect("a valid ResilientService")
}

impl Profile {
    /// The test application's container of `image`: a template change replaces the
    /// container list whole, so every change carries the probe, the security context and
    /// the claim's mount again. A stateful service mounts its claim, so that what the node's
    /// runtime runs shows which containers have it.
    pub(crate) fn real_container(&self, image: &str) -> Value {
        let mut container = testapp_container(&[]);
        container["image"] = json!(image);
        if self.spec.get("volumeClaimTemplates").is_some() {
            container["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
        }
        container
    }
}

/// Back to Available with every replica Ready, at the current generation.
pub(crate) fn converged(svc: &ResilientService) -> Result<(), String> {
    let s = svc.status.clone().unwrap_or_default();
    let available = s
        .conditions
        .iter()
        .any(|c| c.type_ == "Available" && c.status == "True");
    if s.observed_generation == svc.metadata.generation
        && available
        && s.ready_replicas == svc.spec.replicas
    {
        return Ok(());
    }
    let waiting: Vec<String> = s
        .replica_statuses
        .iter()
        .filter_map(|r| Some(format!("slot {}: {}", r.ordinal, r.waiting_for.clone()?)))
        .chain(s.replica_statuses.iter().filter_map(|r| {
            Some(format!(
                "slot {} keeps off {} ({})",
                r.ordinal,
                r.avoid_node.as_deref()?,
                r.avoid_node_reason.as_deref().unwrap_or("no reason")
            ))
        }))
        .collect();
    Err(format!(
        "generation {:?} observed {:?}, Available={available}, ready {}/{}, reason {:?}, rollout {:?}, {waiting:?}",
        svc.metadata.generation,
        s.observed_generation,
        s.ready_replicas,
        svc.spec.replicas,
        s.reason,
        s.rollout.as_ref().and_then(|r| r.waiting_for.clone()),
    ))
}
