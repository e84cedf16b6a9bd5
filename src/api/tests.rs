//! serde defaults of the API types: what a sparse spec reads as, and that the default
//! values of each part survive a trip through JSON unchanged.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use super::*;

fn minimal() -> Value {
    json!({"template": {"spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}}})
}

fn read(value: Value) -> ResilientServiceSpec {
    serde_json::from_value(value).expect("a valid spec")
}

/// `value` serializes to JSON and reads back equal, and the JSON reads back into the
/// same JSON (nothing is dropped or added on the way).
fn assert_round_trips<T>(value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let json = serde_json::to_value(value).expect("serializes");
    let back: T = serde_json::from_value(json.clone()).expect("deserializes");
    assert_eq!(&back, value, "{json}");
    assert_eq!(serde_json::to_value(&back).unwrap(), json);
}

#[test]
fn a_spec_with_only_a_template_reads_as_the_documented_defaults() {
    let spec = read(minimal());

    assert_eq!(spec.replicas, 1);
    assert!(spec.volume_claim_templates.is_empty());
    assert_eq!(spec.service_name, None);
    assert_eq!(spec.pod_management_policy, PodManagementPolicy::Parallel);
    assert_eq!(spec.revision_history_limit, 10);
    assert!(!spec.paused);

    let r = &spec.redundancy;
    assert_eq!(r.topology_key, "topology.kubernetes.io/zone");
    assert_eq!(r.min_domains, None);
    assert_eq!(r.max_skew, 1);
    assert_eq!(r.when_unsatisfiable, WhenUnsatisfiable::ScheduleAnyway);
    assert!(!r.one_per_node);

    assert_eq!(spec.disruption_budget.max_unavailable, None);
    assert!(!spec.disruption_budget.quorum);

    let u = &spec.update;
    assert_eq!(u.strategy, UpdateStrategy::RollingUpdate);
    assert_eq!(u.max_surge, IntOrString::Int(1));
    assert_eq!(u.max_unavailable, IntOrString::Int(0));
    assert_eq!(u.min_ready_seconds, 0);
    assert_eq!(u.progress_deadline_seconds, 600);
    assert_eq!(u.partition, 0);
    assert_eq!(u.canary, None);
    assert_eq!(u.rollback, RollbackPolicy::Automatic);

    let s = &spec.supervision;
    assert_eq!(s.max_restarts, 5);
    assert_eq!(s.period_seconds, 300);
    assert_eq!(
        s.escalation,
        [
            EscalationStep::Restart,
            EscalationStep::Reschedule,
            EscalationStep::RebuildStorage,
            EscalationStep::Quarantine
        ]
    );

    let rep = &spec.repair;
    assert_eq!(rep.node_lost_after_seconds, 30);
    assert_eq!(rep.fencing, Fencing::WaitForEvidence);
    assert_eq!(rep.on_node_recovered, NodeRecoveredPolicy::RemoveFence);
    assert_eq!(rep.storage.on_volume_lost, VolumeLostPolicy::Retain);
    assert_eq!(rep.max_concurrent_repairs, 1);

    let keep = &spec.persistent_volume_claim_retention_policy;
    assert_eq!(keep.when_scaled, ClaimRetention::Retain);
    assert_eq!(keep.when_deleted, ClaimRetention::Retain);
}

#[test]
fn each_default_impl_agrees_with_serde_defaults_of_an_empty_object() {
    fn empty<T: DeserializeOwned>() -> T {
        serde_json::from_value(json!({})).expect("every field of the part has a default")
    }
    assert_eq!(empty::<Redundancy>(), Redundancy::default());
    assert_eq!(empty::<DisruptionBudget>(), DisruptionBudget::default());
    assert_eq!(empty::<UpdateSpec>(), UpdateSpec::default());
    assert_eq!(empty::<Supervision>(), Supervision::default());
    assert_eq!(empty::<Repair>(), Repair::default());
    assert_eq!(empty::<StorageRepair>(), StorageRepair::default());
    assert_eq!(empty::<RetentionPolicy>(), RetentionPolicy::default());
    assert_eq!(empty::<Pause>(), Pause::default());
}

#[test]
fn empty_parts_read_the_same_as_absent_parts() {
    let mut with_empty_parts = minimal();
    for part in [
        "redundancy",
        "disruptionBudget",
        "update",
        "supervision",
        "repair",
        "persistentVolumeClaimRetentionPolicy",
    ] {
        with_empty_parts[part] = json!({});
    }
    with_empty_parts["repair"]["storage"] = json!({});
    assert_eq!(read(with_empty_parts), read(minimal()));
}

#[test]
fn default_valued_parts_serialize_and_deserialize_unchanged() {
    assert_round_trips(&Redundancy::default());
    assert_round_trips(&DisruptionBudget::default());
    assert_round_trips(&UpdateSpec::default());
    assert_round_trips(&Supervision::default());
    assert_round_trips(&Repair::default());
    assert_round_trips(&StorageRepair::default());
    assert_round_trips(&RetentionPolicy::default());
    assert_round_trips(&Pause::default());
    assert_round_trips(&ResilientServiceStatus::default());
    assert_round_trips(&ReplicaStatus::default());
}

#[test]
fn a_defaulted_spec_serializes_every_default_and_reads_back_unchanged() {
    let spec = read(minimal());
    let json = serde_json::to_value(&spec).unwrap();
    // The defaults are written out, as the API server stores them, except optional fields.
    assert_eq!(json["update"]["maxSurge"], json!(1));
    assert_eq!(json["update"]["maxUnavailable"], json!(0));
    assert_eq!(json["supervision"]["maxRestarts"], json!(5));
    assert_eq!(json["volumeClaimTemplates"], json!([]));
    assert_eq!(json["disruptionBudget"], json!({"quorum": false}));
    assert!(json.get("serviceName").is_none());
    assert!(json["update"].get("canary").is_none());
    assert_round_trips(&spec);
}

#[test]
fn a_full_spec_round_trips_unchanged() {
    let spec = read(json!({
        "replicas": 3,
        "serviceName": "store",
        "podManagementPolicy": "OrderedReady",
        "template": minimal()["template"],
        "volumeClaimTemplates": [{
            "metadata": {"name": "data", "labels": {"tier": "db"}},
            "spec": {
                "storageClassName": "local",
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}}
            }
        }],
        "redundancy": {"minDomains": 3, "whenUnsatisfiable": "DoNotSchedule", "onePerNode": true},
        "disruptionBudget": {"maxUnavailable": "25%"},
        "update": {
            "strategy": "RollingUpdate", "maxSurge": "50%", "maxUnavailable": 1,
            "minReadySeconds": 10, "progressDeadlineSeconds": 120, "partition": 1,
            "rollback": "Manual",
            "canary": {"steps": [{"replicas": 1}, {"pause": {"seconds": 60}}, {"replicas": "50%"}, {"pause": {}}]}
        },
        "supervision": {"maxRestarts": 3, "periodSeconds": 60, "escalation": ["Restart", "Quarantine"]},
        "repair": {
            "nodeLostAfterSeconds": 45, "fencing": "TaintOutOfService",
            "storage": {"onVolumeLost": "Recreate"}, "maxConcurrentRepairs": 2
        },
        "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete", "whenDeleted": "Retain"},
        "revisionHistoryLimit": 3,
        "paused": true
    }));
    assert_eq!(spec.update.max_surge, IntOrString::String("50%".into()));
    assert_eq!(
        spec.update.canary.as_ref().unwrap().steps[3].pause,
        Some(Pause { seconds: None })
    );
    assert_round_trips(&spec);
}

