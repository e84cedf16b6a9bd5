//! `status`: is the service where its spec says, still on its way, or stuck?

use kube::ResourceExt;

use super::Snapshot;
use crate::api::{condition, ResilientService, ANNOTATION_INVALID_TEMPLATE};

/// The judgement of one look at the service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Available, every replica on the current template, and nothing degraded.
    Done(String),
    /// On its way; what it waits for.
    Waiting(String),
    /// Rolled back, its rollout failed, or a slot waits for a person: waiting longer will
    /// not help.
    Failed(String),
    /// Rolled out, but Degraded: a repair may still mend it, so `status` gives it a grace.
    Degraded(String),
}

impl Verdict {
    pub fn message(&self) -> &str {
        match self {
            Verdict::Done(m) | Verdict::Waiting(m) | Verdict::Failed(m) | Verdict::Degraded(m) => m,
        }
    }
}

fn condition_of<'a>(
    svc: &'a ResilientService,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    (svc.status.as_ref()?.conditions.iter()).find(|c| c.type_ == type_)
}

fn is_true(svc: &ResilientService, type_: &str) -> bool {
    condition_of(svc, type_).is_some_and(|c| c.status == "True")
}

/// Judges the service. Nothing is judged before the operator has seen its current
/// generation; a rollback, a failed rollout, a refused template or a quarantined slot fail
/// at once; a service is judged degraded only once its rollout is otherwise complete, since
/// during a rollout a replica being replaced may count as degraded for a moment.
pub fn judge(snapshot: &Snapshot) -> Verdict {
    let svc = &snapshot.service;
    let Some(status) = &svc.status else {
        return Verdict::Waiting("the operator has not reported on it yet".into());
    };
    if status.observed_generation != svc.metadata.generation {
        return Verdict::Waiting(format!(
            "the operator has not seen generation {} yet (it reported generation {})",
            svc.metadata.generation.unwrap_or_default(),
            status.observed_generation.unwrap_or_default()
        ));
    }
    let update = status.update_revision.clone().unwrap_or_default();
    if let Some(c) = condition_of(svc, condition::ROLLED_BACK).filter(|c| c.status == "True") {
        return Verdict::Failed(format!("rolled back ({}): {}", c.reason, c.message));
    }
    if let Some(c) = condition_of(svc, condition::PROGRESSING).filter(|c| c.status == "False") {
        return Verdict::Failed(format!("rollout failed ({}): {}", c.reason, c.message));
    }
    if let Some(why) = (snapshot.revision(&update))
        .and_then(|r| r.annotations().get(ANNOTATION_INVALID_TEMPLATE).cloned())
    {
        return Verdict::Failed(format!("the API server refuses pods of {update}: {why}"));
    }
    if let Some(slot) = (status.replica_statuses.iter()).find(|r| r.state == "Quarantined") {
        let why = (slot.last_failure.as_ref())
            .map(|f| format!("{}: {}", f.reason, f.message))
            .unwrap_or_else(|| "restarts exceeded the intensity".into());
        return Verdict::Failed(format!(
            "slot {} is quarantined and waits for a person ({why})",
            slot.ordinal
        ));
    }
    let n = svc.spec.replicas;
    let complete = status.replicas == n
        && status.updated_replicas == n
        && status.available_replicas == n
        && !update.is_empty()
        && status.current_revision.as_deref() == Some(update.as_str())
        && is_true(svc, condition::AVAILABLE);
    if complete {
        if let Some(c) = condition_of(svc, condition::DEGRADED).filter(|c| c.status == "True") {
            return Verdict::Degraded(format!("degraded ({}): {}", c.reason, c.message));
        }
        return Verdict::Done(format!(
            "{n} of {n} replicas available on revision {update}"
        ));
    }
    let waits = (status.rollout.as_ref())
        .and_then(|r| r.waiting_for.clone())
        .map(|w| format!("; waiting for {w}"))
        .unwrap_or_default();
    let paused = if svc.spec.paused {
        " (spec.paused: true; resume it)"
    } else {
        ""
    };
    Verdict::Waiting(format!(
        "{} of {n} replicas updated, {} available{waits}{paused}",
        status.updated_replicas, status.available_replicas
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn snapshot(status: Value) -> Snapshot {
        let svc: ResilientService = serde_json::from_value(json!({
            "apiVersion": "perennial.dev/v1alpha1", "kind": "ResilientService",
            "metadata": {"name": "web", "namespace": "ns", "generation": 2},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "app", "image": "a:1"}]}}},
            "status": status
        }))
        .unwrap();
        Snapshot::new(svc, vec![], vec![], Default::default(), vec![])
    }

    fn cond(type_: &str, status: &str, reason: &str) -> Value {
        json!({"type": type_, "status": status, "reason": reason, "message": format!("{reason} said"),
               "lastTransitionTime": "2026-01-01T00:00:00Z"})
    }

    fn settled(extra: Value) -> Value {
        let mut s = json!({
            "observedGeneration": 2, "replicas": 3, "readyReplicas": 3, "availableReplicas": 3,
            "updatedReplicas": 3, "currentRevision": "web-b", "updateRevision": "web-b",
            "conditions": [cond("Available", "True", "MinimumReplicasAvailable"),
                           cond("Progressing", "True", "RolloutComplete"),
                           cond("Degraded", "False", "ReplicasHealthy"),
                           cond("RolledBack", "False", "NoRollback")]
        });
        for (k, v) in extra.as_object().unwrap() {
            s[k] = v.clone();
        }
        s
    }

    #[test]
    fn a_settled_service_is_done() {
        assert_eq!(
            judge(&snapshot(settled(json!({})))),
            Verdict::Done("3 of 3 replicas available on revision web-b".into())
        );
    }

    #[test]
    fn nothing_is_judged_before_the_operator_saw_the_current_generation() {
        let v = judge(&snapshot(settled(json!({"observedGeneration": 1}))));
        assert!(matches!(v, Verdict::Waiting(m) if m.contains("generation 2")));
        assert!(matches!(judge(&snapshot(Value::Null)), Verdict::Waiting(_)));
    }

    #[test]
    fn a_rollback_or_a_failed_rollout_fails_at_once() {
        let rolled = settled(json!({"conditions": [cond("RolledBack", "True", "RevisionFailed")]}));
        assert!(
            matches!(judge(&snapshot(rolled)), Verdict::Failed(m) if m.starts_with("rolled back (RevisionFailed)"))
        );
        let stuck = settled(json!({"updatedReplicas": 1, "currentRevision": "web-a",
            "conditions": [cond("Progressing", "False", "ProgressDeadlineExceeded")]}));
        assert!(
            matches!(judge(&snapshot(stuck)), Verdict::Failed(m) if m.contains("ProgressDeadlineExceeded"))
        );
    }

    #[test]
    fn a_quarantined_slot_fails_with_its_last_failure() {
        let s = settled(
            json!({"replicaStatuses": [{"ordinal": 1, "state": "Quarantined",
            "lastFailure": {"reason": "CrashLoopBackOff", "message": "exit 1", "at": "2026-01-01T00:00:00Z"}}]}),
        );
        assert_eq!(
            judge(&snapshot(s)),
            Verdict::Failed(
                "slot 1 is quarantined and waits for a person (CrashLoopBackOff: exit 1)".into()
            )
        );
    }

    #[test]
    fn a_service_is_judged_degraded_only_once_its_rollout_is_otherwise_complete() {
        let mut conditions = settled(json!({}))["conditions"].clone();
        conditions[2] = cond("Degraded", "True", "NodeLost");
        let done = settled(json!({"conditions": conditions.clone()}));
        assert!(
            matches!(judge(&snapshot(done)), Verdict::Degraded(m) if m.starts_with("degraded (NodeLost)"))
        );
        let rolling = settled(
            json!({"conditions": conditions, "updatedReplicas": 2, "currentRevision": "web-a",
            "rollout": {"revision": "web-b", "startedAt": "2026-01-01T00:00:00Z",
                        "lastProgressAt": "2026-01-01T00:00:00Z", "waitingFor": "slot 2 to drain"}}),
        );
        assert_eq!(
            judge(&snapshot(rolling)),
            Verdict::Waiting(
                "2 of 3 replicas updated, 3 available; waiting for slot 2 to drain".into()
            )
        );
    }
}
