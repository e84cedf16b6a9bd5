//! The brain: (spec, what was judged, now) → actions and status. Pure.

mod conditions;
mod drain;
mod refused;
mod repair;
mod revisions;
mod rollout;
mod slots;
mod status;

#[cfg(test)]
mod tests;

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::{ResilientService, ResilientServiceStatus};
use crate::health::{Assessment, ServiceState};

pub use conditions::merge_conditions;

/// Creates allowed in one pass; the rest follow on the next pass, so one huge scale-up
/// cannot flood the API server.
pub const MAX_CREATES_PER_PASS: usize = 64;

/// One change the operator makes to the cluster.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Record the current template as ControllerRevision `number`.
    CreateRevision { number: i64 },
    /// Create or correct the headless Service.
    ApplyService,
    /// Create or correct the PodDisruptionBudget.
    ApplyDisruptionBudget,
    /// Create the claim of `ordinal` from the claim template `template`.
    CreateClaim { template: String, ordinal: i32 },
    /// Create the pod of `ordinal` at `revision`, named `name` (build::pod_name, or
    /// build::second_pod_name while the first name is held by a pod on its way out).
    CreatePod {
        ordinal: i32,
        revision: String,
        name: String,
    },
    /// Delete a pod; `reason` goes to the Event. A pod that may be serving is drained
    /// first (CloseGate), and deleted on a later pass.
    DeletePod { name: String, reason: String },
    /// Set the pod's readiness gate False, so that EndpointSlices stop routing to it, before
    /// it is deleted or (`upgrade`) upgraded in place; `reason` says why.
    CloseGate {
        name: String,
        upgrade: bool,
        reason: String,
    },
    /// Set the pod's readiness gate True: its containers are ready, and it may serve.
    OpenGate { name: String },
    /// Move a pod to `revision` in place (spec.update.inPlace): images, labels,
    /// annotations and resources are patched, and its kubelet restarts what changed. A pod
    /// that may be serving is drained first.
    UpgradeInPlace {
        name: String,
        from: String,
        revision: String,
    },
    /// Delete a claim (only where the retention policy says so).
    DeleteClaim { name: String },
    /// Delete a revision beyond revisionHistoryLimit.
    DeleteRevision { name: String },
    /// Mark a revision failed, so that it is not rolled out again.
    MarkRevisionBad { name: String, reason: String },
    /// Delete a pod at once (grace period 0): its node is gone and will never confirm.
    ForceDeletePod { name: String, reason: String },
    /// Set the Ready condition of a pod on a lost node False, so that EndpointSlices stop
    /// routing to it while its loss settles: its silent kubelet cannot, and the node
    /// lifecycle controller does so only after its own, longer grace period. A kubelet that
    /// comes back sets the condition from what its containers say.
    MarkPodNotReady { name: String, reason: String },
    /// Taint a lost node out-of-service (repair.fencing: TaintOutOfService), and record
    /// that this service did.
    TaintNode { node: String },
    /// Remove the out-of-service taint this service put on a node that is back, and its
    /// record (repair.onNodeRecovered: RemoveFence).
    UntaintNode { node: String },
    /// Remove this service's fence record from a node whose taint is no longer as recorded:
    /// a person removed or replaced it, and what is there now is theirs.
    ForgetFence { node: String },
    /// Delete a claim so that slot `ordinal` gets a new, empty one (repair.storage.onVolumeLost,
    /// or the RebuildStorage rung of the escalation ladder).
    RebuildClaim {
        name: String,
        ordinal: i32,
        reason: String,
    },
    /// Remove the abort annotation, if it still holds `value`: the abort was carried out, or
    /// names no rollout that is going on.
    ClearAbort { value: String },
}

/// What to do, and what to report.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub status: ResilientServiceStatus,
    /// Look again after this long even if nothing changes (a minReadySeconds timer).
    pub requeue_after: Option<Duration>,
}

/// Plans one pass for `svc`.
pub fn plan(svc: &ResilientService, seen: &Assessment) -> Plan {
    let update_revision = crate::build::revision_name(svc);
    let mut actions = revisions::plan(svc, seen, &update_revision);
    match seen.service {
        ServiceState::Missing | ServiceState::Ours { up_to_date: false } => {
            actions.push(Action::ApplyService)
        }
        ServiceState::Ours { up_to_date: true } | ServiceState::Foreign => {}
    }
    if seen.budget_up_to_date != Some(true) {
        actions.push(Action::ApplyDisruptionBudget);
    }
    let decision = rollout::decide(svc, seen, &update_revision);
    actions.extend(decision.actions.iter().cloned());
    // A stable revision not yet recorded as current keeps its pods until it is: the status
    // write of this pass is the record, and the next pass moves on from it.
    let moves = if decision.record_stable_first {
        Vec::new()
    } else {
        rollout::moves(svc, seen, &decision.targets)
    };
    actions.extend(slots::plan(svc, seen, &decision.targets, &moves));
    actions.extend(moves);
    let rolling = (decision.targets.hold != decision.targets.target)
        .then_some(decision.targets.target.as_str());
    let repairs = repair::plan(svc, seen, rolling);
    actions.extend(repairs.actions.iter().cloned());
    let mut actions = normalize(actions);
    refused::drop_refused_creates(&mut actions, seen);
    let drained = drain::gate(svc, seen, actions);
    let (status, requeue_after) =
        status::compute(svc, seen, &update_revision, &decision, &repairs, &drained);
    Plan {
        actions: drained.actions,
        status,
        requeue_after,
    }
}

/// One action per object: a forced delete wins over a plain one, an upgrade in place over a
/// plain delete (a repair of a pod the rollout moves to a revision that works), repeats go.
fn normalize(actions: Vec<Action>) -> Vec<Action> {
    let forced: Vec<String> = actions
        .iter()
        .filter_map(|a| match a {
            Action::ForceDeletePod { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    let upgraded: Vec<String> = actions
        .iter()
        .filter_map(|a| match a {
            Action::UpgradeInPlace { name, .. } if !forced.contains(name) => Some(name.clone()),
            _ => None,
        })
        .collect();
    let actions: Vec<Action> = actions
        .into_iter()
        .filter(|a| match a {
            Action::DeletePod { name, .. } => !upgraded.contains(name),
            Action::UpgradeInPlace { name, .. } => !forced.contains(name),
            _ => true,
        })
        .collect();
    let mut out: Vec<Action> = Vec::with_capacity(actions.len());
    let mut deleted: Vec<String> = Vec::new();
    for a in actions {
        let target = match &a {
            Action::DeletePod { name, .. } if forced.contains(name) => continue,
            Action::DeletePod { name, .. } | Action::ForceDeletePod { name, .. } => {
                Some(name.clone())
            }
            _ => None,
        };
        if let Some(name) = target {
            if deleted.contains(&name) {
                continue;
            }
            deleted.push(name);
        }
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// Resolves a count-or-percentage against `total`, rounding a percentage up or down.
pub fn resolve(value: &IntOrString, total: i32, round_up: bool) -> i32 {
    match value {
        IntOrString::Int(n) => (*n).max(0),
        IntOrString::String(s) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            let scaled = i64::from(total.max(0)) * pct.clamp(0, 100);
            let n = if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            };
            n as i32
        }
    }
}