/// Every CEL rule in the generated CRD comes with a message (or message expression) that
/// names the field it is about (a spec field, or the object's name), so a rejection never
/// reads "failed rule: ...". The server puts the path of a rule's field, indices and all,
/// before its message: a rule with a `fieldPath`, or one on a field of the pod template
/// (where the pod validation's own wording is kept), names its field that way.
#[test]
fn every_cel_rule_in_the_crd_has_a_message_naming_its_field() {
    fn walk(value: &Value, in_template: bool, rules: &mut Vec<(Value, bool)>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::Array(found)) = map.get("x-kubernetes-validations") {
                    rules.extend(found.iter().cloned().map(|r| (r, in_template)));
                }
                for (key, v) in map {
                    let below = in_template || (key == "template" && v.get("properties").is_some());
                    walk(v, below, rules);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, in_template, rules)),
            _ => {}
        }
    }
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(ResilientService::crd()).unwrap();
    let mut rules = Vec::new();
    walk(&crd, false, &mut rules);
    assert!(rules.len() >= 10, "only {} rules", rules.len());
    for (rule, in_template) in rules {
        let text = rule
            .get("message")
            .or_else(|| rule.get("messageExpression"))
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("rule without a message: {rule}"));
        let text = text.trim_start_matches('\'');
        let located = in_template || rule.get("fieldPath").is_some();
        assert!(
            text.starts_with("spec.") || text.starts_with("metadata.name") || located,
            "the message does not name the field: {rule}"
        );
        assert!(text.len() > 10, "a message says what is wrong: {rule}");
    }
}

