//! Rollouts: which revision each slot should run, and which pods to replace now.
//!
//! One pass decides in named steps, the way a reader would ask: which revision is stable
//! (`stable`), has the new one been aborted or failed and so rolled back (`verdict`), how far
//! may it go now (a stop for a person, a pause, a canary step, a partition: `progress`), and
//! has it made progress within its deadline (`progress`). `moves` then picks the pods to
//! replace within the floor and the ceiling.

mod canary;
mod in_place;
mod moves;
mod progress;
mod stable;
mod verdict;

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::Timestamp;

use super::conditions::Decided;
use super::Action;
use crate::api::{condition, ResilientService, RolloutStatus};
use crate::health::{Assessment, PodState, PodView};

pub(super) use moves::moves;

/// The revisions slots should run, decided once per pass.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Targets {
    /// What slots at or above the partition run.
    pub target: String,
    /// What slots below the partition run when they need a new pod.
    pub hold: String,
    /// Slots with an ordinal at or above it move to `target`.
    pub partition: i32,
    /// Slots below the partition that stay on `target` all the same: a rollout stopped by a
    /// failure leaves the slots it moved where they are, for a person to look at.
    pub kept: BTreeSet<i32>,
}

impl Targets {
    pub fn revision_for(&self, ordinal: i32) -> &str {
        if ordinal >= self.partition || self.kept.contains(&ordinal) {
            &self.target
        } else {
            &self.hold
        }
    }
}

/// The rollout's decisions for this pass.
pub(super) struct Decision {
    pub targets: Targets,
    pub actions: Vec<Action>,
    pub status: Option<RolloutStatus>,
    pub conditions: Vec<Decided>,
    pub requeue: Option<Duration>,
    /// Why the rollout is failed or stopped, for status.reason.
    pub reason: Option<String>,
    /// The stable revision serves every replica but is not yet recorded as current: this
    /// pass only writes the record, and no pod is replaced until it is durable.
    pub record_stable_first: bool,
}

/// `status.rollout.waitingFor` of a rollout held by `spec.paused`.
const WAITING_FOR_UNPAUSE: &str = "spec.paused to be false";
/// How `status.rollout.waitingFor` of a rollout stopped by a failure (rollback: Manual)
/// begins; the failure follows. The stop holds until the template changes or the rollout
/// is aborted: a failing pod that is deleted or recovers does not restart it.
const WAITING_FOR_A_PERSON: &str = "a person: ";
/// `status.reason` of a rollout stopped by a failure.
const ROLLOUT_FAILED: &str = "RolloutFailed";

fn is_available(pod: &PodView, now: Timestamp, min_ready: i64) -> bool {
    match pod.state {
        PodState::Ready { since } => now.as_second() - since.as_second() >= min_ready,
        _ => false,
    }
}

/// Not on its way out (deleted, or drained to be deleted) and not ended.
fn live(pod: &PodView) -> bool {
    !pod.state.is_leaving() && !matches!(pod.state, PodState::Failed { .. })
}

/// Decides the targets: the update revision, unless it failed, was aborted, or the rollout
/// waits at a canary step, a partition, or a pause.
pub(super) fn decide(svc: &ResilientService, seen: &Assessment, update: &str) -> Decision {
    let bad: Vec<&str> = seen
        .revisions
        .iter()
        .filter(|r| r.bad)
        .map(|r| r.name.as_str())
        .collect();
    let update_is_bad = bad.contains(&update);
    let stable = stable::stable(svc, seen, update, &bad);
    let rolling = stable.name != update;
    let new_pods: Vec<&PodView> = seen
        .pods
        .iter()
        .filter(|p| p.revision == update && live(p))
        .collect();
    let prev_rollout = svc
        .status
        .as_ref()
        .and_then(|s| s.rollout.clone())
        .filter(|r| r.revision == update);
    let clear_abort = verdict::clear_abort(svc, update, update_is_bad, rolling);

    let verdict = verdict::judge(
        svc,
        seen,
        update,
        rolling,
        &new_pods,
        seen.now,
        prev_rollout.as_ref(),
    );
    let mut decision = if verdict.rolls_back(svc, update_is_bad) {
        verdict::rolled_back(update, &stable.name, update_is_bad, &verdict)
    } else {
        progress::advance(
            svc,
            seen,
            update,
            &stable.name,
            &new_pods,
            prev_rollout,
            verdict.failure,
        )
    };
    decision.actions.extend(clear_abort);
    decision.record_stable_first = stable.unrecorded;
    decision
}

/// A service of `replicas` with one container and no minReadySeconds, for the steps' tests.
#[cfg(test)]
fn test_service(replicas: i32) -> ResilientService {
    let mut svc: ResilientService = serde_json::from_value(serde_json::json!({
        "apiVersion": "perennial.dev/v1alpha1", "kind": "ResilientService",
        "metadata": {"name": "web", "namespace": "ns"},
        "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "app", "image": "a:1"}]}}}
    }))
    .expect("a valid service");
    svc.spec.update.min_ready_seconds = 0;
    svc
}

/// `Progressing` and `RolledBack` of a service that is not rolling out.
fn not_rolling(update: &str) -> Decided {
    Decided {
        type_: condition::ROLLED_BACK,
        status: false,
        reason: "NoRollback".into(),
        message: format!("running revision {update}"),
    }
}