#[test]
fn a_status_that_differs_in_counts_slots_and_messages_records_the_same() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    let at = Time(jiff::Timestamp::from_second(1_800_000_000).unwrap());
    let condition = |status: &str, reason: &str, message: &str| Condition {
        type_: "Available".into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: at.clone(),
        observed_generation: None,
    };
    let slot = |state: &str| ReplicaStatus {
        ordinal: 0,
        pod: Some(format!("web-0-{state}")),
        state: state.into(),
        ..Default::default()
    };
    let base = ResilientServiceStatus {
        observed_generation: Some(2),
        replicas: 3,
        conditions: vec![condition("True", "MinimumReplicasAvailable", "2 of 3")],
        replica_statuses: vec![slot("Starting")],
        ..Default::default()
    };
    let mut seen_again = base.clone();
    seen_again.ready_replicas = 3;
    seen_again.conditions = vec![condition("True", "MinimumReplicasAvailable", "3 of 3")];
    seen_again.replica_statuses = vec![slot("Ready")];
    seen_again.domains.insert("zone-a".into(), 3);
    assert!(base.records_as(&seen_again));

    let changed: [fn(&mut ResilientServiceStatus); 6] = [
        |s| s.observed_generation = Some(3),
        |s| s.conditions[0].status = "False".into(),
        |s| s.conditions[0].reason = "MinimumReplicasUnavailable".into(),
        |s| s.replica_statuses[0].restarts_in_window = 1,
        |s| s.replica_statuses[0].avoid_node = Some("n1".into()),
        |s| s.update_revision = Some("web-2".into()),
    ];
    for change in changed {
        let mut other = seen_again.clone();
        change(&mut other);
        assert!(!base.records_as(&other), "{other:?}");
    }
    let mut one_more_slot = base.clone();
    one_more_slot.replica_statuses.push(ReplicaStatus {
        ordinal: 1,
        ..Default::default()
    });
    assert!(!base.records_as(&one_more_slot));
}

#[test]
fn only_what_each_pass_derives_again_carries_no_decision() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    let condition = |type_: &str, status: &str, reason: &str| Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: String::new(),
        last_transition_time: Time(jiff::Timestamp::from_second(1_800_000_000).unwrap()),
        observed_generation: None,
    };
    let base = ResilientServiceStatus {
        observed_generation: Some(2),
        current_revision: Some("web-1".into()),
        conditions: vec![
            condition("Available", "True", "MinimumReplicasAvailable"),
            condition("Degraded", "True", "ReplicaNotReady"),
            condition("RolledBack", "False", "NoRollback"),
            condition("Progressing", "True", "RolloutComplete"),
        ],
        reason: Some("ReplicaNotReady".into()),
        ..Default::default()
    };
    let failure = |reason: &str, recovered: Option<i64>| {
        Box::new(Failure {
            reason: reason.into(),
            message: format!("{reason} seen"),
            at: Time(jiff::Timestamp::from_second(1_800_000_000).unwrap()),
            recovered_at: recovered.map(|s| Time(jiff::Timestamp::from_second(s).unwrap())),
        })
    };
    let base = ResilientServiceStatus {
        replica_statuses: vec![ReplicaStatus {
            ordinal: 0,
            last_failure: Some(failure("Failed", None)),
            ..Default::default()
        }],
        ..base
    };
    let mut healed = base.clone();
    healed.conditions[0] = condition("Available", "True", "AllReplicasAvailable");
    healed.conditions[1] = condition("Degraded", "False", "AllReplicasReady");
    healed.conditions[3] = condition("Progressing", "True", "ReplicasUpdating");
    healed.reason = None;
    healed.replica_statuses[0].last_failure = Some(failure("Failed", Some(1_800_000_060)));
    assert!(base.decides_as(&healed), "the pods tell these again");
    assert!(!base.records_as(&healed), "but they are written at once");

    let decided: [fn(&mut ResilientServiceStatus); 5] = [
        |s| s.replica_statuses[0].last_failure.as_mut().unwrap().reason = "NodeLost".into(),
        |s| {
            s.conditions[2].status = "True".into();
            s.conditions[2].reason = "RolloutAborted".into();
        },
        |s| s.current_revision = Some("web-2".into()),
        |s| s.observed_generation = Some(3),
        |s| s.replica_statuses[0].restarts_in_window = 1,
    ];
    for change in decided {
        let mut other = healed.clone();
        change(&mut other);
        assert!(!base.decides_as(&other), "{other:?}");
        assert!(!base.records_as(&other), "{other:?}");
    }
}

#[test]
fn a_service_keeps_off_a_node_only_while_a_slot_of_its_ledger_avoids_it() {
    let slot = |ordinal: i32, avoid: Option<&str>| ReplicaStatus {
        ordinal,
        node: Some("n9".into()),
        avoid_node: avoid.map(Into::into),
        avoid_node_reason: avoid.map(|_| "NodeLost".into()),
        ..Default::default()
    };
    let status = ResilientServiceStatus {
        replica_statuses: vec![slot(0, None), slot(1, Some("n1"))],
        ..Default::default()
    };
    assert!(status.keeps_off("n1"));
    assert!(!status.keeps_off("n2"));
    // The node a slot's pod runs on is not one it keeps off.
    assert!(!status.keeps_off("n9"));
    assert!(!ResilientServiceStatus::default().keeps_off("n1"));
}
